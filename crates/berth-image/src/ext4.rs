//! Turning a flattened directory tree into an ext4 file-system image with `mkfs.ext4 -d`.
//!
//! Contract: [`build_ext4`] writes a sparse ext4 image of `source` to `output` (which must
//! not exist) and returns the image's size in bytes. The command run is
//!
//! ```text
//! mkfs.ext4 -q -F -t ext4 -m 0 -E root_owner=0:0 [-N <inodes>] -d <source> <output> <size>M
//! ```
//!
//! * size = max(1 GiB, 2 × content + 512 MiB), rounded up to a whole MiB, where content
//!   is the tree's apparent size with every file and directory rounded up to 4 KiB blocks;
//!   the free space is the container's writable space (its writes go to a copy-on-write
//!   overlay on top of this image), and the file is sparse, so unused space costs nothing;
//! * `-N` is passed only when the tree has so many inodes that mkfs's default (one per
//!   16 KiB) would leave fewer than twice the tree's count plus 16384 free;
//! * mode, ownership, times, symlinks, hard links, device nodes and xattrs are copied from
//!   `source` by mkfs itself; the root directory is owned by 0:0;
//! * mkfs's empty `/lost+found` is then removed with `debugfs -w -R 'rmdir /lost+found'`
//!   (best effort, skipped when the tree has its own), so `/` looks as in Docker.
//!
//! The image is never mounted on the host. `mkfs.ext4` (e2fsprogs ≥ 1.43) and `debugfs`
//! are looked up in `PATH`, then in `/usr/sbin` and `/sbin`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ImageError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Block size used to estimate the space a file takes.
const BLOCK: u64 = 4 * KIB;
/// mkfs.ext4's default bytes-per-inode ratio.
const DEFAULT_INODE_RATIO: u64 = 16 * KIB;
/// Inodes we want free on top of twice the tree's own count.
const SPARE_INODES: u64 = 16 * 1024;

/// What a directory tree holds, for sizing the file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeUsage {
    /// Apparent size, each file/directory rounded up to [`BLOCK`].
    pub(crate) bytes: u64,
    /// Number of inodes (files, directories, links, nodes), the root included.
    pub(crate) inodes: u64,
}

/// Walks `root` without following symlinks and adds up its usage.
pub(crate) fn tree_usage(root: &Path) -> Result<TreeUsage, ImageError> {
    let mut usage = TreeUsage {
        bytes: BLOCK,
        inodes: 1,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let entry = entry.map_err(ImageError::io(&dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(ImageError::io(&path))?;
            usage.inodes += 1;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                usage.bytes += BLOCK;
                stack.push(path);
            } else if file_type.is_file() || file_type.is_symlink() {
                usage.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
            }
            // Device nodes, FIFOs and sockets take an inode only.
        }
    }
    Ok(usage)
}

/// The file-system size for content of `usage`, in bytes (a whole number of MiB).
pub(crate) fn fs_size(usage: TreeUsage) -> u64 {
    let wanted = usage.bytes.saturating_mul(2).saturating_add(512 * MIB);
    wanted.max(GIB).div_ceil(MIB).saturating_mul(MIB)
}

/// The `-N` value to pass, if mkfs's default inode count would be too small.
pub(crate) fn inode_count(usage: TreeUsage, size: u64) -> Option<u64> {
    let default = size / DEFAULT_INODE_RATIO;
    let wanted = usage.inodes.saturating_mul(2).saturating_add(SPARE_INODES);
    (wanted > default).then_some(wanted)
}

/// Builds the ext4 image of `source` at `output`; returns its size in bytes.
pub(crate) fn build_ext4(source: &Path, output: &Path) -> Result<u64, ImageError> {
    let usage = tree_usage(source)?;
    let size = fs_size(usage);
    // Create the sparse file ourselves so mkfs never has to guess what `output` is.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(output)
        .map_err(ImageError::io(output))?;
    file.set_len(size).map_err(ImageError::io(output))?;
    drop(file);

    let mkfs = find_program("mkfs.ext4");
    let mut command = Command::new(&mkfs);
    command.args(["-q", "-F", "-t", "ext4", "-m", "0", "-E", "root_owner=0:0"]);
    if let Some(inodes) = inode_count(usage, size) {
        command.arg("-N").arg(inodes.to_string());
    }
    command
        .arg("-d")
        .arg(source)
        .arg(output)
        .arg(format!("{}M", size / MIB));
    tracing::debug!(?command, "building ext4 root filesystem");
    let result = command.output().map_err(ImageError::io(&mkfs))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let stdout = String::from_utf8_lossy(&result.stdout);
        return Err(ImageError::Mkfs(format!(
            "{} exited with {}: {}",
            mkfs.display(),
            result.status,
            format!("{stderr}{stdout}").trim()
        )));
    }
    if fs::symlink_metadata(source.join("lost+found")).is_err() {
        remove_lost_found(output);
    }
    let size = fs::metadata(output).map_err(ImageError::io(output))?.len();
    Ok(size)
}

/// Best effort: removes the empty `/lost+found` mkfs creates, so the container sees the
/// image's root directory as Docker shows it. A failure only leaves the directory.
fn remove_lost_found(image: &Path) {
    let result = Command::new(find_program("debugfs"))
        .args(["-w", "-R", "rmdir /lost+found"])
        .arg(image)
        .output();
    match result {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::debug!(
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr),
            "could not remove /lost+found"
        ),
        Err(error) => tracing::debug!(%error, "could not run debugfs to remove /lost+found"),
    }
}

/// `name` found in `PATH`, `/usr/sbin` or `/sbin`; `name` itself if not found (so the
/// spawn error names it).
pub(crate) fn find_program(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let small = TreeUsage {
            bytes: 10 * MIB,
            inodes: 100,
        };
        assert_eq!(fs_size(small), GIB);
        assert_eq!(inode_count(small, GIB), None);
        let big = TreeUsage {
            bytes: 700 * MIB + 1,
            inodes: 100,
        };
        assert_eq!(fs_size(big), 1913 * MIB);
        let many = TreeUsage {
            bytes: 10 * MIB,
            inodes: 100_000,
        };
        assert_eq!(inode_count(many, GIB), Some(216_384));
    }

    #[test]
    fn usage_counts_blocks_and_inodes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(tmp.path().join("d")).expect("mkdir");
        fs::write(tmp.path().join("d/f"), b"12345").expect("write");
        std::os::unix::fs::symlink("d/f", tmp.path().join("l")).expect("symlink");
        let usage = tree_usage(tmp.path()).expect("usage");
        assert_eq!(usage.inodes, 4);
        assert_eq!(usage.bytes, 4 * BLOCK);
    }
}
