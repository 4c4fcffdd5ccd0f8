//! virtio-rng: one queue whose buffers the device fills from the host's `getrandom`, so
//! that the guest's kernel can seed and reseed its RNG from the host (each clone reads
//! its own bytes; the agent mixes fresh entropy into a clone besides).
//!
//! A buffer gets at most [`MAX_FILL`] bytes per request; a chain with no writable part
//! is returned empty.

use std::io::Write;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    positions, serve_one_queue_until_stopped, snapshot_worker, Activation, ActiveQueue, Interrupt,
    VirtioDevice, WorkerLoop, WorkerThread, VIRTIO_F_VERSION_1,
};
use crate::snapshot::{DeviceSnapshot, DeviceState};
use crate::VmmError;

pub const DEVICE_TYPE_RNG: u16 = 4;
const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one request.
pub const MAX_FILL: usize = 4096;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<WorkerThread<Worker>>,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_RNG
    }

    fn pci_class(&self) -> u32 {
        0x00_ff_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VmmError> {
        let mut queues = activation.queues;
        if queues.len() != 1 {
            return Err(VmmError::Device("virtio-rng needs its one queue".into()));
        }
        let worker = Worker {
            memory: activation.memory,
            queue: queues.remove(0),
            interrupt: activation.interrupt,
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
        };
        self.worker = Some(WorkerThread::spawn("virtio-rng", worker)?);
        Ok(())
    }

    fn save(&mut self) -> Result<DeviceSnapshot, VmmError> {
        snapshot_worker(&mut self.worker, "virtio-rng")
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// Fills the queue's buffers once, on the calling thread (the fuzzing harness drives it
/// this way); returns how many requests it served.
pub fn serve_once(memory: GuestMemoryMmap, queue: virtio_queue::Queue) -> Result<usize, VmmError> {
    let mut worker = Worker {
        memory,
        queue: ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
            vector: 0,
        },
        interrupt: Interrupt::detached(2),
        stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
    };
    Ok(worker.serve())
}

struct Worker {
    memory: GuestMemoryMmap,
    queue: ActiveQueue,
    interrupt: Interrupt,
    stop: EventFd,
}

impl WorkerLoop for Worker {
    fn run(&mut self) {
        let (Ok(notify), Ok(stop)) = (self.queue.notify.try_clone(), self.stop.try_clone()) else {
            return;
        };
        serve_one_queue_until_stopped(&notify, &stop, || {
            let _ = self.serve();
        });
    }

    fn stop_event(&self) -> &EventFd {
        &self.stop
    }

    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            state: DeviceState::Rng,
            positions: positions(std::slice::from_ref(&self.queue)),
        }
    }
}

impl Worker {
    fn serve(&mut self) -> usize {
        let memory = self.memory.clone();
        let mut served = 0;
        while let Some(chain) = self.queue.queue.pop_descriptor_chain(&memory) {
            let head = chain.head_index();
            let written = match chain.writer(&memory) {
                Ok(mut writer) => {
                    let length = writer.available_bytes().min(MAX_FILL);
                    let mut bytes = vec![0u8; length];
                    match getrandom(&mut bytes) {
                        Ok(()) => writer.write_all(&bytes).map(|()| length).unwrap_or(0),
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            let _ = self.queue.queue.add_used(&memory, head, written as u32);
            served += 1;
        }
        if served > 0 && self.queue.queue.needs_notification(&memory).unwrap_or(true) {
            self.interrupt.queue(self.queue.vector);
        }
        served
    }
}

/// Fills `buffer` from the kernel's CSPRNG.
fn getrandom(buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is valid
        // writable memory of that length.
        let read = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if read < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += read as usize;
    }
    Ok(())
}
