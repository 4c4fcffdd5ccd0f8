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
}
