//! The task's root filesystem on the host: containerd's rootfs mounts (its
//! snapshotter's overlay of host directories, or a bind) mounted at `<bundle>/rootfs`,
//! which the task's VM reads through a share; and the task VM's run directory.

use sha2::Digest;
use std::path::{Path, PathBuf};

use crate::{ShimConfig, ShimError};

/// Mounts one of containerd's rootfs mounts (its snapshotter's overlay, or a bind) at
/// `target`. The host kernel mounts only directories of the host here (overlayfs of
/// snapshot directories, as runc's shim does); the guest reads them through a share.
pub(crate) fn mount_rootfs(
    m: &containerd_shim_protos::api::Mount,
    target: &Path,
) -> Result<(), ShimError> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &m.options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other.to_owned()),
        }
    }
    let kind = match m.type_.as_str() {
        "overlay" => "overlay",
        "bind" => {
            flags |= MsFlags::MS_BIND;
            "none"
        }
        other => {
            // A block device's filesystem (devmapper) would be mounted by the host's
            // kernel: refused (see docs/containerd.md).
            return Err(ShimError::Usage(format!(
                "rootfs mounts of type {other:?} are not supported (overlay and bind are)"
            )));
        }
    };
    std::fs::create_dir_all(target)
        .map_err(ShimError::io(format!("making {}", target.display())))?;
    let data = data.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(kind),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|errno| ShimError::Io {
        what: format!("mounting the rootfs ({}) at {}", m.type_, target.display()),
        source: errno.into(),
    })
}

/// The run directory of the VM of task `id` in `namespace`: named by the id when it is
/// short and plain, else by the first 16 hex digits of its SHA-256 (the VM's sockets are
/// in it, and a socket's path holds at most 107 bytes: CRI's ids are 64 characters).
pub(crate) fn vm_run_dir(config: &ShimConfig, namespace: &str, id: &str) -> PathBuf {
    let plain = id.len() <= 20
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let name = match plain {
        true => id.to_owned(),
        false => hex::encode(&sha2::Sha256::digest(id.as_bytes())[..8]),
    };
    config.root.join("vms").join(namespace).join(name)
}

/// Unmounts the rootfs (lazily: a share server that still has it open lets go as it ends).
pub(crate) fn unmount(rootfs: &Path) {
    if let Err(error) = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH) {
        if error != nix::errno::Errno::EINVAL && error != nix::errno::Errno::ENOENT {
            tracing::warn!("unmounting {}: {error}", rootfs.display());
        }
    }
}
