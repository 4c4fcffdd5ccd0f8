//! `berth vmm --config FILE`: run one VM on Berth's own VMM (a process per VM; the
//! engine's `kvm` backend starts these).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct VmmArgs {
    /// The VM's configuration (JSON, written by the engine).
    #[arg(long)]
    pub config: PathBuf,
    /// The VM's name as the engine gives it (`berth-<container id>`): shown by `ps`, and
    /// how a daemon started later recognises the VM as its container's (live restore).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs the VM; exits 0 when the guest reset or powered off, 1 on a failure.
pub fn run(args: VmmArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)?;
    let config: berth_vmm::VmmConfig = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    match berth_vmm::run(&config)? {
        berth_vmm::VmExitReason::GuestReset | berth_vmm::VmExitReason::GuestPowerOff => {
            std::process::exit(0)
        }
        berth_vmm::VmExitReason::Failed(reason) => {
            eprintln!("berth vmm: {reason}");
            std::process::exit(1)
        }
    }
}
