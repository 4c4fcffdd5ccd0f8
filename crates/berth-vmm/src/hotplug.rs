//! Hot-plug on a running [`Machine`]: disks and NICs added to bus 0 and taken off it,
//! as the control socket asks (see [`crate::control`]).
//!
//! The VMM never opens a disk or a tap once it runs (its system call filter forbids
//! it): the engine opens them and passes the descriptors on the control socket. A
//! device is put in its slot first and the guest told afterwards (the controller's
//! interrupt, see `devices::hotplug`); a removal only asks the guest, and the slot
//! empties when the guest ejects the function, which may take a moment or never happen
//! (a guest that ignores it keeps the device until the VM ends). The VMM's own devices
//! (the host bridge, the entropy device, the agent's console, the balloon) cannot be
//! added or removed.

use std::fs::File;
use std::sync::Arc;

use crate::config::DiskFormat;
use crate::devices::tap::Tap;
use crate::disk::qcow2::Qcow2Disk;
use crate::disk::raw::RawDisk;
use crate::disk::DiskImage;
use crate::machine::{lock, Machine};
use crate::virtio::block::{Block, BlockCounters};
use crate::virtio::net::{parse_mac, Net, NetCounters};
use crate::virtio::VirtioDevice;
use crate::vm::{add_virtio, AGENT_CONSOLE_SLOT, BALLOON_SLOT, RNG_SLOT};
use crate::VmmError;

/// Whether a hot-plugged device may use `slot`.
fn pluggable(slot: u8) -> bool {
    (1..=31).contains(&slot) && ![RNG_SLOT, AGENT_CONSOLE_SLOT, BALLOON_SLOT].contains(&slot)
}

impl Machine {
    /// Puts `device` in the empty `slot` and tells the guest.
    fn plug(&self, slot: u8, device: Box<dyn VirtioDevice>) -> Result<(), VmmError> {
        if !pluggable(slot) {
            return Err(VmmError::Device(format!(
                "PCI slot {slot} cannot take a hot-plugged device"
            )));
        }
        {
            let mut pci = lock(&self.devices.pci);
            if pci.occupied_slots().contains(&slot) {
                return Err(VmmError::SlotInUse(slot));
            }
            add_virtio(&mut pci, slot, device, &self.vm, &self.memory)?;
        }
        lock(&self.devices.hotplug).announce_added(slot);
        Ok(())
    }

    /// Hot-plugs the raw disk `file` in `slot`.
    pub fn add_disk(
        &self,
        slot: u8,
        file: File,
        read_only: bool,
        serial: Option<&str>,
    ) -> Result<(), VmmError> {
        let image = RawDisk::new(file).map_err(|e| VmmError::Device(format!("the disk: {e}")))?;
        let counters = Arc::new(BlockCounters::default());
        let block = Block::new(Box::new(image), read_only, serial, counters.clone());
        self.plug(slot, Box::new(block))?;
        lock(&self.block_counters).push(counters);
        Ok(())
    }

    /// Hot-plugs a NIC on the tap `tap` (opened with a virtio-net header) in `slot`.
    pub fn add_nic(&self, slot: u8, tap: File, mac: &str) -> Result<(), VmmError> {
        let mac =
            parse_mac(mac).ok_or_else(|| VmmError::Device(format!("bad MAC address {mac:?}")))?;
        let net = Net::new(Tap { file: tap }, mac, Arc::new(NetCounters::default()));
        self.plug(slot, Box::new(net))
    }

    /// Makes the disk in `slot` serve from `image` (over `backing`, for a qcow2 image
    /// with a backing file) from now on: how a clone restored ahead of demand takes a
    /// container's disk before its guest has read from the one it was restored with.
    pub fn replace_disk(
        &self,
        slot: u8,
        image: File,
        format: DiskFormat,
        backing: Option<File>,
    ) -> Result<(), VmmError> {
        let disk: Box<dyn DiskImage> = match format {
            DiskFormat::Raw if backing.is_some() => {
                return Err(VmmError::Device("a raw disk has no backing file".into()))
            }
            DiskFormat::Raw => Box::new(
                RawDisk::new(image).map_err(|e| VmmError::Device(format!("the disk: {e}")))?,
            ),
            DiskFormat::Qcow2 => Box::new(
                Qcow2Disk::open_over(image, false, backing)
                    .map_err(|e| VmmError::Device(format!("the disk: {e}")))?,
            ),
        };
        let mut pci = lock(&self.devices.pci);
        let function = pci
            .function_mut(slot)
            .ok_or_else(|| VmmError::Device(format!("PCI slot {slot} has no disk")))?;
        function.replace_disk(disk)
    }

    /// Asks the guest to let go of the function in `slot`.
    pub fn remove(&self, slot: u8) -> Result<(), VmmError> {
        if !pluggable(slot) || !lock(&self.devices.pci).occupied_slots().contains(&slot) {
            return Err(VmmError::Device(format!(
                "PCI slot {slot} has no removable device"
            )));
        }
        lock(&self.devices.hotplug).request_removal(slot);
        Ok(())
    }

    /// The slots with a function now.
    pub fn occupied_slots(&self) -> Vec<u8> {
        lock(&self.devices.pci).occupied_slots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_s_own_slots_are_not_pluggable() {
        assert!(!pluggable(0));
        assert!(!pluggable(RNG_SLOT));
        assert!(!pluggable(AGENT_CONSOLE_SLOT));
        assert!(!pluggable(BALLOON_SLOT));
        assert!(!pluggable(32));
        assert!(pluggable(berth_vm::FIRST_VOLUME_SLOT));
        assert!(pluggable(berth_vm::FIRST_NIC_SLOT + 1));
        assert!(pluggable(berth_vm::BASE_DISK_SLOT));
    }
}
