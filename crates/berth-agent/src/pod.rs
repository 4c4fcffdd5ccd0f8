//! Further containers in one VM: a pod's containers beside its first.
//!
//! The VM's first container has its root at [`CONTAINER_ROOT`] (set up by `Setup`). A
//! further container ([`ContainerSpec`]) has its root at `/mnt/pod/<name>`: a share of
//! the host's (its image's root filesystem as the host prepared it), with the first
//! container's /proc, /sys (read-only) and /dev bound into it, the first container's
//! /etc/hostname, /etc/hosts and /etc/resolv.conf unless it mounts its own, then its
//! tmpfs mounts and shares. A share is mounted once for the pod, at
//! `/run/berth/pod-shares/<stream>`, and bound into every container that mounts it
//! (the host sends the same stream for the same source): an emptyDir is one file
//! system in the VM, whose files, page cache and unix sockets the containers share, as
//! on a Linux host. That tree becomes the root of a mount namespace of its own
//! (`crate::mount_namespace`), where its processes ([`ProcessSpec::container`]) run,
//! in a cgroup of its own with the spec's limits (`crate::cgroups`), and in a PID
//! namespace of its own when its first process asks for one (`crate::pid_namespace`),
//! else in the first container's. All containers share the VM's network and hostname
//! (the VM is the pod's boundary, as a pod's containers share a Linux host's kernel).
//!
//! Removal kills the container's processes (its cgroup's whole), forgets its mount
//! namespace, then detaches its whole mount tree at once (`MNT_DETACH`): its shares'
//! connections end when the last user lets go.
//!
//! [`ProcessSpec::container`]: berth_agent_proto::ProcessSpec::container

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::{Mutex, MutexGuard};

use berth_agent_proto::{valid_container_name, ContainerSpec, ShareMount};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::boot::CONTAINER_ROOT;
use crate::channel::Channel;
use crate::shares::Shares;

/// Where further containers' roots are mounted.
pub const POD_ROOT: &str = "/mnt/pod";
/// Where the shares further containers mount are mounted once each.
const POD_SHARES: &str = "/run/berth/pod-shares";

/// How many further containers mount each share, by stream.
static SHARE_USERS: Mutex<Option<HashMap<u32, usize>>> = Mutex::new(None);

fn share_users() -> MutexGuard<'static, Option<HashMap<u32, usize>>> {
    SHARE_USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The pod's mount of `share`, mounted now if no container has it yet; one more user.
fn acquire(share: &ShareMount, shares: &Shares, channel: &Channel) -> io::Result<String> {
    let path = format!("{POD_SHARES}/{}", share.stream);
    let mut users = share_users();
    let users = users.get_or_insert_with(HashMap::new);
    if let Some(count) = users.get_mut(&share.stream) {
        *count += 1;
        return Ok(path);
    }
    let once = ShareMount {
        target: format!("/{}", share.stream),
        read_only: share.read_only,
        populate: false,
        ..share.clone()
    };
    shares.mount_all_in(POD_SHARES, std::slice::from_ref(&once), channel)?;
    users.insert(share.stream, 1);
    Ok(path)
}

/// One user fewer for each of `streams`; the pod's mounts of those no container uses
/// any more are unmounted.
fn release(streams: &[u32], shares: &Shares) {
    let mut unused = Vec::new();
    if let Some(users) = share_users().as_mut() {
        for stream in streams {
            if let Some(count) = users.get_mut(stream) {
                *count -= 1;
                if *count == 0 {
                    users.remove(stream);
                    unused.push(*stream);
                }
            }
        }
    }
    for stream in &unused {
        let path = format!("{POD_SHARES}/{stream}");
        let _ = umount2(path.as_str(), MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir(&path));
    }
    shares.forget(&unused);
}

/// A further container's shares: its root's stream, and the pod shares it mounts.
struct Members {
    root_stream: u32,
    shares: Vec<u32>,
}

/// The further containers, by name.
static CONTAINERS: Mutex<Option<HashMap<String, Members>>> = Mutex::new(None);

fn containers() -> MutexGuard<'static, Option<HashMap<String, Members>>> {
    CONTAINERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The guest path of the root of the container `name` (`None`: the VM's first).
pub fn root_of(name: Option<&str>) -> Result<String, String> {
    match name {
        None => Ok(CONTAINER_ROOT.to_owned()),
        Some(name) if containers().as_ref().is_some_and(|c| c.contains_key(name)) => {
            Ok(format!("{POD_ROOT}/{name}"))
        }
        Some(name) => Err(format!("no container {name:?} in this VM")),
    }
}

/// Mounts the further container `spec` (see the module docs).
pub fn add(spec: &ContainerSpec, shares: &Shares, channel: &Channel) -> io::Result<()> {
    if !valid_container_name(&spec.name) {
        return Err(invalid(format!("invalid container name {:?}", spec.name)));
    }
    if containers()
        .as_ref()
        .is_some_and(|c| c.contains_key(&spec.name))
    {
        return Err(invalid(format!("container {} exists", spec.name)));
    }
    if !crate::boot::container_root_mounted() {
        return Err(io::Error::other("the VM's first container is not set up"));
    }
    if spec.root_share.target != "/" || spec.root_share.file {
        return Err(invalid(
            "a container's root share must be a directory at /".into(),
        ));
    }
    let root = format!("{POD_ROOT}/{}", spec.name);
    fs::create_dir_all(&root)?;
    let mut acquired = Vec::new();
    let mounted = mount_tree(&root, spec, shares, channel, &mut acquired)
        .and_then(|()| crate::cgroups::create(Some(&spec.name), &spec.resources))
        .and_then(|()| crate::mount_namespace::create(&spec.name, &root));
    if let Err(error) = mounted {
        crate::cgroups::remove(&spec.name);
        let _ = umount2(root.as_str(), MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&root);
        shares.forget(&[spec.root_share.stream]);
        release(&acquired, shares);
        return Err(error);
    }
    let members = Members {
        root_stream: spec.root_share.stream,
        shares: acquired,
    };
    containers()
        .get_or_insert_with(HashMap::new)
        .insert(spec.name.clone(), members);
    Ok(())
}

/// Mounts `spec`'s tree at `root`; the pod shares it took are added to `acquired` as
/// it goes (for the caller to release if it fails).
fn mount_tree(
    root: &str,
    spec: &ContainerSpec,
    shares: &Shares,
    channel: &Channel,
    acquired: &mut Vec<u32>,
) -> io::Result<()> {
    shares.mount_all_in(root, std::slice::from_ref(&spec.root_share), channel)?;
    for name in ["proc", "sys", "dev"] {
        let target = crate::volumes::mount_point_in(root, &format!("/{name}"), false)?;
        bind(
            &format!("{CONTAINER_ROOT}/{name}"),
            &target.display().to_string(),
            true,
        )?;
    }
    // A bind keeps its source's per-mount flags, but say it: /sys is read-only.
    mount(
        None::<&str>,
        format!("{root}/sys").as_str(),
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| io::Error::other(format!("making /sys read-only: {errno}")))?;
    for tmpfs in &spec.tmpfs {
        crate::serve::mount_tmpfs(root, tmpfs)?;
    }
    for share in &spec.shares {
        if share.populate {
            return Err(invalid("a pod's share cannot be populated".into()));
        }
        let source = acquire(share, shares, channel)?;
        acquired.push(share.stream);
        let target = crate::volumes::mount_point_in(root, &share.target, share.file)?;
        let target = target.display().to_string();
        bind(&source, &target, false)?;
        if share.read_only {
            mount(
                None::<&str>,
                target.as_str(),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("making {} read-only: {e}", share.target)))?;
        }
    }
    for name in ["hostname", "hosts", "resolv.conf"] {
        let path = format!("/etc/{name}");
        if spec.shares.iter().any(|share| share.target == path) {
            continue;
        }
        let source = format!("/run/berth/{name}");
        if fs::metadata(&source).is_err() {
            continue;
        }
        let target = crate::volumes::mount_point_in(root, &path, true)?;
        bind(&source, &target.display().to_string(), false)?;
    }
    if spec.read_only {
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("making the root filesystem read-only: {e}")))?;
    }
    Ok(())
}

fn bind(source: &str, target: &str, recursive: bool) -> io::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .map_err(|errno| io::Error::other(format!("binding {source} to {target}: {errno}")))
}

/// Unmounts the further container `name` (the caller killed the processes it started;
/// any others in its cgroup are killed here).
pub fn remove(name: &str, shares: &Shares) -> io::Result<()> {
    let Some(members) = containers().as_mut().and_then(|c| c.remove(name)) else {
        return Err(invalid(format!("no container {name:?} in this VM")));
    };
    crate::cgroups::remove(name);
    crate::mount_namespace::forget(name);
    let root = format!("{POD_ROOT}/{name}");
    let detached = umount2(root.as_str(), MntFlags::MNT_DETACH)
        .map_err(|errno| io::Error::other(format!("unmounting {root}: {errno}")));
    shares.forget(&[members.root_stream]);
    release(&members.shares, shares);
    detached?;
    let _ = fs::remove_dir(&root);
    Ok(())
}
