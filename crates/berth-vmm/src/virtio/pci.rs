//! The virtio 1.x PCI transport: one function per device, everything in BAR0.
//!
//! ```text
//! BAR0 (64-bit memory, 32 KiB)           config space capabilities
//! 0x0000  common configuration (0x38)    0x40  MSI-X (table at 0x4000, PBA at 0x5000)
//! 0x1000  ISR status                     0x50  virtio common cfg  -> BAR0 + 0x0000
//! 0x2000  device configuration           0x60  virtio ISR         -> BAR0 + 0x1000
//! 0x3000  notify: queue n at 0x3000+4n   0x70  virtio device cfg  -> BAR0 + 0x2000
//! 0x4000  MSI-X table                    0x80  virtio notify      -> BAR0 + 0x3000 (x4)
//! 0x5000  MSI-X pending bits
//! ```
//!
//! Device status follows the spec: FEATURES_OK is kept only if the driver took a subset
//! of the offered features including VERSION_1; DRIVER_OK activates the device with the
//! queues the driver enabled (each checked to lie in guest memory); writing 0 resets.
//! A device that fails to activate is marked DEVICE_NEEDS_RESET.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::msix::{MsixTable, NO_VECTOR};
use super::{Activation, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::pci::{
    ConfigSpace, PciFunction, REG_CAPABILITIES, REG_STATUS, REG_SUBSYSTEM_VENDOR,
    STATUS_CAPABILITIES_LIST,
};
use crate::snapshot::{DeviceState, QueueRecord, TransportState};

const VENDOR_VIRTIO: u16 = 0x1af4;
const MODERN_DEVICE_BASE: u16 = 0x1040;
const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;

const CAP_MSIX: usize = 0x40;
const CAP_ID_MSIX: u8 = 0x11;
const CAP_ID_VENDOR: u8 = 0x09;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_NEEDS_RESET: u8 = 0x40;

/// One queue as the driver configures it.
struct QueueSetup {
    queue: Queue,
    vector: u16,
    notify: EventFd,
}

/// A virtio device on the PCI bus.
pub struct VirtioPciFunction {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    msix: Arc<Mutex<MsixTable>>,
    isr: Arc<AtomicU8>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueSetup>,
    /// Notify addresses registered with KVM, to drop on reset or a BAR move.
    ioevents: Vec<(u64, EventFd)>,
    active: bool,
}

impl VirtioPciFunction {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        vm: Arc<VmFd>,
        memory: GuestMemoryMmap,
    ) -> Result<Self, crate::VmmError> {
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(
            VENDOR_VIRTIO,
            MODERN_DEVICE_BASE + device_type,
            device.pci_class(),
            1,
            BAR_SIZE,
        );
        config.set_u16(REG_SUBSYSTEM_VENDOR, VENDOR_VIRTIO);
        config.set_u16(REG_SUBSYSTEM_VENDOR + 2, 0x40);
        config.set_u16(REG_STATUS, STATUS_CAPABILITIES_LIST);
        config.set_bytes(REG_CAPABILITIES, &[CAP_MSIX as u8]);

        let sizes = device.queue_max_sizes();
        // One vector per queue and one for configuration changes.
        let vectors = sizes.len() as u16 + 1;
        config.set_bytes(CAP_MSIX, &[CAP_ID_MSIX, 0x50]);
        config.set_u16(CAP_MSIX + 2, vectors - 1);
        config.set_u32(CAP_MSIX + 4, MSIX_TABLE_OFFSET as u32);
        config.set_u32(CAP_MSIX + 8, MSIX_PBA_OFFSET as u32);
        let virtio_caps: [(usize, u8, u64, u64, u8); 4] = [
            (0x50, 1, COMMON_OFFSET, COMMON_SIZE, 0x60),
            (0x60, 3, ISR_OFFSET, 4, 0x70),
            (0x70, 4, DEVICE_CONFIG_OFFSET, REGION_SIZE, 0x80),
            (0x80, 2, NOTIFY_OFFSET, REGION_SIZE, 0),
        ];
        for (at, kind, offset, length, next) in virtio_caps {
            let cap_length = if kind == 2 { 20 } else { 16 };
            config.set_bytes(at, &[CAP_ID_VENDOR, next, cap_length, kind, 0, 0, 0, 0]);
            config.set_u32(at + 8, offset as u32);
            config.set_u32(at + 12, length as u32);
            if kind == 2 {
                config.set_u32(at + 16, NOTIFY_MULTIPLIER);
            }
        }

        let mut queues = Vec::new();
        for size in sizes {
            queues.push(QueueSetup {
                queue: Queue::new(size)
                    .map_err(|e| crate::VmmError::Device(format!("queue of {size}: {e:?}")))?,
                vector: NO_VECTOR,
                notify: EventFd::new(libc::EFD_NONBLOCK).map_err(crate::VmmError::Eventfd)?,
            });
        }
        Ok(Self {
            config,
            device,
            vm,
            memory,
            msix: Arc::new(Mutex::new(MsixTable::new(vectors))),
            isr: Arc::new(AtomicU8::new(0)),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queues,
            ioevents: Vec::new(),
            active: false,
        })
    }

    fn msix(&self) -> std::sync::MutexGuard<'_, MsixTable> {
        self.msix
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, messages: Vec<kvm_bindings::kvm_msi>) {
        for message in messages {
            super::msix::deliver(&self.vm, message);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSetup> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix().len() {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        for (address, event) in self.ioevents.drain(..) {
            let _ = self
                .vm
                .unregister_ioevent(&event, &IoEventAddress::Mmio(address), NoDatamatch);
        }
        for setup in &mut self.queues {
            setup.queue.reset();
            setup.vector = NO_VECTOR;
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.config_vector = NO_VECTOR;
        self.isr.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                value &= !STATUS_FEATURES_OK;
            }
        }
        let activate = value & STATUS_DRIVER_OK != 0 && !self.active;
        self.status = value;
        if activate {
            if let Err(error) = self.activate(None) {
                eprintln!(
                    "berth vmm: virtio device {} failed to start: {error}",
                    self.device.device_type()
                );
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn activate(&mut self, restored: Option<DeviceState>) -> Result<(), crate::VmmError> {
        let (bar, _) = self.config.bar();
        let mut active_queues = Vec::new();
        for (index, setup) in self.queues.iter().enumerate() {
            if !setup.queue.ready() {
                continue;
            }
            if !setup.queue.is_valid(&self.memory) {
                return Err(crate::VmmError::Device(format!(
                    "queue {index} lies outside guest memory"
                )));
            }
            let address = bar + NOTIFY_OFFSET + index as u64 * u64::from(NOTIFY_MULTIPLIER);
            let notify = setup.notify.try_clone().map_err(crate::VmmError::Eventfd)?;
            self.vm
                .register_ioevent(&notify, &IoEventAddress::Mmio(address), NoDatamatch)
                .map_err(crate::VmmError::kvm("register a queue's ioeventfd"))?;
            self.ioevents.push((address, notify));
            let queue = Queue::try_from(setup.queue.state())
                .map_err(|e| crate::VmmError::Device(format!("queue {index}: {e:?}")))?;
            active_queues.push(ActiveQueue {
                queue,
                notify: setup.notify.try_clone().map_err(crate::VmmError::Eventfd)?,
                vector: setup.vector,
            });
        }
        self.device.activate(Activation {
            memory: self.memory.clone(),
            queues: active_queues,
            interrupt: Interrupt::new(self.vm.clone(), self.msix.clone(), self.isr.clone()),
            config_vector: self.config_vector,
            features: self.driver_features,
            restored,
        })?;
        self.active = true;
        Ok(())
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.features();
        let value: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            _ => {
                let Some(setup) = self.queues.get(usize::from(self.queue_select)) else {
                    data.fill(0);
                    return;
                };
                let queue = &setup.queue;
                match offset {
                    0x18 => u64::from(queue.size()),
                    0x1a => u64::from(setup.vector),
                    0x1c => u64::from(queue.ready()),
                    0x1e => u64::from(self.queue_select),
                    0x20 => queue.desc_table() & 0xffff_ffff,
                    0x24 => queue.desc_table() >> 32,
                    0x28 => queue.avail_ring() & 0xffff_ffff,
                    0x2c => queue.avail_ring() >> 32,
                    0x30 => queue.used_ring() & 0xffff_ffff,
                    0x34 => queue.used_ring() >> 32,
                    _ => 0,
                }
            }
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len().min(8)]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        bytes[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let value = u64::from_le_bytes(bytes);
        let low = value as u32;
        // Queue setup is only taken before DRIVER_OK, as the spec asks of drivers.
        let queue_setup_allowed = !self.active;
        match offset {
            0x00 => self.device_feature_select = low,
            0x08 => self.driver_feature_select = low,
            0x0c => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(low),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(low) << 32)
                }
                _ => {}
            },
            0x10 => self.config_vector = self.valid_vector(low as u16),
            0x14 => self.set_status(low as u8),
            0x16 => self.queue_select = low as u16,
            _ if !queue_setup_allowed => {}
            0x18 => {
                if let Some(setup) = self.selected_queue() {
                    setup.queue.set_size(low as u16);
                }
            }
            0x1a => {
                let vector = self.valid_vector(low as u16);
                if let Some(setup) = self.selected_queue() {
                    setup.vector = vector;
                }
            }
            0x1c => {
                if let Some(setup) = self.selected_queue() {
                    setup.queue.set_ready(low == 1);
                }
            }
            0x20..=0x37 => {
                if let Some(setup) = self.selected_queue() {
                    let queue = &mut setup.queue;
                    let (low_part, high_part) = if offset.is_multiple_of(8) {
                        (Some(low), (data.len() == 8).then_some((value >> 32) as u32))
                    } else {
                        (None, Some(low))
                    };
                    match offset & !7 {
                        0x20 => queue.set_desc_table_address(low_part, high_part),
                        0x28 => queue.set_avail_ring_address(low_part, high_part),
                        _ => queue.set_used_ring_address(low_part, high_part),
                    }
                }
            }
            _ => {}
        }
    }
}

impl VirtioPciFunction {
    fn save_transport(&mut self) -> Result<TransportState, crate::VmmError> {
        let device = if self.active {
            Some(self.device.save()?)
        } else {
            None
        };
        let queues = self
            .queues
            .iter()
            .map(|setup| QueueRecord {
                size: setup.queue.size(),
                ready: setup.queue.ready(),
                desc: setup.queue.desc_table(),
                avail: setup.queue.avail_ring(),
                used: setup.queue.used_ring(),
                vector: setup.vector,
                next_avail: 0,
                next_used: 0,
            })
            .collect();
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            config_vector: self.config_vector,
            queue_select: self.queue_select,
            queues,
            msix: self.msix().record(),
            isr: self.isr.load(Ordering::SeqCst),
            device,
        })
    }

    fn restore_transport(&mut self, state: TransportState) -> Result<(), crate::VmmError> {
        if state.device_type != self.device.device_type() || state.queues.len() != self.queues.len()
        {
            return Err(crate::VmmError::Snapshot(format!(
                "a saved virtio device of type {} with {} queues does not fit type {} with {}",
                state.device_type,
                state.queues.len(),
                self.device.device_type(),
                self.queues.len()
            )));
        }
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.config_generation = state.config_generation;
        self.config_vector = state.config_vector;
        self.queue_select = state.queue_select;
        self.msix().restore(&state.msix)?;
        self.isr.store(state.isr, Ordering::SeqCst);
        let mut positions = state
            .device
            .as_ref()
            .map(|device| device.positions.clone())
            .unwrap_or_default()
            .into_iter();
        for (setup, record) in self.queues.iter_mut().zip(&state.queues) {
            let queue = &mut setup.queue;
            queue.set_size(record.size);
            queue
                .set_desc_table_address(Some(record.desc as u32), Some((record.desc >> 32) as u32));
            queue.set_avail_ring_address(
                Some(record.avail as u32),
                Some((record.avail >> 32) as u32),
            );
            queue.set_used_ring_address(Some(record.used as u32), Some((record.used >> 32) as u32));
            queue.set_ready(record.ready);
            setup.vector = record.vector;
            if record.ready && state.device.is_some() {
                let (next_avail, next_used) = positions.next().ok_or_else(|| {
                    crate::VmmError::Snapshot("a saved queue has no position".into())
                })?;
                queue.set_next_avail(next_avail);
                queue.set_next_used(next_used);
            }
        }
        self.status = state.status;
        if let Some(device) = state.device {
            let changed = self.device.config_changed_since(&device.state);
            self.activate(Some(device.state))?;
            if changed {
                // The backing changed under the guest (a disk of another size): it
                // rereads the configuration on this interrupt.
                self.config_generation = self.config_generation.wrapping_add(1);
                Interrupt::new(self.vm.clone(), self.msix.clone(), self.isr.clone())
                    .config(self.config_vector);
            }
        }
        Ok(())
    }
}

/// A function taken off the bus (the guest ejected it) stops its device: the worker
/// ends, the queues' notify addresses are given back to KVM, the disk or tap is closed.
impl Drop for VirtioPciFunction {
    fn drop(&mut self) {
        self.reset();
    }
}

impl PciFunction for VirtioPciFunction {
    fn save(&mut self) -> Result<Option<TransportState>, crate::VmmError> {
        self.save_transport().map(Some)
    }

    fn replace_disk(
        &mut self,
        disk: Box<dyn crate::disk::DiskImage>,
    ) -> Result<(), crate::VmmError> {
        self.device.replace_disk(disk)
    }

    fn restore(&mut self, state: Option<TransportState>) -> Result<(), crate::VmmError> {
        match state {
            Some(state) => self.restore_transport(state),
            None => Err(crate::VmmError::Snapshot(
                "a virtio function was saved without its transport".into(),
            )),
        }
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write_other(&mut self, offset: usize, data: &[u8]) {
        // Only the MSI-X message control's enable and mask bits are writable.
        let control_byte = CAP_MSIX + 3;
        if offset <= control_byte && offset + data.len() > control_byte {
            let high = data[control_byte - offset];
            let mut control = self.config.u16_at(CAP_MSIX + 2);
            control = (control & !(MSIX_ENABLE | MSIX_FUNCTION_MASK))
                | (u16::from(high) << 8 & (MSIX_ENABLE | MSIX_FUNCTION_MASK));
            self.config.set_u16(CAP_MSIX + 2, control);
            let released = self.msix().set_control(
                control & MSIX_ENABLE != 0,
                control & MSIX_FUNCTION_MASK != 0,
            );
            self.deliver(released);
        }
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            COMMON_OFFSET..=0x37 => self.common_read(offset - COMMON_OFFSET, data),
            ISR_OFFSET..0x2000 => {
                // Reading the ISR clears it.
                let value = self.isr.swap(0, Ordering::SeqCst);
                data.fill(0);
                data[0] = value;
            }
            DEVICE_CONFIG_OFFSET..0x3000 => {
                self.device.read_config(offset - DEVICE_CONFIG_OFFSET, data)
            }
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => {
                self.msix().read_table(offset - MSIX_TABLE_OFFSET, data)
            }
            MSIX_PBA_OFFSET..0x6000 => self.msix().read_pba(offset - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            COMMON_OFFSET..=0x37 => self.common_write(offset - COMMON_OFFSET, data),
            DEVICE_CONFIG_OFFSET..0x3000 => self
                .device
                .write_config(offset - DEVICE_CONFIG_OFFSET, data),
            NOTIFY_OFFSET..0x4000 => {
                // Reached only when KVM's ioeventfd did not take the write (before
                // DRIVER_OK, or after the guest moved the BAR).
                let index = ((offset - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(setup) = self.queues.get(index) {
                    let _ = setup.notify.write(1);
                }
            }
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => {
                let released = self.msix().write_table(offset - MSIX_TABLE_OFFSET, data);
                self.deliver(released);
            }
            _ => {}
        }
    }
}
