//! The guest's physical address space.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4 (identity map of 1 GiB)
//! 0x0000_0520  IDT (empty)              0x0000_a000  PDPT
//! 0x0000_7000  boot_params (zero page)  0x0000_b000  PD (2 MiB pages)
//! 0x0000_8ff0  boot stack top           0x0002_0000  kernel command line
//! 0x0009_fc00  end of low RAM (the EBDA would start here)
//! 0x000e_0000  ACPI tables (reserved to 1 MiB)
//! 0x0010_0000  kernel (bzImage protected-mode part); RAM up to the MMIO gap
//!              initramfs: at the top of RAM below the gap
//! 0xc000_0000  MMIO gap: PCI BARs (PCI_MMIO_START..PCI_MMIO_END), the PCI hot-plug
//!              registers 0xfe00_0000, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB, when the VM has more than the gap leaves below
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// PCI BARs are placed from here, each device in its own window.
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
pub const PCI_MMIO_WINDOW: u64 = 0x1_0000;
/// The last byte of the PCI host bridge's memory window (the guest may place BARs
/// anywhere in it).
pub const PCI_MMIO_END: u64 = HOTPLUG_START - 1;
/// The PCI hot-plug controller's registers (see `devices::hotplug`), outside the window.
pub const HOTPLUG_START: u64 = 0xfe00_0000;
pub const HOTPLUG_SIZE: u64 = 0x10;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) sits just below the BIOS area, inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The RAM ranges of a VM with `memory` bytes: below the gap, then above 4 GiB.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_GAP_START {
        vec![(0, memory)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, memory - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)]
        );
    }
}
