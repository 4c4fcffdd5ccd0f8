//! The [`VmControl`] the engine holds for a QEMU process: QMP for everything but waiting.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::process::VmProcess;
use berth_vm::{BlockStats, DiskSpec, NicSpec, VmControl, VmError, VmExit};

use crate::qmp::QmpClient;

impl QemuControl {
    pub fn new(process: VmProcess, qmp_socket: PathBuf) -> Self {
        Self {
            process,
            qmp_socket,
        }
    }
}

/// [`VmControl`] for a QEMU process.
pub struct QemuControl {
    process: VmProcess,
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

    async fn discard(&self) -> VmExit {
        // No QMP `quit` first: nothing of the disks it would close is kept.
        self.process.kill_now().await
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
                    // As at boot (see `nic_options`).
                    "guest_announce": false,
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

    async fn set_memory(&self, bytes: u64) -> Result<(), VmError> {
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        // Only VMs with memory of their own have a balloon (see `command`).
        if monitor.execute("query-balloon", None).await.is_err() {
            return Err(VmError::NoBalloon);
        }
        let summary = monitor.execute("query-memory-size-summary", None).await?;
        let size = summary["base-memory"]
            .as_u64()
            .ok_or_else(|| VmError::Monitor(format!("odd memory summary: {summary}")))?;
        VmError::check_memory_within(bytes, size)?;
        monitor
            .execute("balloon", Some(serde_json::json!({ "value": bytes })))
            .await
            .map(|_| ())
    }

    async fn add_disk(&self, disk: &DiskSpec) -> Result<(), VmError> {
        let slot = disk
            .pci_slot
            .ok_or_else(|| VmError::Monitor("a hot-plugged disk needs a PCI slot".into()))?;
        let node = format!("hotdisk{slot}");
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        let driver = crate::command::format_name(disk.format);
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
            // As crate::command::DISK_ERROR_POLICY: errors go to the guest.
            "werror": "report", "rerror": "report",
        });
        if let Some(serial) = disk.serial.as_deref() {
            device["serial"] = serde_json::json!(crate::command::clean_serial(serial));
        }
        let added = monitor.execute("device_add", Some(device)).await;
        drop_node_on_error(&mut monitor, &node, added).await
    }

    /// Opens `disk` as a new format node and points the clone's root node at it
    /// (`blockdev-reopen`); the node it replaces is closed with its last reference.
    async fn replace_root_disk(&self, disk: &DiskSpec) -> Result<(), VmError> {
        static REPLACEMENTS: AtomicU64 = AtomicU64::new(1);
        let node = format!(
            "{}-format{}",
            crate::command::ROOT_NODE,
            REPLACEMENTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        monitor
            .execute(
                "blockdev-add",
                Some(serde_json::json!({
                    "driver": crate::command::format_name(disk.format), "node-name": node,
                    "read-only": disk.read_only, "discard": "unmap",
                    "file": { "driver": "file", "filename": disk.path, "discard": "unmap" },
                })),
            )
            .await?;
        let reopened = monitor
            .execute(
                "blockdev-reopen",
                Some(serde_json::json!({ "options": [{
                    "driver": "raw", "node-name": crate::command::ROOT_NODE,
                    "read-only": disk.read_only, "discard": "unmap", "file": node,
                }]})),
            )
            .await;
        drop_node_on_error(&mut monitor, &node, reopened).await
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

/// What a QMP command that uses block node `node` (just added) returned; on an error
/// the node is deleted again, so that a failed hot-plug or root swap leaves nothing open.
async fn drop_node_on_error<T>(
    monitor: &mut QmpClient,
    node: &str,
    result: Result<T, VmError>,
) -> Result<(), VmError> {
    if let Err(error) = result {
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
