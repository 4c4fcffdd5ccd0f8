//! The places every container mounts over, put into the image's root filesystem.
//!
//! Contract: [`add_mount_points`] makes, in a flattened tree, whatever of these is
//! missing: the directories `/dev`, `/proc`, `/sys` and `/etc` (0755) and the empty files
//! `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` (0644), all owned by root. Whatever
//! the image has at those paths (a directory, a file, a symlink, anything) is left as it
//! is, and nothing is created through a symlink: `/etc` is used only if it is a real
//! directory, and files are made with `O_CREAT|O_EXCL|O_NOFOLLOW`.
//!
//! Why: the agent mounts the container's `/proc`, `/sys` and `/dev` and binds its own
//! `hostname`, `hosts` and `resolv.conf` over these paths, and must create them first
//! when the image lacks them (most images do). Docker makes them in each container's
//! "init layer" at create time; Berth never mounts a container's filesystem on the host,
//! so the guest would create them on every start, inside the VM, allocating inodes and
//! committing the journal on the start's critical path. Made once here, in the image, no
//! start writes them. They are the same empty entries Docker's init layer has, and
//! `docker diff` and `docker commit` do not see them (they are not container changes).

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::ImageError;

/// Directories made at the root of the tree when missing.
const DIRECTORIES: [&str; 4] = ["dev", "proc", "sys", "etc"];
/// Files made in `/etc` when missing.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Adds the mount points the image lacks to the flattened tree at `root`.
pub(crate) fn add_mount_points(root: &Path) -> Result<(), ImageError> {
    for name in DIRECTORIES {
        let path = root.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, Permissions::from_mode(0o755))
                    .map_err(ImageError::io(&path))?;
            }
            // Anything already there (even a dangling symlink) is the image's own.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(ImageError::io(&path)(error)),
        }
    }
    let etc = root.join("etc");
    let etc_is_a_directory = fs::symlink_metadata(&etc)
        .map(|meta| meta.file_type().is_dir())
        .unwrap_or(false);
    if !etc_is_a_directory {
        return Ok(());
    }
    for name in ETC_FILES {
        let path = etc.join(name);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match created {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(ImageError::io(&path)(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("berth-mount-points-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_mount_points_are_made_and_present_ones_kept() {
        let root = scratch("made");
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), "127.0.0.1 image-own\n").unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("sys")).unwrap();
        add_mount_points(&root).unwrap();
        for dir in ["dev", "proc"] {
            assert!(fs::symlink_metadata(root.join(dir)).unwrap().is_dir());
        }
        assert!(fs::symlink_metadata(root.join("sys"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1 image-own\n"
        );
        assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"");
        assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nothing_is_made_through_symlinks() {
        let root = scratch("links");
        let outside = scratch("outside");
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        add_mount_points(&root).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

        fs::remove_file(root.join("etc")).unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("target"), root.join("etc/hosts")).unwrap();
        add_mount_points(&root).unwrap();
        assert!(!outside.join("target").exists());
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
