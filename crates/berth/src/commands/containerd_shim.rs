//! `containerd-shim-berth-v2`: this binary under the name containerd looks for when a
//! task's runtime is `io.containerd.berth.v2` (install it as a link to `berth` on
//! containerd's PATH; see docs/containerd.md); `containerd-shim-berth-cold-v2`, the
//! runtime `io.containerd.berth-cold.v2`, boots each task's VM cold instead of cloning. Its command line is containerd's, not
//! Berth's; its settings come from the environment containerd passes on:
//!
//! | variable        | default                | what                                  |
//! |-----------------|------------------------|---------------------------------------|
//! | BERTH_SHIM_ROOT | /run/berth-shim        | templates and task VMs' directories   |
//! | BERTH_CACHE     | /var/cache/berth       | guest kernel and initramfs cache      |
//! | BERTH_BACKEND   | auto                   | auto, kvm or qemu (as `berth daemon`) |
//! | BERTH_QEMU      | qemu-system-x86_64     | the QEMU to run VMs with              |
//! | BERTH_MEMORY    | 256                    | each task VM's memory, MiB            |
//! | BERTH_LOG       | info                   | log filter (the bundle's `log` FIFO)  |

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_engine::template::Shape;
use clap::ValueEnum;

use super::daemon::{choose_backend, BackendChoice};

/// Whether this process was started under one of the shim's names: `Some(true)` for
/// the runtime that clones, `Some(false)` for the one that boots cold.
pub fn invoked_as_shim() -> Option<bool> {
    let program = std::env::args_os().next()?;
    let name = Path::new(&program).file_name()?.to_owned();
    if name == berth_shim::BINARY_NAME {
        Some(true)
    } else if name == berth_shim::COLD_BINARY_NAME {
        Some(false)
    } else {
        None
    }
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn run(clone: bool) -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let serving = !args.iter().any(|arg| arg == "start" || arg == "delete");
    if serving {
        // containerd reads the serving shim's log from the `log` FIFO in the bundle;
        // `start` and `delete` print what containerd parses, and nothing else.
        if let Ok(log) = std::fs::OpenOptions::new().write(true).open("log") {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::sync::Mutex::new(log))
                .with_ansi(false)
                .init();
        }
    }
    let backend = BackendChoice::from_str(&setting("BERTH_BACKEND", "auto"), true)
        .map_err(|error| anyhow::anyhow!("BERTH_BACKEND: {error}"))?;
    let memory_mib: u32 = setting("BERTH_MEMORY", "256")
        .parse()
        .context("BERTH_MEMORY must be a number of MiB")?;
    let config = berth_shim::ShimConfig {
        root: PathBuf::from(setting("BERTH_SHIM_ROOT", "/run/berth-shim")),
        cache: PathBuf::from(setting("BERTH_CACHE", "/var/cache/berth")),
        backend: choose_backend(
            backend,
            Path::new(&setting("BERTH_QEMU", "qemu-system-x86_64")),
        )?,
        berth_binary: std::env::current_exe().context("finding the berth binary")?,
        shape: Shape {
            vcpus: 1,
            memory_mib,
        },
        clone,
    };
    berth_shim::run(&args, config)
        .map_err(|error| anyhow::anyhow!(berth_engine::error_chain(&error)))
}
