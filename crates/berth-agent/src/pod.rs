//! Further containers in one VM: a pod's containers beside its first.
//!
//! The VM's first container has its root at [`CONTAINER_ROOT`] (set up by `Setup`). A
//! further container ([`ContainerSpec`]) has its root at `/mnt/pod/<name>`: a share of
//! the host's (its image's root filesystem as the host prepared it), with the first
//! container's /proc, /sys (read-only) and /dev bound into it, the first container's
//! /etc/hostname, /etc/hosts and /etc/resolv.conf unless it mounts its own, then its
//! tmpfs mounts and shares. That tree becomes the root of a mount namespace of its own
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

use berth_agent_proto::{valid_container_name, ContainerSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::boot::CONTAINER_ROOT;
use crate::channel::Channel;
use crate::shares::Shares;

/// Where further containers' roots are mounted.
pub const POD_ROOT: &str = "/mnt/pod";

/// The further containers, by name: the streams of their shares.
static CONTAINERS: Mutex<Option<HashMap<String, Vec<u32>>>> = Mutex::new(None);

fn containers() -> MutexGuard<'static, Option<HashMap<String, Vec<u32>>>> {
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
    let mounted = mount_tree(&root, spec, shares, channel)
        .and_then(|()| crate::cgroups::create(Some(&spec.name), &spec.resources))
        .and_then(|()| crate::mount_namespace::create(&spec.name, &root));
    let streams: Vec<u32> = std::iter::once(&spec.root_share)
        .chain(&spec.shares)
        .map(|share| share.stream)
        .collect();
    if let Err(error) = mounted {
        crate::cgroups::remove(&spec.name);
        let _ = umount2(root.as_str(), MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&root);
        shares.forget(&streams);
        return Err(error);
    }
    containers()
        .get_or_insert_with(HashMap::new)
        .insert(spec.name.clone(), streams);
    Ok(())
}

fn mount_tree(
    root: &str,
    spec: &ContainerSpec,
    shares: &Shares,
    channel: &Channel,
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
    shares.mount_all_in(root, &spec.shares, channel)?;
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
    let Some(streams) = containers().as_mut().and_then(|c| c.remove(name)) else {
        return Err(invalid(format!("no container {name:?} in this VM")));
    };
    crate::cgroups::remove(name);
    crate::mount_namespace::forget(name);
    let root = format!("{POD_ROOT}/{name}");
    let detached = umount2(root.as_str(), MntFlags::MNT_DETACH)
        .map_err(|errno| io::Error::other(format!("unmounting {root}: {errno}")));
    shares.forget(&streams);
    detached?;
    let _ = fs::remove_dir(&root);
    Ok(())
}
