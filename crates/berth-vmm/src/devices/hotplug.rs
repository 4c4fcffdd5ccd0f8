//! The PCI hot-plug controller: how the guest learns that a function came or should go,
//! and how it says it let one go. ACPI drives it (the DSDT's `\_SB_.PCI0.PCNT` and the
//! slots' `_EJ0`, see `boot::hotplug_aml`), as QEMU's and cloud-hypervisor's do.
//!
//! Registers (MMIO at `layout::HOTPLUG_START`, 32-bit accesses, one bit per slot):
//!
//! ```text
//! 0x0  PCIU  read: slots with a function added since the last read (cleared by reading)
//! 0x4  PCID  read: slots whose function should be removed (cleared by reading)
//! 0x8  B0EJ  write: the guest ejected the functions in these slots
//! ```
//!
//! The controller raises its interrupt (the GED's, an edge on `HOTPLUG_GSI`) whenever it
//! sets a bit; the guest's `_EVT` reads both registers and notifies the slots (device
//! check for PCIU, eject request for PCID). Ejected slots are handed to the caller, which
//! takes the functions off the bus. Pending bits are not part of a snapshot: templates,
//! the only VMs snapshotted, are never hot-plugged.

use vmm_sys_util::eventfd::EventFd;

/// The IOAPIC pin of the controller's (the GED's) interrupt.
pub const HOTPLUG_GSI: u32 = 5;
/// Register offsets.
pub const REG_ADDED: u64 = 0x0;
pub const REG_REMOVING: u64 = 0x4;
pub const REG_EJECT: u64 = 0x8;

/// The controller's state.
pub struct PciHotplug {
    added: u32,
    removing: u32,
    interrupt: EventFd,
}

impl PciHotplug {
    /// A controller raising `interrupt` (an irqfd on [`HOTPLUG_GSI`]).
    pub fn new(interrupt: EventFd) -> Self {
        Self {
            added: 0,
            removing: 0,
            interrupt,
        }
    }

    /// Tells the guest a function is in `slot` now.
    pub fn announce_added(&mut self, slot: u8) {
        let bit = 1u32 << (slot & 31);
        self.added |= bit;
        self.removing &= !bit;
        let _ = self.interrupt.write(1);
    }

    /// Asks the guest to let go of the function in `slot` (it ejects it when done).
    pub fn request_removal(&mut self, slot: u8) {
        let bit = 1u32 << (slot & 31);
        self.removing |= bit;
        self.added &= !bit;
        let _ = self.interrupt.write(1);
    }

    /// A guest read at `offset`; anything but a whole register reads as zeros.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (REG_ADDED, 4) => std::mem::take(&mut self.added),
            (REG_REMOVING, 4) => std::mem::take(&mut self.removing),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len().min(4)]);
    }

    /// A guest write at `offset`; returns the slots it ejected (bit per slot).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        match (offset, data) {
            (REG_EJECT, [a, b, c, d]) => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(controller: &mut PciHotplug, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        controller.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn bits_are_read_once_and_each_change_interrupts() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut controller = PciHotplug::new(interrupt.try_clone().unwrap());
        controller.announce_added(9);
        controller.announce_added(16);
        assert_eq!(interrupt.read().unwrap(), 2);
        assert_eq!(read(&mut controller, REG_ADDED), (1 << 9) | (1 << 16));
        assert_eq!(read(&mut controller, REG_ADDED), 0, "cleared by reading");
        controller.request_removal(9);
        assert_eq!(read(&mut controller, REG_ADDED), 0);
        assert_eq!(read(&mut controller, REG_REMOVING), 1 << 9);
        assert_eq!(read(&mut controller, REG_REMOVING), 0);
        assert_eq!(
            controller.write(REG_EJECT, &(1u32 << 9).to_le_bytes()),
            1 << 9
        );
        // Odd sizes and offsets do nothing.
        assert_eq!(controller.write(REG_EJECT, &[1]), 0);
        assert_eq!(controller.write(REG_ADDED, &[1, 0, 0, 0]), 0);
        let mut byte = [0xffu8];
        controller.request_removal(3);
        controller.read(REG_REMOVING, &mut byte);
        assert_eq!(byte, [0]);
        assert_eq!(read(&mut controller, REG_REMOVING), 1 << 3);
    }

    #[test]
    fn a_later_change_of_mind_wins() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut controller = PciHotplug::new(interrupt);
        controller.request_removal(10);
        controller.announce_added(10);
        assert_eq!(read(&mut controller, REG_REMOVING), 0);
        assert_eq!(read(&mut controller, REG_ADDED), 1 << 10);
    }
}
