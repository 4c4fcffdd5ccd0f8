//! `berth`: one binary, a subcommand per job, each a thin call into the library crates.

mod commands;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

/// Berth: a Docker-compatible container host that runs every container in its own VM.
#[derive(Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Docker Engine API on a unix socket (use it with `docker -H unix://SOCKET`),
    /// and on TCP with TLS if asked (`-H tcp://ADDRESS:PORT --tlsverify ...`).
    Daemon(Box<commands::daemon::DaemonArgs>),
    /// Prepare the guest kernel and initramfs now (the daemon otherwise does it on first use).
    Guest(commands::guest::GuestArgs),
    /// Show or remove the VM templates that containers are cloned from.
    Template(commands::template::TemplateArgs),
    /// Benchmarks, measured side by side in one run against a running daemon.
    Bench(commands::bench::BenchArgs),
    /// Run a command in the KVM lab: a software-emulated VM with AMD SVM, KVM loaded and
    /// Berth inside (how Berth's own VMM is tested on hosts without VMX/SVM).
    Lab(commands::lab::LabArgs),
    /// Run one VM on Berth's own KVM VMM (started by the daemon's `kvm` backend).
    Vmm(commands::vmm::VmmArgs),
    /// Serve one shared directory or file to one VM (started by the daemon).
    #[command(hide = true)]
    ShareServer(commands::share_server::ShareServerArgs),
}

fn main() -> anyhow::Result<()> {
    // containerd runs this binary as `containerd-shim-berth-v2`, with its own command line.
    if let Some(clone) = commands::containerd_shim::invoked_as_shim() {
        return commands::containerd_shim::run(clone);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon(args) => commands::daemon::run(*args),
        Command::Guest(args) => commands::guest::run(args),
        Command::Template(args) => commands::template::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Lab(args) => commands::lab::run(args),
        Command::Vmm(args) => commands::vmm::run(args),
        Command::ShareServer(args) => commands::share_server::run(args),
    }
}
