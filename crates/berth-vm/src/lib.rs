//! The interface between Berth's engine and its VM backends.
//!
//! A backend ([`VmBackend`]) turns a [`VmSpec`] into a running VM: a separate process
//! (QEMU, or Berth's own VMM, `berth-vmm`) whose guest runs Berth's agent. What the engine gets
//! back is a [`RunningVm`]: the host end of the agent channel, the VM's process id, and a
//! [`VmControl`] to power it off, kill it, or wait for it to end. The engine never sees
//! how a backend starts its VMs; a backend never sees a container or a Docker type.
//!
//! The agent channel is a byte stream carrying `berth-agent-proto` frames. Backends make
//! it a unix socket that the engine side listens on and the VM process connects to, so
//! that nothing the guest writes is lost while the VM boots.

pub mod cpu_limits;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UnixStream;

/// Shape and contents of one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A short name used in process titles and logs (the container id).
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Disks, attached in order (the first is the guest's `/dev/vda`).
    pub disks: Vec<DiskSpec>,
    /// A directory the backend owns for this VM's sockets and logs; it exists.
    pub run_dir: PathBuf,
    /// Where guest RAM lives.
    pub memory: MemoryBacking,
    /// Restore this device-state snapshot (made by [`VmControl::snapshot`]) instead of
    /// booting. Its RAM is in the [`MemoryBacking::PrivateFile`] given in `memory`.
    pub restore_from: Option<PathBuf>,
    /// Network cards present at boot. A clone must have the same cards, in the same
    /// slots, as its template (their MAC addresses may differ: the guest is told its own).
    pub nics: Vec<NicSpec>,
    /// The network namespace (a path such as `/run/netns/berth`) the VM process runs in;
    /// its NICs' tap devices are there.
    pub netns: Option<PathBuf>,
}

/// Disk I/O of a VM, all its disks together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_operations: u64,
    pub write_operations: u64,
}

/// A virtio-net card backed by a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The tap device's name, in the VM's network namespace.
    pub tap: String,
    /// `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// PCI slot on bus 0; the guest finds the card there.
    pub pci_slot: u8,
}

/// The PCI slot of a VM's first NIC; hot-plugged NICs take the slots after it.
pub const FIRST_NIC_SLOT: u8 = 0x08;
/// The MAC address of a template's NIC. No container keeps it: a clone's NIC is given
/// the container's own address during setup.
pub const TEMPLATE_NIC_MAC: &str = "02:42:00:00:00:01";
/// How many NICs a VM can have.
pub const MAX_NICS: usize = 8;

/// Where a VM's RAM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Ordinary anonymous memory.
    Anonymous,
    /// A file mapped shared: the guest's writes land in the file. Templates use this, so
    /// that a snapshot need not copy RAM.
    SharedFile(PathBuf),
    /// A file mapped private and copy-on-write: the VM reads the file's pages and owns only
    /// the pages it writes. Clones map their template's RAM this way.
    PrivateFile(PathBuf),
}

/// A virtio-blk disk.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// The serial number the guest reads in `/sys/block/<dev>/serial` (at most 20
    /// bytes): how the agent finds a volume's disk whatever the guest named it.
    pub serial: Option<String>,
    /// PCI slot on bus 0; `None`: the backend picks one. Volumes take
    /// [`FIRST_VOLUME_SLOT`] onwards, so that they never meet the NICs' slots.
    pub pci_slot: Option<u8>,
}

impl DiskSpec {
    /// A disk with neither serial nor fixed slot (a container's root disk).
    pub fn new(path: PathBuf, format: DiskFormat) -> Self {
        Self {
            path,
            format,
            read_only: false,
            serial: None,
            pci_slot: None,
        }
    }
}

/// The PCI slot of a VM's first volume disk; volume `n` is in slot `FIRST_VOLUME_SLOT + n`.
pub const FIRST_VOLUME_SLOT: u8 = 0x10;
/// Most volumes one VM can have.
pub const MAX_VOLUMES: usize = 8;
/// The PCI slot of the image's root filesystem when it is attached for `docker diff`.
pub const BASE_DISK_SLOT: u8 = FIRST_VOLUME_SLOT + MAX_VOLUMES as u8;

/// How a disk file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// How guest code is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization through /dev/kvm (VMX or SVM).
    Kvm,
    /// Software emulation (QEMU's TCG).
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// Errors from a backend.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("starting the VM process failed")]
    Spawn(#[source] std::io::Error),
    #[error("I/O error while {0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("the VM did not {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the VM process exited early: {0}")]
    ExitedEarly(String),
    #[error("VM monitor error: {0}")]
    Monitor(String),
    /// The backend cannot do this (the engine chooses another way, or refuses).
    #[error("{0} is not supported by this VM backend")]
    Unsupported(&'static str),
    /// A device with that id is in the VM already (attached by an engine before this
    /// one, say).
    #[error("the VM has that device already: {0}")]
    AlreadyAttached(String),
    /// The VM process has ended.
    #[error("the VM is gone")]
    Gone,
    /// The VM has no balloon: a clone, whose memory is its template's (copy-on-write).
    /// The engine then limits the container's processes inside the guest instead.
    #[error("the VM has no memory balloon (a clone's memory is its template's)")]
    NoBalloon,
    /// More memory than the VM started with: a balloon gives back, it cannot add.
    #[error("the container's VM started with {vm_mib} MiB and can only be given up to that while it runs (asked for {wanted_mib} MiB): stop it, update it, and start it again")]
    MemoryAboveSize { wanted_mib: u64, vm_mib: u64 },
}

impl VmError {
    /// A balloon can give a running VM back at most the `vm_bytes` it started with:
    /// asking for more is [`VmError::MemoryAboveSize`].
    pub fn check_memory_within(bytes: u64, vm_bytes: u64) -> Result<(), VmError> {
        if bytes > vm_bytes {
            return Err(VmError::MemoryAboveSize {
                wanted_mib: bytes.div_ceil(1 << 20),
                vm_mib: vm_bytes >> 20,
            });
        }
        Ok(())
    }
}

/// A VM that was started.
pub struct RunningVm {
    /// The host end of the agent channel, connected.
    pub agent: UnixStream,
    /// The VM process.
    pub pid: u32,
    pub control: Box<dyn VmControl>,
}

/// How a VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// The VM process's exit status, if it exited normally.
    pub code: Option<i32>,
}

/// Control over one running VM.
#[async_trait]
pub trait VmControl: Send + Sync {
    /// Waits up to `grace` for the VM to end by itself (the engine has asked the agent to
    /// power off), then kills it.
    async fn shut_down(&self, grace: Duration) -> VmExit;
    /// Kills the VM process at once and reaps it.
    async fn kill(&self) -> VmExit;
    /// Ends a VM whose disks nobody will read again (an auto-removed container's, its
    /// guest synced): the quickest way, with no care for the backend's own files.
    async fn discard(&self) -> VmExit {
        self.kill().await
    }
    /// Resolves when the VM process has ended.
    async fn wait(&self) -> VmExit;
    /// Stops the VM's vCPUs (its memory stays as it is).
    async fn pause(&self) -> Result<(), VmError>;
    /// Runs a paused VM again.
    async fn resume(&self) -> Result<(), VmError>;
    /// Pauses the VM and writes its device and CPU state to `state_file`; RAM stays in
    /// the VM's [`MemoryBacking::SharedFile`]. The VM stays paused.
    async fn snapshot(&self, state_file: &std::path::Path) -> Result<(), VmError>;
    /// Bytes and requests the VM's disks have read and written.
    async fn block_stats(&self) -> Result<BlockStats, VmError>;
    /// Hot-plugs a NIC into the running VM.
    async fn add_nic(&self, nic: &NicSpec) -> Result<(), VmError>;
    /// Unplugs a NIC (the guest has let go of it) and closes its tap.
    async fn remove_nic(&self, nic: &NicSpec) -> Result<(), VmError>;
    /// Hot-plugs a disk (a volume) into the running VM, in `disk.pci_slot`.
    async fn add_disk(&self, disk: &DiskSpec) -> Result<(), VmError>;
    /// Puts `disk` behind the guest's first disk (`/dev/vda`) of a restored clone, in
    /// place of the disk it was restored with, before the guest has read from it: how a
    /// VM restored ahead of demand takes a container's root filesystem.
    async fn replace_root_disk(&self, _disk: &DiskSpec) -> Result<(), VmError> {
        Err(VmError::Unsupported("replacing a running VM's root disk"))
    }
    /// Sets the memory the guest may use to `bytes`, through its balloon: down, and
    /// back up to the size the VM started with (never more).
    async fn set_memory(&self, _bytes: u64) -> Result<(), VmError> {
        Err(VmError::Unsupported("changing a running VM's memory"))
    }
}

/// A way of running VMs.
#[async_trait]
pub trait VmBackend: Send + Sync {
    /// The backend's name (`qemu`).
    fn name(&self) -> &'static str;
    /// How this backend executes guest code on this host.
    fn accelerator(&self) -> Accelerator;
    /// Whether [`VmControl::snapshot`] and [`VmSpec::restore_from`] work: without them
    /// the engine cold-boots every VM (no templates, no clones).
    fn supports_snapshot(&self) -> bool {
        true
    }
    /// Whether [`VmControl::add_disk`] and [`VmControl::add_nic`] work: without them a
    /// container with volumes boots cold (its disks attached from boot).
    fn supports_hotplug(&self) -> bool {
        true
    }
    /// Whether [`VmControl::replace_root_disk`] works on this backend's clones: only
    /// then can the engine restore VMs ahead of demand.
    fn supports_root_replacement(&self) -> bool {
        false
    }
    /// Boots a VM and returns once its process runs and the agent channel is connected.
    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError>;
    /// Takes over a VM that an engine before this one started (process `pid`, files in
    /// `run_dir`): returns once its agent channel is connected again.
    async fn reattach(&self, pid: u32, run_dir: &std::path::Path) -> Result<RunningVm, VmError>;
    /// Whether process `pid`, started by an engine before this one, still runs the VM
    /// named `name` (the pid may have been reused since). Both backends name the VM in
    /// the process's command line (`berth-NAME`).
    fn runs_vm(&self, pid: u32, name: &str) -> bool {
        pid != 0
            && String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
            .contains(&format!("berth-{name}"))
    }
    /// Kills process `pid` if it still runs the VM named `name` (a VM left behind that
    /// cannot be taken over).
    fn kill_stale_vm(&self, pid: u32, name: &str) {
        if self.runs_vm(pid, name) {
            // SAFETY: kill takes no pointers; the pid was just checked to be this VM's.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// True where /dev/kvm gives hardware virtualization: the CPU has VMX or SVM and
/// /dev/kvm opens. (A PVM host has /dev/kvm without either flag; its KVM emulates an
/// ordinary guest instruction by instruction, so it is not used.)
pub fn hardware_kvm_available() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_extensions = flags
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        });
    has_extensions
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Memory of a VM process, from `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident.
    pub rss: u64,
    /// Proportional: shared pages divided among the processes that map them.
    pub pss: u64,
    /// Pages only this process maps (for a clone: what it wrote or allocated).
    pub private: u64,
    /// Pages also mapped by others (for a clone: its template's RAM it only read).
    pub shared: u64,
}

impl std::ops::Add for ProcessMemory {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            rss: self.rss + other.rss,
            pss: self.pss + other.pss,
            private: self.private + other.private,
            shared: self.shared + other.shared,
        }
    }
}

/// Parses the text of an `smaps_rollup` file.
pub fn parse_smaps_rollup(text: &str) -> ProcessMemory {
    let mut memory = ProcessMemory::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        let bytes = kib * 1024;
        match key {
            "Rss:" => memory.rss = bytes,
            "Pss:" => memory.pss = bytes,
            "Private_Clean:" | "Private_Dirty:" => memory.private += bytes,
            "Shared_Clean:" | "Shared_Dirty:" => memory.shared += bytes,
            _ => {}
        }
    }
    memory
}

/// The memory of process `pid`, or `None` if it is gone.
pub fn process_memory(pid: u32) -> Option<ProcessMemory> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|text| parse_smaps_rollup(&text))
}

/// Nanoseconds per clock tick of `/proc` CPU times (USER_HZ is 100 on Linux).
const NANOS_PER_TICK: u64 = 10_000_000;

/// CPU time (user + system) process `pid` has used, in nanoseconds.
pub fn process_cpu_nanos(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) * NANOS_PER_TICK)
}

/// CPU time the whole host has spent (all CPUs, all states), in nanoseconds.
pub fn host_cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: u64 = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some(ticks * NANOS_PER_TICK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read() {
        let mine = process_cpu_nanos(std::process::id()).expect("own /proc/PID/stat");
        let host = host_cpu_nanos().expect("/proc/stat");
        assert!(host > mine);
        assert!(process_cpu_nanos(u32::MAX).is_none());
    }

    #[test]
    fn smaps_rollup_is_summed_by_kind() {
        let text = "55d0c0a00000-7ffd3b5fe000 ---p 00000000 00:00 0                          [rollup]\n\
Rss:               81920 kB\nPss:               50000 kB\nShared_Clean:      10000 kB\nShared_Dirty:       5000 kB\n\
Private_Clean:      1000 kB\nPrivate_Dirty:     65920 kB\nAnonymous:         42000 kB\n";
        let memory = parse_smaps_rollup(text);
        assert_eq!(memory.rss, 81920 * 1024);
        assert_eq!(memory.pss, 50000 * 1024);
        assert_eq!(memory.shared, 15000 * 1024);
        assert_eq!(memory.private, 66920 * 1024);
        assert!(process_memory(std::process::id()).unwrap().rss > 0);
    }
}
