//! Volumes: ext4 disks the host attached (at boot, or hot-plugged into a clone), found by
//! their serial number and mounted inside the container root before its process runs.
//!
//! A new volume (`populate`, not read-only) first receives what the image has at the
//! mount point, as Docker copies an image's content into an empty volume: the copy keeps owners, modes,
//! times of regular files, directories and symlinks, and recreates device nodes, FIFOs
//! and sockets. Paths are checked so that a mount point never leaves the container root,
//! even through a symlink in the image.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_agent_proto::VolumeMount;
use nix::mount::MsFlags;

use crate::boot::{mount_fs, CONTAINER_ROOT};

/// How long a hot-plugged disk may take to appear in the guest.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);

/// Mounts each volume at its target inside the container root.
pub fn mount_all(volumes: &[VolumeMount]) -> io::Result<()> {
    for (index, volume) in volumes.iter().enumerate() {
        mount_one(index, volume)?;
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn mount_one(index: usize, volume: &VolumeMount) -> io::Result<()> {
    let device = find_by_serial(&volume.serial)?;
    let resolved = mount_point(&volume.target, false)?;
    let device = device.display().to_string();
    // A read-only volume's disk is read-only in the VM too: nothing can be copied in,
    // nor anything removed.
    if !volume.read_only {
        let staging = format!("/run/berth-volume-{index}");
        fs::create_dir_all(&staging)?;
        mount_when_ready(&device, &staging, MsFlags::empty(), None)?;
        let prepared = prepare_new_volume(Path::new(&staging), &resolved, volume.populate);
        nix::mount::umount(staging.as_str()).map_err(io::Error::from)?;
        prepared?;
    }
    // On a read-only disk ext4 cannot replay its journal: `noload` mounts without it
    // (a volume whose last user's VM died mid-write then shows its last committed state
    // minus the journal's tail).
    let (flags, data) = if volume.read_only {
        (MsFlags::MS_RDONLY, Some("noload"))
    } else {
        (MsFlags::empty(), None)
    };
    mount_when_ready(&device, &resolved.display().to_string(), flags, data)
}

/// The mount point of `target` (an absolute path in the container) inside the
/// container root: made if missing (a directory, or an empty file when `file`), then
/// resolved, and refused if a symlink in the image leads it out of the container root.
pub(crate) fn mount_point(target: &str, file: bool) -> io::Result<PathBuf> {
    mount_point_in(CONTAINER_ROOT, target, file)
}

/// [`mount_point`] in the container whose root is `root`.
pub(crate) fn mount_point_in(root: &str, target: &str, file: bool) -> io::Result<PathBuf> {
    if !target.starts_with('/') || target.split('/').any(|part| part == "..") {
        return Err(invalid(format!("invalid mount path {target:?}")));
    }
    let path = format!("{root}{target}");
    if file {
        if let Some(parent) = Path::new(&path).parent() {
            fs::create_dir_all(parent)?;
        }
        if fs::symlink_metadata(&path).is_err() {
            fs::File::create(&path)?;
        }
    } else {
        fs::create_dir_all(&path)?;
    }
    let resolved = fs::canonicalize(&path)?;
    if !resolved.starts_with(root) {
        return Err(invalid(format!(
            "mount path {target} leads outside the container"
        )));
    }
    Ok(resolved)
}

/// Mounts the ext4 disk `device` at `target`, retrying for a while: a disk hot-plugged a
/// moment ago may show its device node before it can be opened (ENXIO).
pub(crate) fn mount_when_ready(
    device: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        match mount_fs(device, target, "ext4", flags, data) {
            Ok(()) => return Ok(()),
            Err(error) if error.to_string().contains("ENXIO") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error),
        }
    }
}

/// `/dev/vdX` whose `/sys/block/vdX/serial` is `serial`, waiting for a hot-plugged disk.
pub(crate) fn find_by_serial(serial: &str) -> io::Result<PathBuf> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        for entry in fs::read_dir("/sys/block")? {
            let entry = entry?;
            let found = fs::read_to_string(entry.path().join("serial"))
                .map(|text| text.trim() == serial)
                .unwrap_or(false);
            let device = Path::new("/dev").join(entry.file_name());
            if found && device.exists() {
                return Ok(device);
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the volume disk {serial} did not appear"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A freshly made ext4 filesystem holds only `lost+found`.
fn is_empty_volume(root: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(root)?
        .filter_map(Result::ok)
        .all(|entry| entry.file_name() == "lost+found"))
}

/// A volume used for the first time starts as Docker's do: empty (without ext4's empty
/// `lost+found`, which programs such as initdb refuse to start in; e2fsck makes it again
/// if it ever needs one), then with the image's content at the mount point when
/// `populate` says so. A volume with content is left as it is.
fn prepare_new_volume(root: &Path, image_content: &Path, populate: bool) -> io::Result<()> {
    if !is_empty_volume(root)? {
        return Ok(());
    }
    let lost_found = root.join("lost+found");
    if fs::read_dir(&lost_found).is_ok_and(|mut entries| entries.next().is_none()) {
        fs::remove_dir(&lost_found)?;
    }
    if populate {
        copy_tree(image_content, root)?;
    }
    Ok(())
}

/// Copies the tree under `from` into `to` (an existing directory), keeping metadata.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    copy_metadata(to, &meta)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let dest = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&dest)?;
            copy_tree(&source, &dest)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&source)?, &dest)?;
            std::os::unix::fs::lchown(&dest, Some(meta.uid()), Some(meta.gid()))?;
        } else if kind.is_file() {
            fs::copy(&source, &dest)?;
            copy_metadata(&dest, &meta)?;
        } else {
            let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode());
            let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode());
            nix::sys::stat::mknod(&dest, kind, mode, meta.rdev()).map_err(io::Error::from)?;
            copy_metadata(&dest, &meta)?;
        }
    }
    Ok(())
}

fn copy_metadata(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
}
