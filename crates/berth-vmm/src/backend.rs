//! The engine's side of the built-in VMM: a [`VmBackend`] that runs each VM as a
//! `berth vmm --config FILE` process (this same binary).
//!
//! Files in the VM's run directory: `vmm.json` (the [`VmmConfig`]), `agent.sock` (the
//! engine listens, the VMM connects and reconnects), `vmm-control.sock` (the VMM
//! listens: pause, resume, snapshot, disk counters; see `control`), `console.log`,
//! `vmm.log` (the VMM process's own stderr).
//!
//! Templates map their RAM from a file shared and are snapshotted through the control
//! socket; clones map the template's file private and restore its state. Not yet
//! supported, and refused with an error that says so: hot-plugging NICs and disks (so
//! the engine cold-boots containers with volumes or several networks, whose disks and
//! NICs are there from boot; `docker network connect` to a running container is
//! refused).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::process::VmProcess;
use berth_vm::{
    Accelerator, BlockStats, DiskSpec, MemoryBacking, NicSpec, RunningVm, VmBackend, VmControl,
    VmError, VmExit, VmSpec,
};
use tokio::net::UnixListener;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::config::{DiskConfig, DiskFormat, NicConfig, VmmConfig};
use crate::control::{ControlRequest, ControlResponse};

/// How long a VMM process gets to connect the agent channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the VMM gets to answer on its control socket (a snapshot included).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The control socket's name in the run directory.
const CONTROL_SOCKET: &str = "vmm-control.sock";
/// How long a running VM gets to reconnect to a new engine.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// The guest's command line (the VMM adds its own part, see `boot::VMM_CMDLINE`).
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet random.trust_cpu=on";
/// PCI slot of the first disk the engine did not place.
const FIRST_FREE_DISK_SLOT: u8 = 0x04;

/// Runs VMs on Berth's own VMM.
pub struct KvmBackend {
    /// The `berth` binary that has the `vmm` subcommand.
    binary: PathBuf,
}

impl KvmBackend {
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }
}

fn vmm_config(spec: &VmSpec, agent_socket: &Path) -> Result<VmmConfig, VmError> {
    let (memory_file, memory_shared) = match &spec.memory {
        MemoryBacking::Anonymous => (None, false),
        MemoryBacking::SharedFile(path) => (Some(path.clone()), true),
        MemoryBacking::PrivateFile(path) => (Some(path.clone()), false),
    };
    if spec.restore_from.is_some() && (memory_file.is_none() || memory_shared) {
        return Err(VmError::Monitor(
            "a restored VM's RAM must be its template's memory file, mapped private".into(),
        ));
    }
    let vcpus = u8::try_from(spec.vcpus)
        .map_err(|_| VmError::Monitor(format!("{} vCPUs is too many", spec.vcpus)))?;
    let mut next_slot = FIRST_FREE_DISK_SLOT;
    let disks = spec
        .disks
        .iter()
        .map(|disk| {
            let pci_slot = disk.pci_slot.unwrap_or_else(|| {
                let slot = next_slot;
                next_slot += 1;
                slot
            });
            DiskConfig {
                path: disk.path.clone(),
                format: match disk.format {
                    berth_vm::DiskFormat::Raw => DiskFormat::Raw,
                    berth_vm::DiskFormat::Qcow2 => DiskFormat::Qcow2,
                },
                read_only: disk.read_only,
                serial: disk.serial.clone(),
                pci_slot,
            }
        })
        .collect();
    Ok(VmmConfig {
        vcpus,
        memory_mib: spec.memory_mib,
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        cmdline: GUEST_CMDLINE.into(),
        console_log: spec.run_dir.join("console.log"),
        agent_socket: agent_socket.to_path_buf(),
        memory_file,
        memory_shared,
        restore_from: spec.restore_from.clone(),
        control_socket: Some(spec.run_dir.join(CONTROL_SOCKET)),
        disks,
        nics: spec
            .nics
            .iter()
            .map(|nic| NicConfig {
                tap: nic.tap.clone(),
                mac: nic.mac.clone(),
                pci_slot: nic.pci_slot,
            })
            .collect(),
    })
}

async fn accept_agent(
    listener: &UnixListener,
    vm: &VmProcess,
    timeout: Duration,
    log: &Path,
) -> Result<tokio::net::UnixStream, VmError> {
    tokio::select! {
        accepted = tokio::time::timeout(timeout, listener.accept()) => match accepted {
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(error)) => {
                vm.kill_now().await;
                Err(VmError::Io("accepting the agent connection", error))
            }
            Err(_) => {
                vm.kill_now().await;
                Err(VmError::Timeout("connect its agent channel", timeout))
            }
        },
        exit = vm.exited() => {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            Err(VmError::ExitedEarly(format!("status {:?}: {}", exit.code, log.trim())))
        }
    }
}

#[async_trait]
impl VmBackend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn accelerator(&self) -> Accelerator {
        Accelerator::Kvm
    }

    fn supports_hotplug(&self) -> bool {
        false
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        let agent_socket = spec.run_dir.join("agent.sock");
        let _ = std::fs::remove_file(&agent_socket);
        let config = vmm_config(spec, &agent_socket)?;
        let config_path = spec.run_dir.join("vmm.json");
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| VmError::Io("writing vmm.json", std::io::Error::other(e)))?;
        std::fs::write(&config_path, text).map_err(|e| VmError::Io("writing vmm.json", e))?;
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| VmError::Io("binding the agent socket", e))?;
        let log = spec.run_dir.join("vmm.log");
        let arguments = vec![
            "vmm".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
        ];
        let vm = VmProcess::spawn(
            &self.binary,
            &arguments,
            &log,
            spec.netns.as_deref(),
            matches!(spec.memory, MemoryBacking::PrivateFile(_)),
            None,
        )?;
        let agent = accept_agent(&listener, &vm, CONNECT_TIMEOUT, &log).await?;
        drop(listener);
        let _ = std::fs::remove_file(&agent_socket);
        let pid = vm.pid();
        Ok(RunningVm {
            agent,
            pid,
            control: Box::new(VmmControl {
                process: vm,
                control_socket: spec.run_dir.join(CONTROL_SOCKET),
            }),
        })
    }

    async fn reattach(&self, pid: u32, run_dir: &Path) -> Result<RunningVm, VmError> {
        let agent_socket = run_dir.join("agent.sock");
        let _ = std::fs::remove_file(&agent_socket);
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| VmError::Io("binding the agent socket", e))?;
        let vm = VmProcess::adopt(pid)?;
        let agent =
            accept_agent(&listener, &vm, REATTACH_TIMEOUT, &run_dir.join("vmm.log")).await?;
        drop(listener);
        let _ = std::fs::remove_file(&agent_socket);
        Ok(RunningVm {
            agent,
            pid,
            control: Box::new(VmmControl {
                process: vm,
                control_socket: run_dir.join(CONTROL_SOCKET),
            }),
        })
    }
}

/// [`VmControl`] of a `berth vmm` process: its control socket for all but waiting.
struct VmmControl {
    process: VmProcess,
    control_socket: PathBuf,
}

impl VmmControl {
    async fn request(&self, request: ControlRequest) -> Result<ControlResponse, VmError> {
        let exchange = async {
            let mut stream = tokio::net::UnixStream::connect(&self.control_socket).await?;
            let mut line = serde_json::to_string(&request).map_err(std::io::Error::other)?;
            line.push('\n');
            stream.write_all(line.as_bytes()).await?;
            let mut answer = String::new();
            tokio::io::BufReader::new(stream)
                .take(1 << 16)
                .read_line(&mut answer)
                .await?;
            serde_json::from_str::<ControlResponse>(&answer).map_err(std::io::Error::other)
        };
        let response = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| VmError::Timeout("answer on its control socket", CONTROL_TIMEOUT))?
            .map_err(|e| VmError::Io("talking to the VMM's control socket", e))?;
        if response.ok {
            Ok(response)
        } else {
            Err(VmError::Monitor(
                response.error.unwrap_or_else(|| "the VMM refused".into()),
            ))
        }
    }
}

#[async_trait]
impl VmControl for VmmControl {
    async fn shut_down(&self, grace: Duration) -> VmExit {
        match tokio::time::timeout(grace, self.process.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.kill().await,
        }
    }

    async fn kill(&self) -> VmExit {
        self.process.kill_now().await
    }

    async fn wait(&self) -> VmExit {
        self.process.exited().await
    }

    async fn pause(&self) -> Result<(), VmError> {
        self.request(ControlRequest::Pause).await.map(|_| ())
    }

    async fn resume(&self) -> Result<(), VmError> {
        self.request(ControlRequest::Resume).await.map(|_| ())
    }

    async fn snapshot(&self, state_file: &Path) -> Result<(), VmError> {
        self.request(ControlRequest::Snapshot {
            path: state_file.to_path_buf(),
        })
        .await
        .map(|_| ())
    }

    async fn block_stats(&self) -> Result<BlockStats, VmError> {
        let response = self.request(ControlRequest::BlockStats).await?;
        let [read_bytes, write_bytes, read_operations, write_operations] =
            response.block_stats.unwrap_or_default();
        Ok(BlockStats {
            read_bytes,
            write_bytes,
            read_operations,
            write_operations,
        })
    }

    async fn add_nic(&self, _nic: &NicSpec) -> Result<(), VmError> {
        Err(VmError::Unsupported("hot-plugging a network card"))
    }

    async fn remove_nic(&self, _nic: &NicSpec) -> Result<(), VmError> {
        Err(VmError::Unsupported("unplugging a network card"))
    }

    async fn add_disk(&self, _disk: &DiskSpec) -> Result<(), VmError> {
        Err(VmError::Unsupported("hot-plugging a disk"))
    }
}
