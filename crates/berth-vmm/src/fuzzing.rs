//! Harnesses that feed untrusted bytes to the code that parses what a guest (or a disk
//! image) hands the VMM: virtqueues and the requests in them, and qcow2 metadata.
//!
//! Each harness turns its input into guest memory and queue registers (or an image
//! file) and runs the device's real request handling once. They must never panic or
//! touch memory outside the guest's: the cargo-fuzz targets in `fuzz/` run them under
//! libFuzzer, and this crate's tests run them over generated inputs on every build.
//!
//! Queue input layout (little-endian), per queue: `size_log2: u8`, then `desc, avail,
//! used: u16` (each times 4 is the guest address, so some fall outside the 64 KiB of
//! guest memory); after the queues, the bytes of guest memory from address 0.

use std::fs::File;
use std::io::Write;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::tap::Tap;
use crate::disk::qcow2::Qcow2Disk;
use crate::disk::DiskImage;

/// Guest memory of every harness.
pub const MEMORY_SIZE: usize = 64 * 1024;
const QUEUE_HEADER: usize = 7;

/// A disk held in memory.
pub struct MemoryDisk(pub Vec<u8>);

impl DiskImage for MemoryDisk {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = offset as usize;
        buffer.copy_from_slice(&self.0[start..start + buffer.len()]);
        Ok(())
    }

    fn write_at(&mut self, buffer: &[u8], offset: u64) -> std::io::Result<()> {
        let start = offset as usize;
        self.0[start..start + buffer.len()].copy_from_slice(buffer);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds `count` queues and guest memory from `data`; `None` when the input is too
/// short or a queue would not pass the transport's activation check.
fn queues_and_memory(data: &[u8], count: usize) -> Option<(Vec<Queue>, GuestMemoryMmap, &[u8])> {
    let header = count * QUEUE_HEADER;
    if data.len() < header {
        return None;
    }
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).ok()?;
    let contents = &data[header..];
    let image = &contents[..contents.len().min(MEMORY_SIZE)];
    memory.write_slice(image, GuestAddress(0)).ok()?;
    let mut queues = Vec::new();
    for index in 0..count {
        let field = &data[index * QUEUE_HEADER..(index + 1) * QUEUE_HEADER];
        let address = |at: usize| u32::from(u16::from_le_bytes([field[at], field[at + 1]])) * 4;
        let mut queue = Queue::new(256).ok()?;
        queue.set_size(1 << (field[0] % 9));
        queue.set_desc_table_address(Some(address(1)), Some(0));
        queue.set_avail_ring_address(Some(address(3)), Some(0));
        queue.set_used_ring_address(Some(address(5)), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&memory) {
            return None;
        }
        queues.push(queue);
    }
    Some((queues, memory, &contents[image.len()..]))
}

/// virtio-blk requests over a 64 KiB disk (its first bytes: what follows guest memory).
/// Returns how many requests were served.
pub fn block_requests(data: &[u8]) -> usize {
    let Some((mut queues, memory, rest)) = queues_and_memory(data, 1) else {
        return 0;
    };
    let mut disk = vec![0u8; 64 * 1024];
    let length = rest.len().min(disk.len());
    disk[..length].copy_from_slice(&rest[..length]);
    let read_only = data.first().is_some_and(|byte| byte & 0x80 != 0);
    crate::virtio::block::serve_once(
        memory,
        queues.remove(0),
        Box::new(MemoryDisk(disk)),
        read_only,
    )
    .unwrap_or(0)
}

/// virtio-rng buffers filled from the host. Returns how many requests were served.
pub fn rng_queue(data: &[u8]) -> usize {
    let Some((mut queues, memory, _)) = queues_and_memory(data, 1) else {
        return 0;
    };
    crate::virtio::rng::serve_once(memory, queues.remove(0)).unwrap_or(0)
}

/// virtio-balloon inflate, deflate and reporting queues: page frames and free ranges the
/// guest hands over, given back from the harness's own guest memory. Returns how many
/// buffers were returned.
pub fn balloon_queues(data: &[u8]) -> usize {
    let Some((queues, memory, _)) = queues_and_memory(data, 3) else {
        return 0;
    };
    let control = std::sync::Arc::new(crate::virtio::balloon::BalloonControl::default());
    crate::virtio::balloon::serve_once(memory, queues, control).unwrap_or(0)
}

/// virtio-console control and port queues, with what follows guest memory pending from
/// the host.
pub fn console_queues(data: &[u8]) {
    let Some((queues, memory, rest)) = queues_and_memory(data, 4) else {
        return;
    };
    let _ = crate::virtio::console::serve_once(memory, queues, rest);
}

/// virtio-net transmit (frames out to a sink) and receive (what follows guest memory,
/// cut into frames at every 0xff byte).
pub fn net_queues(data: &[u8]) {
    let Some((mut queues, memory, rest)) = queues_and_memory(data, 2) else {
        return;
    };
    let Ok(sink) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    let frames = rest
        .split(|byte| *byte == 0xff)
        .map(|frame| {
            let mut with_header = vec![0u8; crate::devices::tap::VNET_HEADER_SIZE];
            with_header.extend_from_slice(frame);
            with_header
        })
        .collect();
    let transmit = queues.remove(1);
    let receive = queues.remove(0);
    let _ = crate::virtio::net::serve_once(memory, receive, transmit, Tap { file: sink }, frames);
}

/// A qcow2 image: the input's first 16 bytes choose a read and a write offset, the rest
/// is the image file (its backing file, if it names one, does not exist).
pub fn qcow2_image(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let read_offset = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let write_offset = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let Ok(mut file) = tempfile_in_memory() else {
        return;
    };
    if file.write_all(&data[16..]).is_err() {
        return;
    }
    let Ok(mut disk) =
        Qcow2Disk::open(file, std::path::Path::new("/nonexistent/fuzz.qcow2"), false)
    else {
        return;
    };
    let capacity = disk.capacity();
    if capacity == 0 {
        return;
    }
    let mut buffer = vec![0u8; 4096];
    let at = read_offset % capacity;
    let length = (capacity - at).min(buffer.len() as u64) as usize;
    let _ = disk.read_at(&mut buffer[..length], at);
    let at = write_offset % capacity;
    let length = (capacity - at).min(512) as usize;
    // A write allocates at most an L2 table, a refcount block and a data cluster.
    let _ = disk.write_at(&buffer[..length], at);
}

/// An anonymous in-memory file (memfd).
fn tempfile_in_memory() -> std::io::Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the returned
    // descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"berth-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic inputs, the same on every run.
    struct Generator(u64);

    impl Generator {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, limit: u64) -> u64 {
            self.next() % limit
        }

        fn bytes(&mut self, length: usize) -> Vec<u8> {
            (0..length).map(|_| self.next() as u8).collect()
        }
    }

    /// Queues laid out where they fit, with descriptor chains of random shape pointing
    /// mostly into guest memory: inputs that reach the request parsers.
    fn structured(generator: &mut Generator, queues: usize) -> Vec<u8> {
        let mut header = Vec::new();
        let mut memory = generator.bytes(MEMORY_SIZE);
        for queue in 0..queues {
            let size_log2 = 1 + generator.below(6) as u8;
            let size = 1usize << size_log2;
            let desc = 0x1000 + queue * 0x1800;
            let avail = desc + 0x1000;
            let used = desc + 0x1400;
            header.push(size_log2);
            for address in [desc, avail, used] {
                header.extend_from_slice(&((address / 4) as u16).to_le_bytes());
            }
            for index in 0..size {
                let at = desc + index * 16;
                let address = if generator.below(16) == 0 {
                    generator.next()
                } else {
                    0x8000 + generator.below(0x7000)
                };
                let length = if generator.below(16) == 0 {
                    generator.next() as u32
                } else {
                    generator.below(3000) as u32
                };
                let flags = generator.below(4) as u16;
                let next = generator.below(size as u64 + 1) as u16;
                memory[at..at + 8].copy_from_slice(&address.to_le_bytes());
                memory[at + 8..at + 12].copy_from_slice(&length.to_le_bytes());
                memory[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
                memory[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
            }
            memory[avail..avail + 2].copy_from_slice(&0u16.to_le_bytes());
            let ready = generator.below(size as u64 * 2) as u16;
            memory[avail + 2..avail + 4].copy_from_slice(&ready.to_le_bytes());
            for slot in 0..size {
                let head = generator.below(size as u64 + 2) as u16;
                memory[avail + 4 + slot * 2..avail + 6 + slot * 2]
                    .copy_from_slice(&head.to_le_bytes());
            }
            memory[used..used + 4].fill(0);
        }
        // Block requests: make some headers plausible (type 0, 1, 4 or 8).
        for at in (0x8000..0xf000).step_by(512) {
            if generator.below(2) == 0 {
                let kind = [0u32, 1, 4, 8, 99][generator.below(5) as usize];
                memory[at..at + 4].copy_from_slice(&kind.to_le_bytes());
                let sector = generator.below(200);
                memory[at + 8..at + 16].copy_from_slice(&sector.to_le_bytes());
            }
        }
        header.extend_from_slice(&memory);
        let tail = generator.below(4096) as usize;
        header.extend_from_slice(&generator.bytes(tail));
        header
    }

    #[test]
    fn queue_harnesses_survive_generated_inputs() {
        let mut generator = Generator(0x9e37_79b9_7f4a_7c15);
        let mut served = 0;
        for _ in 0..300 {
            let length = generator.below(2048) as usize;
            let random = generator.bytes(length);
            block_requests(&random);
            console_queues(&random);
            net_queues(&random);
            served += block_requests(&structured(&mut generator, 1));
            rng_queue(&random);
            rng_queue(&structured(&mut generator, 1));
            console_queues(&structured(&mut generator, 4));
            net_queues(&structured(&mut generator, 2));
            balloon_queues(&random);
            balloon_queues(&structured(&mut generator, 3));
        }
        // The generated queues are valid often enough to reach the request parser.
        assert!(served > 100, "only {served} block requests were served");
    }

    #[test]
    fn qcow2_harness_survives_damaged_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.qcow2");
        let output = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("8M")
            .output()
            .expect("qemu-img");
        assert!(output.status.success());
        let seed = std::fs::read(&path).unwrap();
        let mut generator = Generator(0x1234_5678_9abc_def1);
        for _ in 0..300 {
            let mut image = seed.clone();
            for _ in 0..1 + generator.below(8) {
                let at = generator.below(image.len() as u64) as usize;
                image[at] = generator.next() as u8;
            }
            let mut input = generator.bytes(16);
            input.extend_from_slice(&image);
            qcow2_image(&input);
        }
        let mut intact = vec![0u8; 16];
        intact.extend_from_slice(&seed);
        qcow2_image(&intact);
    }
}
