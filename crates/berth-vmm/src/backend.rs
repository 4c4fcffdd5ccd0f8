//! The engine's side of the built-in VMM: a [`VmBackend`] that runs each VM as a
//! `berth vmm --config FILE` process (this same binary).
//!
//! Files in the VM's run directory: `vmm.json` (the [`VmmConfig`]), `agent.sock` (the
//! engine listens, the VMM connects and reconnects), `vmm-control.sock` (the VMM
//! listens: pause, resume, snapshot, disk counters; see `control`), `console.log`,
//! `vmm.log` (the VMM process's own stderr).
//!
//! Templates map their RAM from a file shared and are snapshotted through the control
//! socket; clones map the template's file private and restore its state. Disks and NICs
//! are hot-plugged through the control socket too: this side opens the disk file, and
//! the tap inside the VMM's network namespace (a short-lived thread enters
//! `/proc/PID/ns/net`), and passes the descriptor; the VMM, under its system call
//! filter, opens nothing. Hot-plugged disks are raw files (volumes, an image's root
//! filesystem). Every VM has a balloon with free page reporting: `set_memory` moves its
//! target (`docker update -m` of a running container, clone or cold boot alike).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::process::VmProcess;
use berth_vm::{
    Accelerator, BlockStats, DiskSpec, MemoryBacking, NicSpec, RunningVm, VmBackend, VmControl,
    VmError, VmExit, VmSpec,
};
use tokio::net::UnixListener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::config::{DiskConfig, DiskFormat, NicConfig, VmmConfig};
use crate::control::{ControlRequest, ControlResponse, CODE_SLOT_IN_USE};
use crate::devices::tap::Tap;

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
/// How long a guest gets to eject an unplugged NIC.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

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
            let console = log.with_file_name("console.log");
            Err(berth_vm::process::exited_early(&exit, &[log, &console]))
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

    /// Clones restore with their first disk in [`FIRST_FREE_DISK_SLOT`], which
    /// `replace_root_disk` swaps.
    fn supports_root_replacement(&self) -> bool {
        true
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
        // The name is what `VmBackend::runs_vm` looks for in the command line.
        let arguments = vec![
            "vmm".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--name".to_owned(),
            format!("berth-{}", spec.name),
        ];
        let vm = VmProcess::spawn(
            &self.binary,
            &arguments,
            &spec.run_dir,
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
                memory_mib: spec.memory_mib,
            }),
        })
    }

    async fn reattach(&self, pid: u32, run_dir: &Path) -> Result<RunningVm, VmError> {
        let agent_socket = run_dir.join("agent.sock");
        let _ = std::fs::remove_file(&agent_socket);
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| VmError::Io("binding the agent socket", e))?;
        let memory_mib = std::fs::read(run_dir.join("vmm.json"))
            .ok()
            .and_then(|text| serde_json::from_slice::<VmmConfig>(&text).ok())
            .map(|config| config.memory_mib)
            .unwrap_or(0);
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
                memory_mib,
            }),
        })
    }
}

/// [`VmControl`] of a `berth vmm` process: its control socket for all but waiting.
struct VmmControl {
    process: VmProcess,
    control_socket: PathBuf,
    /// The VM's RAM: `set_memory` may not ask for more.
    memory_mib: u32,
}

/// One exchange on the control socket: `request`, with `descriptor` passed alongside,
/// and its answer. Blocking (run it off the async threads).
fn exchange(
    socket: &Path,
    request: &ControlRequest,
    descriptors: &[OwnedFd],
) -> std::io::Result<ControlResponse> {
    let stream = StdUnixStream::connect(socket)?;
    stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
    stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    let sent = match descriptors {
        [] => 0,
        descriptors => {
            let raw: Vec<_> = descriptors.iter().map(AsRawFd::as_raw_fd).collect();
            stream
                .send_with_fds(&[line.as_bytes()], &raw)
                .map_err(std::io::Error::from)?
        }
    };
    (&stream).write_all(&line.as_bytes()[sent..])?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&stream, 1 << 16)).read_line(&mut answer)?;
    serde_json::from_str::<ControlResponse>(&answer).map_err(std::io::Error::other)
}

/// Opens the tap `name` the way the VMM uses taps, inside the network namespace of
/// process `pid` (the VMM's, where the engine made the tap).
fn open_tap_of(pid: u32, name: &str) -> std::io::Result<File> {
    let namespace = File::open(format!("/proc/{pid}/ns/net"))?;
    berth_net::netns::run_in_namespace(&namespace, || Tap::open(name).map(|tap| tap.file))
}

impl VmmControl {
    async fn request(&self, request: ControlRequest) -> Result<ControlResponse, VmError> {
        self.request_with(request, Vec::new()).await
    }

    /// Sends `request` with `descriptor` alongside; an answer that is not `ok` is an
    /// error (a taken slot: [`VmError::AlreadyAttached`]).
    async fn request_with(
        &self,
        request: ControlRequest,
        descriptors: Vec<OwnedFd>,
    ) -> Result<ControlResponse, VmError> {
        let socket = self.control_socket.clone();
        let response =
            tokio::task::spawn_blocking(move || exchange(&socket, &request, &descriptors))
                .await
                .map_err(|e| {
                    VmError::Io(
                        "talking to the VMM's control socket",
                        std::io::Error::other(e),
                    )
                })?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        VmError::Timeout("answer on its control socket", CONTROL_TIMEOUT)
                    }
                    _ => VmError::Io("talking to the VMM's control socket", e),
                })?;
        if response.ok {
            return Ok(response);
        }
        let error = response.error.unwrap_or_else(|| "the VMM refused".into());
        if response.code.as_deref() == Some(CODE_SLOT_IN_USE) {
            return Err(VmError::AlreadyAttached(error));
        }
        Err(VmError::Monitor(error))
    }

    /// Waits until the guest has ejected the function in `slot`.
    async fn wait_for_eject(&self, slot: u8) -> Result<(), VmError> {
        let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
        loop {
            let slots = self.request(ControlRequest::Slots).await?.slots;
            if !slots.unwrap_or_default().contains(&slot) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(VmError::Timeout(
                    "eject the unplugged device",
                    UNPLUG_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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

    async fn add_nic(&self, nic: &NicSpec) -> Result<(), VmError> {
        let pid = self.process.pid();
        let tap_name = nic.tap.clone();
        let tap = tokio::task::spawn_blocking(move || open_tap_of(pid, &tap_name))
            .await
            .map_err(|e| VmError::Io("opening the tap", std::io::Error::other(e)))?
            .map_err(|e| VmError::Io("opening the tap", e))?;
        let request = ControlRequest::AddNic {
            slot: nic.pci_slot,
            mac: nic.mac.clone(),
        };
        self.request_with(request, vec![tap.into()])
            .await
            .map(|_| ())
    }

    async fn remove_nic(&self, nic: &NicSpec) -> Result<(), VmError> {
        self.request(ControlRequest::Remove { slot: nic.pci_slot })
            .await?;
        self.wait_for_eject(nic.pci_slot).await
    }

    async fn set_memory(&self, bytes: u64) -> Result<(), VmError> {
        VmError::check_memory_within(bytes, u64::from(self.memory_mib) << 20)?;
        self.request(ControlRequest::SetMemory { bytes })
            .await
            .map(|_| ())
    }

    /// The container's disk, and its image's (the qcow2's backing file), opened here
    /// and passed to the VMM, which opens no file once it runs.
    async fn replace_root_disk(&self, disk: &DiskSpec) -> Result<(), VmError> {
        let opening = |e| VmError::Io("opening the container's disk", e);
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(opening)?;
        let format = match disk.format {
            berth_vm::DiskFormat::Raw => DiskFormat::Raw,
            berth_vm::DiskFormat::Qcow2 => DiskFormat::Qcow2,
        };
        let backing = match format {
            DiskFormat::Qcow2 => crate::disk::qcow2::Qcow2Disk::backing_path(&image, &disk.path)
                .map_err(opening)?
                .map(File::open)
                .transpose()
                .map_err(opening)?,
            DiskFormat::Raw => None,
        };
        let descriptors = std::iter::once(image)
            .chain(backing)
            .map(OwnedFd::from)
            .collect();
        let request = ControlRequest::ReplaceDisk {
            slot: FIRST_FREE_DISK_SLOT,
            format,
        };
        self.request_with(request, descriptors).await.map(|_| ())
    }

    async fn add_disk(&self, disk: &DiskSpec) -> Result<(), VmError> {
        let slot = disk
            .pci_slot
            .ok_or_else(|| VmError::Monitor("a hot-plugged disk needs a PCI slot".into()))?;
        if disk.format != berth_vm::DiskFormat::Raw {
            return Err(VmError::Unsupported("hot-plugging a qcow2 disk"));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(|e| VmError::Io("opening the disk to hot-plug", e))?;
        let request = ControlRequest::AddDisk {
            slot,
            read_only: disk.read_only,
            serial: disk.serial.clone(),
        };
        self.request_with(request, vec![file.into()])
            .await
            .map(|_| ())
    }
}
