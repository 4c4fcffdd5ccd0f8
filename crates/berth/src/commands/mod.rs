//! One module per subcommand.

pub mod bench;
pub mod containerd_shim;
pub mod daemon;
mod daemon_json;
pub mod guest;
pub mod lab;
pub mod share_server;
pub mod template;
pub mod vmm;
