//! vCPU threads: each runs `KVM_RUN` and hands port and MMIO exits to the devices.
//!
//! A vCPU thread ends the VM (through the shared exit channel) on a guest reset (the
//! i8042 reset line, a triple fault), a KVM system event, or an exit the VMM cannot
//! handle; the VMM process then ends. A misbehaving guest ends its own VM, never the host.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{Devices, ResetRequest};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest reset (a reboot or a panic ends a Berth VM).
    GuestReset,
    /// The guest powered off.
    GuestPowerOff,
    /// KVM or the guest failed; the text says how.
    Failed(String),
}

/// Runs `vcpu` until the VM ends; reports why on `exits`.
pub fn run(mut vcpu: VcpuFd, index: u8, devices: Arc<Devices>, exits: Sender<VmExitReason>) {
    let reason = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => devices.pio_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(request) = devices.pio_write(port, data) {
                    break match request {
                        ResetRequest::Reset => VmExitReason::GuestReset,
                        ResetRequest::PowerOff => VmExitReason::GuestPowerOff,
                    };
                }
            }
            Ok(VcpuExit::MmioRead(address, data)) => devices.mmio_read(address, data),
            Ok(VcpuExit::MmioWrite(address, data)) => devices.mmio_write(address, data),
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) => {
                break VmExitReason::GuestReset
            }
            Ok(VcpuExit::Hlt) => break VmExitReason::GuestReset,
            Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break VmExitReason::Failed(format!(
                    "vCPU {index}: entry failed (reason {reason:#x} on CPU {cpu})"
                ))
            }
            Ok(VcpuExit::InternalError) => {
                break VmExitReason::Failed(format!("vCPU {index}: KVM internal error"))
            }
            Ok(other) => {
                break VmExitReason::Failed(format!("vCPU {index}: unexpected exit {other:?}"))
            }
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {}
            Err(error) => break VmExitReason::Failed(format!("vCPU {index}: KVM_RUN: {error}")),
        }
    };
    let _ = exits.send(reason);
}
