//! vCPU threads: each runs `KVM_RUN` and hands port and MMIO exits to the devices.
//!
//! A vCPU thread ends the VM (through the shared exit channel) on a guest reset (the
//! i8042 reset line, a triple fault), an ACPI power-off, a KVM system event, or an exit
//! the VMM cannot handle; the VMM process then ends. A misbehaving guest ends its own
//! VM, never the host.
//!
//! Between runs a thread takes commands ([`VcpuCommand`]): pause (it then waits for more
//! commands, out of `KVM_RUN`), resume, save its state. A thread inside `KVM_RUN` is
//! made to leave it by [`KICK_SIGNAL`], whose handler does nothing: `KVM_RUN` returns
//! `EINTR` and the loop looks at its commands.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{Devices, ResetRequest};
use crate::snapshot::VcpuState;
use crate::VmmError;

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

/// What a vCPU thread is asked to do between runs.
pub enum VcpuCommand {
    /// Leave `KVM_RUN` and wait; acknowledged on the acks channel with the vCPU index.
    Pause,
    Resume,
    /// Read the (paused) vCPU's state.
    Save(Sender<Result<VcpuState, VmmError>>),
}

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
#[allow(non_snake_case)]
pub fn KICK_SIGNAL() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's (empty) handler; once per process, before vCPUs run.
pub fn install_kick_handler() -> Result<(), VmmError> {
    vmm_sys_util::signal::register_signal_handler(KICK_SIGNAL(), ignore_kick)
        .map_err(|e| VmmError::Device(format!("installing the vCPU kick handler: {e}")))
}

/// Everything a vCPU thread needs.
pub struct VcpuThread {
    pub vcpu: VcpuFd,
    pub index: u8,
    pub devices: Arc<Devices>,
    pub exits: Sender<VmExitReason>,
    pub commands: Receiver<VcpuCommand>,
    pub acks: Sender<u8>,
    /// MSRs to save (KVM's list).
    pub msr_indices: Arc<Vec<u32>>,
}

impl VcpuThread {
    /// Handles one command; returns whether the vCPU is now paused, or `None` when the
    /// VMM has gone away.
    fn command(&self, command: VcpuCommand, paused: bool) -> bool {
        match command {
            VcpuCommand::Pause => {
                let _ = self.acks.send(self.index);
                true
            }
            VcpuCommand::Resume => false,
            VcpuCommand::Save(reply) => {
                let _ = reply.send(crate::snapshot::save_vcpu(&self.vcpu, &self.msr_indices));
                paused
            }
        }
    }

    /// Runs the vCPU until the VM ends; reports why on `exits`.
    pub fn run(mut self) {
        let mut paused = false;
        let reason = 'vm: loop {
            loop {
                match self.commands.try_recv() {
                    Ok(command) => paused = self.command(command, paused),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            while paused {
                match self.commands.recv() {
                    Ok(command) => paused = self.command(command, paused),
                    Err(_) => return,
                }
            }
            let index = self.index;
            match self.vcpu.run() {
                Ok(VcpuExit::IoIn(port, data)) => self.devices.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if let Some(request) = self.devices.pio_write(port, data) {
                        break 'vm match request {
                            ResetRequest::Reset => VmExitReason::GuestReset,
                            ResetRequest::PowerOff => VmExitReason::GuestPowerOff,
                        };
                    }
                }
                Ok(VcpuExit::MmioRead(address, data)) => self.devices.mmio_read(address, data),
                Ok(VcpuExit::MmioWrite(address, data)) => self.devices.mmio_write(address, data),
                Ok(exit @ (VcpuExit::Shutdown | VcpuExit::SystemEvent(..) | VcpuExit::Hlt)) => {
                    // The VM process's log says which (a triple fault shows as Shutdown).
                    eprintln!("berth vmm: vCPU {index}: the guest ended with {exit:?}");
                    break 'vm VmExitReason::GuestReset;
                }
                Ok(VcpuExit::Intr) => {}
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    break 'vm VmExitReason::Failed(format!(
                        "vCPU {index}: entry failed (reason {reason:#x} on CPU {cpu})"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    break 'vm VmExitReason::Failed(format!("vCPU {index}: KVM internal error"))
                }
                Ok(other) => {
                    break 'vm VmExitReason::Failed(format!(
                        "vCPU {index}: unexpected exit {other:?}"
                    ))
                }
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {}
                Err(error) => {
                    break 'vm VmExitReason::Failed(format!("vCPU {index}: KVM_RUN: {error}"))
                }
            }
        };
        let _ = self.exits.send(reason);
    }
}
