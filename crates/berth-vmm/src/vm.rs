//! Putting one VM together (booted or restored from a snapshot), running it to its end,
//! and starting the control socket on its [`Machine`] (see [`crate::machine`]).

use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::devices::hotplug::{PciHotplug, HOTPLUG_GSI};
use crate::devices::pci::PciRoot;
use crate::devices::rtc::CmosRtc;
use crate::devices::serial::{SerialPort, SERIAL_IRQ};
use crate::devices::tap::Tap;
use crate::devices::{i8042, Devices};
use crate::layout::KVM_TSS_ADDRESS;
use crate::machine::{lock, Machine};
use crate::snapshot::{self, VmState};
use crate::vcpu::{self, VcpuCommand, VcpuThread, VmExitReason};
use crate::virtio::balloon::{Balloon, BalloonControl, GiveBack};
use crate::virtio::block::{Block, BlockCounters};
use crate::virtio::console::Console;
use crate::virtio::net::{parse_mac, Net, NetCounters};
use crate::virtio::pci::VirtioPciFunction;
use crate::virtio::rng::Rng;
use crate::virtio::VirtioDevice;
use crate::{memory, VmmConfig, VmmError};

/// The PCI slot of the entropy device.
pub const RNG_SLOT: u8 = 0x02;
/// The PCI slot of the agent channel.
pub const AGENT_CONSOLE_SLOT: u8 = 0x03;
/// The PCI slot of the memory balloon (above every slot the engine hands out).
pub const BALLOON_SLOT: u8 = 0x1f;
/// The agent port's name, as the agent looks for it.
pub const AGENT_PORT_NAME: &str = "berth.agent";

/// Puts `device` on the bus in `slot`, behind its own virtio PCI transport.
pub(crate) fn add_virtio(
    pci: &mut PciRoot,
    slot: u8,
    device: Box<dyn VirtioDevice>,
    vm: &Arc<VmFd>,
    memory: &vm_memory::GuestMemoryMmap,
) -> Result<(), VmmError> {
    pci.add(
        slot,
        Box::new(VirtioPciFunction::new(device, vm.clone(), memory.clone())?),
    );
    Ok(())
}

/// Builds the VM of `config` (booting it, or restoring `config.restore_from`), runs it,
/// and returns why it ended.
pub fn run(config: &VmmConfig) -> Result<VmExitReason, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::kvm("open /dev/kvm"))?;
    let vm = create_vm(&kvm)?;
    let vcpu_count = config.vcpus.max(1);

    let guest_memory = create_guest_memory(config, &vm)?;
    let mut restored: Option<VmState> = match &config.restore_from {
        Some(path) => Some(snapshot::load(path, vcpu_count, config.memory_mib)?),
        None => None,
    };
    let entry = if restored.is_none() {
        Some(load_guest_kernel(config, &guest_memory, vcpu_count)?)
    } else {
        None
    };

    // The control socket is bound before any device exists: the agent's console
    // connects to the engine as soon as it is made, and the engine may send a request
    // (a clone's hot-plugged volume) the moment its agent is connected. Requests made
    // before the machine serves wait in the socket's backlog.
    let control_listener = match &config.control_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            Some(UnixListener::bind(path).map_err(VmmError::io(path))?)
        }
        None => None,
    };
    let serial = create_serial(config, &vm, restored.as_ref())?;
    let balloon = Arc::new(BalloonControl::default());
    let (pci, block_counters) = create_pci_devices(config, &vm, &guest_memory, &balloon)?;
    if let Some(state) = &restored {
        snapshot::restore_vm(&vm, state)?;
    }
    let hotplug_interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?;
    vm.register_irqfd(&hotplug_interrupt, HOTPLUG_GSI)
        .map_err(VmmError::kvm("connect the hot-plug interrupt"))?;
    let devices = Arc::new(Devices {
        serial: Mutex::new(serial),
        i8042: i8042::ResetLine,
        rtc: Mutex::new(CmosRtc::default()),
        pci: Mutex::new(pci),
        hotplug: Mutex::new(PciHotplug::new(hotplug_interrupt)),
    });

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("read the supported CPUID"))?;
    let msr_indices = Arc::new(
        kvm.get_msr_index_list()
            .map_err(VmmError::kvm("list the MSRs"))?
            .as_slice()
            .to_vec(),
    );
    let (exits, exit_reasons) = mpsc::channel();
    let (acks_sender, acks) = mpsc::channel();
    let vcpus = create_vcpus(&vm, &supported, vcpu_count, restored.as_ref(), entry)?;
    // Devices start serving only now that the vCPUs (their LAPICs above all) are
    // restored: an interrupt raised earlier would be lost when a LAPIC's state is set.
    if let Some(state) = restored.as_mut() {
        lock(&devices.pci).restore(std::mem::take(&mut state.pci))?;
    }
    drop(restored);
    vcpu::install_kick_handler()?;
    let started = start_vcpu_threads(vcpus, &devices, &exits, &acks_sender, &msr_indices)?;
    drop(exits);
    let machine = Arc::new(Machine {
        vm,
        devices,
        vcpu_commands: Mutex::new(started.commands),
        vcpu_threads: started.threads,
        acks: Mutex::new(acks),
        paused: Mutex::new(false),
        block_counters: Mutex::new(block_counters),
        memory: guest_memory,
        balloon,
        vcpu_count,
        memory_mib: config.memory_mib,
    });
    if let Some(listener) = control_listener {
        crate::control::serve(listener, machine.clone())?;
    }
    crate::seccomp::apply(config.memory_shared)?;
    Ok(exit_reasons
        .recv()
        .unwrap_or_else(|_| VmExitReason::Failed("every vCPU thread ended".into())))
}

/// Creates the VM with its TSS, in-kernel interrupt controllers and PIT.
fn create_vm(kvm: &Kvm) -> Result<Arc<VmFd>, VmmError> {
    let vm = Arc::new(kvm.create_vm().map_err(VmmError::kvm("create a VM"))?);
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(VmmError::kvm("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(VmmError::kvm("create the interrupt controllers"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(VmmError::kvm("create the PIT"))?;
    Ok(vm)
}

/// Allocates the guest's RAM (anonymous, or in `config.memory_file`) and gives it to `vm`.
fn create_guest_memory(
    config: &VmmConfig,
    vm: &VmFd,
) -> Result<vm_memory::GuestMemoryMmap, VmmError> {
    let guest_memory = match &config.memory_file {
        Some(path) => memory::create_in_file(config.memory_mib, path, config.memory_shared)?,
        None => memory::create(config.memory_mib)?,
    };
    memory::register(vm, &guest_memory)?;
    Ok(guest_memory)
}

/// Loads kernel, initramfs and boot tables into fresh guest memory; returns the entry.
fn load_guest_kernel(
    config: &VmmConfig,
    guest_memory: &vm_memory::GuestMemoryMmap,
    vcpu_count: u8,
) -> Result<boot::BootEntry, VmmError> {
    let memory_bytes = u64::from(config.memory_mib) << 20;
    let entry = boot::load(
        guest_memory,
        memory_bytes,
        vcpu_count,
        &config.kernel,
        &config.initramfs,
        &config.cmdline,
    )?;
    boot::cpu::write_boot_tables(guest_memory)?;
    Ok(entry)
}

/// Creates the serial port logging to `config.console_log`, restored from `restored` if any.
fn create_serial(
    config: &VmmConfig,
    vm: &VmFd,
    restored: Option<&VmState>,
) -> Result<SerialPort, VmmError> {
    let console_log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.console_log)
        .map_err(VmmError::io(&config.console_log))?;
    let serial_interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?;
    vm.register_irqfd(&serial_interrupt, SERIAL_IRQ)
        .map_err(VmmError::kvm("connect the serial interrupt"))?;
    Ok(match restored {
        Some(state) => SerialPort::restored(serial_interrupt, console_log, &state.serial)?,
        None => SerialPort::new(serial_interrupt, console_log),
    })
}

/// Puts the agent console, the entropy device, the balloon, the disks and the NICs on a
/// new PCI bus; returns it with the disks' counters.
fn create_pci_devices(
    config: &VmmConfig,
    vm: &Arc<VmFd>,
    guest_memory: &vm_memory::GuestMemoryMmap,
    balloon: &Arc<BalloonControl>,
) -> Result<(PciRoot, Vec<Arc<BlockCounters>>), VmmError> {
    let mut pci = PciRoot::new();
    let console = Console::new(AGENT_PORT_NAME, config.agent_socket.clone());
    add_virtio(
        &mut pci,
        AGENT_CONSOLE_SLOT,
        Box::new(console),
        vm,
        guest_memory,
    )?;
    add_virtio(
        &mut pci,
        RNG_SLOT,
        Box::new(Rng::default()),
        vm,
        guest_memory,
    )?;
    let give_back = if config.memory_shared {
        GiveBack::PunchFile
    } else {
        GiveBack::DropPrivate
    };
    add_virtio(
        &mut pci,
        BALLOON_SLOT,
        Box::new(Balloon::new(balloon.clone(), give_back)),
        vm,
        guest_memory,
    )?;
    let mut block_counters = Vec::new();
    for disk in &config.disks {
        let image = crate::disk::open(&disk.path, disk.format, disk.read_only)
            .map_err(VmmError::io(&disk.path))?;
        let counters = Arc::new(BlockCounters::default());
        block_counters.push(counters.clone());
        let block = Block::new(image, disk.read_only, disk.serial.as_deref(), counters);
        add_virtio(&mut pci, disk.pci_slot, Box::new(block), vm, guest_memory)?;
    }
    for nic in &config.nics {
        let mac = parse_mac(&nic.mac)
            .ok_or_else(|| VmmError::Device(format!("bad MAC address {:?}", nic.mac)))?;
        let tap = Tap::open(&nic.tap).map_err(|e| VmmError::Device(e.to_string()))?;
        let net = Net::new(tap, mac, Arc::new(NetCounters::default()));
        add_virtio(&mut pci, nic.pci_slot, Box::new(net), vm, guest_memory)?;
    }
    Ok((pci, block_counters))
}

/// Creates and configures the vCPUs: restored from `restored`, or the first at `entry`.
fn create_vcpus(
    vm: &VmFd,
    supported: &CpuId,
    vcpu_count: u8,
    restored: Option<&VmState>,
    entry: Option<boot::BootEntry>,
) -> Result<Vec<VcpuFd>, VmmError> {
    let mut vcpus = Vec::new();
    for index in 0..vcpu_count {
        let vcpu = vm
            .create_vcpu(u64::from(index))
            .map_err(VmmError::kvm("create a vCPU"))?;
        boot::cpu::configure_common(&vcpu, supported, index, vcpu_count)?;
        match (restored, entry) {
            (Some(state), _) => snapshot::restore_vcpu(&vcpu, &state.vcpus[usize::from(index)])?,
            (None, Some(entry)) if index == 0 => boot::cpu::configure_boot_vcpu(&vcpu, entry.rip)?,
            _ => {}
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// The vCPU threads of a VM and the senders of their commands, by vCPU index.
struct VcpuThreads {
    commands: Vec<Sender<VcpuCommand>>,
    threads: Vec<JoinHandle<()>>,
}

/// Runs each vCPU on its own thread; returns the threads and the senders of their commands.
fn start_vcpu_threads(
    vcpus: Vec<VcpuFd>,
    devices: &Arc<Devices>,
    exits: &Sender<VmExitReason>,
    acks: &Sender<u8>,
    msr_indices: &Arc<Vec<u32>>,
) -> Result<VcpuThreads, VmmError> {
    let mut vcpu_commands = Vec::new();
    let mut vcpu_threads = Vec::new();
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let (commands_sender, commands) = mpsc::channel();
        vcpu_commands.push(commands_sender);
        let thread = VcpuThread {
            vcpu,
            index: index as u8,
            devices: devices.clone(),
            exits: exits.clone(),
            commands,
            acks: acks.clone(),
            msr_indices: msr_indices.clone(),
        };
        vcpu_threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || thread.run())
                .map_err(VmmError::Thread)?,
        );
    }
    Ok(VcpuThreads {
        commands: vcpu_commands,
        threads: vcpu_threads,
    })
}
