//! The VM's devices and how guest port and MMIO accesses reach them.
//!
//! Ports: the 16550 UART at 0x3f8 ([`serial`]), the keyboard controller's reset line at
//! 0x64 ([`i8042`]), the CMOS clock at 0x70-0x71 ([`rtc`]), the ACPI sleep control register at 0x3c0 (power-off), PCI
//! configuration mechanism #1 at 0xcf8-0xcff ([`pci`]). MMIO: the PCI hot-plug
//! controller's registers ([`hotplug`]) and the BARs of the PCI functions, wherever the
//! guest placed them. A slot the guest ejects through the controller is emptied here. Other ports read as all
//! ones and ignore writes, as on an empty ISA bus; the PIC, PIT and IOAPIC are KVM's.

pub mod hotplug;
pub mod i8042;
pub mod pci;
pub mod rtc;
pub mod serial;
pub mod tap;

use std::sync::Mutex;

use crate::boot::acpi::{SLEEP_CONTROL_PORT, SLEEP_ENABLE};
use crate::layout::{HOTPLUG_SIZE, HOTPLUG_START};
use hotplug::PciHotplug;
use pci::PciRoot;
use rtc::CmosRtc;
use serial::SerialPort;

const SERIAL_PORT: u16 = 0x3f8;
const SERIAL_PORT_END: u16 = 0x400;
const I8042_DATA: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;
const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
const PCI_CONFIG_END: u16 = 0xd00;

/// The guest asked to end the VM: a reset (reboot, panic) or an ACPI power-off. Both
/// end a Berth VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetRequest {
    Reset,
    PowerOff,
}

/// Every device of one VM.
pub struct Devices {
    pub serial: Mutex<SerialPort>,
    pub i8042: i8042::ResetLine,
    pub rtc: Mutex<CmosRtc>,
    pub pci: Mutex<PciRoot>,
    pub hotplug: Mutex<PciHotplug>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A device whose lock holder panicked keeps its last state; the VM goes on.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Devices {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            SERIAL_PORT..SERIAL_PORT_END if data.len() == 1 => {
                data[0] = lock(&self.serial).read((port - SERIAL_PORT) as u8);
            }
            I8042_DATA | I8042_COMMAND => data.fill(0),
            rtc::INDEX_PORT | rtc::DATA_PORT if data.len() == 1 => {
                data[0] = lock(&self.rtc).read(port);
            }
            PCI_CONFIG_ADDRESS..PCI_CONFIG_END => {
                lock(&self.pci).config_io_read(port - PCI_CONFIG_ADDRESS, data)
            }
            _ => data.fill(0xff),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<ResetRequest> {
        match port {
            SERIAL_PORT..SERIAL_PORT_END if data.len() == 1 => {
                lock(&self.serial).write((port - SERIAL_PORT) as u8, data[0]);
            }
            I8042_COMMAND if data.len() == 1 => return self.i8042.command(data[0]),
            rtc::INDEX_PORT | rtc::DATA_PORT if data.len() == 1 => {
                lock(&self.rtc).write(port, data[0]);
            }
            SLEEP_CONTROL_PORT if data.len() == 1 && data[0] & SLEEP_ENABLE != 0 => {
                return Some(ResetRequest::PowerOff)
            }
            PCI_CONFIG_ADDRESS..PCI_CONFIG_END => {
                lock(&self.pci).config_io_write(port - PCI_CONFIG_ADDRESS, data)
            }
            _ => {}
        }
        None
    }

    pub fn mmio_read(&self, address: u64, data: &mut [u8]) {
        if (HOTPLUG_START..HOTPLUG_START + HOTPLUG_SIZE).contains(&address) {
            lock(&self.hotplug).read(address - HOTPLUG_START, data);
        } else if !lock(&self.pci).mmio_read(address, data) {
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, address: u64, data: &[u8]) {
        if (HOTPLUG_START..HOTPLUG_START + HOTPLUG_SIZE).contains(&address) {
            let ejected = lock(&self.hotplug).write(address - HOTPLUG_START, data);
            if ejected != 0 {
                let mut pci = lock(&self.pci);
                for slot in (0..32u8).filter(|slot| ejected & (1 << slot) != 0) {
                    // Dropping the function stops its device and closes its file.
                    drop(pci.remove(slot));
                }
            }
        } else {
            lock(&self.pci).mmio_write(address, data);
        }
    }
}
