//! A further container's own mount namespace inside its VM.
//!
//! Contract: when a further container (a pod's, `crate::pod`) has been mounted at its
//! root in the agent's namespace, [`create`] makes it a mount namespace of its own: a
//! copy of the agent's, made private (nothing propagates either way), from which every
//! mount outside the container's root is detached, and whose root mount is the
//! container's (moved onto `/`). Every process of the container enters it between fork
//! and exec ([`of`]); `setns` then gives the process that root. So a container's
//! processes cannot reach the agent's files, the VM's first container or the pod's other
//! containers, even with the capability to chroot, as under runc, where each container
//! of a pod has a mount namespace of its own.
//!
//! The namespace is made by a thread of its own, which leaves the agent's shared
//! filesystem context (`unshare(CLONE_FS | CLONE_NEWNS)`) and ends; the namespace lives
//! on while the agent holds its file, until [`forget`] at the container's removal and
//! the exit of its last process. The root cannot be made with `pivot_root`: the agent's
//! root is the initramfs, which `pivot_root` refuses; moving the root onto `/` is
//! runc's way for that case.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::sync::{Mutex, MutexGuard};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Further containers' namespaces, by name.
static NAMESPACES: Mutex<Option<HashMap<String, File>>> = Mutex::new(None);

fn namespaces() -> MutexGuard<'static, Option<HashMap<String, File>>> {
    NAMESPACES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The namespace of the further container `name`, for a process to enter.
pub fn of(name: &str) -> io::Result<Option<File>> {
    namespaces()
        .as_ref()
        .and_then(|namespaces| namespaces.get(name))
        .map(File::try_clone)
        .transpose()
}

/// Whether the further container `name` has a namespace of its own.
pub fn has(name: &str) -> bool {
    namespaces()
        .as_ref()
        .is_some_and(|namespaces| namespaces.contains_key(name))
}

/// Forgets `name`'s namespace (it ends with the last process in it).
pub fn forget(name: &str) {
    namespaces()
        .as_mut()
        .and_then(|namespaces| namespaces.remove(name));
}

/// Makes the namespace of the further container `name`, whose tree is mounted at
/// `root` (see the module docs).
pub fn create(name: &str, root: &str) -> io::Result<()> {
    let root = root.to_owned();
    let made = std::thread::spawn(move || make(&root))
        .join()
        .map_err(|_| io::Error::other("the thread making a mount namespace panicked"))??;
    namespaces()
        .get_or_insert_with(HashMap::new)
        .insert(name.to_owned(), made);
    Ok(())
}

fn failed(doing: &str) -> impl FnOnce(nix::errno::Errno) -> io::Error + '_ {
    move |errno| io::Error::other(format!("{doing}: {errno}"))
}

/// Runs on a thread of its own, which ends afterwards: its root and mounts are the
/// container's from here on.
fn make(root: &str) -> io::Result<File> {
    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
        .map_err(failed("making a mount namespace"))?;
    // Opened before the root moves: the container's /proc does not show this thread.
    let namespace = File::open("/proc/thread-self/ns/mnt")?;
    let mountinfo = fs::read_to_string("/proc/thread-self/mountinfo")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(failed("making the namespace's mounts private"))?;
    // Deepest first; the root's ancestors stay (detaching one would take the root).
    let mut outside: Vec<String> = mount_points(&mountinfo)
        .into_iter()
        .filter(|point| !within(point, root) && !within(root, point))
        .collect();
    outside.sort_by_key(|point| std::cmp::Reverse(point.matches('/').count()));
    for point in &outside {
        // A mount under one detached already is gone with it.
        let _ = umount2(point.as_str(), MntFlags::MNT_DETACH);
    }
    nix::unistd::chdir(root).map_err(failed("entering the container's root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(failed("moving the container's root onto /"))?;
    nix::unistd::chroot(".").map_err(failed("entering the moved root"))?;
    Ok(namespace)
}

/// Whether `path` is `base` or below it.
fn within(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The mount points in a mountinfo text (its fifth field, octal escapes undone).
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_and_roots_ancestors_are_kept() {
        let text = "22 1 0:21 / / rw - rootfs rootfs rw\n\
                    30 22 0:5 / /mnt/pod/a rw - fuse fuse rw\n\
                    31 30 0:6 / /mnt/pod/a/proc rw - proc proc rw\n\
                    32 22 0:7 / /mnt/pod/ab rw - fuse fuse rw\n\
                    33 22 0:8 / /run/with\\040space rw - tmpfs tmpfs rw\n";
        let points = mount_points(text);
        assert_eq!(points[4], "/run/with space");
        let root = "/mnt/pod/a";
        let outside: Vec<&String> = points
            .iter()
            .filter(|point| !within(point, root) && !within(root, point))
            .collect();
        assert_eq!(outside, ["/mnt/pod/ab", "/run/with space"]);
    }
}
