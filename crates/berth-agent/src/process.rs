//! Starting container processes and pumping their standard streams.
//!
//! Processes are started with `std::process::Command`; everything that must happen in
//! the child between fork and exec (chroot, identity, session, controlling terminal)
//! runs in a `pre_exec` hook that only makes async-signal-safe system calls.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Sender};

use berth_agent_proto::{FrameKind, ProcessSpec, SpawnFailure};

use crate::channel::Channel;
use crate::pid_namespace;
use crate::pumps::Pumps;
use crate::user;

/// A running process the agent reports on.
pub struct RunningProcess {
    pub pid: i32,
    /// Feeds standard input; `None` closes it.
    pub stdin: Option<Sender<Option<Vec<u8>>>>,
    /// The terminal's controlling side, when the process has one.
    pub pty_master: Option<File>,
    /// Threads copying output to the channel; finished before `Exited` is sent.
    pub pumps: Pumps,
    /// The container's first process: when it ends, the container ends.
    pub is_init: bool,
    /// The kernel's count of out-of-memory kills when the process started.
    pub oom_kills_at_start: u64,
    /// The process is PID 1 of the container's own PID namespace.
    pub own_pid_namespace: bool,
    /// The further container it runs in (`None`: the VM's first).
    pub container: Option<String>,
}

/// How many processes the kernel's out-of-memory killer has killed (`/proc/vmstat`).
pub fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Processes by stream id.
pub type ProcessTable = HashMap<u32, RunningProcess>;

/// A spawn that failed, with the reason the engine maps to an exit code.
pub struct SpawnError {
    pub reason: SpawnFailure,
    pub message: String,
}

impl SpawnError {
    fn other(message: impl Into<String>) -> Self {
        Self {
            reason: SpawnFailure::Other,
            message: message.into(),
        }
    }
}

fn cstring(value: &str) -> Result<CString, SpawnError> {
    CString::new(value).map_err(|_| SpawnError::other(format!("{value:?} contains a NUL byte")))
}

fn stdin_feeder(mut sink: File) -> Sender<Option<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        while let Ok(Some(bytes)) = receiver.recv() {
            if sink.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    sender
}

fn classify_exec_error(program: &str, error: &io::Error) -> SpawnError {
    match error.raw_os_error() {
        Some(libc::ENOENT) if !program.contains('/') => SpawnError {
            reason: SpawnFailure::NotFound,
            message: format!("exec: \"{program}\": executable file not found in $PATH"),
        },
        Some(libc::ENOENT) => SpawnError {
            reason: SpawnFailure::NotFound,
            message: format!("exec: \"{program}\": stat {program}: no such file or directory"),
        },
        Some(libc::EACCES) | Some(libc::EISDIR) | Some(libc::ENOEXEC) => SpawnError {
            reason: SpawnFailure::NotExecutable,
            message: format!("exec: \"{program}\": permission denied"),
        },
        _ => SpawnError::other(format!("exec: \"{program}\": {error}")),
    }
}

/// Starts `spec` inside the container root, wiring its streams to `channel` on `stream`.
///
/// `announce` is called with the process's pid as soon as it has exec'd, before the
/// threads that carry its output are started: the engine learns that the process runs
/// without waiting for the agent's bookkeeping, and nothing of its output can reach the
/// channel before the announcement. Its error is returned only after the process is
/// wired up, so that a running process is never lost.
pub fn spawn(
    spec: &ProcessSpec,
    stream: u32,
    channel: &Channel,
    is_init: bool,
    announce: impl FnOnce(i32) -> io::Result<()>,
) -> Result<(RunningProcess, io::Result<()>), SpawnError> {
    let oom_kills_at_start = oom_kills();
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SpawnError::other("no command specified"))?;
    let root = crate::pod::root_of(spec.container.as_deref()).map_err(SpawnError::other)?;
    if crate::cgroups::frozen(spec.container.as_deref()) {
        return Err(SpawnError::other("cannot exec in a paused container"));
    }
    let identity =
        user::resolve(&root, &spec.user, &spec.extra_groups).map_err(SpawnError::other)?;
    create_working_directory(&root, spec)?;

    // The VM's first process, or a further container's (which the host marks so).
    let own_pid_namespace = spec.own_pid_namespace && (is_init || spec.container.is_some());
    let mut command = container_command(spec, program, &identity);
    let pty_master = attach_stdio(&mut command, spec)?;
    let setup = ChildSetup::prepare(&root, spec, program, &identity, own_pid_namespace)?;
    install_child_setup(&mut command, setup);

    let namespace = pid_namespace::ForChildren::enter(own_pid_namespace, spec.container.as_deref())
        .map_err(|error| {
            SpawnError::other(format!("entering the container's PID namespace: {error}"))
        })?;
    let spawned = command.spawn();
    drop(namespace);
    let mut child = spawned.map_err(|error| classify_exec_error(program, &error))?;
    let pid = child.id() as i32;
    if own_pid_namespace {
        if let Err(error) = pid_namespace::adopt(pid, spec.container.as_deref()) {
            // Only a process that ended at once has no namespace to find: the reaper
            // reports its exit; later spawns go to the VM's namespace.
            eprintln!("berth-agent: the container's PID namespace: {error}");
        }
    }
    let announced = announce(pid);
    let streams = match &pty_master {
        Some(master) => pump_terminal(master, spec.stdin, channel, stream)?,
        None => pump_pipes(&mut child, channel, stream),
    };
    // The child is reaped by the agent's reaper (waitpid(-1)), not by `Child::wait`.
    drop(child);
    let running = RunningProcess {
        pid,
        stdin: streams.stdin,
        pty_master,
        pumps: streams.pumps,
        is_init,
        oom_kills_at_start,
        own_pid_namespace,
        container: spec.container.clone(),
    };
    Ok((running, announced))
}

/// Checks that the working directory is absolute and creates it if it is missing, in the
/// container whose root is `root`.
fn create_working_directory(root: &str, spec: &ProcessSpec) -> Result<(), SpawnError> {
    if !spec.cwd.starts_with('/') {
        return Err(SpawnError::other(format!(
            "the working directory '{}' is invalid, it needs to be an absolute path",
            spec.cwd
        )));
    }
    // Docker creates a missing working directory.
    let host_cwd = format!("{root}{}", spec.cwd);
    std::fs::create_dir_all(&host_cwd)
        .map_err(|e| SpawnError::other(format!("creating working directory {}: {e}", spec.cwd)))
}

/// Builds the command for `program` with its arguments and a clean environment from `spec`.
fn container_command(spec: &ProcessSpec, program: &str, identity: &user::Identity) -> Command {
    let mut command = if spec.agent_helper {
        // The agent's own binary, reached through /proc (mounted in the container root)
        // after the chroot; `argv[0]` tells it which helper to be.
        let mut command = Command::new("/proc/self/exe");
        command.arg0(program);
        command
    } else {
        Command::new(program)
    };
    command.args(&spec.argv[1..]).env_clear();
    let mut has_home = false;
    for pair in &spec.env {
        let (key, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        has_home |= key == "HOME";
        command.env(key, value);
    }
    if !has_home {
        command.env("HOME", &identity.home);
    }
    command
}

/// Connects the standard streams to a new terminal or to pipes; returns the terminal's master.
fn attach_stdio(command: &mut Command, spec: &ProcessSpec) -> Result<Option<File>, SpawnError> {
    if !spec.tty {
        command.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        return Ok(None);
    }
    let size = spec.tty_size.map(|(rows, cols)| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None)
        .map_err(|e| SpawnError::other(format!("openpty: {e}")))?;
    let slave: OwnedFd = pty.slave;
    command.stdin(Stdio::from(
        slave
            .try_clone()
            .map_err(|e| SpawnError::other(e.to_string()))?,
    ));
    command.stdout(Stdio::from(
        slave
            .try_clone()
            .map_err(|e| SpawnError::other(e.to_string()))?,
    ));
    command.stderr(Stdio::from(slave));
    Ok(Some(File::from(pty.master)))
}

/// Everything the child applies to itself between fork and exec, prepared before the fork.
struct ChildSetup {
    root: CString,
    cwd: CString,
    uid: u32,
    gid: u32,
    /// Every group the process is in (its primary group first).
    groups: Vec<libc::gid_t>,
    tty: bool,
    no_new_privileges: bool,
    /// Capabilities to drop from the bounding set.
    dropped: Vec<libc::c_ulong>,
    /// Resource limits to set, by resource.
    limits: Vec<(u32, libc::rlimit)>,
    /// Where to mount the procfs of the process's own PID namespace, when it is PID 1
    /// of a new one (only a process inside a namespace can mount its procfs).
    own_proc: Option<CString>,
    /// Start with every signal blocked: the `--init` helper, which waits for signals
    /// with `sigwait`. A namespace's PID 1 loses any signal it neither handles nor
    /// blocks, so a `docker stop` right after the start would otherwise be lost.
    block_signals: bool,
    /// The `cgroup.procs` of the container's group, when it has one (`crate::cgroups`).
    group: Option<CString>,
    /// The container's mount namespace, when it has one (`crate::mount_namespace`):
    /// entering it gives the process its root.
    mount_namespace: Option<File>,
}

impl ChildSetup {
    /// Collects the root, working directory, identity, capabilities and limits for `spec`
    /// (in the container whose root is `container_root`).
    fn prepare(
        container_root: &str,
        spec: &ProcessSpec,
        program: &str,
        identity: &user::Identity,
        own_pid_namespace: bool,
    ) -> Result<Self, SpawnError> {
        // The changes helper compares the container root with its image's: it alone runs
        // outside the container root.
        let outside = spec.agent_helper && program == crate::changes::HELPER_NAME;
        let mount_namespace = match (&spec.container, outside) {
            (Some(name), false) => crate::mount_namespace::of(name).map_err(|error| {
                SpawnError::other(format!("the container's mount namespace: {error}"))
            })?,
            _ => None,
        };
        // In a mount namespace of its own the container's root is `/` already.
        let root_is_slash = mount_namespace.is_some() || container_root.is_empty();
        let root = if outside || root_is_slash {
            cstring("/")?
        } else {
            cstring(container_root)?
        };
        let proc_dir = if root_is_slash {
            "/proc".to_owned()
        } else {
            format!("{container_root}/proc")
        };
        let cwd = cstring(&spec.cwd)?;
        Ok(Self {
            root,
            cwd,
            uid: identity.uid,
            gid: identity.gid,
            groups: identity.groups.clone(),
            tty: spec.tty,
            no_new_privileges: spec.no_new_privileges,
            dropped: capabilities_to_drop(spec),
            limits: resource_limits(spec),
            own_proc: if own_pid_namespace {
                Some(cstring(&proc_dir)?)
            } else {
                None
            },
            block_signals: spec.agent_helper
                && (program == berth_agent_proto::INIT_HELPER
                    || program == berth_agent_proto::HOLD_HELPER),
            group: crate::cgroups::join_path(spec.container.as_deref()),
            mount_namespace,
        })
    }
}

/// The capabilities outside `spec.capabilities` (none when it keeps them all).
fn capabilities_to_drop(spec: &ProcessSpec) -> Vec<libc::c_ulong> {
    let last_capability: u8 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);
    match &spec.capabilities {
        None => Vec::new(),
        Some(kept) => (0..=last_capability)
            .filter(|cap| !kept.contains(cap))
            .map(libc::c_ulong::from)
            .collect(),
    }
}

/// The resource limits of `spec` in the form `setrlimit` takes.
fn resource_limits(spec: &ProcessSpec) -> Vec<(u32, libc::rlimit)> {
    spec.rlimits
        .iter()
        .map(|(resource, soft, hard)| {
            (
                *resource,
                libc::rlimit {
                    rlim_cur: *soft,
                    rlim_max: *hard,
                },
            )
        })
        .collect()
}

/// Makes the child start a session, take its terminal, enter its root and drop privileges.
fn install_child_setup(command: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        root,
        cwd,
        uid,
        gid,
        groups,
        tty,
        no_new_privileges,
        dropped,
        limits,
        own_proc,
        block_signals,
        group,
        mount_namespace,
    } = setup;
    // SAFETY: sigfillset only writes the set it is given, which is fully initialised here.
    let all_signals = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        set
    };
    // SAFETY: the hook runs in the child between fork and exec; it only makes
    // async-signal-safe system calls on values prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Join the container's cgroup (writing 0 moves the writer) while its file
            // is in reach; a failure leaves the process unlimited rather than not
            // started.
            if let Some(path) = &group {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if let Some(namespace) = &mount_namespace {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNS) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(target) = &own_proc {
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                if libc::mount(
                    c"proc".as_ptr(),
                    target.as_ptr(),
                    c"proc".as_ptr(),
                    flags,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chroot(root.as_ptr()) < 0 || libc::chdir(cwd.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Limits and the bounding set need privileges: before dropping to the user.
            for (resource, limit) in &limits {
                if libc::setrlimit(*resource as _, limit) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for capability in &dropped {
                if libc::prctl(libc::PR_CAPBSET_DROP, *capability, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Last: the standard library resets the mask before these hooks run.
            if block_signals
                && libc::pthread_sigmask(libc::SIG_SETMASK, &all_signals, std::ptr::null_mut()) != 0
            {
                return Err(io::Error::other("blocking signals"));
            }
            Ok(())
        });
    }
}

/// The threads that carry a started process's streams.
struct StreamThreads {
    /// Threads copying output to the channel.
    pumps: Pumps,
    /// Feeds standard input, when the process reads it.
    stdin: Option<Sender<Option<Vec<u8>>>>,
}

/// Copies the terminal's output to the channel and, if `with_stdin`, feeds it input.
fn pump_terminal(
    master: &File,
    with_stdin: bool,
    channel: &Channel,
    stream: u32,
) -> Result<StreamThreads, SpawnError> {
    let reader = master
        .try_clone()
        .map_err(|e| SpawnError::other(e.to_string()))?;
    let mut pumps = Pumps::default();
    pumps.add(reader, channel.clone(), stream, FrameKind::Stdout);
    let stdin = if with_stdin {
        Some(stdin_feeder(
            master
                .try_clone()
                .map_err(|e| SpawnError::other(e.to_string()))?,
        ))
    } else {
        None
    };
    Ok(StreamThreads { pumps, stdin })
}

/// Copies the child's piped output to the channel and feeds its piped input.
fn pump_pipes(child: &mut Child, channel: &Channel, stream: u32) -> StreamThreads {
    let mut pumps = Pumps::default();
    if let Some(out) = child.stdout.take() {
        pumps.add(
            File::from(OwnedFd::from(out)),
            channel.clone(),
            stream,
            FrameKind::Stdout,
        );
    }
    if let Some(err) = child.stderr.take() {
        pumps.add(
            File::from(OwnedFd::from(err)),
            channel.clone(),
            stream,
            FrameKind::Stderr,
        );
    }
    let stdin = child
        .stdin
        .take()
        .map(|input| stdin_feeder(File::from(OwnedFd::from(input))));
    StreamThreads { pumps, stdin }
}

/// Applies a terminal size to a process's terminal.
pub fn resize(master: &File, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call; the fd is open.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}
