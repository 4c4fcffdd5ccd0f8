//! Disk images behind virtio-blk: raw files and qcow2 (the per-container copy-on-write
//! disk Berth makes with `qemu-img create -f qcow2 -F raw -b IMAGE.ext4`).

pub mod qcow2;
pub mod raw;

use std::io;
use std::path::Path;

use crate::config::DiskFormat;

/// Random access to a disk's virtual contents.
pub trait DiskImage: Send {
    /// The virtual size in bytes.
    fn capacity(&self) -> u64;
    /// Fills `buffer` from virtual offset `offset`; the range lies within the capacity.
    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buffer` at virtual offset `offset`; the range lies within the capacity.
    fn write_at(&mut self, buffer: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// Opens `path` as `format`, read-only or read-write.
pub fn open(path: &Path, format: DiskFormat, read_only: bool) -> io::Result<Box<dyn DiskImage>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(match format {
        DiskFormat::Raw => Box::new(raw::RawDisk::new(file)?),
        DiskFormat::Qcow2 => Box::new(qcow2::Qcow2Disk::open(file, path, read_only)?),
    })
}
