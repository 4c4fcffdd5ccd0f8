//! MSI-X for a virtio function: the vector table and pending bits in its BAR, and the
//! delivery of a vector's message through KVM (`KVM_SIGNAL_MSI`, no routing table).
//!
//! Table entry (16 bytes): message address low, high, data, vector control (bit 0:
//! masked). A vector that is masked, or whose function is masked or has MSI-X disabled,
//! is held pending and delivered when it is unmasked, as the PCI spec requires.

use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

/// How many undelivered interrupts [`deliver`] reports before it goes quiet.
const REPORTED_FAILURES: u32 = 20;
static FAILURES: AtomicU32 = AtomicU32::new(0);

/// Sends `message` to the guest (`KVM_SIGNAL_MSI`). An interrupt KVM did not deliver is
/// lost: a driver that waits for it (an idle agent waiting for the host's next request)
/// may wait for good. That is reported on the VMM's stderr (its log), the first
/// [`REPORTED_FAILURES`] times, so that a guest that stops answering can be told apart.
pub fn deliver(vm: &VmFd, message: kvm_msi) {
    let outcome = vm.signal_msi(message);
    // 0: the guest blocked it (its local APIC is off); an error: KVM refused it.
    let problem = match outcome {
        Ok(0) => "the guest blocked it".to_owned(),
        Ok(_) => return,
        Err(error) => error.to_string(),
    };
    if FAILURES.fetch_add(1, Ordering::Relaxed) < REPORTED_FAILURES {
        eprintln!(
            "berth vmm: an interrupt (MSI address {:#x}, data {:#x}) was not delivered: {problem}",
            message.address_lo, message.data
        );
    }
}

/// The virtio "no vector" value.
pub const NO_VECTOR: u16 = 0xffff;

/// The table, the pending bits and the capability's control bits.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<[u32; 4]>,
    pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

impl MsixTable {
    pub fn new(vectors: u16) -> Self {
        Self {
            // Vectors start masked.
            entries: vec![[0, 0, 0, 1]; usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
            enabled: false,
            function_masked: false,
        }
    }

    pub fn record(&self) -> crate::snapshot::MsixRecord {
        crate::snapshot::MsixRecord {
            entries: self.entries.clone(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Takes a saved table of the same size.
    pub fn restore(&mut self, record: &crate::snapshot::MsixRecord) -> Result<(), crate::VmmError> {
        if record.entries.len() != self.entries.len() || record.pending.len() != self.pending.len()
        {
            return Err(crate::VmmError::Snapshot(format!(
                "an MSI-X table of {} vectors cannot take {}",
                self.entries.len(),
                record.entries.len()
            )));
        }
        self.entries = record.entries.clone();
        self.pending = record.pending.clone();
        self.enabled = record.enabled;
        self.function_masked = record.function_masked;
        Ok(())
    }

    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A read within the table (`offset` from its start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let index = (offset / 16) as usize;
        let field = ((offset % 16) / 4) as usize;
        let Some(entry) = self.entries.get(index) else {
            data.fill(0);
            return;
        };
        let bytes = entry[field].to_le_bytes();
        let start = (offset % 4) as usize;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// A write within the table; returns messages that unmasking made deliverable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<kvm_msi> {
        let index = (offset / 16) as usize;
        let field = ((offset % 16) / 4) as usize;
        let start = (offset % 4) as usize;
        let Some(entry) = self.entries.get_mut(index) else {
            return Vec::new();
        };
        let mut bytes = entry[field].to_le_bytes();
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(start + i) {
                *slot = *byte;
            }
        }
        entry[field] = u32::from_le_bytes(bytes);
        // A 64-bit write covers the next field too.
        if data.len() == 8 && start == 0 && field < 3 {
            entry[field + 1] = u32::from_le_bytes(data[4..8].try_into().unwrap());
        }
        self.deliverable_pending()
    }

    /// A read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *byte = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }

    /// Sets enable and function mask; returns messages that became deliverable.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) -> Vec<kvm_msi> {
        self.enabled = enabled;
        self.function_masked = function_masked;
        self.deliverable_pending()
    }

    fn message(&self, vector: usize) -> kvm_msi {
        let entry = self.entries[vector];
        kvm_msi {
            address_lo: entry[0],
            address_hi: entry[1],
            data: entry[2],
            ..Default::default()
        }
    }

    fn deliverable(&self, vector: usize) -> bool {
        self.enabled && !self.function_masked && self.entries[vector][3] & 1 == 0
    }

    fn deliverable_pending(&mut self) -> Vec<kvm_msi> {
        let mut messages = Vec::new();
        for vector in 0..self.entries.len() {
            if self.pending[vector] && self.deliverable(vector) {
                self.pending[vector] = false;
                messages.push(self.message(vector));
            }
        }
        messages
    }

    /// Raises `vector`: its message if it can be delivered now, else it is held pending.
    /// Vectors out of range (the guest chose them) are ignored.
    pub fn trigger(&mut self, vector: u16) -> Option<kvm_msi> {
        let vector = usize::from(vector);
        if vector >= self.entries.len() {
            return None;
        }
        if self.deliverable(vector) {
            Some(self.message(vector))
        } else {
            self.pending[vector] = true;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_vectors_are_held_and_delivered_on_unmask() {
        let mut table = MsixTable::new(2);
        table.write_table(16, &0xfee0_0000u32.to_le_bytes());
        table.write_table(24, &0x4021u32.to_le_bytes());
        assert!(table.trigger(1).is_none(), "disabled and masked");
        assert!(table.set_control(true, false).is_empty(), "still masked");
        let mut pba = [0u8];
        table.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        let released = table.write_table(28, &0u32.to_le_bytes());
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].address_lo, 0xfee0_0000);
        assert_eq!(released[0].data, 0x4021);
        let message = table.trigger(1).expect("unmasked and enabled");
        assert_eq!(message.data, 0x4021);
        assert!(table.trigger(7).is_none(), "out of range");
        let mut data = [0u8; 4];
        table.read_table(24, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x4021);
    }
}
