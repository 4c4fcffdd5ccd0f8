//! virtio-net over a tap: queue 0 receives (tap to guest), queue 1 transmits.
//!
//! Offered: VERSION_1 and MAC (the address the engine chose, in the config space). No
//! offloads and no mergeable receive buffers: every frame is a 12-byte header and at most
//! [`MAX_FRAME`] bytes, copied whole between the tap and one descriptor chain. A frame
//! from the guest that is shorter than the header or longer than the limit is dropped;
//! a frame from the tap that does not fit the guest's buffer is dropped.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    positions, snapshot_worker, Activation, ActiveQueue, Interrupt, VirtioDevice, WorkerLoop,
    WorkerThread, VIRTIO_F_VERSION_1,
};
use crate::devices::tap::{Tap, VNET_HEADER_SIZE};
use crate::snapshot::{DeviceSnapshot, DeviceState};
use crate::VmmError;

pub const DEVICE_TYPE_NET: u16 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const QUEUE_SIZE: u16 = 256;
const RECEIVE: usize = 0;
const TRANSMIT: usize = 1;
/// Largest frame with its header (an Ethernet frame of MTU 1500 with a VLAN tag fits).
pub const MAX_FRAME: usize = VNET_HEADER_SIZE + 1522;
/// Frames read from the tap and held for want of guest buffers.
const MAX_HELD_FRAMES: usize = 64;

const TOKEN_RECEIVE: u64 = 0;
const TOKEN_TRANSMIT: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Traffic counters, for `docker stats`.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub received_bytes: AtomicU64,
    pub transmitted_bytes: AtomicU64,
}

/// A virtio-net card.
pub struct Net {
    mac: [u8; 6],
    tap: Option<Tap>,
    counters: Arc<NetCounters>,
    worker: Option<WorkerThread<Worker>>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], counters: Arc<NetCounters>) -> Self {
        Self {
            mac,
            tap: Some(tap),
            counters,
            worker: None,
        }
    }
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_NET
    }

    fn pci_class(&self) -> u32 {
        0x02_00_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + index).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VmmError> {
        if activation.queues.len() != 2 {
            return Err(VmmError::Device("virtio-net needs its two queues".into()));
        }
        let Some(tap) = self.tap.take() else {
            return Err(VmmError::Device("the tap is already in use".into()));
        };
        let worker = Worker {
            memory: activation.memory,
            queues: activation.queues,
            interrupt: activation.interrupt,
            tap,
            held: VecDeque::new(),
            counters: self.counters.clone(),
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
        };
        self.worker = Some(WorkerThread::spawn("virtio-net", worker)?);
        Ok(())
    }

    fn save(&mut self) -> Result<DeviceSnapshot, VmmError> {
        snapshot_worker(&mut self.worker, "virtio-net")
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take().and_then(WorkerThread::stop) {
            self.tap = Some(worker.tap);
        }
    }
}

struct Worker {
    memory: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    interrupt: Interrupt,
    tap: Tap,
    held: VecDeque<Vec<u8>>,
    counters: Arc<NetCounters>,
    stop: EventFd,
}

/// Moves `frames` (each with its header, as read from a tap) into the receive queue and
/// the transmit queue's frames into `tap`, once, on the calling thread. Used by the
/// fuzzing harness.
pub fn serve_once(
    memory: GuestMemoryMmap,
    receive: virtio_queue::Queue,
    transmit: virtio_queue::Queue,
    tap: Tap,
    frames: Vec<Vec<u8>>,
) -> Result<(), VmmError> {
    let mut queues = Vec::new();
    for queue in [receive, transmit] {
        queues.push(ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
            vector: 0,
        });
    }
    let mut worker = Worker {
        memory,
        queues,
        interrupt: Interrupt::detached(3),
        tap,
        held: frames.into_iter().take(MAX_HELD_FRAMES).collect(),
        counters: Arc::new(NetCounters::default()),
        stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
    };
    worker.transmit();
    worker.deliver();
    Ok(())
}

impl WorkerLoop for Worker {
    fn run(&mut self) {
        self.serve_until_stopped();
    }

    fn stop_event(&self) -> &EventFd {
        &self.stop
    }

    /// Frames held for the guest are not kept: a restored VM starts with none.
    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            state: DeviceState::Net,
            positions: positions(&self.queues),
        }
    }
}

impl Worker {
    fn serve_until_stopped(&mut self) {
        let Ok(epoll) = Epoll::new() else {
            return;
        };
        for (fd, token) in [
            (self.queues[RECEIVE].notify.as_raw_fd(), TOKEN_RECEIVE),
            (self.queues[TRANSMIT].notify.as_raw_fd(), TOKEN_TRANSMIT),
            (self.stop.as_raw_fd(), TOKEN_STOP),
        ] {
            let _ = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            );
        }
        let mut tap_watched = false;
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            // Read the tap only while frames can be held.
            let want_tap = self.held.len() < MAX_HELD_FRAMES;
            if want_tap != tap_watched {
                let operation = if want_tap {
                    ControlOperation::Add
                } else {
                    ControlOperation::Delete
                };
                let _ = epoll.ctl(
                    operation,
                    self.tap.file.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_TAP),
                );
                tap_watched = want_tap;
            }
            let count = match epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for event in &events[..count] {
                match event.data() {
                    TOKEN_STOP => return,
                    TOKEN_RECEIVE => {
                        let _ = self.queues[RECEIVE].notify.read();
                    }
                    TOKEN_TRANSMIT => {
                        let _ = self.queues[TRANSMIT].notify.read();
                    }
                    _ => self.read_tap(),
                }
            }
            self.transmit();
            self.deliver();
        }
    }

    fn read_tap(&mut self) {
        let mut frame = vec![0u8; MAX_FRAME];
        while self.held.len() < MAX_HELD_FRAMES {
            match self.tap.file.read(&mut frame) {
                Ok(length) if length > VNET_HEADER_SIZE => {
                    self.held.push_back(frame[..length].to_vec());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// Frames from the tap into the guest's receive buffers.
    fn deliver(&mut self) {
        let memory = self.memory.clone();
        let mut used = false;
        while let Some(frame) = self.held.front() {
            let queue = &mut self.queues[RECEIVE].queue;
            let Some(chain) = queue.pop_descriptor_chain(&memory) else {
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&memory) {
                Ok(mut writer) if writer.available_bytes() >= frame.len() => {
                    writer.write_all(frame).map(|()| frame.len()).unwrap_or(0)
                }
                _ => 0,
            };
            self.counters
                .received_bytes
                .fetch_add(written as u64, Ordering::Relaxed);
            let _ = queue.add_used(&memory, head, written as u32);
            used = true;
            self.held.pop_front();
        }
        if used {
            self.notify(RECEIVE);
        }
    }

    /// Frames from the guest out of the tap.
    fn transmit(&mut self) {
        let memory = self.memory.clone();
        let mut used = false;
        while let Some(chain) = self.queues[TRANSMIT].queue.pop_descriptor_chain(&memory) {
            let head = chain.head_index();
            if let Ok(mut reader) = chain.reader(&memory) {
                let length = reader.available_bytes();
                if (VNET_HEADER_SIZE..=MAX_FRAME).contains(&length) {
                    let mut frame = vec![0u8; length];
                    if reader.read_exact(&mut frame).is_ok() {
                        // A full tap queue drops the frame, as a busy wire would.
                        if self.tap.file.write(&frame).is_ok() {
                            self.counters
                                .transmitted_bytes
                                .fetch_add((length - VNET_HEADER_SIZE) as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            let _ = self.queues[TRANSMIT].queue.add_used(&memory, head, 0);
            used = true;
        }
        if used {
            self.notify(TRANSMIT);
        }
    }

    fn notify(&mut self, index: usize) {
        let queue = &mut self.queues[index];
        if queue.queue.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.queue(queue.vector);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
    }
}
