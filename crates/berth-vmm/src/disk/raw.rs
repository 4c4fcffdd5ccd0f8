//! A raw disk: the file is the disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::DiskImage;

pub struct RawDisk {
    file: File,
    capacity: u64,
}

impl RawDisk {
    pub fn new(file: File) -> io::Result<Self> {
        let capacity = file.metadata()?.len();
        Ok(Self { file, capacity })
    }
}

impl DiskImage for RawDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    fn write_at(&mut self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buffer, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
