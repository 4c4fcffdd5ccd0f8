//! A VM process (QEMU, or `berth vmm`): spawning it, adopting one a previous engine
//! started, and waiting for or killing it. Backends build their [`crate::VmControl`]
//! on it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use crate::{VmError, VmExit};

/// The descriptor number a file given to [`VmProcess::spawn`] has in the VM process.
pub const PASSED_FD: i32 = 3;

/// How long [`VmProcess::kill_now`] waits for a killed process to end.
pub const KILL_WAIT: Duration = Duration::from_secs(30);

/// The environment variable that names a VM process's run directory.
pub const VM_DIR_ENV: &str = "BERTH_VM_DIR";

/// The processes whose run directory ([`VM_DIR_ENV`]) lies under `root`: the VM
/// processes of the engine whose run directories are there, including those it started
/// but never recorded (it was killed while starting them). Processes this user may not
/// inspect are skipped.
pub fn vm_processes_under(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let prefix = format!("{VM_DIR_ENV}=");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(environment) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            environment.split(|byte| *byte == 0).any(|variable| {
                std::str::from_utf8(variable)
                    .ok()
                    .and_then(|text| text.strip_prefix(&prefix))
                    .is_some_and(|dir| Path::new(dir).starts_with(root))
            })
        })
        .collect()
}

/// How many lines of each log [`exited_early`] quotes.
const EARLY_EXIT_LOG_LINES: usize = 12;

/// The error for a VM process that ended before its agent connected: its exit status
/// and the last lines of each of `logs` that has any (the VM process's own log, then the
/// guest's console, where a kernel panic or a failing init shows).
pub fn exited_early(exit: &VmExit, logs: &[&Path]) -> VmError {
    let mut message = format!("status {:?}", exit.code);
    for log in logs {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.trim().lines().collect();
        if lines.is_empty() {
            continue;
        }
        let name = log
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tail = &lines[lines.len().saturating_sub(EARLY_EXIT_LOG_LINES)..];
        message.push_str(&format!("; the end of {name}:\n{}", tail.join("\n")));
    }
    VmError::ExitedEarly(message)
}

/// Sends SIGKILL to `pid` (found by [`vm_processes_under`]).
pub fn kill_process(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes no pointers.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A VM process whose exit is published on a watch channel by a reaper task.
pub struct VmProcess {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
}

impl VmProcess {
    /// Starts `binary` with its output going to `log`. The VM process gets its own
    /// process group, so a Ctrl-C aimed at the daemon does not reach it: the daemon stops
    /// its VMs itself.
    ///
    /// With `netns`, the process runs in that network namespace (where its taps are):
    /// the namespace is entered between fork and exec.
    ///
    /// With `passed`, that file is the process's descriptor [`PASSED_FD`] (for QEMU, the
    /// snapshot it restores, read through `fd:3` without a helper process).
    ///
    /// The process carries its run directory in its environment ([`VM_DIR_ENV`]), so
    /// that an engine after this one can find it if this engine dies before it records
    /// the VM ([`vm_processes_under`]).
    ///
    /// With `small_pages`, the process gets no transparent huge pages
    /// (`PR_SET_THP_DISABLE`, kept across exec): for a clone, whose memory is its
    /// template's at page granularity, a huge page would make it own 2 MiB where it
    /// wrote 4 KiB (QEMU asks for huge pages for guest RAM and its translation cache).
    pub fn spawn(
        binary: &Path,
        arguments: &[String],
        run_dir: &Path,
        log: &Path,
        netns: Option<&Path>,
        small_pages: bool,
        passed: Option<File>,
    ) -> Result<Self, VmError> {
        let log_file =
            File::create(log).map_err(|e| VmError::Io("creating the VM process log", e))?;
        let log_clone = log_file
            .try_clone()
            .map_err(|e| VmError::Io("creating the VM process log", e))?;
        let mut command = Command::new(binary);
        let namespace = netns
            .map(File::open)
            .transpose()
            .map_err(|e| VmError::Io("opening the network namespace", e))?;
        // SAFETY: the hook only makes async-signal-safe system calls (setns, prctl, dup2,
        // fcntl) on descriptors that the closure owns and that stay open until the child
        // execs.
        unsafe {
            command.pre_exec(move || {
                if let Some(namespace) = &namespace {
                    if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(file) = &passed {
                    // dup2 leaves the copy open across exec; a descriptor that already
                    // is PASSED_FD only needs its close-on-exec flag taken off.
                    let fd = file.as_raw_fd();
                    let kept = if fd == PASSED_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, PASSED_FD)
                    };
                    if kept < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if small_pages && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .args(arguments)
            .env(VM_DIR_ENV, run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_clone))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(VmError::Spawn)?;
        let pid = child
            .id()
            .ok_or_else(|| VmError::ExitedEarly("no pid".into()))?;
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().and_then(|status| status.code());
            let _ = sender.send(Some(VmExit { code }));
        });
        Ok(Self { pid, exit })
    }

    /// Takes over a VM process that another engine started (it is not our child: its
    /// end is seen through a pidfd, its exit status is not known).
    pub fn adopt(pid: u32) -> Result<Self, VmError> {
        // SAFETY: pidfd_open takes a pid and flags, no pointers; the descriptor it
        // returns is owned by the OwnedFd below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(VmError::Io(
                "opening the VM process",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just returned by pidfd_open and nothing else owns it.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd is a valid pidfd that AsyncFd owns from here on; nothing
        // else closes or replaces it.
        let watched = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(|e| VmError::Io("watching the VM process", e.into()))?;
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            // A pidfd becomes readable when its process ends.
            let _ = watched.readable().await;
            let _ = sender.send(Some(VmExit { code: None }));
        });
        Ok(Self { pid, exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has ended.
    pub async fn exited(&self) -> VmExit {
        let mut exit = self.exit.clone();
        let result = match exit.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(VmExit { code: None }),
            Err(_) => VmExit { code: None },
        };
        result
    }

    /// Kills the process and waits for it, up to [`KILL_WAIT`]: a process stuck in the
    /// kernel (uninterruptible) does not hold its caller's teardown up for ever; it is
    /// reported, and still reaped whenever it ends.
    pub async fn kill_now(&self) -> VmExit {
        if self.exit.borrow().is_none() {
            // SAFETY: kill takes no pointers. The pid is our child's and is reaped only by
            // the reaper task, which publishes the exit right after; a reaped pid is not
            // signalled (checked just above), save for that short window.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        match tokio::time::timeout(KILL_WAIT, self.exited()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "the VM process did not end within {} s of SIGKILL (stuck in the kernel?); going on without it",
                    KILL_WAIT.as_secs()
                );
                VmExit { code: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_processes_are_found_by_their_run_directory() {
        let root = tempfile::tempdir().unwrap();
        let run_dir = root.path().join("vms").join("abc");
        let mut marked = std::process::Command::new("sleep")
            .arg("30")
            .env(VM_DIR_ENV, &run_dir)
            .spawn()
            .unwrap();
        let mut unmarked = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A child's environment shows in /proc only once its exec has laid out the new
        // stack, which can be a moment after `spawn` returns (the parent resumes when the
        // exec has replaced the memory, before the stack's addresses are recorded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = vm_processes_under(root.path());
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = vm_processes_under(root.path());
        }
        let elsewhere = vm_processes_under(&root.path().join("vm"));
        let _ = marked.kill();
        let _ = unmarked.kill();
        let _ = marked.wait();
        let _ = unmarked.wait();
        assert_eq!(found, vec![marked.id()]);
        assert!(elsewhere.is_empty(), "a sibling path is not under the root");
    }
}
