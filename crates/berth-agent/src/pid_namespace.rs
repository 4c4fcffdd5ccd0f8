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
//! Namespaces for children are a per-thread attribute (`pid_for_children`): the thread
//! that forks enters the wanted namespace for the fork only, through
//! [`ForChildren::enter`], and returns to the VM's namespace when the guard drops.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sched::{setns, unshare, CloneFlags};

/// The container's namespace, while its first process runs in one of its own.
static CONTAINER: Mutex<Option<File>> = Mutex::new(None);

fn container() -> std::sync::MutexGuard<'static, Option<File>> {
    CONTAINER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the next fork of this thread puts its child, until dropped.
pub struct ForChildren {
    /// The namespace this thread's children went to before (the VM's).
    previous: Option<File>,
}

impl ForChildren {
    /// Makes this thread's next children start in a new namespace (`new`, for the
    /// container's first process) or in the container's, if it has one; otherwise in
    /// the VM's, as before.
    pub fn enter(new: bool) -> io::Result<Self> {
        let joined = if new {
            None
        } else {
            container().as_ref().map(File::try_clone).transpose()?
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

/// Records the namespace of the container's first process (`pid`, as the VM sees it).
pub fn adopt(pid: i32) -> io::Result<()> {
    let namespace = File::open(format!("/proc/{pid}/ns/pid"))?;
    *container() = Some(namespace);
    Ok(())
}

/// Forgets the container's namespace once its first process has ended (the kernel has
/// then killed the rest of it) and unmounts its /proc, so that helpers started later see
/// the VM's.
pub fn release(container_proc: &str) {
    if container().take().is_some() {
        let _ = nix::mount::umount2(container_proc, nix::mount::MntFlags::MNT_DETACH);
    }
}
