//! Virtio devices over PCI ([`pci`], the virtio 1.x "modern" transport with MSI-X).
//!
//! A device ([`VirtioDevice`]) says what it offers (type, queues, features, config
//! space) and is handed its queues when the driver sets DRIVER_OK. From then on a worker
//! thread of the device serves the queues: KVM signals a queue's eventfd when the guest
//! writes its notify address (an ioeventfd, so the vCPU does not leave the kernel), and
//! the worker raises the queue's MSI-X vector through [`Interrupt`].
//!
//! Everything read from guest memory goes through virtio-queue's descriptor chain
//! walking and vm-memory's bounds-checked accessors: an address, length or index from
//! the guest outside its memory is an error of that request, never a host access.

pub mod balloon;
pub mod block;
pub mod console;
pub mod msix;
pub mod net;
pub mod pci;
pub mod rng;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::{DeviceSnapshot, DeviceState};
use msix::MsixTable;
use virtio_queue::QueueT;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const DEVICE_TYPE_CONSOLE: u16 = 3;

/// ISR bits (read by drivers that do not use MSI-X).
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Raises interrupts of one virtio function.
#[derive(Clone)]
pub struct Interrupt {
    /// `None` only where devices run without a VM (the fuzzing harnesses).
    vm: Option<Arc<VmFd>>,
    msix: Arc<Mutex<MsixTable>>,
    isr: Arc<AtomicU8>,
}

impl Interrupt {
    pub fn new(vm: Arc<VmFd>, msix: Arc<Mutex<MsixTable>>, isr: Arc<AtomicU8>) -> Self {
        Self {
            vm: Some(vm),
            msix,
            isr,
        }
    }

    /// Interrupts that go nowhere, for devices exercised without a VM.
    pub fn detached(vectors: u16) -> Self {
        Self {
            vm: None,
            msix: Arc::new(Mutex::new(MsixTable::new(vectors))),
            isr: Arc::new(AtomicU8::new(0)),
        }
    }

    fn raise(&self, vector: u16, isr_bit: u8) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        let message = self
            .msix
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .trigger(vector);
        if let (Some(message), Some(vm)) = (message, &self.vm) {
            msix::deliver(vm, message);
        }
    }

    /// A queue has used buffers.
    pub fn queue(&self, vector: u16) {
        self.raise(vector, ISR_QUEUE);
    }

    /// The device's configuration changed.
    pub fn config(&self, vector: u16) {
        self.raise(vector, ISR_CONFIG);
    }
}

/// A queue the driver set up, as the device gets it on activation.
pub struct ActiveQueue {
    pub queue: Queue,
    /// Signalled by KVM when the guest notifies the queue.
    pub notify: EventFd,
    /// The queue's MSI-X vector.
    pub vector: u16,
}

/// What the device gets on DRIVER_OK.
pub struct Activation {
    pub memory: GuestMemoryMmap,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Interrupt,
    pub config_vector: u16,
    /// The features the driver accepted.
    pub features: u64,
    /// The device's own state when it is restored from a snapshot.
    pub restored: Option<DeviceState>,
}

/// The loop of a device's worker thread.
pub trait WorkerLoop: Send + 'static {
    /// Serves until the stop event fires.
    fn run(&mut self);
    fn stop_event(&self) -> &EventFd;
    /// `(next_avail, next_used)` of each queue, and the device's own state.
    fn snapshot(&self) -> DeviceSnapshot;
}

/// A device's worker thread, which hands its worker back when stopped (to be restarted
/// after a snapshot, or to give back the disk or tap on reset).
pub struct WorkerThread<W: WorkerLoop> {
    stop: EventFd,
    handle: std::thread::JoinHandle<W>,
}

impl<W: WorkerLoop> WorkerThread<W> {
    pub fn spawn(name: &str, mut worker: W) -> Result<Self, crate::VmmError> {
        let stop = worker
            .stop_event()
            .try_clone()
            .map_err(crate::VmmError::Eventfd)?;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                worker.run();
                worker
            })
            .map_err(|e| crate::VmmError::Device(format!("starting the {name} worker: {e}")))?;
        Ok(Self { stop, handle })
    }

    /// Stops the worker and returns it (its stop event cleared); `None` if it panicked.
    pub fn stop(self) -> Option<W> {
        let _ = self.stop.write(1);
        let worker = self.handle.join().ok()?;
        let _ = worker.stop_event().read();
        Some(worker)
    }
}

/// Stops `thread`, records its worker's state and starts it again.
pub fn snapshot_worker<W: WorkerLoop>(
    thread: &mut Option<WorkerThread<W>>,
    name: &str,
) -> Result<DeviceSnapshot, crate::VmmError> {
    let worker = thread
        .take()
        .and_then(WorkerThread::stop)
        .ok_or_else(|| crate::VmmError::Device(format!("the {name} worker is gone")))?;
    let snapshot = worker.snapshot();
    *thread = Some(WorkerThread::spawn(name, worker)?);
    Ok(snapshot)
}

/// The loop of a one-queue device's worker: serves what is already waiting, then again
/// after every notification of `notify`, until `stop` fires.
pub fn serve_one_queue_until_stopped(notify: &EventFd, stop: &EventFd, mut serve: impl FnMut()) {
    serve_queues_until_stopped(&[notify], stop, |_| serve());
}

/// The loop of a worker over several queues: serves each queue's waiting requests, then
/// the queue `serve(index)` again after every notification of `notifies[index]`, until
/// `stop` fires.
pub fn serve_queues_until_stopped(
    notifies: &[&EventFd],
    stop: &EventFd,
    mut serve: impl FnMut(usize),
) {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let token_stop = notifies.len() as u64;
    let Ok(epoll) = Epoll::new() else {
        return;
    };
    let watched = notifies
        .iter()
        .enumerate()
        .map(|(index, notify)| (notify.as_raw_fd(), index as u64))
        .chain([(stop.as_raw_fd(), token_stop)]);
    for (fd, token) in watched {
        let _ = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        );
    }
    let mut events = vec![EpollEvent::default(); notifies.len() + 1];
    // Requests may already be waiting (a driver that kicked before activation, or a
    // restored queue).
    for index in 0..notifies.len() {
        serve(index);
    }
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if events[..count]
            .iter()
            .any(|event| event.data() == token_stop)
        {
            return;
        }
        for event in &events[..count] {
            let index = event.data() as usize;
            if let Some(notify) = notifies.get(index) {
                let _ = notify.read();
                serve(index);
            }
        }
    }
}

/// Queue positions for a snapshot.
pub fn positions(queues: &[ActiveQueue]) -> Vec<(u16, u16)> {
    queues
        .iter()
        .map(|queue| (queue.queue.next_avail(), queue.queue.next_used()))
        .collect()
}

/// One virtio device behind the PCI transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u16;
    /// The PCI class code the function reports.
    fn pci_class(&self) -> u32;
    /// Most descriptors each queue may have.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Offered features (VERSION_1 included).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), crate::VmmError>;
    /// The active device's state and queue positions, for a snapshot (the device goes on
    /// serving afterwards).
    fn save(&mut self) -> Result<DeviceSnapshot, crate::VmmError>;
    /// Stops serving and forgets the driver's setup (status 0).
    fn reset(&mut self);
    /// Whether this device's configuration differs from the one `saved` was taken with
    /// (a clone's disk of another size): the guest then gets a config-change interrupt.
    fn config_changed_since(&self, saved: &DeviceState) -> bool {
        let _ = saved;
        false
    }
    /// Serves the device's requests from `disk` from now on (virtio-blk; the disk must
    /// have the capacity the guest was told).
    fn replace_disk(
        &mut self,
        disk: Box<dyn crate::disk::DiskImage>,
    ) -> Result<(), crate::VmmError> {
        let _ = disk;
        Err(crate::VmmError::Device("the device has no disk".into()))
    }
}
