//! One module per subcommand.

pub mod daemon;
pub mod guest;
