//! The QEMU backend: one `qemu-system-x86_64` process per VM, controlled over QMP.
//!
//! Machine: `-M pc` with KVM where hardware virtualization works, TCG (`-cpu max`)
//! elsewhere; no default devices; the guest kernel and Berth's initramfs are loaded
//! directly (`-kernel`/`-initrd`). Devices: a 16550 serial console written to
//! `console.log`, one virtio-blk-pci per disk, and a virtio-serial-pci port named
//! `berth.agent` whose host side is a unix socket that this backend listens on before
//! QEMU starts (QEMU connects as a client, so nothing the guest says is lost).
//!
//! Files in the VM's run directory: `agent.sock`, `qmp.sock`, `console.log`, `qemu.log`.

mod command;
mod process;
pub mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::{Accelerator, MemoryBacking, RunningVm, VmBackend, VmError, VmSpec};
use tokio::net::UnixListener;

pub use command::qemu_arguments;

/// How long a clone gets to load its template's device state.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a running VM gets to reconnect its agent channel to a new engine.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long QEMU gets to connect to the agent socket after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs VMs with QEMU.
pub struct QemuBackend {
    binary: PathBuf,
    accelerator: Accelerator,
}

impl QemuBackend {
    /// A backend using `binary` (normally `qemu-system-x86_64`), choosing KVM only where
    /// hardware virtualization is available.
    pub fn new(binary: PathBuf) -> Self {
        let accelerator = if berth_vm::hardware_kvm_available() {
            Accelerator::Kvm
        } else {
            Accelerator::Tcg
        };
        Self {
            binary,
            accelerator,
        }
    }

    /// A backend with an explicit accelerator.
    pub fn with_accelerator(binary: PathBuf, accelerator: Accelerator) -> Self {
        Self {
            binary,
            accelerator,
        }
    }
}

#[async_trait]
impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    fn supports_root_replacement(&self) -> bool {
        true
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        let agent_socket = spec.run_dir.join("agent.sock");
        let qmp_socket = spec.run_dir.join("qmp.sock");
        for stale in [&agent_socket, &qmp_socket] {
            let _ = std::fs::remove_file(stale);
        }
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| VmError::Io("binding the agent socket", e))?;
        let arguments = qemu_arguments(spec, self.accelerator, &agent_socket, &qmp_socket);
        // A snapshot to restore is handed to QEMU open, as its descriptor 3.
        let state = spec
            .restore_from
            .as_ref()
            .map(std::fs::File::open)
            .transpose()
            .map_err(|e| VmError::Io("opening the snapshot to restore", e))?;
        let vm = berth_vm::process::VmProcess::spawn(
            &self.binary,
            &arguments,
            &spec.run_dir,
            &spec.run_dir.join("qemu.log"),
            spec.netns.as_deref(),
            matches!(spec.memory, MemoryBacking::PrivateFile(_)),
            state,
        )?;
        let agent = tokio::select! {
            accepted = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => match accepted {
                Ok(Ok((stream, _))) => stream,
                Ok(Err(error)) => {
                    vm.kill_now().await;
                    return Err(VmError::Io("accepting the agent connection", error));
                }
                Err(_) => {
                    vm.kill_now().await;
                    return Err(VmError::Timeout("connect its agent channel", CONNECT_TIMEOUT));
                }
            },
            exit = vm.exited() => {
                let logs = [spec.run_dir.join("qemu.log"), spec.run_dir.join("console.log")];
                return Err(berth_vm::process::exited_early(&exit, &[&logs[0], &logs[1]]));
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&agent_socket);
        let restore_from = spec.restore_from.clone();
        let status = async {
            let mut monitor = qmp::QmpClient::connect(&qmp_socket).await?;
            if restore_from.is_some() {
                // The capability must be on for the incoming side too, or QEMU refuses a
                // stream made with it.
                monitor.ignore_shared_memory().await?;
                // No self-announcement after the restore: it would send the template's
                // MAC address out of this clone's NIC before the guest takes its own.
                monitor
                    .execute(
                        "migrate-set-parameters",
                        Some(serde_json::json!({ "announce-rounds": 0 })),
                    )
                    .await?;
                let uri = format!("fd:{}", berth_vm::process::PASSED_FD);
                monitor
                    .execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
                    .await?;
                monitor.wait_for_migration(RESTORE_TIMEOUT).await?;
                if monitor.query_status().await? != "running" {
                    monitor.execute("cont", None).await?;
                }
            }
            monitor.query_status().await
        };
        match status.await {
            Ok(status) if status == "running" => {}
            Ok(status) => {
                vm.kill_now().await;
                return Err(VmError::Monitor(format!(
                    "VM is {status}, not running, after start"
                )));
            }
            Err(error) => {
                vm.kill_now().await;
                return Err(error);
            }
        }
        let pid = vm.pid();
        Ok(RunningVm {
            agent,
            pid,
            control: Box::new(process::QemuControl::new(vm, qmp_socket)),
        })
    }

    async fn reattach(&self, pid: u32, run_dir: &std::path::Path) -> Result<RunningVm, VmError> {
        let agent_socket = run_dir.join("agent.sock");
        let qmp_socket = run_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&agent_socket);
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| VmError::Io("binding the agent socket", e))?;
        let vm = berth_vm::process::VmProcess::adopt(pid)?;
        // QEMU retries the socket every second (`reconnect=1`).
        let agent = tokio::select! {
            accepted = tokio::time::timeout(REATTACH_TIMEOUT, listener.accept()) => match accepted {
                Ok(Ok((stream, _))) => stream,
                Ok(Err(error)) => return Err(VmError::Io("accepting the agent connection", error)),
                Err(_) => return Err(VmError::Timeout("reconnect its agent channel", REATTACH_TIMEOUT)),
            },
            _ = vm.exited() => return Err(VmError::ExitedEarly("the VM ended before it reconnected".into())),
        };
        drop(listener);
        let _ = std::fs::remove_file(&agent_socket);
        Ok(RunningVm {
            agent,
            pid,
            control: Box::new(process::QemuControl::new(vm, qmp_socket)),
        })
    }
}
