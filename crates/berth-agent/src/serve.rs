//! The request loop: reads frames from the host and acts on them; a reaper thread
//! reports process exits.

use std::fs::{self, File};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent_proto::{
    decode_host_message, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, ProcessStatus,
    SetupSpec, SpawnFailure, AGENT_STREAM, PROTOCOL_VERSION, RESYNC_MARKER,
};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::boot::CONTAINER_ROOT;
use crate::channel::Channel;
use crate::process::{self, ProcessTable};
use crate::shares::Shares;
use crate::{boot, network};

type SharedTable = Arc<Mutex<ProcessTable>>;

/// Exits of processes, by stream, kept for a new engine that reattaches (the `Exited`
/// may have gone to the engine before it).
type SharedExits = Arc<Mutex<std::collections::BTreeMap<u32, (i32, Option<i32>)>>>;

fn lock(table: &SharedTable) -> std::sync::MutexGuard<'_, ProcessTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves the host until it asks for a shutdown.
pub fn serve(port: File) -> io::Result<()> {
    let reader = port.try_clone()?;
    let channel = Channel::new(port);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    channel.send(
        AGENT_STREAM,
        &GuestMessage::Hello {
            protocol: PROTOCOL_VERSION,
            kernel: kernel.clone(),
        },
    )?;

    let table: SharedTable = Arc::default();
    let exits: SharedExits = Arc::default();
    {
        let (table, channel, exits) = (table.clone(), channel.clone(), exits.clone());
        std::thread::spawn(move || reap(table, channel, exits));
    }

    let shares = Shares::default();
    let frames = {
        let (sender, receiver) = std::sync::mpsc::channel();
        let shares = shares.clone();
        std::thread::spawn(move || read_port(reader, &shares, &sender));
        receiver
    };
    let mut spawned_any = false;
    // Why this VM must run nothing for the container: a failed rebind (a clone without
    // its own entropy and clock) or a failed setup. The engine sends the container's
    // process right behind its setup, without waiting for the answer; it gets refused.
    let mut unfit: Option<String> = None;
    loop {
        {
            let frame = match frames.recv() {
                Ok(Ok(frame)) => frame,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(io::Error::other("the port reader stopped")),
            };
            match frame.kind {
                FrameKind::Stdin => {
                    if let Some(sender) = lock(&table)
                        .get(&frame.stream)
                        .and_then(|p| p.stdin.as_ref())
                    {
                        let _ = sender.send(Some(frame.payload));
                    }
                }
                FrameKind::Control => {
                    let message = match decode_host_message(&frame) {
                        Ok(message) => message,
                        Err(error) => {
                            channel.send(
                                frame.stream,
                                &GuestMessage::Error {
                                    message: error.to_string(),
                                },
                            )?;
                            continue;
                        }
                    };
                    if let HostMessage::Shutdown = message {
                        return Ok(());
                    }
                    if let HostMessage::Reattach = message {
                        let mut processes: Vec<ProcessStatus> = lock(&table)
                            .iter()
                            .map(|(stream, process)| ProcessStatus {
                                stream: *stream,
                                pid: process.pid,
                                exit: None,
                            })
                            .collect();
                        for (stream, exit) in exits.lock().unwrap_or_else(|p| p.into_inner()).iter()
                        {
                            processes.push(ProcessStatus {
                                stream: *stream,
                                pid: 0,
                                exit: Some(*exit),
                            });
                        }
                        channel.send_after_marker(
                            RESYNC_MARKER,
                            frame.stream,
                            &GuestMessage::Reattached {
                                protocol: PROTOCOL_VERSION,
                                processes,
                            },
                        )?;
                        // After the marker: a request sent before it is skipped by the
                        // new engine, so every one sent so far fails rather than hangs.
                        shares.fail_outstanding();
                        continue;
                    }
                    if let HostMessage::Rebind(spec) = &message {
                        let reply = match crate::rebind::rebind(spec) {
                            Ok(steps) => GuestMessage::Rebound {
                                protocol: PROTOCOL_VERSION,
                                kernel: kernel.clone(),
                                steps,
                            },
                            Err(error) => {
                                unfit = Some(format!("the clone could not rebind: {error}"));
                                GuestMessage::Error {
                                    message: format!("rebind: {error}"),
                                }
                            }
                        };
                        channel.send(frame.stream, &reply)?;
                        continue;
                    }
                    let mut state = SessionState {
                        channel: &channel,
                        table: &table,
                        shares: &shares,
                        spawned_any: &mut spawned_any,
                        unfit: &mut unfit,
                    };
                    handle(message, frame.stream, &mut state)?;
                }
                FrameKind::Stdout | FrameKind::Stderr | FrameKind::Fuse => {
                    channel.send(
                        frame.stream,
                        &GuestMessage::Error {
                            message: "unexpected output frame".into(),
                        },
                    )?;
                }
            }
        }
    }
}

/// What the request handler works with.
struct SessionState<'a> {
    channel: &'a Channel,
    table: &'a SharedTable,
    shares: &'a Shares,
    spawned_any: &'a mut bool,
    unfit: &'a mut Option<String>,
}

/// Reads frames from the port: FUSE replies go straight to their share (the request
/// loop may be waiting on one, in a setup that copies into a share), everything else to
/// the request loop. With no host on the other end (yet, or any more) it waits for one;
/// whatever part of a frame the host that went away left is void.
fn read_port(mut port: File, shares: &Shares, frames: &std::sync::mpsc::Sender<io::Result<Frame>>) {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match port.read(&mut buffer) {
            Ok(0) => {
                decoder = FrameDecoder::new();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                let _ = frames.send(Err(error));
                return;
            }
        };
        decoder.push(&buffer[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.kind == FrameKind::Fuse => {
                    shares.deliver(frame.stream, &frame.payload)
                }
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = frames.send(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                    return;
                }
            }
        }
    }
}

fn handle(message: HostMessage, stream: u32, state: &mut SessionState<'_>) -> io::Result<()> {
    let SessionState {
        channel,
        table,
        shares,
        spawned_any,
        unfit,
    } = state;
    let channel: &Channel = channel;
    match message {
        HostMessage::Setup(spec) => {
            let result = match unfit.as_ref() {
                Some(reason) => Err(io::Error::other(reason.clone())),
                None => setup(&spec, shares, channel),
            };
            match result {
                Ok(steps_us) => channel.send(stream, &GuestMessage::SetupDone { steps_us }),
                Err(error) => {
                    unfit.get_or_insert_with(|| format!("the container's setup failed: {error}"));
                    channel.send(
                        stream,
                        &GuestMessage::Error {
                            message: error.to_string(),
                        },
                    )
                }
            }
        }
        HostMessage::Rehearse => {
            let result = if **spawned_any || boot::container_root_mounted() {
                Err(io::Error::other("a container has this VM already"))
            } else {
                crate::rehearse::rehearse()
            };
            match result {
                Ok(steps_us) => channel.send(stream, &GuestMessage::Rehearsed { steps_us }),
                Err(error) => channel.send(
                    stream,
                    &GuestMessage::Error {
                        message: format!("rehearsal: {error}"),
                    },
                ),
            }
        }
        HostMessage::Spawn(_) if unfit.is_some() => channel.send(
            stream,
            &GuestMessage::SpawnFailed {
                reason: SpawnFailure::Other,
                message: unfit.clone().unwrap_or_default(),
            },
        ),
        HostMessage::Spawn(spec) => {
            // Hold the table while spawning so the reaper cannot see the exit of a process
            // that is not registered yet.
            let mut processes = lock(table);
            if processes.contains_key(&stream) || stream == AGENT_STREAM {
                return channel.send(
                    stream,
                    &GuestMessage::Error {
                        message: format!("stream {stream} is in use"),
                    },
                );
            }
            let announce = |pid| channel.send(stream, &GuestMessage::Started { pid });
            match process::spawn(&spec, stream, channel, !**spawned_any, announce) {
                Ok((running, announced)) => {
                    **spawned_any = true;
                    processes.insert(stream, running);
                    announced
                }
                Err(error) => channel.send(
                    stream,
                    &GuestMessage::SpawnFailed {
                        reason: error.reason,
                        message: error.message,
                    },
                ),
            }
        }
        HostMessage::CloseStdin => {
            if let Some(process) = lock(table).get_mut(&stream) {
                if let Some(sender) = process.stdin.take() {
                    let _ = sender.send(None);
                }
            }
            Ok(())
        }
        HostMessage::Signal { signal } => {
            if let Some(process) = lock(table).get(&stream) {
                // SAFETY: kill takes no pointers; the pid is one of our children.
                unsafe {
                    libc::kill(process.pid, signal);
                }
            }
            Ok(())
        }
        HostMessage::Resize { rows, cols } => {
            if let Some(master) = lock(table).get(&stream).and_then(|p| p.pty_master.as_ref()) {
                process::resize(master, rows, cols);
            }
            Ok(())
        }
        HostMessage::AddInterface(spec) => match network::configure(&spec) {
            Ok(()) => channel.send(
                stream,
                &GuestMessage::InterfaceReady {
                    name: spec.name.clone(),
                },
            ),
            Err(error) => channel.send(
                stream,
                &GuestMessage::Error {
                    message: format!("configuring {}: {error}", spec.name),
                },
            ),
        },
        HostMessage::RemoveInterface { name } => match network::take_down(&name) {
            Ok(()) => channel.send(stream, &GuestMessage::InterfaceRemoved { name }),
            Err(error) => channel.send(
                stream,
                &GuestMessage::Error {
                    message: format!("taking {name} down: {error}"),
                },
            ),
        },
        HostMessage::AddContainer(spec) => match crate::pod::add(&spec, shares, channel) {
            Ok(()) => channel.send(stream, &GuestMessage::ContainerAdded { name: spec.name }),
            Err(error) => channel.send(
                stream,
                &GuestMessage::Error {
                    message: format!("adding container {}: {error}", spec.name),
                },
            ),
        },
        HostMessage::RemoveContainer { name } => {
            for process in lock(table).values() {
                if process.container.as_deref() == Some(name.as_str()) {
                    // SAFETY: kill takes no pointers; the pid is one of our children.
                    unsafe {
                        libc::kill(process.pid, libc::SIGKILL);
                    }
                }
            }
            match crate::pod::remove(&name, shares) {
                Ok(()) => channel.send(stream, &GuestMessage::ContainerRemoved { name }),
                Err(error) => channel.send(
                    stream,
                    &GuestMessage::Error {
                        message: format!("removing container {name}: {error}"),
                    },
                ),
            }
        }
        HostMessage::ListProcesses => channel.send(stream, &crate::top::list()),
        HostMessage::ContainerUsage { container } => {
            channel.send(stream, &crate::top::usage(container.as_deref()))
        }
        HostMessage::UpdateResources {
            container,
            resources,
        } => match crate::cgroups::update(container.as_deref(), &resources) {
            Ok(()) => channel.send(stream, &GuestMessage::ResourcesUpdated),
            Err(error) => channel.send(
                stream,
                &GuestMessage::Error {
                    message: format!("limiting the container's resources: {error}"),
                },
            ),
        },
        HostMessage::FreezeContainer { name, frozen } => {
            match crate::cgroups::freeze(&name, frozen) {
                Ok(()) => channel.send(stream, &GuestMessage::ContainerFrozen { name, frozen }),
                Err(error) => channel.send(
                    stream,
                    &GuestMessage::Error {
                        message: format!("freezing container {name}: {error}"),
                    },
                ),
            }
        }
        HostMessage::Shutdown | HostMessage::Rebind(_) | HostMessage::Reattach => Ok(()),
    }
}

/// Times the steps of a setup, for the engine's log.
struct StepClock {
    last: std::time::Instant,
    steps: Vec<(String, u64)>,
}

impl StepClock {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    fn done(&mut self, name: &str) {
        let now = std::time::Instant::now();
        let spent = now.duration_since(self.last).as_micros() as u64;
        self.steps.push((name.to_owned(), spent));
        self.last = now;
    }
}

/// Sets the container up; returns how long each step took (see `SetupDone`).
fn setup(spec: &SetupSpec, shares: &Shares, channel: &Channel) -> io::Result<Vec<(String, u64)>> {
    let mut clock = StepClock::new();
    match &spec.root_share {
        Some(root) if root.target == "/" && !root.file => {
            shares.mount_all(std::slice::from_ref(root), channel)?;
            boot::finish_container_root(spec.shm_size, spec.sys_writable)?;
        }
        Some(root) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a root share must be a directory at /, not {:?}",
                    root.target
                ),
            ))
        }
        None => boot::mount_container_root(&spec.root_device, spec.shm_size, spec.sys_writable)?,
    }
    clock.done("root");
    for (key, value) in &spec.sysctls {
        set_sysctl(key, value)?;
    }
    nix::unistd::sethostname(&spec.hostname).map_err(io::Error::from)?;
    for interface in &spec.interfaces {
        network::configure(interface)?;
    }
    if spec.interfaces.is_empty() {
        // On `none`: no interface but `lo` (NICs beyond the first come after setup).
        network::release_unused_boot_nics()?;
    }
    clock.done("network");
    // /etc/hostname, /etc/hosts and /etc/resolv.conf are the container's own,
    // bind-mounted from the agent's tmpfs so that they never land in the container's
    // writable layer.
    fs::create_dir_all("/run/berth")?;
    fs::write("/run/berth/hostname", format!("{}\n", spec.hostname))?;
    let own_address = spec
        .interfaces
        .first()
        .and_then(|i| i.address.split('/').next())
        .unwrap_or("127.0.1.1");
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    );
    for (address, names) in &spec.extra_hosts {
        hosts.push_str(&format!("{address}\t{}\n", names.join(" ")));
    }
    hosts.push_str(&format!("{own_address}\t{}\n", spec.hostname));
    if let Some(own_address6) = spec
        .interfaces
        .first()
        .and_then(|i| i.address6.as_deref())
        .and_then(|a| a.split('/').next())
    {
        hosts.push_str(&format!("{own_address6}\t{}\n", spec.hostname));
    }
    fs::write("/run/berth/hosts", hosts)?;
    let mut resolv = String::new();
    for server in &spec.nameservers {
        resolv.push_str(&format!("nameserver {server}\n"));
    }
    if !spec.dns_search.is_empty() {
        resolv.push_str(&format!("search {}\n", spec.dns_search.join(" ")));
    }
    if spec.dns_options.is_empty() {
        resolv.push_str("options ndots:0\n");
    } else {
        resolv.push_str(&format!("options {}\n", spec.dns_options.join(" ")));
    }
    fs::write("/run/berth/resolv.conf", resolv)?;
    clock.done("files");
    for tmpfs in &spec.tmpfs {
        mount_tmpfs(CONTAINER_ROOT, tmpfs)?;
    }
    clock.done("tmpfs");
    crate::volumes::mount_all(&spec.volumes)?;
    clock.done("volumes");
    shares.mount_all(&spec.shares, channel)?;
    clock.done("shares");
    // Last, as Docker sorts its mounts (/etc before /etc/hosts): a tmpfs, volume or bind
    // mounted at /etc does not hide them; one the user mounts at /etc/hosts itself wins.
    let user_mounted = |path: &str| {
        spec.shares.iter().any(|m| m.target == path)
            || spec.volumes.iter().any(|m| m.target == path)
    };
    for name in ["hostname", "hosts", "resolv.conf"] {
        if user_mounted(&format!("/etc/{name}")) {
            continue;
        }
        let target = format!("{CONTAINER_ROOT}/etc/{name}");
        if fs::create_dir_all(format!("{CONTAINER_ROOT}/etc")).is_ok()
            && (fs::metadata(&target).is_ok() || File::create(&target).is_ok())
        {
            nix::mount::mount(
                Some(format!("/run/berth/{name}").as_str()),
                target.as_str(),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)?;
        }
    }
    if spec.read_only {
        nix::mount::mount(
            None::<&str>,
            CONTAINER_ROOT,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("making the root filesystem read-only: {e}")))?;
    }
    clock.done("binds");
    Ok(clock.steps)
}

/// Sets a kernel parameter (`net.core.somaxconn` is `/proc/sys/net/core/somaxconn`).
fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    if key.is_empty()
        || key.starts_with('.')
        || key.contains("..")
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl {key:?}"),
        ));
    }
    fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
}

/// Mounts a tmpfs inside the container whose root is `root`.
pub(crate) fn mount_tmpfs(root: &str, spec: &berth_agent_proto::TmpfsSpec) -> io::Result<()> {
    use nix::mount::MsFlags;
    if !spec.path.starts_with('/') || spec.path.split('/').any(|part| part == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid tmpfs path {:?}", spec.path),
        ));
    }
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &spec.options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            // Propagation words (OCI specs carry them): a tmpfs of the guest's has no
            // peers to propagate to.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {}
            other => data.push(other.to_owned()),
        }
    }
    let target = crate::volumes::mount_point_in(root, &spec.path, false)?;
    let data = data.join(",");
    nix::mount::mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting tmpfs on {}: {e}", spec.path)))
}

/// Reaps every child (PID 1 inherits orphans) and reports the exits of tracked ones.
///
/// A child whose exec failed is reaped by `std::process::Command::spawn` itself, which
/// panics if someone else reaped it first. So the reaper only peeks (`WNOWAIT`), then
/// takes the process table, which `spawn` holds while it runs, and reaps a pid only if it
/// is still there to reap.
fn reap(table: SharedTable, channel: Channel, exits: SharedExits) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    loop {
        let peeked = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => status,
            Err(nix::errno::Errno::ECHILD) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(_) => continue,
        };
        let Some(pid) = peeked.pid() else { continue };
        let guard = lock(&table);
        let status = match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(status) => status,
            // Reaped by `spawn` while we waited for the table.
            Err(_) => continue,
        };
        drop(guard);
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, None),
            WaitStatus::Signaled(pid, signal, _) => (pid, 128 + signal as i32, Some(signal as i32)),
            _ => continue,
        };
        let finished = {
            let mut processes = lock(&table);
            let stream = processes
                .iter()
                .find(|(_, p)| p.pid == pid.as_raw())
                .map(|(s, _)| *s);
            stream.and_then(|stream| processes.remove(&stream).map(|p| (stream, p)))
        };
        let Some((stream, process)) = finished else {
            continue;
        };
        let channel = channel.clone();
        let exits = exits.clone();
        std::thread::spawn(move || {
            if process.is_init {
                // The container ends with its first process (its own PID namespace, if
                // it has one, is gone with it; with `--pid host` this does the same).
                // SAFETY: no pointers; as PID 1, kill(-1) spares the agent itself.
                unsafe {
                    libc::kill(-1, libc::SIGKILL);
                }
            }
            if process.own_pid_namespace {
                // A further container's first process: the kernel ended the rest of
                // its namespace with it.
                let container = process.container.as_deref();
                // A removed container's tree is detached already, and one with a mount
                // namespace of its own mounted its /proc there: nothing to unmount.
                let own_mounts = container.is_some_and(crate::mount_namespace::has);
                let proc = crate::pod::root_of(container)
                    .ok()
                    .filter(|_| !own_mounts)
                    .map(|root| format!("{root}/proc"));
                crate::pid_namespace::release(container, proc.as_deref());
            }
            drop(process.stdin);
            // A container's first process takes its container's processes with it
            // (the VM's, or its own PID namespace's), which closes its pipes; another
            // may have left one behind that holds them (see `pumps`).
            // Nothing is written to the console about it: a background process is
            // ordinary, and a console write can block for long where the serial port
            // is slow (a nested VM's).
            let ends_its_container = process.is_init || process.own_pid_namespace;
            process.pumps.finish(!ends_its_container);
            if process.is_init {
                // What the container wrote is on its VM's disks and shares before its end
                // is told (protocol 7): the engine may then end the VM without a shutdown.
                // SAFETY: no pointers.
                unsafe {
                    libc::sync();
                }
            }
            exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stream, (code, signal));
            let oom_killed =
                signal == Some(libc::SIGKILL) && process::oom_kills() > process.oom_kills_at_start;
            let _ = channel.send(
                stream,
                &GuestMessage::Exited {
                    code,
                    signal,
                    oom_killed,
                },
            );
        });
    }
}
