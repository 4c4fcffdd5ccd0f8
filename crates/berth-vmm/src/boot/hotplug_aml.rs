//! The DSDT's part in PCI hot-plug: ACPI code that turns the hot-plug controller's
//! registers (`devices::hotplug`) into the notifications Linux's ACPI PCI hot-plug
//! driver (acpiphp, built into Debian's kernel) acts on. The same scheme as QEMU's and
//! cloud-hypervisor's; in ASL:
//!
//! ```text
//! Device (\_SB_.GED_) {                  // Generic Event Device (hardware-reduced ACPI)
//!     Name (_HID, "ACPI0013")
//!     Name (_CRS, ResourceTemplate () { Interrupt (Consumer, Edge, ActiveHigh) { 5 } })
//!     Method (_EVT, 1, Serialized) { \_SB_.PCI0.PCNT () }
//! }
//! // inside \_SB_.PCI0:
//! OperationRegion (PCST, SystemMemory, 0xfe000000, 0x10)
//! Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32 }
//! Method (PCNT, 0, Serialized) {
//!     Local0 = PCIU; Local1 = PCID          // both cleared by the read
//!     If (Local0 & (1 << n)) { Notify (Snnn, 1) }    // device check: scan slot n
//!     If (Local1 & (1 << n)) { Notify (Snnn, 3) }    // eject request: let it go
//! }
//! Device (Snnn) {                         // n = 1..31; slot 0 is the host bridge
//!     Name (_ADR, n << 16); Name (_SUN, n)
//!     Method (_EJ0, 1) { B0EJ = 1 << n }  // the guest has let go of the function
//! }
//! ```
//!
//! Every slot is described, present or not: acpiphp only watches slots it finds in the
//! namespace, and only those with `_EJ0` count as ejectable.

use acpi_tables::aml::{
    And, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt,
    Local, Method, MethodCall, Name, NotEqual, Notify, OpRegion, OpRegionSpace, Path,
    ResourceTemplate, Store,
};
use acpi_tables::{Aml, AmlSink};

use crate::devices::hotplug::{HOTPLUG_GSI, REG_ADDED, REG_EJECT, REG_REMOVING};
use crate::layout::{HOTPLUG_SIZE, HOTPLUG_START};

/// Slots the guest may see functions come and go in.
const SLOTS: std::ops::RangeInclusive<u8> = 1..=31;
/// `Notify` values (ACPI 6.5, table 5.166).
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;

fn slot_path(slot: u8) -> Path {
    Path::new(&format!("\\_SB_.PCI0.S{slot:03}"))
}

/// The Generic Event Device whose interrupt runs `\_SB_.PCI0.PCNT`.
pub struct GenericEventDevice;

impl Aml for GenericEventDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = Name::new("_HID".into(), &"ACPI0013");
        let uid = Name::new("_UID".into(), &0u8);
        let interrupt = Interrupt::new(true, true, false, false, HOTPLUG_GSI);
        let resources = ResourceTemplate::new(vec![&interrupt]);
        let crs = Name::new("_CRS".into(), &resources);
        let scan = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
        let event = Method::new("_EVT".into(), 1, true, vec![&scan]);
        Device::new("_SB_.GED_".into(), vec![&hid, &uid, &crs, &event]).to_aml_bytes(sink);
    }
}

/// One `If` per slot: notify slot n with `kind` when bit n of `Local(bits)` is set.
struct NotifySlots {
    bits: u8,
    kind: u8,
}

impl Aml for NotifySlots {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let bits = Local(self.bits);
        let scratch = Local(2);
        let zero = 0u8;
        for slot in SLOTS {
            let mask = 1u32 << slot;
            let masked = And::new(&scratch, &bits, &mask);
            let set = NotEqual::new(&masked, &zero);
            let target = slot_path(slot);
            let notify = Notify::new(&target, &self.kind);
            If::new(&set, vec![&notify]).to_aml_bytes(sink);
        }
    }
}

/// `Device (Snnn)` of one slot, with its `_EJ0`.
struct Slot(u8);

impl Aml for Slot {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let slot = self.0;
        let address = u32::from(slot) << 16;
        let adr = Name::new("_ADR".into(), &address);
        let sun = Name::new("_SUN".into(), &slot);
        let bit = 1u32 << slot;
        let register = Path::new("\\_SB_.PCI0.B0EJ");
        let eject = Store::new(&register, &bit);
        let ej0 = Method::new("_EJ0".into(), 1, false, vec![&eject]);
        Device::new(
            format!("S{slot:03}").as_str().into(),
            vec![&adr, &sun, &ej0],
        )
        .to_aml_bytes(sink);
    }
}

/// What goes inside `\_SB_.PCI0`: the controller's registers, `PCNT` and every slot.
pub struct HostBridgeHotplug;

impl Aml for HostBridgeHotplug {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let start = HOTPLUG_START as u32;
        let size = HOTPLUG_SIZE as u32;
        OpRegion::new("PCST".into(), OpRegionSpace::SystemMemory, &start, &size).to_aml_bytes(sink);
        debug_assert_eq!((REG_ADDED, REG_REMOVING, REG_EJECT), (0, 4, 8));
        Field::new(
            "PCST".into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            vec![
                FieldEntry::Named(*b"PCIU", 32),
                FieldEntry::Named(*b"PCID", 32),
                FieldEntry::Named(*b"B0EJ", 32),
            ],
        )
        .to_aml_bytes(sink);
        let (added, removing) = (Path::new("PCIU"), Path::new("PCID"));
        let read_added = Store::new(&Local(0), &added);
        let read_removing = Store::new(&Local(1), &removing);
        let checks = NotifySlots {
            bits: 0,
            kind: DEVICE_CHECK,
        };
        let ejects = NotifySlots {
            bits: 1,
            kind: EJECT_REQUEST,
        };
        Method::new(
            "PCNT".into(),
            0,
            true,
            vec![&read_added, &read_removing, &checks, &ejects],
        )
        .to_aml_bytes(sink);
        for slot in SLOTS {
            Slot(slot).to_aml_bytes(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
        let mut bytes = Vec::new();
        aml.to_aml_bytes(&mut bytes);
        bytes
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn every_slot_is_described_and_notified() {
        let bridge = bytes_of(&HostBridgeHotplug);
        for slot in SLOTS {
            let name = format!("S{slot:03}");
            // The device, and a Notify of it for each kind (paths in PCNT).
            assert_eq!(count(&bridge, name.as_bytes()), 3, "{name}");
        }
        assert_eq!(count(&bridge, b"S000"), 0, "slot 0 is the host bridge");
        assert_eq!(count(&bridge, b"_EJ0"), SLOTS.count());
        for register in [b"PCIU", b"PCID", b"B0EJ"] {
            assert!(count(&bridge, register) >= 2, "{register:?}");
        }
        let start = (HOTPLUG_START as u32).to_le_bytes();
        assert_eq!(count(&bridge, &start), 1);
        let ged = bytes_of(&GenericEventDevice);
        assert_eq!(count(&ged, b"ACPI0013"), 1);
        assert_eq!(count(&ged, b"_EVT"), 1);
        assert_eq!(count(&ged, b"PCNT"), 1);
    }
}
