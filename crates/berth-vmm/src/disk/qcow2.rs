//! qcow2, as much of it as a container's disk uses: version 2 or 3, no encryption, no
//! compressed clusters, no internal snapshots, no external data file or extended L2
//! entries, and an optional raw backing file.
//!
//! Written here because no maintained crate offers a synchronous, read-write qcow2 with
//! backing files; the format (QEMU's docs/interop/qcow2.txt) is, in short, big-endian:
//!
//! ```text
//! header: magic "QFI\xfb", version, backing file name (offset, size), cluster_bits,
//!         virtual size, crypt method, L1 size and offset, refcount table offset and
//!         clusters, snapshots; v3 adds feature bits, refcount_order, header length,
//!         then header extensions (0xe2792aca: the backing file's format)
//! L1 table: one u64 per L2 table (bits 9-55 its offset, bit 63 "refcount is 1")
//! L2 table: one u64 per cluster (bits 9-55 its offset, bit 62 compressed,
//!           bit 63 "refcount is 1", bit 0 (v3) "reads as zeros")
//! refcount table: one u64 per refcount block; a block holds 2^refcount_order-bit counts
//! ```
//!
//! Writes allocate clusters at the end of the file (copying the rest of the cluster from
//! the backing file or the old cluster), then set their refcount, then point the L2 entry
//! at them: a crash in between leaks a cluster, it never maps one that is not written.
//! Everything read from the file is checked (offsets inside the file's bounds and
//! cluster-aligned, sizes sane): a damaged image is an I/O error, not a wild access.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::DiskImage;

const MAGIC: u32 = 0x5146_49fb;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO_CLUSTER: u64 = 1;
const EXTENSION_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Incompatible feature bits: dirty, corrupt, external data file, compression type,
/// extended L2. Only "compression type" is tolerated (no compressed cluster is read).
const INCOMPATIBLE_TOLERATED: u64 = 1 << 3;
const MAX_CLUSTER_BITS: u32 = 21;
const MIN_CLUSTER_BITS: u32 = 9;

/// Where a backing file named `name` in the image at `path` is: relative names are
/// relative to the image's directory.
fn resolve_backing(path: &Path, name: &str) -> PathBuf {
    match Path::new(name) {
        absolute if absolute.is_absolute() => absolute.to_path_buf(),
        relative => path.parent().unwrap_or(Path::new(".")).join(relative),
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// An open qcow2 image.
pub struct Qcow2Disk {
    file: File,
    read_only: bool,
    cluster_bits: u32,
    virtual_size: u64,
    l1_offset: u64,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    refcount_table: Vec<u64>,
    refcount_table_base: u64,
    refcount_order: u32,
    /// Where the next allocated cluster goes (the cluster-aligned end of the file).
    next_cluster: u64,
    backing: Option<File>,
    backing_size: u64,
}

impl Qcow2Disk {
    /// Opens `file` (named `path`, for a relative backing file name).
    pub fn open(file: File, path: &Path, read_only: bool) -> io::Result<Self> {
        Self::open_with(file, read_only, |name| {
            let backing_path = resolve_backing(path, name);
            File::open(&backing_path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("backing file {}: {e}", backing_path.display()),
                )
            })
        })
    }

    /// Opens `file` over `backing`, opened already (a VMM that runs opens no file): the
    /// image must name a backing file exactly when one is given.
    pub fn open_over(file: File, read_only: bool, backing: Option<File>) -> io::Result<Self> {
        let given = backing.is_some();
        let disk = Self::open_with(file, read_only, |_| {
            backing.ok_or_else(|| invalid("the image has a backing file, and none was given"))
        })?;
        if given && disk.backing.is_none() {
            return Err(invalid(
                "a backing file was given for an image that has none",
            ));
        }
        Ok(disk)
    }

    /// The backing file `file` (named `path`) names, if any, without opening it.
    pub fn backing_path(file: &File, path: &Path) -> io::Result<Option<PathBuf>> {
        let mut named = None;
        let opened = Self::open_with(file.try_clone()?, true, |name| {
            named = Some(resolve_backing(path, name));
            Err(io::Error::other("not opened"))
        });
        match (opened, named) {
            (_, Some(path)) => Ok(Some(path)),
            (Ok(_), None) => Ok(None),
            (Err(error), None) => Err(error),
        }
    }

    /// Opens `file`, calling `open_backing` with the backing file name the image gives.
    fn open_with(
        file: File,
        read_only: bool,
        open_backing: impl FnOnce(&str) -> io::Result<File>,
    ) -> io::Result<Self> {
        let mut header = vec![0u8; 112];
        let file_size = file.metadata()?.len();
        let readable = (file_size as usize).min(header.len());
        file.read_exact_at(&mut header[..readable], 0)?;
        if readable < 72 || be_u32(&header, 0) != MAGIC {
            return Err(invalid("not a qcow2 image"));
        }
        let version = be_u32(&header, 4);
        if version != 2 && version != 3 {
            return Err(invalid(format!("qcow2 version {version} is not supported")));
        }
        let cluster_bits = be_u32(&header, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(format!(
                "cluster_bits {cluster_bits} is out of range"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if be_u32(&header, 32) != 0 {
            return Err(invalid("encrypted qcow2 images are not supported"));
        }
        let virtual_size = be_u64(&header, 24);
        let l1_size = be_u32(&header, 36) as u64;
        let l1_offset = be_u64(&header, 40);
        let refcount_table_offset = be_u64(&header, 48);
        let refcount_table_clusters = be_u32(&header, 56) as u64;
        let (refcount_order, header_length) = if version == 3 {
            let incompatible = be_u64(&header, 72);
            if incompatible & !INCOMPATIBLE_TOLERATED != 0 {
                return Err(invalid(format!(
                    "qcow2 incompatible features {incompatible:#x} are not supported"
                )));
            }
            (be_u32(&header, 96), be_u32(&header, 100) as u64)
        } else {
            (4, 72)
        };
        if refcount_order > 6 {
            return Err(invalid(format!(
                "refcount_order {refcount_order} is invalid"
            )));
        }
        let entries_per_l2 = cluster_size / 8;
        let needed_l1 = virtual_size.div_ceil(cluster_size * entries_per_l2);
        if l1_size < needed_l1 || l1_size > (32 << 20) / 8 {
            return Err(invalid(format!(
                "L1 size {l1_size} does not fit the disk size"
            )));
        }
        let check_table = |offset: u64, bytes: u64, what: &str| -> io::Result<()> {
            if !offset.is_multiple_of(cluster_size)
                || offset.checked_add(bytes).is_none_or(|end| end > file_size)
            {
                return Err(invalid(format!("the {what} lies outside the image")));
            }
            Ok(())
        };
        check_table(l1_offset, l1_size * 8, "L1 table")?;
        check_table(
            refcount_table_offset,
            refcount_table_clusters * cluster_size,
            "refcount table",
        )?;
        let l1 = read_table(&file, l1_offset, l1_size as usize)?;
        let refcount_table = read_table(
            &file,
            refcount_table_offset,
            (refcount_table_clusters * cluster_size / 8) as usize,
        )?;

        let backing_offset = be_u64(&header, 8);
        let backing_length = be_u32(&header, 16) as u64;
        let (backing, backing_size) = if backing_offset == 0 {
            (None, 0)
        } else {
            if backing_length == 0
                || backing_length > 1023
                || backing_offset
                    .checked_add(backing_length)
                    .is_none_or(|end| end > cluster_size)
            {
                return Err(invalid("the backing file name is malformed"));
            }
            let mut name = vec![0u8; backing_length as usize];
            file.read_exact_at(&mut name, backing_offset)?;
            let name = String::from_utf8(name)
                .map_err(|_| invalid("the backing file name is not UTF-8"))?;
            if let Some(format) = backing_format(&file, header_length.max(72), backing_offset)? {
                if format != "raw" {
                    return Err(invalid(format!(
                        "backing file format {format} is not supported (raw only)"
                    )));
                }
            }
            let backing = open_backing(&name)?;
            let size = backing.metadata()?.len();
            (Some(backing), size)
        };
        Ok(Self {
            file,
            read_only,
            cluster_bits,
            virtual_size,
            l1_offset,
            l1,
            l2_cache: HashMap::new(),
            refcount_table,
            refcount_table_base: refcount_table_offset,
            refcount_order,
            next_cluster: file_size.div_ceil(cluster_size) * cluster_size,
            backing,
            backing_size,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn entries_per_l2(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// A cluster offset read from the image, checked.
    fn checked_cluster(&self, entry: u64, what: &str) -> io::Result<u64> {
        let offset = entry & OFFSET_MASK;
        if !offset.is_multiple_of(self.cluster_size())
            || offset + self.cluster_size() > self.next_cluster
        {
            return Err(invalid(format!(
                "{what} points outside the image ({offset:#x})"
            )));
        }
        Ok(offset)
    }

    fn l2_table(&mut self, l2_offset: u64) -> io::Result<&mut Vec<u64>> {
        if !self.l2_cache.contains_key(&l2_offset) {
            // Bound the cache: a container disk touches few L2 tables, but a guest can
            // walk all of them.
            if self.l2_cache.len() >= 1024 {
                self.l2_cache.clear();
            }
            let table = read_table(&self.file, l2_offset, self.entries_per_l2() as usize)?;
            self.l2_cache.insert(l2_offset, table);
        }
        Ok(self.l2_cache.get_mut(&l2_offset).unwrap())
    }

    /// The L2 entry of the cluster at virtual `offset` (0 when no L2 table exists).
    fn l2_entry(&mut self, offset: u64) -> io::Result<u64> {
        let cluster = offset >> self.cluster_bits;
        let l1_index = (cluster / self.entries_per_l2()) as usize;
        let l2_index = (cluster % self.entries_per_l2()) as usize;
        let l1_entry = *self
            .l1
            .get(l1_index)
            .ok_or_else(|| invalid("offset beyond the L1 table"))?;
        if l1_entry & OFFSET_MASK == 0 {
            return Ok(0);
        }
        let l2_offset = self.checked_cluster(l1_entry, "an L1 entry")?;
        Ok(self.l2_table(l2_offset)?[l2_index])
    }

    fn read_backing(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        buffer.fill(0);
        let Some(backing) = &self.backing else {
            return Ok(());
        };
        if offset >= self.backing_size {
            return Ok(());
        }
        let available = ((self.backing_size - offset) as usize).min(buffer.len());
        backing.read_exact_at(&mut buffer[..available], offset)
    }

    /// Reads within one cluster.
    fn read_in_cluster(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        let entry = self.l2_entry(offset)?;
        if entry & COMPRESSED != 0 {
            return Err(invalid("compressed clusters are not supported"));
        }
        let within = offset & (self.cluster_size() - 1);
        if entry & OFFSET_MASK == 0 {
            if entry & ZERO_CLUSTER != 0 {
                buffer.fill(0);
                return Ok(());
            }
            return self.read_backing(buffer, offset);
        }
        if entry & ZERO_CLUSTER != 0 {
            buffer.fill(0);
            return Ok(());
        }
        let host = self.checked_cluster(entry, "an L2 entry")?;
        self.file.read_exact_at(buffer, host + within)
    }

    fn allocate_cluster(&mut self) -> io::Result<u64> {
        let cluster = self.next_cluster;
        self.next_cluster += self.cluster_size();
        // Extend the file now, so that later bounds checks see the new cluster.
        self.file.set_len(self.next_cluster)?;
        self.set_refcount(cluster, 1)?;
        Ok(cluster)
    }

    /// Sets the refcount of the cluster at host offset `cluster` (allocating the
    /// refcount block when it is missing; the table is never grown).
    fn set_refcount(&mut self, cluster: u64, count: u64) -> io::Result<()> {
        let bits = 1u64 << self.refcount_order;
        let per_block = self.cluster_size() * 8 / bits;
        let index = cluster >> self.cluster_bits;
        let table_index = (index / per_block) as usize;
        let block_index = index % per_block;
        let table_entry = *self.refcount_table.get(table_index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::StorageFull,
                "the qcow2 refcount table is full",
            )
        })?;
        let block = if table_entry & OFFSET_MASK == 0 {
            // The new block covers itself when it falls in its own range.
            let block = self.next_cluster;
            self.next_cluster += self.cluster_size();
            self.file.set_len(self.next_cluster)?;
            self.file
                .write_all_at(&vec![0u8; self.cluster_size() as usize], block)?;
            self.refcount_table[table_index] = block;
            let table_offset = self.refcount_table_offset_of(table_index);
            self.file.write_all_at(&block.to_be_bytes(), table_offset)?;
            if (block >> self.cluster_bits) / per_block == table_index as u64 {
                self.write_count(block, (block >> self.cluster_bits) % per_block, 1)?;
            } else {
                self.set_refcount(block, 1)?;
            }
            block
        } else {
            self.checked_cluster(table_entry, "a refcount table entry")?
        };
        self.write_count(block, block_index, count)
    }

    fn refcount_table_offset_of(&self, index: usize) -> u64 {
        self.refcount_table_base + index as u64 * 8
    }

    fn write_count(&self, block: u64, index: u64, count: u64) -> io::Result<()> {
        let bits = 1u64 << self.refcount_order;
        if bits >= 8 {
            let bytes = (bits / 8) as usize;
            let value = count.to_be_bytes();
            self.file
                .write_all_at(&value[8 - bytes..], block + index * bytes as u64)
        } else {
            // Sub-byte refcounts: read, modify, write the byte.
            let bit_offset = index * bits;
            let byte_offset = block + bit_offset / 8;
            let mut byte = [0u8];
            self.file.read_exact_at(&mut byte, byte_offset)?;
            let shift = bit_offset % 8;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            byte[0] = (byte[0] & !mask) | (((count as u8) << shift) & mask);
            self.file.write_all_at(&byte, byte_offset)
        }
    }

    /// Writes within one cluster.
    fn write_in_cluster(&mut self, buffer: &[u8], offset: u64) -> io::Result<()> {
        let cluster_size = self.cluster_size();
        let cluster = offset >> self.cluster_bits;
        let within = offset & (cluster_size - 1);
        let l1_index = (cluster / self.entries_per_l2()) as usize;
        let l2_index = (cluster % self.entries_per_l2()) as usize;
        let entry = self.l2_entry(offset)?;
        if entry & COMPRESSED != 0 {
            return Err(invalid("compressed clusters are not supported"));
        }
        if entry & COPIED != 0 && entry & OFFSET_MASK != 0 && entry & ZERO_CLUSTER == 0 {
            let host = self.checked_cluster(entry, "an L2 entry")?;
            return self.file.write_all_at(buffer, host + within);
        }
        // Copy on write: the cluster's current contents, then the new bytes.
        let mut contents = vec![0u8; cluster_size as usize];
        let cluster_start = cluster << self.cluster_bits;
        if entry & ZERO_CLUSTER == 0 {
            if entry & OFFSET_MASK != 0 {
                let old = self.checked_cluster(entry, "an L2 entry")?;
                self.file.read_exact_at(&mut contents, old)?;
            } else {
                self.read_backing(&mut contents, cluster_start)?;
            }
        }
        contents[within as usize..within as usize + buffer.len()].copy_from_slice(buffer);
        let l2_offset = match self.l1[l1_index] & OFFSET_MASK {
            0 => {
                let table = self.allocate_cluster()?;
                self.file
                    .write_all_at(&vec![0u8; cluster_size as usize], table)?;
                self.l1[l1_index] = table | COPIED;
                self.file.write_all_at(
                    &(table | COPIED).to_be_bytes(),
                    self.l1_offset + l1_index as u64 * 8,
                )?;
                self.l2_cache
                    .insert(table, vec![0; self.entries_per_l2() as usize]);
                table
            }
            _ => self.checked_cluster(self.l1[l1_index], "an L1 entry")?,
        };
        let host = self.allocate_cluster()?;
        self.file.write_all_at(&contents, host)?;
        let new_entry = host | COPIED;
        self.file
            .write_all_at(&new_entry.to_be_bytes(), l2_offset + l2_index as u64 * 8)?;
        self.l2_table(l2_offset)?[l2_index] = new_entry;
        Ok(())
    }

    /// Splits `[offset, offset + length)` at cluster boundaries.
    fn pieces(&self, offset: u64, length: usize) -> Vec<(u64, usize, usize)> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < length {
            let at = offset + done as u64;
            let room = (self.cluster_size() - (at & (self.cluster_size() - 1))) as usize;
            let take = room.min(length - done);
            pieces.push((at, done, take));
            done += take;
        }
        pieces
    }
}

fn read_table(file: &File, offset: u64, entries: usize) -> io::Result<Vec<u64>> {
    let mut bytes = vec![0u8; entries * 8];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_be_bytes(chunk.try_into().unwrap()))
        .collect())
}

/// The backing format header extension, if present.
fn backing_format(file: &File, mut at: u64, limit: u64) -> io::Result<Option<String>> {
    let mut header = [0u8; 8];
    while at + 8 <= limit {
        file.read_exact_at(&mut header, at)?;
        let kind = be_u32(&header, 0);
        let length = be_u32(&header, 4) as u64;
        if kind == 0 {
            break;
        }
        if at + 8 + length > limit {
            return Err(invalid("a header extension runs past the header"));
        }
        if kind == EXTENSION_BACKING_FORMAT {
            let mut name = vec![0u8; length as usize];
            file.read_exact_at(&mut name, at + 8)?;
            return Ok(Some(String::from_utf8_lossy(&name).into_owned()));
        }
        at += 8 + length.div_ceil(8) * 8;
    }
    Ok(None)
}

impl DiskImage for Qcow2Disk {
    fn capacity(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        for (at, start, length) in self.pieces(offset, buffer.len()) {
            self.read_in_cluster(&mut buffer[start..start + length], at)?;
        }
        Ok(())
    }

    fn write_at(&mut self, buffer: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        for (at, start, length) in self.pieces(offset, buffer.len()) {
            self.write_in_cluster(&buffer[start..start + length], at)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> std::process::Output {
        let output = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (scripts/setup.sh installs it)");
        assert!(
            output.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `disk.qcow2` (64 MiB) in `dir`, over the raw `base.raw` beside it.
    fn overlay_over_base(dir: &Path) -> PathBuf {
        let overlay = dir.join("disk.qcow2");
        let overlay_text = overlay.display().to_string();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "base.raw",
            &overlay_text,
            "64M",
        ]);
        overlay
    }

    #[test]
    fn writes_over_a_raw_backing_file_read_back_and_pass_qemu_img_check() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mut base_bytes = vec![0u8; 3 << 20];
        for (index, byte) in base_bytes.iter_mut().enumerate() {
            *byte = (index % 251) as u8;
        }
        std::fs::write(&base, &base_bytes).unwrap();
        let overlay = overlay_over_base(dir.path());
        let overlay_text = overlay.display().to_string();

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&overlay)
            .unwrap();
        let mut disk = Qcow2Disk::open(file, &overlay, false).unwrap();
        assert_eq!(disk.capacity(), 64 << 20);
        let mut read = vec![0u8; 4096];
        disk.read_at(&mut read, 65536 + 100).unwrap();
        assert_eq!(
            &read[..],
            &base_bytes[65636..65636 + 4096],
            "backing data shows through"
        );
        // A write across a cluster boundary, one past the backing file, and one far away.
        let pattern: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        disk.write_at(&pattern, 60_000).unwrap();
        disk.write_at(b"beyond", (4 << 20) + 3).unwrap();
        disk.write_at(b"far", (60 << 20) + 17).unwrap();
        disk.flush().unwrap();
        drop(disk);

        qemu_img(&["check", "-q", &overlay_text]);
        let flat = dir.path().join("flat.raw");
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            &overlay_text,
            &flat.display().to_string(),
        ]);
        let flat = std::fs::read(&flat).unwrap();
        let mut expected = base_bytes.clone();
        expected.resize(64 << 20, 0);
        expected[60_000..160_000].copy_from_slice(&pattern);
        expected[(4 << 20) + 3..(4 << 20) + 9].copy_from_slice(b"beyond");
        expected[(60 << 20) + 17..(60 << 20) + 20].copy_from_slice(b"far");
        assert!(flat == expected, "QEMU reads what was written");

        // And this implementation reads it back after reopening.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&overlay)
            .unwrap();
        let mut disk = Qcow2Disk::open(file, &overlay, false).unwrap();
        let mut back = vec![0u8; pattern.len()];
        disk.read_at(&mut back, 60_000).unwrap();
        assert!(back == pattern);
    }

    #[test]
    fn a_backing_file_is_named_without_opening_it_and_can_be_given_open() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![9u8; 1 << 20]).unwrap();
        let overlay = overlay_over_base(dir.path());
        let lone = dir.path().join("lone.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            &lone.display().to_string(),
            "64M",
        ]);
        let open = |path: &Path| File::open(path).unwrap();

        assert_eq!(
            Qcow2Disk::backing_path(&open(&overlay), &overlay).unwrap(),
            Some(base.clone())
        );
        assert_eq!(Qcow2Disk::backing_path(&open(&lone), &lone).unwrap(), None);
        assert!(
            Qcow2Disk::backing_path(&open(&base), &base).is_err(),
            "not qcow2"
        );

        let mut disk = Qcow2Disk::open_over(open(&overlay), true, Some(open(&base))).unwrap();
        let mut read = [0u8; 4];
        disk.read_at(&mut read, 4096).unwrap();
        assert_eq!(read, [9; 4], "the given backing file shows through");
        assert!(Qcow2Disk::open_over(open(&overlay), true, None).is_err());
        assert!(Qcow2Disk::open_over(open(&lone), true, Some(open(&base))).is_err());
        assert!(Qcow2Disk::open_over(open(&lone), true, None).is_ok());
    }

    #[test]
    fn a_backing_name_offset_near_the_top_of_u64_is_refused() {
        // Found by the qcow2_image fuzz target: offset + length overflowed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wrap.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            &path.display().to_string(),
            "16M",
        ]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..16].copy_from_slice(&(u64::MAX - 2).to_be_bytes());
        bytes[16..20].copy_from_slice(&8u32.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let error = Qcow2Disk::open(File::open(&path).unwrap(), &path, true)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("backing file name"), "{error}");
    }

    #[test]
    fn damaged_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.qcow2");
        std::fs::write(&path, b"not a qcow2 image at all").unwrap();
        let file = File::open(&path).unwrap();
        assert!(Qcow2Disk::open(file, &path, true).is_err());
        let good = dir.path().join("good.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            &good.display().to_string(),
            "16M",
        ]);
        let mut bytes = std::fs::read(&good).unwrap();
        // An L1 table offset far outside the file.
        bytes[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let error = Qcow2Disk::open(File::open(&path).unwrap(), &path, true)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("L1 table"), "{error}");
    }
}
