//! The file server's confinement, entered once per server before it serves anything.
//!
//! The server process gets a mount namespace and a network namespace of its own
//! (nothing it does there is seen by the host, and it can reach no network). In its mount
//! namespace a small tmpfs becomes its root, holding only `/share`: the shared directory
//! or file, bind-mounted (recursively, as Docker binds), with `nosuid` and `nodev` and,
//! for a read-only share, `ro` on every mount under it, so the kernel refuses writes
//! whatever the server's code does. After `pivot_root` nothing outside the share has a
//! path: an absolute symlink resolves inside the share, `..` of the root is the root.
//!
//! This is virtiofsd's confinement; fuse-backend-rs's passthrough file system resolves
//! every name beneath a directory descriptor without following symlinks, and this is
//! the second wall.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::ShareError;

/// Where the share is inside the sandbox.
pub const SHARE_PATH: &str = "/share";

/// `MOUNT_ATTR_*` of `mount_setattr(2)`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn step(what: &'static str) -> impl FnOnce(nix::Error) -> ShareError {
    move |errno| ShareError::Sandbox {
        step: what,
        source: std::io::Error::from(errno),
    }
}

/// Confines this process to `source` (see the module docs), using the existing,
/// empty-or-not directory `scratch` as the mount point of its new root. Returns whether
/// the share is a directory.
pub fn enter(source: &Path, read_only: bool, scratch: &Path) -> Result<bool, ShareError> {
    let is_dir = fs::metadata(source)
        .map_err(|error| ShareError::Source {
            path: source.to_owned(),
            source: error,
        })?
        .is_dir();
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET).map_err(step("unshare"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(step("mounting the sandbox root"))?;
    let share = scratch.join(&SHARE_PATH[1..]);
    let made = if is_dir {
        fs::create_dir(&share)
    } else {
        fs::File::create(&share).map(drop)
    };
    made.map_err(|error| ShareError::Sandbox {
        step: "making the share's mount point",
        source: error,
    })?;
    mount(
        Some(source),
        &share,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("binding the share"))?;
    restrict(&share, read_only)?;
    std::env::set_current_dir(scratch).map_err(|error| ShareError::Sandbox {
        step: "entering the sandbox root",
        source: error,
    })?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?,
        // The host's root is an initramfs (rootfs cannot be pivoted away from): chroot
        // gives the same paths. The server runs nothing, so nothing can climb out of it.
        Err(nix::errno::Errno::EINVAL) => nix::unistd::chroot(".").map_err(step("chroot"))?,
        Err(errno) => return Err(step("pivot_root")(errno)),
    }
    std::env::set_current_dir("/").map_err(|error| ShareError::Sandbox {
        step: "entering the new root",
        source: error,
    })?;
    Ok(is_dir)
}

/// `nosuid`, `nodev` and (for a read-only share) `ro` on the share and every mount
/// under it: `mount_setattr` with `AT_RECURSIVE` where the kernel has it (5.12), else a
/// remount of the share's own mount.
fn restrict(share: &Path, read_only: bool) -> Result<(), ShareError> {
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    let path = CString::new(share.as_os_str().as_bytes()).expect("no NUL in a path we made");
    // SAFETY: `path` is a NUL-terminated string and `attr` a properly sized
    // `struct mount_attr`, both alive for the call; the kernel only reads them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result == 0 {
        return Ok(());
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, share, None::<&str>, flags, None::<&str>)
        .map_err(step("restricting the share"))
}
