//! A writer for the "newc" cpio format, the format Linux unpacks as an initramfs.
//!
//! Written by hand: the format is a 110-byte ASCII header per entry, and the few cpio
//! crates on crates.io are unmaintained or cannot write device nodes. Each entry is:
//!
//! ```text
//! "070701" + 13 fields of 8 hex digits: ino mode uid gid nlink mtime filesize
//!            devmajor devminor rdevmajor rdevminor namesize check
//! name, NUL, padding to a multiple of 4 (counting from the header start)
//! data, padding to a multiple of 4
//! ```
//!
//! and the archive ends with an entry named `TRAILER!!!`.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Builds a newc archive into any writer. Timestamps are 0 so that equal inputs give
/// byte-identical archives.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..padding])?;
        self.written += padding as u64;
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let filesize = u32::try_from(data.len())
            .map_err(|_| io::Error::other("cpio entry larger than 4 GiB"))?;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            inode, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += (header.len() + name.len() + 1) as u64;
        self.pad()?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    /// A directory (`name` has no leading slash).
    pub fn directory(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (permissions & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (permissions & 0o7777), 1, (0, 0), data)
    }

    /// A character device node.
    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(
            name,
            S_IFCHR | (permissions & 0o7777),
            1,
            (major, minor),
            &[],
        )
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_well_formed() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.directory("dev", 0o755).unwrap();
        writer.char_device("dev/console", 0o600, 5, 1).unwrap();
        writer.file("init", 0o755, b"abcde").unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));

        // Walk the archive back and check each header.
        let mut offset = 0;
        let mut names = Vec::new();
        loop {
            let header = std::str::from_utf8(&archive[offset..offset + 110]).unwrap();
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&header[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&archive[offset + 110..offset + 110 + namesize - 1])
                .unwrap()
                .to_owned();
            offset = (offset + 110 + namesize).div_ceil(4) * 4;
            if name == "init" {
                assert_eq!(&archive[offset..offset + size], b"abcde");
                assert_eq!(mode, 0o100755);
            }
            if name == "dev/console" {
                assert_eq!((field(9), field(10)), (5, 1));
            }
            offset = (offset + size).div_ceil(4) * 4;
            names.push(name.clone());
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(names, vec!["dev", "dev/console", "init", "TRAILER!!!"]);
        assert_eq!(offset, archive.len());
    }
}
