//! Direct Linux boot (the x86 64-bit boot protocol): the VMM loads the bzImage's
//! protected-mode kernel at 1 MiB, the initramfs at the top of low RAM, writes the
//! command line, the zero page (boot_params with the e820 map and the RSDP's address)
//! and the ACPI tables ([`acpi`]), and starts the boot vCPU in 64-bit mode at the
//! kernel's 64-bit entry point ([`cpu`]).
//!
//! Devices sit on PCI bus 0, which the kernel scans itself through configuration
//! mechanism #1 (ports 0xcf8/0xcfc, see `devices::pci`): Debian's kernel cannot take
//! virtio-mmio devices from its command line, and a scanned bus needs only its host
//! bridge described in ACPI, not each device. ACPI describes CPUs, interrupt
//! controllers, the host bridge and power-off.

pub mod acpi;
pub mod cpu;
pub mod hotplug_aml;

use std::fs::File;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::VmmError;

/// What the VMM always adds to the command line: reset through the keyboard controller
/// (which ends the VM), one legacy UART.
pub const VMM_CMDLINE: &str = "reboot=k panic=-1 8250.nr_uarts=1";

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub rip: u64,
}

/// Loads kernel, initramfs, command line, zero page and MP table into `memory`.
pub fn load(
    memory: &GuestMemoryMmap,
    memory_bytes: u64,
    vcpus: u8,
    kernel_path: &std::path::Path,
    initramfs_path: &std::path::Path,
    cmdline_text: &str,
) -> Result<BootEntry, VmmError> {
    let mut kernel = File::open(kernel_path).map_err(VmmError::io(kernel_path))?;
    let loaded = BzImage::load(memory, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| VmmError::Boot(format!("loading {}: {e}", kernel_path.display())))?;

    let initramfs = std::fs::read(initramfs_path).map_err(VmmError::io(initramfs_path))?;
    let low_ram_end = memory_bytes.min(MMIO_GAP_START);
    let initramfs_start = (low_ram_end - initramfs.len() as u64) & !0xfff;
    if initramfs_start < loaded.kernel_end {
        return Err(VmmError::Boot(format!(
            "{} MiB of RAM cannot hold the kernel and a {} byte initramfs",
            memory_bytes >> 20,
            initramfs.len()
        )));
    }
    memory
        .write_slice(&initramfs, GuestAddress(initramfs_start))
        .map_err(|e| VmmError::Boot(format!("writing the initramfs: {e}")))?;

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| VmmError::Boot(e.to_string()))?;
    cmdline
        .insert_str(cmdline_text)
        .and_then(|()| cmdline.insert_str(VMM_CMDLINE))
        .map_err(|e| VmmError::Boot(format!("kernel command line: {e}")))?;
    linux_loader::loader::load_cmdline(memory, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| VmmError::Boot(format!("writing the command line: {e}")))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(|e| VmmError::Boot(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(header) = loaded.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    params.hdr.ramdisk_image = initramfs_start as u32;
    params.hdr.ramdisk_size = initramfs.len() as u32;
    let rsdp = acpi::write(memory, vcpus)?;
    params.acpi_rsdp_addr = rsdp;
    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (
            acpi::RSDP_START,
            acpi::ACPI_END - acpi::RSDP_START,
            E820_RESERVED,
        ),
    ];
    for (start, size) in ram_ranges(memory_bytes) {
        if start == 0 {
            e820.push((HIMEM_START, size - HIMEM_START, E820_RAM));
        } else {
            e820.push((start, size, E820_RAM));
        }
    }
    for (index, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[index] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        memory,
    )
    .map_err(|e| VmmError::Boot(format!("writing boot_params: {e}")))?;

    // The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
    Ok(BootEntry {
        rip: loaded.kernel_load.0 + 0x200,
    })
}
