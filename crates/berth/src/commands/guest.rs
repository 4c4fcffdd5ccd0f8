//! `berth guest`: prepare (and show) the guest kernel and initramfs.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GuestArgs {
    /// Cache for the guest kernel and initramfs.
    #[arg(long, default_value = "/var/cache/berth")]
    pub cache: PathBuf,
}

pub fn run(args: GuestArgs) -> anyhow::Result<()> {
    let guest = berth_guest::prepare(&args.cache, &|step| eprintln!("{step}"))?;
    println!(
        "kernel:    {} ({})",
        guest.kernel.display(),
        guest.kernel_package
    );
    println!("release:   {}", guest.kernel_release);
    println!("initramfs: {}", guest.initramfs.display());
    println!("digest:    {}", guest.digest);
    Ok(())
}
