//! The QEMU process: spawning, reaping, and the [`VmControl`] the engine holds.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::{BlockStats, DiskFormat, DiskSpec, NicSpec, VmControl, VmError, VmExit};
use tokio::process::Command;
use tokio::sync::watch;

use crate::qmp::QmpClient;

/// A QEMU process whose exit is published on a watch channel by a reaper task.
pub struct QemuProcess {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
}

impl QemuProcess {
    /// Starts QEMU with its output going to `log`. QEMU gets its own process group, so a
    /// Ctrl-C aimed at the daemon does not reach it: the daemon stops its VMs itself.
    ///
    /// With `netns`, QEMU runs in that network namespace (where its taps are): the
    /// namespace is entered between fork and exec.
    pub fn spawn(
        binary: &Path,
        arguments: &[String],
        log: &Path,
        netns: Option<&Path>,
    ) -> Result<Self, VmError> {
        let log_file = File::create(log).map_err(|e| VmError::Io("creating qemu.log", e))?;
        let log_clone = log_file
            .try_clone()
            .map_err(|e| VmError::Io("creating qemu.log", e))?;
        let mut command = Command::new(binary);
        if let Some(path) = netns {
            let namespace =
                File::open(path).map_err(|e| VmError::Io("opening the network namespace", e))?;
            // SAFETY: the hook only calls setns (async-signal-safe) on a descriptor that
            // the closure owns and that stays open until the child execs.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_clone))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(VmError::Spawn)?;
        let pid = child
            .id()
            .ok_or_else(|| VmError::ExitedEarly("no pid".into()))?;
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().and_then(|status| status.code());
            let _ = sender.send(Some(VmExit { code }));
        });
        Ok(Self { pid, exit })
    }

    /// Takes over a QEMU process that another engine started (it is not our child: its
    /// end is seen through a pidfd, its exit status is not known).
    pub fn adopt(pid: u32) -> Result<Self, VmError> {
        // SAFETY: pidfd_open takes a pid and flags, no pointers; the descriptor it
        // returns is owned by the OwnedFd below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(VmError::Io(
                "opening the VM process",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just returned by pidfd_open and nothing else owns it.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd is a valid pidfd that AsyncFd owns from here on; nothing
        // else closes or replaces it.
        let watched = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(|e| VmError::Io("watching the VM process", e.into()))?;
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            // A pidfd becomes readable when its process ends.
            let _ = watched.readable().await;
            let _ = sender.send(Some(VmExit { code: None }));
        });
        Ok(Self { pid, exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has ended.
    pub async fn exited(&self) -> VmExit {
        let mut exit = self.exit.clone();
        let result = match exit.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(VmExit { code: None }),
            Err(_) => VmExit { code: None },
        };
        result
    }

    /// Kills the process and waits for it.
    pub async fn kill_now(&self) -> VmExit {
        if self.exit.borrow().is_none() {
            // SAFETY: kill takes no pointers. The pid is our child's and is reaped only by
            // the reaper task, which publishes the exit right after; a reaped pid is not
            // signalled (checked just above), save for that short window.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        self.exited().await
    }

    pub fn into_control(self, qmp_socket: PathBuf) -> QemuControl {
        QemuControl {
            process: self,
            qmp_socket,
        }
    }
}

/// [`VmControl`] for a QEMU process.
pub struct QemuControl {
    process: QemuProcess,
    qmp_socket: PathBuf,
}

#[async_trait]
impl VmControl for QemuControl {
    async fn shut_down(&self, grace: Duration) -> VmExit {
        match tokio::time::timeout(grace, self.process.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.kill().await,
        }
    }

    async fn kill(&self) -> VmExit {
        // Ask QEMU to quit first (it then closes its files cleanly); SIGKILL if it does not.
        if let Ok(Ok(mut monitor)) =
            tokio::time::timeout(Duration::from_secs(1), QmpClient::connect(&self.qmp_socket)).await
        {
            let _ = monitor.quit().await;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.process.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.process.kill_now().await,
        }
    }

    async fn wait(&self) -> VmExit {
        self.process.exited().await
    }

    async fn pause(&self) -> Result<(), VmError> {
        QmpClient::connect(&self.qmp_socket)
            .await?
            .execute("stop", None)
            .await
            .map(|_| ())
    }

    async fn resume(&self) -> Result<(), VmError> {
        QmpClient::connect(&self.qmp_socket)
            .await?
            .execute("cont", None)
            .await
            .map(|_| ())
    }

    async fn snapshot(&self, state_file: &Path) -> Result<(), VmError> {
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        monitor.execute("stop", None).await?;
        monitor.ignore_shared_memory().await?;
        let uri = format!("exec:cat > {}", crate::qmp::shell_quote(state_file));
        monitor
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await?;
        monitor.wait_for_migration(Duration::from_secs(60)).await
    }

    async fn block_stats(&self) -> Result<BlockStats, VmError> {
        let reply = QmpClient::connect(&self.qmp_socket)
            .await?
            .execute("query-blockstats", None)
            .await?;
        let mut total = BlockStats::default();
        for device in reply.as_array().into_iter().flatten() {
            let stats = &device["stats"];
            let number = |key: &str| stats[key].as_u64().unwrap_or(0);
            total.read_bytes += number("rd_bytes");
            total.write_bytes += number("wr_bytes");
            total.read_operations += number("rd_operations");
            total.write_operations += number("wr_operations");
        }
        Ok(total)
    }

    async fn add_nic(&self, nic: &NicSpec) -> Result<(), VmError> {
        let (netdev_id, device_id) = crate::command::nic_ids(nic);
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        monitor
            .execute(
                "netdev_add",
                Some(serde_json::json!({
                    "type": "tap", "id": netdev_id, "ifname": nic.tap,
                    "script": "no", "downscript": "no",
                })),
            )
            .await?;
        let added = monitor
            .execute(
                "device_add",
                Some(serde_json::json!({
                    "driver": "virtio-net-pci", "id": device_id, "netdev": netdev_id,
                    "mac": nic.mac, "addr": format!("{:#04x}", nic.pci_slot),
                })),
            )
            .await;
        if let Err(error) = added {
            let _ = monitor
                .execute("netdev_del", Some(serde_json::json!({ "id": netdev_id })))
                .await;
            return Err(error);
        }
        Ok(())
    }

    async fn add_disk(&self, disk: &DiskSpec) -> Result<(), VmError> {
        let slot = disk
            .pci_slot
            .ok_or_else(|| VmError::Monitor("a hot-plugged disk needs a PCI slot".into()))?;
        let node = format!("hotdisk{slot}");
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        let driver = match disk.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        monitor
            .execute(
                "blockdev-add",
                Some(serde_json::json!({
                    "driver": driver, "node-name": node, "read-only": disk.read_only,
                    "file": { "driver": "file", "filename": disk.path },
                })),
            )
            .await?;
        let mut device = serde_json::json!({
            "driver": "virtio-blk-pci", "id": format!("{node}-dev"), "drive": node,
            "addr": format!("{slot:#04x}"),
        });
        if let Some(serial) = disk.serial.as_deref() {
            device["serial"] = serde_json::json!(crate::command::clean_serial(serial));
        }
        if let Err(error) = monitor.execute("device_add", Some(device)).await {
            let _ = monitor
                .execute(
                    "blockdev-del",
                    Some(serde_json::json!({ "node-name": node })),
                )
                .await;
            return Err(error);
        }
        Ok(())
    }

    async fn remove_nic(&self, nic: &NicSpec) -> Result<(), VmError> {
        let (netdev_id, device_id) = crate::command::nic_ids(nic);
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        monitor
            .execute("device_del", Some(serde_json::json!({ "id": device_id })))
            .await?;
        // The guest ejects the card (ACPI hot-unplug); wait until QEMU has let it go.
        let deadline = tokio::time::Instant::now() + NIC_UNPLUG_TIMEOUT;
        loop {
            let peripherals = monitor
                .execute(
                    "qom-list",
                    Some(serde_json::json!({ "path": "/machine/peripheral" })),
                )
                .await?;
            let present = peripherals.as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|item| item.get("name").and_then(|n| n.as_str()) == Some(&device_id))
            });
            if !present {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(VmError::Timeout(
                    "release the unplugged NIC",
                    NIC_UNPLUG_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        monitor
            .execute("netdev_del", Some(serde_json::json!({ "id": netdev_id })))
            .await
            .map(|_| ())
    }
}

/// How long a guest gets to eject an unplugged NIC.
const NIC_UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);
