//! One module per subcommand.

pub mod bench;
pub mod daemon;
pub mod guest;
pub mod template;
