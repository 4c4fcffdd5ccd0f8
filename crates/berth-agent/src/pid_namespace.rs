//! The container's PID namespace inside its VM.
//!
//! Contract: by default (Docker's `--pid` unset), the container's first process is
//! started in a PID namespace of its own, where it is PID 1, and every later process of
//! the container (execs, `docker cp`'s helper) joins that namespace; its /proc is a
//! procfs of that namespace (mounted by the first process itself, the only way to get
//! one), so the container sees only its own processes, as under Docker. When the first
//! process ends, the kernel kills the rest of the namespace and the agent unmounts that
//! /proc. With `--pid host` the container's processes stay in the VM's namespace (the
//! agent and the kernel's threads are then visible, as the host's are under Docker).
//!
//! A further container of the VM (a pod's, `crate::pod`) has a namespace of its own in
//! the same way: its first process is PID 1 of a new one, its execs join it, its /proc
//! is that namespace's, and its end ends the rest. Namespaces are kept by container
//! (`None`: the VM's first).
//!
//! Namespaces for children are a per-thread attribute (`pid_for_children`): the thread
//! that forks enters the wanted namespace for the fork only, through
//! [`ForChildren::enter`], and returns to the VM's namespace when the guard drops.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sched::{setns, unshare, CloneFlags};

/// Containers' namespaces (by container; `None`: the VM's first), while their first
/// processes run in ones of their own.
static CONTAINERS: Mutex<Option<HashMap<Option<String>, File>>> = Mutex::new(None);

fn containers() -> std::sync::MutexGuard<'static, Option<HashMap<Option<String>, File>>> {
    CONTAINERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn namespace_of(container: Option<&str>) -> io::Result<Option<File>> {
    containers()
        .as_ref()
        .and_then(|namespaces| namespaces.get(&container.map(str::to_owned)))
        .map(File::try_clone)
        .transpose()
}

/// Where the next fork of this thread puts its child, until dropped.
pub struct ForChildren {
    /// The namespace this thread's children went to before (the VM's).
    previous: Option<File>,
}

impl ForChildren {
    /// Makes this thread's next children start in a new namespace (`new`, for a
    /// container's first process) or in the namespace of `container`, if it has one;
    /// otherwise in the VM's, as before.
    pub fn enter(new: bool, container: Option<&str>) -> io::Result<Self> {
        let joined = match (new, container) {
            (true, _) => None,
            // A further container without a namespace of its own shares the VM's first
            // container's (a pod's shared process namespace).
            (false, Some(_)) => match namespace_of(container)? {
                Some(namespace) => Some(namespace),
                None => namespace_of(None)?,
            },
            (false, None) => namespace_of(None)?,
        };
        if !new && joined.is_none() {
            return Ok(Self { previous: None });
        }
        let previous = File::open("/proc/thread-self/ns/pid_for_children")?;
        match joined {
            Some(namespace) => setns(namespace.as_fd(), CloneFlags::CLONE_NEWPID)?,
            None => unshare(CloneFlags::CLONE_NEWPID)?,
        }
        Ok(Self {
            previous: Some(previous),
        })
    }
}

impl Drop for ForChildren {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            // Back to the VM's namespace: the agent's own helpers must not land in the
            // container's. A failure would leave this thread's children in the wrong
            // namespace; it cannot fail for a namespace this thread was in.
            if let Err(error) = setns(previous.as_fd(), CloneFlags::CLONE_NEWPID) {
                eprintln!("berth-agent: returning to the VM's PID namespace: {error}");
            }
        }
    }
}

/// Records the namespace of `container`'s first process (`pid`, as the VM sees it).
pub fn adopt(pid: i32, container: Option<&str>) -> io::Result<()> {
    let namespace = File::open(format!("/proc/{pid}/ns/pid"))?;
    containers()
        .get_or_insert_with(HashMap::new)
        .insert(container.map(str::to_owned), namespace);
    Ok(())
}

/// Forgets `container`'s namespace once its first process has ended (the kernel has
/// then killed the rest of it) and unmounts its /proc (`container_proc`, as the agent
/// sees it, if it is in the agent's mount namespace), so that helpers started later
/// see the VM's.
pub fn release(container: Option<&str>, container_proc: Option<&str>) {
    let known = containers()
        .as_mut()
        .and_then(|namespaces| namespaces.remove(&container.map(str::to_owned)));
    if let (Some(_), Some(proc)) = (known, container_proc) {
        let _ = nix::mount::umount2(proc, nix::mount::MntFlags::MNT_DETACH);
    }
}
