//! One module per subcommand.

pub mod daemon;
pub mod guest;
pub mod template;
