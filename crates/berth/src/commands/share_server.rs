//! `berth share-server`: serve one shared directory or file to one VM (the daemon starts
//! these; see the `berth-share` crate). The listening socket is descriptor 0.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ShareServerArgs {
    /// The host directory or file to share.
    #[arg(long)]
    pub source: PathBuf,
    /// Refuse every write.
    #[arg(long)]
    pub read_only: bool,
    /// An existing directory to mount the server's sandbox root on.
    #[arg(long)]
    pub scratch: PathBuf,
    /// Exit when this process (the VM's) exits.
    #[arg(long)]
    pub watch_pid: Option<i32>,
}

pub fn run(args: ShareServerArgs) -> anyhow::Result<()> {
    // SAFETY: the daemon starts this command with its listening socket as descriptor 0,
    // which nothing else in this process owns.
    let listener = unsafe { OwnedFd::from_raw_fd(0) };
    let options = berth_share::ServeOptions {
        source: args.source,
        read_only: args.read_only,
        scratch: args.scratch,
        watch_pid: args.watch_pid,
    };
    berth_share::serve(&options, listener)?;
    Ok(())
}
