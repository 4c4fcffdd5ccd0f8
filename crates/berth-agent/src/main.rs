//! Berth's agent: PID 1 inside every container VM.
//!
//! Boot: mount /proc, /sys and /dev; stage the container's own /proc, /sys and /dev;
//! load the kernel modules listed in `/lib/modules/order` (the initramfs builder writes
//! them in dependency order); bring the loopback interface up; ready the NICs (see `network::prepare_boot_nics`); find the
//! virtio-serial port named [`berth_agent_proto::PORT_NAME`]; say Hello; then serve the
//! engine's requests (see `berth-agent-proto` for the protocol) until told to shut down.
//!
//! If the engine goes away (its end of the channel closes), the agent and the container's
//! processes go on; a new engine takes over with `Reattach`.

mod archive;
mod boot;
mod cgroups;
mod changes;
mod channel;
mod hold;
mod init;
mod mount_namespace;
mod network;
mod network6;
mod pid_namespace;
mod pod;
mod process;
mod pumps;
mod rebind;
mod rehearse;
mod serve;
mod shares;
mod top;
mod user;
mod volumes;

fn main() {
    // The agent's binary also serves as the helpers for `docker cp`, `docker diff` and
    // `commit`, `--init` and build steps, run in the container under other names.
    let args: Vec<String> = std::env::args().collect();
    match args.first().map(String::as_str) {
        Some(archive::HELPER_NAME) => std::process::exit(archive::main(&args)),
        Some(changes::HELPER_NAME) => std::process::exit(changes::main(&args)),
        Some(init::HELPER_NAME) => std::process::exit(init::main(&args)),
        Some(hold::HELPER_NAME) => std::process::exit(hold::main()),
        Some(rehearse::HELPER_NAME) => std::process::exit(0),
        _ => {}
    }
    if let Err(error) = run() {
        eprintln!("berth-agent: fatal: {error}");
    }
    boot::power_off();
}

fn run() -> std::io::Result<()> {
    boot::mount_early_filesystems()?;
    boot::stage_container_api_filesystems()?;
    boot::load_modules()?;
    network::loopback_up()?;
    network::prepare_boot_nics();
    let port = boot::open_agent_port()?;
    serve::serve(port)
}
