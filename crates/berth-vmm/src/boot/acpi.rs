//! ACPI tables: how the kernel learns its CPUs, LAPICs and IOAPIC, and how it powers off.
//!
//! Debian's kernel is built without MP-table parsing (`CONFIG_X86_MPPARSE` is off), so
//! without ACPI it finds no local APIC and can use no MSI. The tables (made with
//! rust-vmm's `acpi_tables`) are the smallest set that gives it both:
//!
//! ```text
//! 0xe_0000  RSDP -> XSDT -> FADT, MADT
//! 0xe_0100  FADT  hardware-reduced ACPI; sleep control register = port 0x3c0,
//!                 reset register = port 0x64 value 0xfe (the i8042 reset)
//! 0xe_0300  MADT  a local APIC per vCPU (APIC id = index), the IOAPIC (GSI base 0)
//! 0xe_0800  DSDT  `_S5_` (soft-off, so that the kernel offers power-off), the PCI
//!                 host bridge `\_SB_.PCI0` (bus 0, its ports and MMIO window, its
//!                 hot-pluggable slots) and the Generic Event Device that tells the guest
//!                 of hot-plug (see `hotplug_aml`)
//! ```
//!
//! The kernel enumerates bus 0 itself (see `devices::pci`); functions interrupt by
//! MSI-X only, so there is no interrupt routing (`_PRT`) to describe. Power-off is the
//! kernel writing SLP_TYP(5) | SLP_EN to the sleep control port, which ends the VM.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{self, AccessSize, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::IntoBytes;

use super::hotplug_aml::{GenericEventDevice, HostBridgeHotplug};
use crate::layout::{APIC_START, IOAPIC_START, PCI_MMIO_END, PCI_MMIO_START};
use crate::VmmError;

pub const RSDP_START: u64 = 0xe_0000;
const XSDT_START: u64 = 0xe_0040;
const FADT_START: u64 = 0xe_0100;
const MADT_START: u64 = 0xe_0300;
const DSDT_START: u64 = 0xe_0800;
/// The end of the area the tables may use (it is reserved in the e820 map).
pub const ACPI_END: u64 = 0x10_0000;

/// The port of the FADT's sleep control register.
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// SLP_EN in the sleep control register: the guest enters the sleep state it wrote.
pub const SLEEP_ENABLE: u8 = 1 << 5;
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

const OEM_ID: [u8; 6] = *b"BERTH ";
const OEM_TABLE_ID: [u8; 8] = *b"BERTHVMM";
const OEM_REVISION: u32 = 1;

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB_.PCI0`: bus 0 behind configuration mechanism #1, with the I/O ports around it
/// and the MMIO gap up to the hot-plug registers as its windows, and its slots. No
/// `_PRT`: every function interrupts by MSI-X.
struct PciHostBridge;

impl Aml for PciHostBridge {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let zero: u8 = 0;
        let bus = AddressSpace::<u16>::new_bus_number(0, 0);
        let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
        let io_below = AddressSpace::<u16>::new_io(0, 0xcf7, None);
        let io_above = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
        let mmio = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO_START as u32,
            PCI_MMIO_END as u32,
            None,
        );
        let resources =
            ResourceTemplate::new(vec![&bus, &config_ports, &io_below, &io_above, &mmio]);
        let hid = EISAName::new("PNP0A03");
        let hid_name = Name::new("_HID".into(), &hid);
        let uid = Name::new("_UID".into(), &zero);
        let segment = Name::new("_SEG".into(), &zero);
        let base_bus = Name::new("_BBN".into(), &zero);
        let crs = Name::new("_CRS".into(), &resources);
        Device::new(
            "_SB_.PCI0".into(),
            vec![
                &hid_name,
                &uid,
                &segment,
                &base_bus,
                &crs,
                &HostBridgeHotplug,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// The tables for `vcpus` CPUs, each with the address it is written at.
pub fn build(vcpus: u8) -> Vec<(u64, Vec<u8>)> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let soft_off: u8 = 5;
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&soft_off]));
    dsdt.append_slice(&bytes_of(&s5));
    dsdt.append_slice(&bytes_of(&PciHostBridge));
    dsdt.append_slice(&bytes_of(&GenericEventDevice));

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(DSDT_START);
    let port = |address: u16| {
        GAS::new(
            gas::AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(address),
        )
    };
    fadt.sleep_control_reg = port(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = port(SLEEP_CONTROL_PORT);
    fadt.reset_reg = port(I8042_COMMAND_PORT);
    fadt.reset_value = I8042_RESET;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"BERTHVMM").into();
    let fadt = fadt.finalize();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, IOAPIC_START as u32, 0));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(FADT_START);
    xsdt.add_entry(MADT_START);
    let rsdp = Rsdp::new(OEM_ID, XSDT_START);

    vec![
        (RSDP_START, rsdp.as_bytes().to_vec()),
        (XSDT_START, bytes_of(&xsdt)),
        (FADT_START, bytes_of(&fadt)),
        (MADT_START, bytes_of(&madt)),
        (DSDT_START, dsdt.as_slice().to_vec()),
    ]
}

/// Writes the tables; returns the RSDP's address for the zero page.
pub fn write(memory: &GuestMemoryMmap, vcpus: u8) -> Result<u64, VmmError> {
    let tables = build(vcpus);
    for (index, (address, bytes)) in tables.iter().enumerate() {
        let limit = tables
            .get(index + 1)
            .map(|(next, _)| *next)
            .unwrap_or(ACPI_END);
        if address + bytes.len() as u64 > limit {
            return Err(VmmError::Boot(format!(
                "ACPI table at {address:#x} ({} bytes) overlaps the next one",
                bytes.len()
            )));
        }
        memory
            .write_slice(bytes, GuestAddress(*address))
            .map_err(|e| VmmError::Boot(format!("writing ACPI tables: {e}")))?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let tables = build(4);
        let (_, rsdp) = &tables[0];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]));
        assert_eq!(
            u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
            XSDT_START
        );
        for (_, table) in &tables[1..] {
            let length = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(length, table.len(), "{:?}", &table[..4]);
            assert!(sums_to_zero(table), "{:?}", &table[..4]);
        }
        let madt = &tables[3].1;
        assert_eq!(&madt[..4], b"APIC");
        // Header (44) + 4 local APICs (8 each) + the IOAPIC (12).
        assert_eq!(madt.len(), 44 + 4 * 8 + 12);
        let dsdt = &tables[4].1;
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(8).any(|w| w == b"ACPI0013"));
        assert!(dsdt.windows(4).any(|w| w == b"S031"));
        let fadt = &tables[2].1;
        assert_eq!(&fadt[..4], b"FACP");
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            DSDT_START
        );
    }
}
