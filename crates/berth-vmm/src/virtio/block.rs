//! virtio-blk: one request queue served by a worker thread over a [`DiskImage`].
//!
//! A request is a descriptor chain: a 16-byte header the device reads
//! (`type: u32, reserved: u32, sector: u64`), the data (read by the device for writes,
//! written by it for reads), and one status byte the device writes last (0 OK, 1 I/O
//! error, 2 unsupported). Types served: IN (read), OUT (write), FLUSH, GET_ID (the disk's
//! serial, 20 bytes). A request whose range leaves the disk, whose chain is malformed,
//! or that writes a read-only disk fails with status 1; the device goes on.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    positions, serve_one_queue_until_stopped, snapshot_worker, Activation, ActiveQueue, Interrupt,
    VirtioDevice, WorkerLoop, WorkerThread, VIRTIO_F_VERSION_1,
};
use crate::disk::DiskImage;
use crate::snapshot::{DeviceSnapshot, DeviceState};
use crate::VmmError;

pub const DEVICE_TYPE_BLOCK: u16 = 2;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZE: u16 = 256;
const SECTOR_SHIFT: u64 = 9;
/// Most data segments in one request (the config's `seg_max`).
const SEGMENTS_MAX: u32 = 126;
/// Largest request the device accepts (bytes); a guest asking more gets an error.
const REQUEST_MAX: usize = 4 << 20;

const REQUEST_IN: u32 = 0;
const REQUEST_OUT: u32 = 1;
const REQUEST_FLUSH: u32 = 4;
const REQUEST_GET_ID: u32 = 8;
const STATUS_OK: u8 = 0;
const STATUS_IO_ERROR: u8 = 1;
const STATUS_UNSUPPORTED: u8 = 2;
const SERIAL_LENGTH: usize = 20;

/// Bytes and requests served, for `docker stats`.
#[derive(Debug, Default)]
pub struct BlockCounters {
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub read_operations: AtomicU64,
    pub write_operations: AtomicU64,
}

/// A virtio-blk disk.
pub struct Block {
    disk: Option<Box<dyn DiskImage>>,
    capacity: u64,
    read_only: bool,
    serial: [u8; SERIAL_LENGTH],
    counters: Arc<BlockCounters>,
    worker: Option<WorkerThread<Worker>>,
}

impl Block {
    pub fn new(
        disk: Box<dyn DiskImage>,
        read_only: bool,
        serial: Option<&str>,
        counters: Arc<BlockCounters>,
    ) -> Self {
        let mut serial_bytes = [0u8; SERIAL_LENGTH];
        if let Some(serial) = serial {
            let bytes = serial.as_bytes();
            let length = bytes.len().min(SERIAL_LENGTH);
            serial_bytes[..length].copy_from_slice(&bytes[..length]);
        }
        Self {
            capacity: disk.capacity(),
            disk: Some(disk),
            read_only,
            serial: serial_bytes,
            counters,
            worker: None,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_BLOCK
    }

    fn pci_class(&self) -> u32 {
        0x01_80_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let read_only = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | read_only
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (sectors) u64, size_max u32, seg_max u32.
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&(self.capacity >> SECTOR_SHIFT).to_le_bytes());
        config[12..16].copy_from_slice(&SEGMENTS_MAX.to_le_bytes());
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + index).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VmmError> {
        let Some(disk) = self.disk.take() else {
            return Err(VmmError::Device("the disk is already in use".into()));
        };
        let mut queues = activation.queues;
        if queues.len() != 1 {
            self.disk = Some(disk);
            return Err(VmmError::Device("virtio-blk needs its one queue".into()));
        }
        let worker = Worker {
            memory: activation.memory,
            queue: queues.remove(0),
            interrupt: activation.interrupt,
            disk,
            read_only: self.read_only,
            serial: self.serial,
            counters: self.counters.clone(),
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
        };
        self.worker = Some(WorkerThread::spawn("virtio-blk", worker)?);
        Ok(())
    }

    fn save(&mut self) -> Result<DeviceSnapshot, VmmError> {
        snapshot_worker(&mut self.worker, "virtio-blk")
    }

    fn config_changed_since(&self, saved: &DeviceState) -> bool {
        matches!(saved, DeviceState::Block { capacity } if *capacity != self.capacity)
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take().and_then(WorkerThread::stop) {
            self.disk = Some(worker.disk);
        }
    }

    /// The worker is stopped between two requests, takes the new disk and goes on from
    /// the same queue position; requests the guest queued meanwhile wait in the queue.
    fn replace_disk(&mut self, disk: Box<dyn DiskImage>) -> Result<(), VmmError> {
        if disk.capacity() != self.capacity {
            return Err(VmmError::Device(format!(
                "the new disk has {} bytes; the guest was told {}",
                disk.capacity(),
                self.capacity
            )));
        }
        match self.worker.take() {
            Some(thread) => {
                let mut worker = thread
                    .stop()
                    .ok_or_else(|| VmmError::Device("the virtio-blk worker is gone".into()))?;
                worker.disk = disk;
                self.worker = Some(WorkerThread::spawn("virtio-blk", worker)?);
            }
            None => self.disk = Some(disk),
        }
        Ok(())
    }
}

struct Worker {
    memory: GuestMemoryMmap,
    queue: ActiveQueue,
    interrupt: Interrupt,
    disk: Box<dyn DiskImage>,
    read_only: bool,
    serial: [u8; SERIAL_LENGTH],
    counters: Arc<BlockCounters>,
    stop: EventFd,
}

/// Serves the requests in `queue` once, on the calling thread, over `disk`: what the
/// worker does on each notification (the fuzzing harness drives it this way). Returns
/// how many requests it served.
pub fn serve_once(
    memory: GuestMemoryMmap,
    queue: virtio_queue::Queue,
    disk: Box<dyn DiskImage>,
    read_only: bool,
) -> Result<usize, VmmError> {
    let mut worker = Worker {
        memory,
        queue: ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
            vector: 0,
        },
        interrupt: Interrupt::detached(2),
        disk,
        read_only,
        serial: *b"fuzzing-serial-01234",
        counters: Arc::new(BlockCounters::default()),
        stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
    };
    Ok(worker.serve())
}

impl WorkerLoop for Worker {
    fn run(&mut self) {
        self.serve_until_stopped();
    }

    fn stop_event(&self) -> &EventFd {
        &self.stop
    }

    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            state: DeviceState::Block {
                capacity: self.disk.capacity(),
            },
            positions: positions(std::slice::from_ref(&self.queue)),
        }
    }
}

impl Worker {
    fn serve_until_stopped(&mut self) {
        let (Ok(notify), Ok(stop)) = (self.queue.notify.try_clone(), self.stop.try_clone()) else {
            return;
        };
        serve_one_queue_until_stopped(&notify, &stop, || {
            let _ = self.serve();
        });
    }

    fn serve(&mut self) -> usize {
        // The worker's own handle on guest memory (regions are shared, not copied), so
        // that request buffers can borrow it while the worker changes its state.
        let memory = self.memory.clone();
        let mut served = 0;
        while let Some(chain) = self.queue.queue.pop_descriptor_chain(&memory) {
            let head = chain.head_index();
            let written = self.handle(&memory, chain);
            let _ = self.queue.queue.add_used(&memory, head, written);
            served += 1;
        }
        if served > 0
            && self
                .queue
                .queue
                .needs_notification(&self.memory)
                .unwrap_or(true)
        {
            self.interrupt.queue(self.queue.vector);
        }
        served
    }

    /// Serves one request; returns how many bytes it wrote into the chain.
    fn handle(
        &mut self,
        memory: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
        else {
            return 0;
        };
        // The status byte is the last writable byte.
        let Some(data_room) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(data_room) else {
            return 0;
        };
        let mut header = [0u8; 16];
        let (status, data_written) = if reader.read_exact(&mut header).is_err() {
            (STATUS_IO_ERROR, 0)
        } else {
            let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
            self.request(kind, sector, &mut reader, &mut writer, data_room)
        };
        let _ = status_writer.write_all(&[status]);
        (data_written + 1) as u32
    }

    fn range_ok(&self, sector: u64, length: usize) -> Option<u64> {
        let offset = sector.checked_mul(1 << SECTOR_SHIFT)?;
        let end = offset.checked_add(length as u64)?;
        (end <= self.disk.capacity() && length <= REQUEST_MAX).then_some(offset)
    }

    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        reader: &mut virtio_queue::Reader<'_>,
        writer: &mut virtio_queue::Writer<'_>,
        data_room: usize,
    ) -> (u8, usize) {
        match kind {
            REQUEST_IN => {
                let Some(offset) = self.range_ok(sector, data_room) else {
                    return (STATUS_IO_ERROR, 0);
                };
                let mut buffer = vec![0u8; data_room];
                if self.disk.read_at(&mut buffer, offset).is_err()
                    || writer.write_all(&buffer).is_err()
                {
                    return (STATUS_IO_ERROR, 0);
                }
                self.counters
                    .read_bytes
                    .fetch_add(data_room as u64, Ordering::Relaxed);
                self.counters
                    .read_operations
                    .fetch_add(1, Ordering::Relaxed);
                (STATUS_OK, data_room)
            }
            REQUEST_OUT => {
                let length = reader.available_bytes();
                let Some(offset) = self.range_ok(sector, length) else {
                    return (STATUS_IO_ERROR, 0);
                };
                if self.read_only {
                    return (STATUS_IO_ERROR, 0);
                }
                let mut buffer = vec![0u8; length];
                if reader.read_exact(&mut buffer).is_err()
                    || self.disk.write_at(&buffer, offset).is_err()
                {
                    return (STATUS_IO_ERROR, 0);
                }
                self.counters
                    .write_bytes
                    .fetch_add(length as u64, Ordering::Relaxed);
                self.counters
                    .write_operations
                    .fetch_add(1, Ordering::Relaxed);
                (STATUS_OK, 0)
            }
            REQUEST_FLUSH => match self.disk.flush() {
                Ok(()) => (STATUS_OK, 0),
                Err(_) => (STATUS_IO_ERROR, 0),
            },
            REQUEST_GET_ID => {
                let length = data_room.min(SERIAL_LENGTH);
                match writer.write_all(&self.serial[..length]) {
                    Ok(()) => (STATUS_OK, length),
                    Err(_) => (STATUS_IO_ERROR, 0),
                }
            }
            _ => (STATUS_UNSUPPORTED, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::MemoryDisk;

    #[test]
    fn a_disk_of_another_size_than_the_snapshots_is_a_config_change() {
        let block = Block::new(
            Box::new(MemoryDisk(vec![0; 8192])),
            false,
            Some("serial"),
            Arc::new(BlockCounters::default()),
        );
        assert!(!block.config_changed_since(&DeviceState::Block { capacity: 8192 }));
        assert!(block.config_changed_since(&DeviceState::Block { capacity: 4096 }));
        assert!(!block.config_changed_since(&DeviceState::Net));
        let mut config = [0u8; 8];
        block.read_config(0, &mut config);
        assert_eq!(
            u64::from_le_bytes(config),
            8192 / 512,
            "capacity in sectors"
        );
    }

    #[test]
    fn a_disk_is_replaced_only_by_one_of_the_same_capacity() {
        let mut block = Block::new(
            Box::new(MemoryDisk(vec![0; 8192])),
            false,
            None,
            Arc::new(BlockCounters::default()),
        );
        let error = block
            .replace_disk(Box::new(MemoryDisk(vec![0; 4096])))
            .unwrap_err();
        assert!(error.to_string().contains("4096"), "{error}");
        block
            .replace_disk(Box::new(MemoryDisk(vec![7; 8192])))
            .unwrap();
        let mut byte = [0u8; 1];
        block
            .disk
            .as_mut()
            .unwrap()
            .read_at(&mut byte, 100)
            .unwrap();
        assert_eq!(byte, [7], "the new disk serves");
    }
}
