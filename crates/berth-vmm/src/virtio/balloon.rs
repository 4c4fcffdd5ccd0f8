//! virtio-balloon with free page reporting: how memory the guest does not use goes back
//! to the host, and how the engine lowers what a running guest may use
//! (`docker update -m`).
//!
//! Features offered: VERSION_1 and `VIRTIO_BALLOON_F_REPORTING` (not MUST_TELL_HOST, so
//! deflated pages need nothing from the device; not DEFLATE_ON_OOM, so a lowered limit
//! holds as Docker's `-m` does; not PAGE_POISON, so a guest that poisons or zeroes freed
//! pages turns reporting off itself). Queues, in order: inflate, deflate, and reporting
//! when the driver took the feature. Configuration: `num_pages` (le32, the pages the host
//! asks the guest to hand over) and `actual` (le32, what the guest has).
//!
//! Pages inflated (4 KiB page frame numbers) and ranges reported free are given back:
//! `MADV_DONTNEED` on a private mapping (a cold boot's anonymous RAM; a clone's private
//! mapping of its template's file, whose pages then read as the template's again, and
//! stop being the clone's own) and `MADV_REMOVE` on a template's shared file (a hole in
//! the file). Only whole pages inside guest RAM are given back; anything else the guest
//! sends is ignored (and returned to it as used).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{
    positions, serve_queues_until_stopped, snapshot_worker, Activation, ActiveQueue, Interrupt,
    VirtioDevice, WorkerLoop, WorkerThread, VIRTIO_F_VERSION_1,
};
use crate::snapshot::{DeviceSnapshot, DeviceState};
use crate::VmmError;

pub const DEVICE_TYPE_BALLOON: u16 = 5;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
const QUEUE_SIZE: u16 = 128;
/// The balloon's page size (the protocol's, whatever the guest's).
pub const BALLOON_PAGE: u64 = 4096;

/// How pages are given back to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack {
    /// The guest's RAM is a private mapping: drop the VM's own copy of the pages.
    DropPrivate,
    /// The guest's RAM is a shared file mapping (a template): punch holes in the file.
    PunchFile,
}

impl GiveBack {
    fn advice(self) -> libc::c_int {
        match self {
            Self::DropPrivate => libc::MADV_DONTNEED,
            Self::PunchFile => libc::MADV_REMOVE,
        }
    }
}

/// What the host side shares with the device: the target, what the guest reports, and
/// how to tell the driver that the target changed.
#[derive(Default)]
pub struct BalloonControl {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    /// Bytes given back to the host so far (inflated and reported).
    given_back: AtomicU64,
    /// The configuration-change interrupt, once the driver is active.
    config_interrupt: Mutex<Option<(Interrupt, u16)>>,
}

impl BalloonControl {
    /// Asks the guest to hand over `pages` pages (0: all its memory back).
    pub fn set_target(&self, pages: u32) {
        self.target_pages.store(pages, Ordering::SeqCst);
        let interrupt = self
            .config_interrupt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((interrupt, vector)) = interrupt.as_ref() {
            interrupt.config(*vector);
        }
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages.load(Ordering::SeqCst)
    }

    /// The pages the guest says it has handed over.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages.load(Ordering::SeqCst)
    }

    pub fn given_back_bytes(&self) -> u64 {
        self.given_back.load(Ordering::Relaxed)
    }

    fn set_interrupt(&self, interrupt: Option<(Interrupt, u16)>) {
        *self
            .config_interrupt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = interrupt;
    }
}

/// The balloon device.
pub struct Balloon {
    control: Arc<BalloonControl>,
    give_back: GiveBack,
    worker: Option<WorkerThread<Worker>>,
}

impl Balloon {
    pub fn new(control: Arc<BalloonControl>, give_back: GiveBack) -> Self {
        Self {
            control,
            give_back,
            worker: None,
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_BALLOON
    }

    fn pci_class(&self) -> u32 {
        0x00_ff_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&self.control.target_pages().to_le_bytes());
        config[4..].copy_from_slice(&self.control.actual_pages().to_le_bytes());
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = config
                .get(offset as usize + index)
                .copied()
                .unwrap_or_default();
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (4, [a, b, c, d]) = (offset, data) {
            self.control
                .actual_pages
                .store(u32::from_le_bytes([*a, *b, *c, *d]), Ordering::SeqCst);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VmmError> {
        let reporting = activation.features & VIRTIO_BALLOON_F_REPORTING != 0;
        let expected = if reporting { 3 } else { 2 };
        if activation.queues.len() != expected {
            return Err(VmmError::Device(format!(
                "virtio-balloon needs {expected} queues, the driver set up {}",
                activation.queues.len()
            )));
        }
        if let Some(DeviceState::Balloon { target_pages }) = activation.restored {
            self.control
                .target_pages
                .store(target_pages, Ordering::SeqCst);
        }
        self.control.set_interrupt(Some((
            activation.interrupt.clone(),
            activation.config_vector,
        )));
        let worker = Worker {
            memory: activation.memory,
            queues: activation.queues,
            interrupt: activation.interrupt,
            give_back: self.give_back,
            control: self.control.clone(),
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
        };
        self.worker = Some(WorkerThread::spawn("virtio-balloon", worker)?);
        Ok(())
    }

    fn save(&mut self) -> Result<DeviceSnapshot, VmmError> {
        snapshot_worker(&mut self.worker, "virtio-balloon")
    }

    fn reset(&mut self) {
        self.control.set_interrupt(None);
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// Gives the guest pages `[address, address + length)` back to the host, if they are
/// whole pages inside one region of guest RAM; returns whether it did.
fn give_back_range(memory: &GuestMemoryMmap, address: u64, length: u64, how: GiveBack) -> bool {
    if length == 0 || !address.is_multiple_of(BALLOON_PAGE) || !length.is_multiple_of(BALLOON_PAGE)
    {
        return false;
    }
    let start = GuestAddress(address);
    let Some(region) = memory.find_region(start) else {
        return false;
    };
    let Some(end) = address.checked_add(length - 1) else {
        return false;
    };
    if end > region.last_addr().raw_value() {
        return false;
    }
    let Ok(host) = memory.get_host_address(start) else {
        return false;
    };
    // SAFETY: `host..host + length` lies inside one mapping of guest RAM, which this VMM
    // keeps mapped for the VM's whole life; the advice only drops the pages' contents
    // (the mapping stays), and they are pages the guest has handed over or reported free,
    // so neither the guest nor the VMM expects their contents to survive.
    let done = unsafe { libc::madvise(host.cast(), length as usize, how.advice()) };
    done == 0
}

/// `frames` as runs of consecutive frames `(first, count)`, so that a buffer of a few
/// hundred pages costs a few system calls rather than one each.
fn runs(mut frames: Vec<u64>) -> Vec<(u64, u64)> {
    frames.sort_unstable();
    frames.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for frame in frames {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == frame => *count += 1,
            _ => runs.push((frame, 1)),
        }
    }
    runs
}

/// What a queue of the balloon is for, by its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Report,
}

const ROLES: [Role; 3] = [Role::Inflate, Role::Deflate, Role::Report];

struct Worker {
    memory: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    interrupt: Interrupt,
    give_back: GiveBack,
    control: Arc<BalloonControl>,
    stop: EventFd,
}

impl WorkerLoop for Worker {
    fn run(&mut self) {
        let notifies: Vec<EventFd> = self
            .queues
            .iter()
            .filter_map(|queue| queue.notify.try_clone().ok())
            .collect();
        let Ok(stop) = self.stop.try_clone() else {
            return;
        };
        if notifies.len() != self.queues.len() {
            return;
        }
        let notifies: Vec<&EventFd> = notifies.iter().collect();
        serve_queues_until_stopped(&notifies, &stop, |index| {
            self.serve(index);
        });
    }

    fn stop_event(&self) -> &EventFd {
        &self.stop
    }

    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            state: DeviceState::Balloon {
                target_pages: self.control.target_pages(),
            },
            positions: positions(&self.queues),
        }
    }
}

impl Worker {
    /// Serves what waits in queue `index`; returns how many buffers it returned.
    fn serve(&mut self, index: usize) -> usize {
        let memory = self.memory.clone();
        let (Some(role), Some(queue)) = (ROLES.get(index).copied(), self.queues.get_mut(index))
        else {
            return 0;
        };
        let mut served = 0;
        let mut given_back = 0;
        while let Some(chain) = queue.queue.pop_descriptor_chain(&memory) {
            let head = chain.head_index();
            match role {
                Role::Inflate => {
                    let mut frames = Vec::new();
                    if let Ok(mut reader) = chain.reader(&memory) {
                        while let Ok(frame) = reader.read_obj::<u32>() {
                            frames.push(u64::from(frame));
                        }
                    }
                    for (first, count) in runs(frames) {
                        let length = count * BALLOON_PAGE;
                        if give_back_range(&memory, first * BALLOON_PAGE, length, self.give_back) {
                            given_back += length;
                        }
                    }
                }
                Role::Deflate => {}
                Role::Report => {
                    for descriptor in chain {
                        let length = u64::from(descriptor.len());
                        if give_back_range(&memory, descriptor.addr().0, length, self.give_back) {
                            given_back += length;
                        }
                    }
                }
            }
            let _ = queue.queue.add_used(&memory, head, 0);
            served += 1;
        }
        self.control
            .given_back
            .fetch_add(given_back, Ordering::Relaxed);
        if served > 0 && queue.queue.needs_notification(&memory).unwrap_or(true) {
            self.interrupt.queue(queue.vector);
        }
        served
    }
}

/// Serves the balloon's queues once, on the calling thread (the fuzzing harness and the
/// tests drive it this way); returns how many buffers were returned.
pub fn serve_once(
    memory: GuestMemoryMmap,
    queues: Vec<virtio_queue::Queue>,
    control: Arc<BalloonControl>,
) -> Result<usize, VmmError> {
    let mut active = Vec::new();
    for queue in queues.into_iter().take(ROLES.len()) {
        active.push(ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
            vector: 0,
        });
    }
    let count = active.len();
    let mut worker = Worker {
        memory,
        queues: active,
        interrupt: Interrupt::detached(4),
        give_back: GiveBack::DropPrivate,
        control,
        stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
    };
    Ok((0..count).map(|index| worker.serve(index)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::Queue;
    use vm_memory::Bytes;

    const RAM: usize = 1 << 20;
    const VIRTQ_DESC_F_WRITE: u16 = 2;

    /// A queue at `base` (descriptors, then the available ring at +0x400, the used ring
    /// at +0x800) offering one chain of `buffers` (address, length, flags).
    fn queue_with(memory: &GuestMemoryMmap, base: u64, buffers: &[(u64, u32, u16)]) -> Queue {
        let mut queue = Queue::new(16).unwrap();
        queue.set_size(16);
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + 0x400) as u32), Some(0));
        queue.set_used_ring_address(Some((base + 0x800) as u32), Some(0));
        queue.set_ready(true);
        for (index, (address, length, flags)) in buffers.iter().enumerate() {
            let next = (index + 1 < buffers.len()) as u16;
            let descriptor = RawDescriptor::from(Descriptor::new(
                *address,
                *length,
                flags | next,
                index as u16 + 1,
            ));
            memory
                .write_obj(descriptor, GuestAddress(base + 16 * index as u64))
                .unwrap();
        }
        if !buffers.is_empty() {
            // One chain, its head descriptor 0; available index 1.
            memory.write_obj(0u16, GuestAddress(base + 0x404)).unwrap();
            memory.write_obj(1u16, GuestAddress(base + 0x402)).unwrap();
        }
        queue
    }

    fn page_is(memory: &GuestMemoryMmap, address: u64, value: u8) -> bool {
        let mut page = vec![0u8; BALLOON_PAGE as usize];
        memory.read_slice(&mut page, GuestAddress(address)).unwrap();
        page.iter().all(|byte| *byte == value)
    }

    #[test]
    fn inflated_and_reported_pages_go_back_and_odd_ones_are_ignored() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        for page in 0x10..0x20u64 {
            memory
                .write_slice(
                    &[0xaa; BALLOON_PAGE as usize],
                    GuestAddress(page * BALLOON_PAGE),
                )
                .unwrap();
        }
        // Inflate: pages 0x10 and 0x11, one beyond RAM, page 0 of nothing much.
        let frames: Vec<u8> = [0x10u32, 0x11, 0x1_0000]
            .iter()
            .flat_map(|frame| frame.to_le_bytes())
            .collect();
        memory.write_slice(&frames, GuestAddress(0x8000)).unwrap();
        let inflate = queue_with(&memory, 0x1000, &[(0x8000, frames.len() as u32, 0)]);
        let deflate = queue_with(&memory, 0x2000, &[]);
        // Report: pages 0x14-0x15 as one range, an unaligned range, one crossing the end.
        let report = queue_with(
            &memory,
            0x3000,
            &[
                (
                    0x14 * BALLOON_PAGE,
                    2 * BALLOON_PAGE as u32,
                    VIRTQ_DESC_F_WRITE,
                ),
                (
                    0x18 * BALLOON_PAGE + 8,
                    BALLOON_PAGE as u32,
                    VIRTQ_DESC_F_WRITE,
                ),
                (
                    RAM as u64 - BALLOON_PAGE,
                    2 * BALLOON_PAGE as u32,
                    VIRTQ_DESC_F_WRITE,
                ),
            ],
        );
        let control = Arc::new(BalloonControl::default());
        let served = serve_once(
            memory.clone(),
            vec![inflate, deflate, report],
            control.clone(),
        )
        .unwrap();
        assert_eq!(
            served, 2,
            "the inflate and report chains (deflate was empty)"
        );
        for page in [0x10, 0x11, 0x14, 0x15] {
            assert!(
                page_is(&memory, page * BALLOON_PAGE, 0),
                "page {page:#x} given back"
            );
        }
        for page in [0x12, 0x13, 0x16, 0x18, 0x19] {
            assert!(
                page_is(&memory, page * BALLOON_PAGE, 0xaa),
                "page {page:#x} kept"
            );
        }
        assert_eq!(control.given_back_bytes(), 4 * BALLOON_PAGE);
    }

    #[test]
    fn frames_are_given_back_in_runs() {
        assert_eq!(
            runs(vec![7, 5, 6, 6, 10, 1, 2]),
            vec![(1, 2), (5, 3), (10, 1)]
        );
        assert!(runs(Vec::new()).is_empty());
    }

    #[test]
    fn the_configuration_is_the_target_and_what_the_guest_has() {
        let control = Arc::new(BalloonControl::default());
        let mut balloon = Balloon::new(control.clone(), GiveBack::DropPrivate);
        control.set_target(0x1234);
        let mut data = [0u8; 4];
        balloon.read_config(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x1234);
        balloon.write_config(4, &7u32.to_le_bytes());
        balloon.write_config(0, &9u32.to_le_bytes());
        assert_eq!(control.actual_pages(), 7);
        assert_eq!(control.target_pages(), 0x1234, "the target is the host's");
        let mut tail = [0xffu8; 4];
        balloon.read_config(6, &mut tail);
        assert_eq!(tail, [0, 0, 0, 0]);
    }
}
