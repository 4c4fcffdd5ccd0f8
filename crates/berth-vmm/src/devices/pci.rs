//! PCI bus 0, reached through configuration mechanism #1, with a host bridge in slot 0
//! and Berth's virtio functions in the slots the engine chose.
//!
//! Config address register (port 0xcf8): bit 31 enable, bits 23-16 bus, 15-11 device,
//! 10-8 function, 7-2 register. Data: ports 0xcfc-0xcff, byte-addressed within the
//! selected dword. Absent functions read as all ones. Every function has one 64-bit
//! memory BAR (BAR0/BAR1) whose size is a power of two; the VMM places it at
//! `PCI_MMIO_START + slot * PCI_MMIO_WINDOW` and follows the guest if it moves it.

use crate::layout::{PCI_MMIO_START, PCI_MMIO_WINDOW};
use crate::snapshot::{PciFunctionState, TransportState};
use crate::VmmError;

const CONFIG_SPACE_SIZE: usize = 256;
const VENDOR_INTEL: u16 = 0x8086;
const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
pub const REG_COMMAND: usize = 0x04;
pub const REG_STATUS: usize = 0x06;
pub const REG_BAR0: usize = 0x10;
pub const REG_BAR1: usize = 0x14;
pub const REG_SUBSYSTEM_VENDOR: usize = 0x2c;
pub const REG_CAPABILITIES: usize = 0x34;
pub const STATUS_CAPABILITIES_LIST: u16 = 0x10;
const BAR_MEMORY_64: u32 = 0x4;

/// A function on the bus.
pub trait PciFunction: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A write to configuration space that is not the command register or a BAR
    /// (capabilities, e.g. the MSI-X enable bit). `offset` is a byte offset.
    fn config_write_other(&mut self, offset: usize, data: &[u8]) {
        let _ = (offset, data);
    }
    /// A read of `data.len()` bytes at `offset` within BAR0.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, offset: u64, data: &[u8]);
    /// Beyond configuration space, what a snapshot must keep (virtio functions).
    fn save(&mut self) -> Result<Option<TransportState>, VmmError> {
        Ok(None)
    }
    /// Takes back what `save` returned (configuration space is already restored).
    fn restore(&mut self, state: Option<TransportState>) -> Result<(), VmmError> {
        let _ = state;
        Ok(())
    }
    /// Serves a disk function's requests from `disk` from now on.
    fn replace_disk(&mut self, disk: Box<dyn crate::disk::DiskImage>) -> Result<(), VmmError> {
        let _ = disk;
        Err(VmmError::Device("the function has no disk".into()))
    }
}

/// The 256 bytes of a type-0 header, with BAR0 as a 64-bit memory BAR of `bar_size`.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    bar_size: u64,
    bar_address: u64,
}

impl ConfigSpace {
    /// A header with identity and class; `bar_size` 0 means no BAR.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, bar_size: u64) -> Self {
        let mut config = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            bar_size,
            bar_address: 0,
        };
        config.set_u16(0, vendor);
        config.set_u16(2, device);
        config.bytes[8] = revision;
        config.bytes[9] = (class & 0xff) as u8;
        config.bytes[10] = ((class >> 8) & 0xff) as u8;
        config.bytes[11] = ((class >> 16) & 0xff) as u8;
        config
    }

    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_bytes(&mut self, offset: usize, value: &[u8]) {
        self.bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// Where BAR0 is now (0: not placed), and its size.
    pub fn bar(&self) -> (u64, u64) {
        (self.bar_address, self.bar_size)
    }

    /// The header's bytes and BAR0's address, for a snapshot.
    pub fn record(&self) -> (Vec<u8>, u64) {
        (self.bytes.to_vec(), self.bar_address)
    }

    /// Takes back a [`Self::record`] of a function of the same kind.
    pub fn restore(&mut self, bytes: &[u8], bar_address: u64) -> Result<(), VmmError> {
        if bytes.len() != CONFIG_SPACE_SIZE || bytes[..4] != self.bytes[..4] {
            return Err(VmmError::Snapshot(
                "a PCI function's saved identity differs from this VM's".into(),
            ));
        }
        self.bytes.copy_from_slice(bytes);
        self.set_bar_address(bar_address);
        Ok(())
    }

    pub fn set_bar_address(&mut self, address: u64) {
        self.bar_address = address & !(self.bar_size.saturating_sub(1));
    }

    fn dword(&self, register: usize) -> u32 {
        match register {
            REG_BAR0 if self.bar_size > 0 => (self.bar_address as u32) | BAR_MEMORY_64,
            REG_BAR1 if self.bar_size > 0 => (self.bar_address >> 32) as u32,
            _ => u32::from_le_bytes(self.bytes[register..register + 4].try_into().unwrap()),
        }
    }

    /// Reads `data.len()` bytes at byte `offset` (within one dword).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let register = offset & !3;
        if register + 4 > CONFIG_SPACE_SIZE {
            data.fill(0xff);
            return;
        }
        let bytes = self.dword(register).to_le_bytes();
        let start = offset & 3;
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(start + index).copied().unwrap_or(0xff);
        }
    }

    /// Applies a write to the command register or a BAR; returns false for others.
    fn write_standard(&mut self, offset: usize, data: &[u8]) -> bool {
        let register = offset & !3;
        match register {
            REG_COMMAND if offset == REG_COMMAND && data.len() >= 2 => {
                self.bytes[REG_COMMAND] = data[0];
                self.bytes[REG_COMMAND + 1] = data[1] & 0x07;
                true
            }
            REG_BAR0 | REG_BAR1 if self.bar_size > 0 => {
                let mut bytes = self.dword(register).to_le_bytes();
                let start = offset & 3;
                for (index, byte) in data.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(start + index) {
                        *slot = *byte;
                    }
                }
                let value = u64::from(u32::from_le_bytes(bytes));
                let address = if register == REG_BAR0 {
                    (self.bar_address & !0xffff_ffff) | (value & !0xf)
                } else {
                    (self.bar_address & 0xffff_ffff) | (value << 32)
                };
                self.set_bar_address(address);
                true
            }
            REG_BAR0..=0x24 | 0x30 => true, // other BARs and the ROM BAR: none
            _ => register < 0x40,
        }
    }
}

/// Slot 0: the host bridge the kernel's mechanism #1 probe looks for.
pub struct HostBridge(ConfigSpace);

impl HostBridge {
    pub fn new() -> Self {
        Self(ConfigSpace::new(
            VENDOR_INTEL,
            HOST_BRIDGE_DEVICE,
            CLASS_HOST_BRIDGE,
            0,
            0,
        ))
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// Bus 0.
pub struct PciRoot {
    address: u32,
    functions: Vec<(u8, Box<dyn PciFunction>)>,
}

impl PciRoot {
    pub fn new() -> Self {
        Self {
            address: 0,
            functions: vec![(0, Box::new(HostBridge::new()))],
        }
    }

    /// Puts `function` in `slot` and places its BAR in the slot's MMIO window.
    pub fn add(&mut self, slot: u8, mut function: Box<dyn PciFunction>) {
        let (_, size) = function.config().bar();
        if size > 0 {
            debug_assert!(size <= PCI_MMIO_WINDOW);
            function
                .config_mut()
                .set_bar_address(PCI_MMIO_START + u64::from(slot) * PCI_MMIO_WINDOW);
        }
        self.functions.retain(|(existing, _)| *existing != slot);
        self.functions.push((slot, function));
    }

    /// Takes the function out of `slot` (never the host bridge's).
    pub fn remove(&mut self, slot: u8) -> Option<Box<dyn PciFunction>> {
        let index = self
            .functions
            .iter()
            .position(|(existing, _)| *existing == slot && slot != 0)?;
        Some(self.functions.remove(index).1)
    }

    /// The function in `slot`, if there is one.
    pub fn function_mut(&mut self, slot: u8) -> Option<&mut dyn PciFunction> {
        self.functions
            .iter_mut()
            .find(|(existing, _)| *existing == slot)
            .map(|(_, function)| &mut **function as &mut dyn PciFunction)
    }

    /// The slots that have a function, in order.
    pub fn occupied_slots(&self) -> Vec<u8> {
        let mut slots: Vec<u8> = self.functions.iter().map(|(slot, _)| *slot).collect();
        slots.sort_unstable();
        slots
    }

    fn selected(&mut self) -> Option<(&mut Box<dyn PciFunction>, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) & 0xff;
        let slot = ((self.address >> 11) & 0x1f) as u8;
        let function = (self.address >> 8) & 0x7;
        let register = (self.address & 0xfc) as usize;
        if bus != 0 || function != 0 {
            return None;
        }
        self.functions
            .iter_mut()
            .find(|(existing, _)| *existing == slot)
            .map(|(_, function)| (function, register))
    }

    /// Every function's state, in slot order.
    pub fn save(&mut self) -> Result<Vec<PciFunctionState>, VmmError> {
        let mut states = Vec::new();
        for (slot, function) in &mut self.functions {
            let (config, bar_address) = function.config().record();
            states.push(PciFunctionState {
                slot: *slot,
                config,
                bar_address,
                transport: function.save()?,
            });
        }
        states.sort_by_key(|state| state.slot);
        Ok(states)
    }

    /// Restores [`Self::save`]'s states into functions in the same slots.
    pub fn restore(&mut self, states: Vec<PciFunctionState>) -> Result<(), VmmError> {
        if states.len() != self.functions.len() {
            return Err(VmmError::Snapshot(format!(
                "the snapshot has {} PCI functions, this VM {}",
                states.len(),
                self.functions.len()
            )));
        }
        for state in states {
            let function = self
                .functions
                .iter_mut()
                .find(|(slot, _)| *slot == state.slot)
                .map(|(_, function)| function)
                .ok_or_else(|| {
                    VmmError::Snapshot(format!(
                        "this VM has no PCI function in slot {}",
                        state.slot
                    ))
                })?;
            function
                .config_mut()
                .restore(&state.config, state.bar_address)?;
            function.restore(state.transport)?;
        }
        Ok(())
    }

    /// A read of ports 0xcf8 + `offset`.
    pub fn config_io_read(&mut self, offset: u16, data: &mut [u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        let byte = (offset - 4) as usize;
        match self.selected() {
            Some((function, register)) => function.config().read(register + byte, data),
            None => data.fill(0xff),
        }
    }

    /// A write to ports 0xcf8 + `offset`.
    pub fn config_io_write(&mut self, offset: u16, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = u32::from_le_bytes(data.try_into().unwrap());
            }
            return;
        }
        let byte = (offset - 4) as usize;
        if let Some((function, register)) = self.selected() {
            let at = register + byte;
            if !function.config_mut().write_standard(at, data) {
                function.config_write_other(at, data);
            }
        }
    }

    fn function_at(&mut self, address: u64) -> Option<(&mut Box<dyn PciFunction>, u64)> {
        self.functions.iter_mut().find_map(|(_, function)| {
            let (base, size) = function.config().bar();
            // `then`, not `then_some`: the offset is only computed inside the BAR.
            (size > 0 && base != 0 && address >= base && address < base + size)
                .then(move || (function, address - base))
        })
    }

    /// An MMIO read; false when no BAR covers `address`.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) -> bool {
        match self.function_at(address) {
            Some((function, offset)) => {
                function.bar_read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool {
        match self.function_at(address) {
            Some((function, offset)) => {
                function.bar_write(offset, data);
                true
            }
            None => false,
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(root: &mut PciRoot, slot: u8, register: u32) {
        let address = 0x8000_0000 | (u32::from(slot) << 11) | register;
        root.config_io_write(0, &address.to_le_bytes());
    }

    fn read32(root: &mut PciRoot) -> u32 {
        let mut data = [0u8; 4];
        root.config_io_read(4, &mut data);
        u32::from_le_bytes(data)
    }

    struct Dummy(ConfigSpace, Vec<(u64, Vec<u8>)>);
    impl PciFunction for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.0
        }
        fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, offset: u64, data: &[u8]) {
            self.1.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn host_bridge_answers_and_empty_slots_read_all_ones() {
        let mut root = PciRoot::new();
        select(&mut root, 0, 0);
        assert_eq!(read32(&mut root), 0x0d57_8086);
        select(&mut root, 0, 8);
        assert_eq!(read32(&mut root) >> 8, 0x06_00_00);
        select(&mut root, 3, 0);
        assert_eq!(read32(&mut root), 0xffff_ffff);
    }

    #[test]
    fn functions_come_and_go_but_the_host_bridge_stays() {
        let mut root = PciRoot::new();
        let dummy = || {
            Box::new(Dummy(
                ConfigSpace::new(0x1af4, 0x1042, 0x018000, 1, 0x8000),
                vec![],
            ))
        };
        root.add(9, dummy());
        root.add(4, dummy());
        assert_eq!(root.occupied_slots(), vec![0, 4, 9]);
        select(&mut root, 9, 0);
        assert_eq!(read32(&mut root), 0x1042_1af4);
        assert!(root.remove(9).is_some());
        assert!(root.remove(9).is_none());
        assert!(root.remove(0).is_none());
        assert_eq!(read32(&mut root), 0xffff_ffff, "an empty slot again");
        assert_eq!(root.occupied_slots(), vec![0, 4]);
    }

    #[test]
    fn bar_sizing_and_moving_follow_the_protocol() {
        let mut root = PciRoot::new();
        root.add(
            2,
            Box::new(Dummy(
                ConfigSpace::new(0x1af4, 0x1043, 0x078000, 1, 0x8000),
                vec![],
            )),
        );
        select(&mut root, 2, REG_BAR0 as u32);
        let placed = read32(&mut root);
        assert_eq!(placed as u64 & !0xf, PCI_MMIO_START + 2 * PCI_MMIO_WINDOW);
        assert_eq!(placed & 0xf, BAR_MEMORY_64);
        // Sizing: all ones in, size mask out.
        root.config_io_write(4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&mut root), !(0x8000 - 1) | BAR_MEMORY_64);
        select(&mut root, 2, REG_BAR1 as u32);
        root.config_io_write(4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&mut root), u32::MAX);
        // The guest places it somewhere else; MMIO follows.
        root.config_io_write(4, &0u32.to_le_bytes());
        select(&mut root, 2, REG_BAR0 as u32);
        root.config_io_write(4, &0xd000_0000u32.to_le_bytes());
        let mut data = [0u8; 2];
        assert!(root.mmio_read(0xd000_0010, &mut data));
        assert_eq!(data, [0x10, 0x10]);
        assert!(!root.mmio_read(PCI_MMIO_START + 2 * PCI_MMIO_WINDOW, &mut data));
        assert!(root.mmio_write(0xd000_7ffc, &[1, 2, 3, 4]));
        assert!(!root.mmio_write(0xd000_8000, &[1]));
    }
}
