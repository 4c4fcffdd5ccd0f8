//! Snapshots: everything of a paused VM but its RAM, in one JSON file.
//!
//! RAM stays where it is: a template's RAM is a file mapped shared, so its pages are
//! already in the file; a clone maps that file private. The state file holds:
//!
//! - per vCPU: multiprocessor state, general and special registers, XSAVE area and
//!   XCRs (FPU, SSE, AVX), debug registers, LAPIC, every MSR KVM lists (TSC and
//!   kvmclock's among them), pending events;
//! - the VM: both PICs, the IOAPIC, the PIT and the kvmclock;
//! - devices: the UART's registers, and per PCI function its configuration space and,
//!   for virtio, the transport's registers, MSI-X table, queue addresses and positions
//!   and the device's own state ([`DeviceState`]).
//!
//! Restoring follows the order KVM needs (CPUID before MSRs, special registers before
//! XSAVE, LAPIC before events) and refuses a file of another format or shape.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::VmmError;

/// Bumped whenever the layout below changes: older files are refused.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// One vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// The UART's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SerialRecord {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

/// A virtqueue as the driver set it up, and where the device was in it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueRecord {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub vector: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

/// What a virtio device keeps besides its queues.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DeviceState {
    Console {
        port_ready: bool,
        to_guest: Vec<u8>,
        control_out: Vec<Vec<u8>>,
    },
    Block {
        /// The disk's size when saved: a clone whose disk differs is told so.
        capacity: u64,
    },
    Net,
    Rng,
    Balloon {
        /// The pages the host had asked the guest to hand over.
        target_pages: u32,
    },
}

/// A device's state with the queue positions its worker had reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub state: DeviceState,
    /// `(next_avail, next_used)` of each active queue, in queue order.
    pub positions: Vec<(u16, u16)>,
}

/// The MSI-X table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MsixRecord {
    pub entries: Vec<[u32; 4]>,
    pub pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

/// The virtio transport's registers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u16,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub status: u8,
    pub config_generation: u8,
    pub config_vector: u16,
    pub queue_select: u16,
    pub queues: Vec<QueueRecord>,
    pub msix: MsixRecord,
    pub isr: u8,
    /// Present when the device was active (DRIVER_OK).
    pub device: Option<DeviceSnapshot>,
}

/// One PCI function.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PciFunctionState {
    pub slot: u8,
    pub config: Vec<u8>,
    pub bar_address: u64,
    pub transport: Option<TransportState>,
}

/// The whole VM.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub format: u32,
    pub vcpu_count: u8,
    pub memory_mib: u32,
    pub vcpus: Vec<VcpuState>,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub serial: SerialRecord,
    pub pci: Vec<PciFunctionState>,
}

/// Reads the state of a vCPU that is out of `KVM_RUN` (paused), on its own thread.
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VmmError> {
    let mp_state = vcpu.get_mp_state().map_err(VmmError::kvm("get MP state"))?;
    let regs = vcpu.get_regs().map_err(VmmError::kvm("get registers"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(VmmError::kvm("get special registers"))?;
    let xsave = vcpu.get_xsave().map_err(VmmError::kvm("get XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(VmmError::kvm("get XCRs"))?;
    let debug_regs = vcpu
        .get_debug_regs()
        .map_err(VmmError::kvm("get debug registers"))?;
    let lapic = vcpu.get_lapic().map_err(VmmError::kvm("get LAPIC"))?;
    let msrs = save_msrs(vcpu, msr_indices)?;
    let events = vcpu
        .get_vcpu_events()
        .map_err(VmmError::kvm("get vCPU events"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
    })
}

/// Every MSR of `indices` that KVM can read; KVM stops a batch at the first it cannot,
/// which is then left out.
fn save_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VmmError> {
    let mut saved = Vec::new();
    let mut remaining: Vec<u32> = indices.to_vec();
    while !remaining.is_empty() {
        let entries: Vec<kvm_msr_entry> = remaining
            .iter()
            .map(|index| kvm_msr_entry {
                index: *index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| VmmError::Device(format!("MSRs: {e:?}")))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(VmmError::kvm("get MSRs"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the one that failed, if any.
        remaining = remaining.split_off((read + 1).min(remaining.len()));
    }
    Ok(saved)
}

/// Puts a saved state into a new vCPU (whose CPUID is already set).
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), VmmError> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(VmmError::kvm("set MP state"))?;
    vcpu.set_regs(&state.regs)
        .map_err(VmmError::kvm("set registers"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(VmmError::kvm("set special registers"))?;
    // SAFETY: the XSAVE area is a full kvm_xsave read from KVM by `save_vcpu`; the
    // legacy (4 KiB) interface is used on both sides.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(VmmError::kvm("set XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs)
        .map_err(VmmError::kvm("set XCRs"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(VmmError::kvm("set debug registers"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(VmmError::kvm("set LAPIC"))?;
    let msrs =
        Msrs::from_entries(&state.msrs).map_err(|e| VmmError::Device(format!("MSRs: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(VmmError::kvm("set MSRs"))?;
    if written != state.msrs.len() {
        return Err(VmmError::Device(format!(
            "KVM took {written} of {} saved MSRs (the first it refused: {:#x})",
            state.msrs.len(),
            state.msrs[written].index
        )));
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(VmmError::kvm("set vCPU events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(VmmError::kvm("get an interrupt controller"))?;
    Ok(chip)
}

/// The VM-wide parts: interrupt controllers, PIT, clock.
pub fn save_vm(
    vm: &VmFd,
) -> Result<
    (
        kvm_irqchip,
        kvm_irqchip,
        kvm_irqchip,
        kvm_pit_state2,
        kvm_clock_data,
    ),
    VmmError,
> {
    Ok((
        irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        vm.get_pit2().map_err(VmmError::kvm("get the PIT"))?,
        vm.get_clock().map_err(VmmError::kvm("get the clock"))?,
    ))
}

/// Restores the VM-wide parts.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), VmmError> {
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip)
            .map_err(VmmError::kvm("set an interrupt controller"))?;
    }
    vm.set_pit2(&state.pit)
        .map_err(VmmError::kvm("set the PIT"))?;
    // The clock carries on from the snapshot; the guest is told the real time when its
    // agent rebinds it.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(VmmError::kvm("set the clock"))?;
    Ok(())
}

/// Reads and checks a state file against the VM that is to restore it.
pub fn load(path: &std::path::Path, vcpus: u8, memory_mib: u32) -> Result<VmState, VmmError> {
    let bytes = std::fs::read(path).map_err(VmmError::io(path))?;
    let state: VmState = serde_json::from_slice(&bytes)
        .map_err(|e| VmmError::Snapshot(format!("{}: {e}", path.display())))?;
    if state.format != SNAPSHOT_FORMAT {
        return Err(VmmError::Snapshot(format!(
            "{} has format {}, this VMM reads {SNAPSHOT_FORMAT}",
            path.display(),
            state.format
        )));
    }
    if state.vcpu_count != vcpus
        || state.memory_mib != memory_mib
        || state.vcpus.len() != vcpus as usize
    {
        return Err(VmmError::Snapshot(format!(
            "{} is of a VM with {} vCPUs and {} MiB, not {vcpus} and {memory_mib}",
            path.display(),
            state.vcpu_count,
            state.memory_mib
        )));
    }
    Ok(state)
}

/// Writes a state file atomically (a temporary file renamed over it).
pub fn write(path: &std::path::Path, state: &VmState) -> Result<(), VmmError> {
    let bytes = serde_json::to_vec(state).map_err(|e| VmmError::Snapshot(e.to_string()))?;
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, bytes).map_err(VmmError::io(&staging))?;
    std::fs::rename(&staging, path).map_err(VmmError::io(path))
}
