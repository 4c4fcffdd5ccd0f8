//! Berth's own VMM: one KVM virtual machine per process, on the rust-vmm crates.
//!
//! `berth vmm --config FILE` runs [`run`] with a [`VmmConfig`]. The machine is small on
//! purpose: RAM ([`memory`], [`layout`]), the boot vCPU started in 64-bit mode at the
//! kernel's entry ([`boot`]), KVM's in-kernel PIC, IOAPIC, LAPICs and PIT, a 16550 UART
//! for the console, the keyboard controller's reset line, and PCI bus 0 with virtio 1.x
//! functions ([`devices`], [`virtio`]), which disks and NICs can be hot-plugged into and
//! out of through ACPI (`hotplug`). No firmware: the kernel boots directly; ACPI
//! tables that Berth writes ([`boot`]'s `acpi`: MADT, FADT, DSDT) describe the CPUs,
//! the PCI host bridge and soft-off, because Debian's kernel finds its LAPICs (and so
//! MSI) only through ACPI. Devices are found by scanning PCI bus 0.
//!
//! Once the VM is built, every thread runs under a system call filter ([`seccomp`]).
//!
//! Threads: one per vCPU ([`vcpu`]), one per active virtio device (its worker), and the
//! main thread, which waits for the VM to end and exits the process with a status that
//! says why (0: the guest reset or powered off, 1: a failure, printed on stderr).

pub mod backend;
pub mod boot;
pub mod config;
pub mod control;
pub mod devices;
pub mod disk;
/// Harnesses over what guests and disk images feed the VMM: built for the unit tests and
/// for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`), never into `berth`.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hotplug;
pub mod layout;
mod machine;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
mod vm;

use std::path::{Path, PathBuf};

pub use config::VmmConfig;
pub use vcpu::VmExitReason;
pub use vm::run;

/// Errors setting up or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("KVM: {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("boot: {0}")]
    Boot(String),
    #[error("device: {0}")]
    Device(String),
    #[error("eventfd")]
    Eventfd(#[source] std::io::Error),
    #[error("starting a vCPU thread failed")]
    Thread(#[source] std::io::Error),
    #[error("the system call filter: {0}")]
    Seccomp(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("PCI slot {0} has a device already")]
    SlotInUse(u8),
}

/// An error with its sources, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl VmmError {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Kvm { what, source }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
