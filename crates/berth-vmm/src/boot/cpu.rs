//! vCPU state for a direct 64-bit Linux boot, and the tables it needs in guest memory.
//!
//! Every vCPU gets CPUID (KVM's supported set, with its own APIC id and the hypervisor
//! bit), the MSRs a BIOS would leave (write-back MTRR default, fast strings), an FPU in
//! its reset state and a LAPIC whose LINT0 takes ExtINT and LINT1 NMI. The boot vCPU
//! also gets long mode: a flat GDT (code, data, TSS), page tables identity-mapping the
//! first GiB with 2 MiB pages, `rsi` pointing at the zero page and `rip` at the kernel's
//! 64-bit entry. The other vCPUs wait in KVM for the kernel's INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::VmmError;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// GDT entries: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff);
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit: limit as u32,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity-mapping page tables.
pub fn write_boot_tables(memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    let write = |value: u64, address: u64| {
        memory
            .write_obj(value, GuestAddress(address))
            .map_err(|e| VmmError::Boot(format!("writing boot tables: {e}")))
    };
    for (index, entry) in GDT.iter().enumerate() {
        write(*entry, GDT_START + index as u64 * 8)?;
    }
    write(0, IDT_START)?;
    write(PDPTE_START | 0x03, PML4_START)?;
    write(PDE_START | 0x03, PDPTE_START)?;
    for index in 0..512u64 {
        // Present, writable, 2 MiB page.
        write((index << 21) | 0x83, PDE_START + index * 8)?;
    }
    Ok(())
}

/// CPUID for vCPU `index` of `count`.
pub fn cpuid_for(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // Initial APIC id and the logical processor count.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(index) << 24)
                    | (u32::from(count.max(1)) << 16);
                // The hypervisor bit, and the TSC deadline timer of KVM's LAPIC.
                entry.ecx |= (1 << 31) | (1 << 24);
                // KVM does not report the local APIC it emulates: the VMM says so.
                entry.edx |= 1 << 9;
                if count > 1 {
                    entry.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
    cpuid
}

/// Sets CPUID, MSRs, FPU and LAPIC of any vCPU.
pub fn configure_common(
    vcpu: &VcpuFd,
    supported: &CpuId,
    index: u8,
    count: u8,
) -> Result<(), VmmError> {
    vcpu.set_cpuid2(&cpuid_for(supported, index, count))
        .map_err(VmmError::kvm("set CPUID"))?;
    if std::env::var_os("BERTH_VMM_DEBUG_CPUID").is_some() {
        for entry in vcpu
            .get_cpuid2(256)
            .map_err(VmmError::kvm("get CPUID"))?
            .as_slice()
        {
            eprintln!(
                "cpuid {:#x}/{:#x}: {:#x} {:#x} {:#x} {:#x}",
                entry.function, entry.index, entry.eax, entry.ebx, entry.ecx, entry.edx
            );
        }
        let sregs = vcpu.get_sregs().map_err(VmmError::kvm("get sregs"))?;
        eprintln!("apic_base {:#x}", sregs.apic_base);
    }
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
    .iter()
    .map(|(index, data)| kvm_msr_entry {
        index: *index,
        data: *data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::Boot(format!("MSRs: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(VmmError::kvm("set MSRs"))?;
    if written != entries.len() {
        return Err(VmmError::Boot(format!(
            "KVM took {written} of {} boot MSRs",
            entries.len()
        )));
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(VmmError::kvm("set FPU"))?;

    let mut lapic = vcpu.get_lapic().map_err(VmmError::kvm("get LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[offset..offset + 4];
        let value = u32::from_le_bytes([
            bytes[0] as u8,
            bytes[1] as u8,
            bytes[2] as u8,
            bytes[3] as u8,
        ]);
        let value = (value & !0x700) | (mode << 8);
        for (slot, byte) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *slot = byte as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(VmmError::kvm("set LAPIC"))?;
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `rip` with the zero page in `rsi`.
pub fn configure_boot_vcpu(vcpu: &VcpuFd, rip: u64) -> Result<(), VmmError> {
    let mut sregs = vcpu.get_sregs().map_err(VmmError::kvm("get sregs"))?;
    let code = segment_from_gdt(GDT[1], 1);
    let data = segment_from_gdt(GDT[2], 2);
    let tss = segment_from_gdt(GDT[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    vcpu.set_sregs(&sregs).map_err(VmmError::kvm("set sregs"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(VmmError::kvm("set regs"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode_as_long_mode_code_and_flat_data() {
        let code = segment_from_gdt(GDT[1], 1);
        assert_eq!((code.l, code.db, code.present, code.selector), (1, 0, 1, 8));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(GDT[2], 2);
        assert_eq!((data.l, data.db, data.type_, data.selector), (0, 1, 3, 16));
    }
}
