//! What one VM is made of, as the engine's backend hands it to a `berth vmm` process.
//!
//! The file is JSON (`berth vmm --config FILE`); the process reads it once at start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmmConfig {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The kernel command line (without the parts the VMM adds itself, see
    /// [`crate::boot::VMM_CMDLINE`]).
    pub cmdline: String,
    /// Where the guest's serial console is written (appended).
    pub console_log: PathBuf,
    /// The agent channel: a unix socket the engine listens on; the VMM connects to it
    /// and reconnects whenever it is closed.
    pub agent_socket: PathBuf,
    /// Guest RAM in this file instead of anonymous memory: mapped shared (a template:
    /// the guest's writes land in the file) or private (a clone: copy-on-write).
    #[serde(default)]
    pub memory_file: Option<PathBuf>,
    #[serde(default)]
    pub memory_shared: bool,
    /// Restore this snapshot (made by the control socket's `snapshot`) instead of
    /// booting; its RAM is `memory_file`, mapped private.
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
    /// Where the VMM listens for the engine's control requests (see `control`).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// virtio-blk disks, each in its own PCI slot.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net cards, each in its own PCI slot.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
}

/// One virtio-net card on a tap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NicConfig {
    /// The tap's name in the VMM process's network namespace.
    pub tap: String,
    /// `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    pub pci_slot: u8,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub serial: Option<String>,
    pub pci_slot: u8,
}

/// How a disk file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}
