//! Control messages: JSON payloads of [`FrameKind::Control`] frames.

use serde::{Deserialize, Serialize};

use crate::frame::{encode_frame, Frame, FrameKind, ProtoError};
use crate::MAX_CONTROL_LEN;

/// How the guest sets itself up before it runs a container's process.
#[derive(Default, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupSpec {
    /// The container's hostname.
    pub hostname: String,
    /// Guest block device holding the container's root filesystem (ext4), e.g. `/dev/vda`.
    /// Not read when `root_share` is set.
    pub root_device: String,
    /// The container's root filesystem is a share instead of a disk (a containerd
    /// snapshot the host serves): its `target` must be `/`; it is mounted first, before
    /// anything else goes inside it.
    #[serde(default)]
    pub root_share: Option<ShareMount>,
    /// Network interfaces to configure before the container's process runs.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
    /// Nameservers for the container's /etc/resolv.conf (IPv4 addresses).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Search domains and options for /etc/resolv.conf (`--dns-search`, `--dns-option`).
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// More /etc/hosts lines (`--add-host`): address, then names.
    #[serde(default)]
    pub extra_hosts: Vec<(String, Vec<String>)>,
    /// Mount the root filesystem read-only once set up (`--read-only`).
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs mounts (`--tmpfs PATH:OPTIONS`).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsSpec>,
    /// Size of /dev/shm in bytes (`--shm-size`; 0: 64 MiB).
    #[serde(default)]
    pub shm_size: u64,
    /// Leave the container's /sys writable (`--privileged`); otherwise it is read-only,
    /// as Docker mounts it.
    #[serde(default)]
    pub sys_writable: bool,
    /// Kernel parameters to set before the container's process runs (`--sysctl`): the
    /// kernel is the container's own.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Volumes: ext4 disks to mount inside the container root, found by serial.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Shared directories and files (bind mounts, shared volumes), served by the host
    /// over FUSE frames. Mounted after the volumes, in this order.
    #[serde(default)]
    pub shares: Vec<ShareMount>,
}

/// A directory or file the host shares with the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMount {
    /// The stream id its FUSE messages travel on (at least [`crate::SHARE_STREAM_BASE`]).
    pub stream: u32,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only (`:ro`); the host's server refuses writes as well.
    pub read_only: bool,
    /// The shared root is a regular file (a bind-mounted file), not a directory.
    #[serde(default)]
    pub file: bool,
    /// A volume: when it is empty, copy what the image has at `target` into it first.
    #[serde(default)]
    pub populate: bool,
}

/// A volume's disk and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The disk's serial (`/sys/block/<dev>/serial`); the host hot-plugs or boots the
    /// disk with it.
    pub serial: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only (`:ro`).
    pub read_only: bool,
    /// A new volume: copy what the image has at `target` into it first, as Docker does.
    pub populate: bool,
}

/// A tmpfs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsSpec {
    /// Absolute path inside the container.
    pub path: String,
    /// `mount -o` words: flags (`ro`, `noexec`, `nosuid`, `nodev`, ...) and data
    /// (`size=64m`, `mode=1777`, ...).
    pub options: Vec<String>,
}

/// One NIC's configuration. The NIC is found by its PCI slot (the host put it there), so
/// that it is found whatever the guest named it and whatever MAC address it had (a
/// clone's NIC starts with its template's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    /// PCI slot on bus 0 (`0000:00:<slot>.0`).
    pub pci_slot: u8,
    /// The name to give it (`eth0`).
    pub name: String,
    /// Its MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// `a.b.c.d/prefix`.
    pub address: String,
    /// Default route through this gateway, if set.
    pub gateway: Option<String>,
    /// `addr/prefix`, on a network with IPv6 (the interface keeps IPv6 off without).
    #[serde(default)]
    pub address6: Option<String>,
    /// Default IPv6 route through this gateway, if set.
    #[serde(default)]
    pub gateway6: Option<String>,
    /// More IPv4 addresses (`--link-local-ip`), `a.b.c.d/prefix` each.
    #[serde(default)]
    pub link_local: Vec<String>,
}

/// A clone's new identity, sent as the first message after a VM is restored from a
/// template snapshot (the template said Hello to the engine that built it, not to this one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebindSpec {
    /// Fresh random bytes, mixed into the guest kernel's RNG and credited, after which the
    /// RNG is reseeded, so that no two clones share random state.
    pub entropy: Vec<u8>,
    /// The host's wall clock (seconds and nanoseconds since the epoch): a restored guest's
    /// clock resumes at snapshot time.
    pub realtime: (i64, u32),
}

/// A process to run inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; `argv[0]` is looked up in the container's `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container (absolute).
    pub cwd: String,
    /// `user[:group]`, by name or number, resolved in the container's /etc/passwd and /etc/group.
    pub user: String,
    /// Give the process a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Keep standard input open for [`FrameKind::Stdin`] frames.
    pub stdin: bool,
    /// Initial terminal size (rows, columns), when `tty`.
    pub tty_size: Option<(u16, u16)>,
    /// Resource limits set before `exec`: (`RLIMIT_*` number, soft, hard).
    #[serde(default)]
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Capabilities (by number) the process keeps in its bounding set; `None`: all.
    #[serde(default)]
    pub capabilities: Option<Vec<u8>>,
    /// `no_new_privs`: set-user-id programs and file capabilities give nothing.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Run the agent's own helper (`argv[0]` names the operation's program, e.g.
    /// `berth-archive`), chrooted in the container, instead of a program of the image:
    /// for `docker cp`, which must work in images without a shell or tar.
    #[serde(default)]
    pub agent_helper: bool,
    /// More groups the process is in (`--group-add`: names from the container's
    /// /etc/group, or numeric ids), beside those /etc/group lists the user in.
    #[serde(default)]
    pub extra_groups: Vec<String>,
    /// For the container's first process: start it as PID 1 of a PID namespace of its
    /// own (Docker's default), which the container's later processes join; `false`
    /// (`--pid host`, and helper VMs) keeps the VM's namespace.
    #[serde(default)]
    pub own_pid_namespace: bool,
    /// Run in the further container of that name ([`HostMessage::AddContainer`], a
    /// pod's) instead of the VM's first container.
    #[serde(default)]
    pub container: Option<String>,
}

/// A further container in the VM, beside its first (a pod's containers share one VM):
/// its root filesystem is a share of the host's, with its own mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Its name, 1 to 64 of `A-Z a-z 0-9 _ . -`; processes name it in
    /// [`ProcessSpec::container`].
    pub name: String,
    /// Its root filesystem: a directory share whose target is `/`.
    pub root_share: ShareMount,
    /// Tmpfs mounts, then shares, mounted inside its root in this order.
    pub tmpfs: Vec<TmpfsSpec>,
    pub shares: Vec<ShareMount>,
    /// Mount its root read-only.
    pub read_only: bool,
    /// Limits of its cgroup in the guest, set before its first process starts.
    #[serde(default)]
    pub resources: Resources,
}

/// Limits of a container's cgroup in the guest (cgroup v2's files); `None` leaves a
/// limit as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `memory.max`, bytes (0: no limit); swap is never allowed.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// `cpu.max`: at most `quota` microseconds every `period` (quota 0: no limit).
    #[serde(default)]
    pub cpu_quota_us: Option<u64>,
    #[serde(default)]
    pub cpu_period_us: Option<u64>,
    /// `cpu.weight`, 1 to 10000.
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    /// `pids.max` (0: no limit).
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// What a container's cgroup counts of its memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemory {
    /// `memory.current`: everything charged, page cache included.
    pub usage: u64,
    /// `memory.stat`'s `file`: page cache.
    pub cache: u64,
    /// `memory.stat`'s `inactive_file`: cache the kernel reclaims first.
    pub inactive_file: u64,
    /// `memory.max` (0: no limit).
    pub limit: u64,
}

/// Whether `name` may name a further container ([`ContainerSpec::name`]).
pub fn valid_container_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && name != "."
        && name != ".."
}

/// Why a process could not be started. The engine maps these to Docker's 126/127.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnFailure {
    /// The program does not exist (Docker: 127).
    NotFound,
    /// The program exists but cannot be executed (Docker: 126).
    NotExecutable,
    /// Anything else (bad user, bad cwd, ...).
    Other,
}

/// Messages from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Take a new identity after a restore. Answered by `Rebound` or `Error`.
    Rebind(RebindSpec),
    /// Mount the root filesystem and set the hostname. Answered by `SetupDone` or `Error`.
    Setup(SetupSpec),
    /// A VM restored ahead of demand, before any container: run once, and undo, what a
    /// container's setup and first process will run (mount the first disk read-only
    /// and unmount it, start a process in a PID namespace of its own and reap it), so
    /// that the guest code they need is warm when the container comes (under software
    /// emulation, code a VM runs for the first time is translated first). Refused once
    /// a setup has begun. Answered by `Rehearsed` or `Error`.
    Rehearse,
    /// Configure a NIC that was hot-plugged into a running VM. Answered by `InterfaceReady`
    /// or `Error`.
    AddInterface(InterfaceSpec),
    /// Take a NIC down before it is unplugged. Answered by `InterfaceRemoved` or `Error`.
    RemoveInterface { name: String },
    /// Start a process on the frame's stream id.
    Spawn(ProcessSpec),
    /// Mount a further container's root and mounts (after `Setup`: the VM's first
    /// container's /proc, /sys and /dev are bound into it). Answered by
    /// `ContainerAdded` or `Error`.
    AddContainer(ContainerSpec),
    /// Kill a further container's processes and unmount its root. Answered by
    /// `ContainerRemoved` or `Error`.
    RemoveContainer { name: String },
    /// What the processes of a container (`None`: the VM's first; else a further one)
    /// use now. Answered by `ContainerUsage`.
    ContainerUsage { container: Option<String> },
    /// No more standard input for the frame's stream.
    CloseStdin,
    /// Send a signal to the frame's stream's process.
    Signal { signal: i32 },
    /// Resize the frame's stream's terminal.
    Resize { rows: u16, cols: u16 },
    /// Kill every process, flush the disks and power off.
    Shutdown,
    /// List the container's processes. Answered by `Processes`.
    ListProcesses,
    /// Limit the processes of a container (`None`: the VM's first, whose processes then
    /// move into a cgroup of their own; else a further one) with its cgroup in the
    /// guest (`docker update` of a VM without a balloon, containerd's `Update`).
    /// Answered by `ResourcesUpdated` or `Error`.
    UpdateResources {
        container: Option<String>,
        resources: Resources,
    },
    /// Freeze (or thaw) a further container's processes (its cgroup's `cgroup.freeze`):
    /// containerd's `Pause` of one container of a pod. Answered by `ContainerFrozen`
    /// or `Error`.
    FreezeContainer { name: String, frozen: bool },
    /// A new engine took over the channel (the one before it went away while the VM ran).
    /// Answered by [`RESYNC_MARKER`] and then `Reattached`.
    Reattach,
}

/// Written by the agent, unframed, right before `Reattached`: what the old engine left
/// half-sent on the channel (the rest of a frame the agent was writing when it went
/// away) comes before it, and the new engine skips everything up to it.
pub const RESYNC_MARKER: &[u8; 16] = b"\0\0\0\0BERTH-RESYNC";

/// One process of the container, as `docker top` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// The user's name in the container's /etc/passwd, or the uid.
    pub user: String,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: String,
    /// `pts/0`, or `?`.
    pub tty: String,
    /// User and system CPU time, in ticks.
    pub cpu_ticks: u64,
    /// Start, in ticks after boot.
    pub start_ticks: u64,
    pub vsz_kib: u64,
    pub rss_kib: u64,
    /// The command line (or `[name]` without one).
    pub command: String,
}

/// A process the agent runs or ran, as `Reattached` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub stream: u32,
    pub pid: i32,
    /// Set once it has exited: its exit code and the signal that killed it, if any.
    pub exit: Option<(i32, Option<i32>)>,
}

/// Messages from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message on the channel.
    Hello { protocol: u32, kernel: String },
    /// `Rebind` finished: the steps done, in order, and what Hello would have said.
    Rebound {
        protocol: u32,
        kernel: String,
        steps: Vec<String>,
    },
    /// `Setup` finished, with how long each of its steps took in the guest (microseconds
    /// by the guest's monotonic clock, in order: `root`, `network`, `files`, `tmpfs`,
    /// `volumes`, `shares`, `binds`); absent from agents before it was added.
    SetupDone {
        #[serde(default)]
        steps_us: Vec<(String, u64)>,
    },
    /// `Rehearse` finished, with how long each step took (as `SetupDone`'s).
    Rehearsed {
        #[serde(default)]
        steps_us: Vec<(String, u64)>,
    },
    /// Answer to `ListProcesses`.
    Processes {
        processes: Vec<ProcessInfo>,
        /// `/proc/stat`'s `btime`: the guest's boot, seconds since the epoch.
        boot_time: i64,
        /// Clock ticks per second of the times below.
        ticks_per_second: u64,
        mem_total_kib: u64,
    },
    /// Answer to `Reattach`: the agent's processes, running and exited (their `Exited`
    /// may have gone to the engine that went away).
    Reattached {
        protocol: u32,
        processes: Vec<ProcessStatus>,
    },
    /// `AddInterface` finished.
    InterfaceReady { name: String },
    /// `RemoveInterface` finished.
    InterfaceRemoved { name: String },
    /// `AddContainer` finished.
    ContainerAdded { name: String },
    /// `RemoveContainer` finished.
    ContainerRemoved { name: String },
    /// Answer to `ContainerUsage`: the container's processes, their CPU time (user and
    /// system, nanoseconds) and anonymous resident memory (bytes); with `memory`, what
    /// its cgroup counts (a further container's, or the first's once limited), else
    /// the living processes whose root is the container's.
    ContainerUsage {
        processes: u64,
        user_ns: u64,
        system_ns: u64,
        rss_bytes: u64,
        #[serde(default)]
        memory: Option<GroupMemory>,
    },
    /// `FreezeContainer` finished: the container's processes are frozen (or thawed).
    ContainerFrozen { name: String, frozen: bool },
    /// The process on the frame's stream started.
    Started { pid: i32 },
    /// The process on the frame's stream could not start.
    SpawnFailed {
        reason: SpawnFailure,
        message: String,
    },
    /// The process on the frame's stream ended: its exit code, or the signal that killed it,
    /// and whether the kernel's out-of-memory killer killed it. For the container's first
    /// process, sent once the container's other processes are killed and the guest's
    /// filesystems synced: what the container wrote has reached its disks and shares.
    /// It follows the process's output: all of it, or, for an exec that left a process
    /// behind holding its output open, what came before its streams went quiet (then no
    /// frame of the stream follows).
    Exited {
        code: i32,
        signal: Option<i32>,
        #[serde(default)]
        oom_killed: bool,
    },
    /// The container's processes are under the limits asked for.
    ResourcesUpdated,
    /// A request failed.
    Error { message: String },
}

/// Longest error message a guest may send (`Error`, `SpawnFailed`): it ends up in the
/// container's record and the daemon's log.
pub const MAX_GUEST_ERROR: usize = 16 * 1024;

/// Encodes a control message into a frame on `stream`.
pub fn encode_control<T: Serialize>(stream: u32, message: &T) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("protocol messages always serialize");
    encode_frame(stream, FrameKind::Control, &json)
}

fn control_payload(frame: &Frame) -> Result<&[u8], ProtoError> {
    if frame.kind != FrameKind::Control {
        return Err(ProtoError::NotControl(frame.kind));
    }
    if frame.payload.len() > MAX_CONTROL_LEN {
        return Err(ProtoError::ControlTooLarge(frame.payload.len()));
    }
    Ok(&frame.payload)
}

/// Decodes and validates a guest message (the host side's entry point for untrusted input).
pub fn decode_guest_message(frame: &Frame) -> Result<GuestMessage, ProtoError> {
    let message: GuestMessage =
        serde_json::from_slice(control_payload(frame)?).map_err(ProtoError::BadJson)?;
    match &message {
        GuestMessage::Hello { kernel, .. } if kernel.len() > 256 => Err(ProtoError::InvalidField(
            "hello.kernel is longer than 256 bytes",
        )),
        GuestMessage::Exited {
            signal: Some(sig), ..
        } if !(1..=64).contains(sig) => Err(ProtoError::InvalidField(
            "exited.signal is not a signal number",
        )),
        GuestMessage::Exited { code, .. } if !(0..=255).contains(code) => {
            Err(ProtoError::InvalidField("exited.code is not in 0..=255"))
        }
        GuestMessage::Processes { processes, .. }
            if processes.len() > 4096
                || processes.iter().any(|p| {
                    p.command.len() > 4096
                        || p.state.len() > 4
                        || p.tty.len() > 32
                        || p.user.len() > 256
                }) =>
        {
            Err(ProtoError::InvalidField(
                "processes: too many, or a field too long",
            ))
        }
        GuestMessage::Rebound { kernel, steps, .. }
            if kernel.len() > 256 || steps.len() > 64 || steps.iter().any(|s| s.len() > 64) =>
        {
            Err(ProtoError::InvalidField(
                "rebound: the kernel or a step is too long, or too many steps",
            ))
        }
        GuestMessage::SetupDone { steps_us } | GuestMessage::Rehearsed { steps_us }
            if steps_us.len() > 64 || steps_us.iter().any(|(name, _)| name.len() > 64) =>
        {
            Err(ProtoError::InvalidField(
                "setup_done: a step's name is too long, or too many steps",
            ))
        }
        GuestMessage::InterfaceReady { name } | GuestMessage::InterfaceRemoved { name }
            if name.len() > 64 =>
        {
            Err(ProtoError::InvalidField("an interface name is too long"))
        }
        GuestMessage::ContainerAdded { name }
        | GuestMessage::ContainerRemoved { name }
        | GuestMessage::ContainerFrozen { name, .. }
            if !valid_container_name(name) =>
        {
            Err(ProtoError::InvalidField("an invalid container name"))
        }
        GuestMessage::Error { message } | GuestMessage::SpawnFailed { message, .. }
            if message.len() > MAX_GUEST_ERROR =>
        {
            Err(ProtoError::InvalidField(
                "an error message is longer than 16 KiB",
            ))
        }
        GuestMessage::Reattached { processes, .. } if processes.len() > 4096 => Err(
            ProtoError::InvalidField("reattached lists more than 4096 processes"),
        ),
        GuestMessage::Reattached { processes, .. }
            if processes.iter().any(|p| {
                p.exit.is_some_and(|(code, signal)| {
                    !(0..=255).contains(&code) || signal.is_some_and(|s| !(1..=64).contains(&s))
                })
            }) =>
        {
            Err(ProtoError::InvalidField(
                "reattached reports an exit code or signal out of range",
            ))
        }
        _ => Ok(message),
    }
}

/// Decodes a host message (the guest side's entry point).
pub fn decode_host_message(frame: &Frame) -> Result<HostMessage, ProtoError> {
    serde_json::from_slice(control_payload(frame)?).map_err(ProtoError::BadJson)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameDecoder;

    #[test]
    fn container_names_are_plain_and_short() {
        assert!(valid_container_name("server-1.web_a"));
        assert!(valid_container_name(&"f".repeat(64)));
        for bad in ["", ".", "..", "a/b", "a b", "é", &"f".repeat(65)] {
            assert!(!valid_container_name(bad), "{bad:?}");
        }
    }

    fn decode_one(wire: &[u8]) -> Frame {
        let mut decoder = FrameDecoder::new();
        decoder.push(wire);
        decoder.next_frame().unwrap().unwrap()
    }

    #[test]
    fn host_message_round_trip() {
        let spawn = HostMessage::Spawn(ProcessSpec {
            argv: vec!["echo".into(), "hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: "0".into(),
            tty: false,
            stdin: false,
            tty_size: None,
            rlimits: vec![(7, 1024, 2048)],
            capabilities: Some(vec![0, 5]),
            no_new_privileges: true,
            agent_helper: false,
            extra_groups: vec!["audio".into()],
            own_pid_namespace: true,
            container: None,
        });
        let frame = decode_one(&encode_control(3, &spawn));
        assert_eq!(frame.stream, 3);
        assert_eq!(decode_host_message(&frame).unwrap(), spawn);
    }

    #[test]
    fn guest_exit_validated() {
        let bad = decode_one(&encode_control(
            1,
            &GuestMessage::Exited {
                code: 300,
                signal: None,
                oom_killed: false,
            },
        ));
        assert!(matches!(
            decode_guest_message(&bad),
            Err(ProtoError::InvalidField(_))
        ));
        let bad_signal = decode_one(&encode_control(
            1,
            &GuestMessage::Exited {
                code: 0,
                signal: Some(0),
                oom_killed: false,
            },
        ));
        assert!(decode_guest_message(&bad_signal).is_err());
        let good = decode_one(&encode_control(
            1,
            &GuestMessage::Exited {
                code: 3,
                signal: None,
                oom_killed: false,
            },
        ));
        assert_eq!(
            decode_guest_message(&good).unwrap(),
            GuestMessage::Exited {
                code: 3,
                signal: None,
                oom_killed: false
            }
        );
    }

    #[test]
    fn garbage_json_is_an_error() {
        let frame = decode_one(&encode_frame(0, FrameKind::Control, b"\xff\xfe{"));
        assert!(matches!(
            decode_guest_message(&frame),
            Err(ProtoError::BadJson(_))
        ));
        let frame = decode_one(&encode_frame(0, FrameKind::Control, br#"{"type":"nope"}"#));
        assert!(decode_guest_message(&frame).is_err());
        let data = decode_one(&encode_frame(0, FrameKind::Stdout, b"{}"));
        assert!(matches!(
            decode_guest_message(&data),
            Err(ProtoError::NotControl(_))
        ));
    }
}
