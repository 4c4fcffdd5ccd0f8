//! Putting one VM together and running it to its end.

use std::fs::OpenOptions;
use std::sync::{mpsc, Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::devices::pci::PciRoot;
use crate::devices::serial::{SerialPort, SERIAL_IRQ};
use crate::devices::tap::Tap;
use crate::devices::{i8042, Devices};
use crate::layout::KVM_TSS_ADDRESS;
use crate::vcpu::{self, VmExitReason};
use crate::virtio::block::{Block, BlockCounters};
use crate::virtio::console::Console;
use crate::virtio::net::{parse_mac, Net, NetCounters};
use crate::virtio::pci::VirtioPciFunction;
use crate::{memory, VmmConfig, VmmError};

/// The PCI slot of the agent channel.
pub const AGENT_CONSOLE_SLOT: u8 = 0x03;
/// The agent port's name, as the agent looks for it.
pub const AGENT_PORT_NAME: &str = "berth.agent";

/// Builds the VM of `config`, runs it, and returns why it ended.
pub fn run(config: &VmmConfig) -> Result<VmExitReason, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::kvm("open /dev/kvm"))?;
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

    let memory_bytes = u64::from(config.memory_mib) << 20;
    let guest_memory = memory::create(config.memory_mib)?;
    memory::register(&vm, &guest_memory)?;
    let entry = boot::load(
        &guest_memory,
        memory_bytes,
        config.vcpus,
        &config.kernel,
        &config.initramfs,
        &config.cmdline,
    )?;
    boot::cpu::write_boot_tables(&guest_memory)?;

    let console_log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.console_log)
        .map_err(VmmError::io(&config.console_log))?;
    let serial_interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?;
    vm.register_irqfd(&serial_interrupt, SERIAL_IRQ)
        .map_err(VmmError::kvm("connect the serial interrupt"))?;
    let mut pci = PciRoot::new();
    let console = Console::new(AGENT_PORT_NAME, config.agent_socket.clone());
    pci.add(
        AGENT_CONSOLE_SLOT,
        Box::new(VirtioPciFunction::new(
            Box::new(console),
            vm.clone(),
            guest_memory.clone(),
        )?),
    );
    for disk in &config.disks {
        let image = crate::disk::open(&disk.path, disk.format, disk.read_only)
            .map_err(VmmError::io(&disk.path))?;
        let block = Block::new(
            image,
            disk.read_only,
            disk.serial.as_deref(),
            Arc::new(BlockCounters::default()),
        );
        pci.add(
            disk.pci_slot,
            Box::new(VirtioPciFunction::new(
                Box::new(block),
                vm.clone(),
                guest_memory.clone(),
            )?),
        );
    }
    for nic in &config.nics {
        let mac = parse_mac(&nic.mac)
            .ok_or_else(|| VmmError::Device(format!("bad MAC address {:?}", nic.mac)))?;
        let tap = Tap::open(&nic.tap).map_err(|e| VmmError::Device(e.to_string()))?;
        let net = Net::new(tap, mac, Arc::new(NetCounters::default()));
        pci.add(
            nic.pci_slot,
            Box::new(VirtioPciFunction::new(
                Box::new(net),
                vm.clone(),
                guest_memory.clone(),
            )?),
        );
    }
    let devices = Arc::new(Devices {
        serial: Mutex::new(SerialPort::new(serial_interrupt, console_log)),
        i8042: i8042::ResetLine,
        pci: Mutex::new(pci),
    });

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("read the supported CPUID"))?;
    let (exits, exit_reasons) = mpsc::channel();
    let mut vcpus = Vec::new();
    for index in 0..config.vcpus.max(1) {
        let vcpu = vm
            .create_vcpu(u64::from(index))
            .map_err(VmmError::kvm("create a vCPU"))?;
        boot::cpu::configure_common(&vcpu, &supported, index, config.vcpus.max(1))?;
        if index == 0 {
            boot::cpu::configure_boot_vcpu(&vcpu, entry.rip)?;
        }
        vcpus.push(vcpu);
    }
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let devices = devices.clone();
        let exits = exits.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu::run(vcpu, index as u8, devices, exits))
            .map_err(VmmError::Thread)?;
    }
    drop(exits);
    crate::seccomp::apply()?;
    Ok(exit_reasons
        .recv()
        .unwrap_or_else(|_| VmExitReason::Failed("every vCPU thread ended".into())))
}
