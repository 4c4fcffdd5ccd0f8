//! The [`Machine`]: a running VM as the control socket sees it, with what the socket asks
//! of it (pause, resume, snapshot, disk counters; hot-plug is in [`crate::hotplug`]).
//!
//! It has a module of its own because two modules need it: `vm` builds it and starts the
//! control socket on it, and [`crate::control`] answers requests with it. With the
//! machine here, `control` does not depend on `vm`, and `vm` → `control` is the only
//! direction left.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::signal::Killable;

use crate::devices::Devices;
use crate::snapshot::{self, VmState, SNAPSHOT_FORMAT};
use crate::vcpu::{self, VcpuCommand};
use crate::virtio::block::BlockCounters;
use crate::VmmError;

/// How long vCPUs get to leave `KVM_RUN` when paused.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks `mutex`, even one a panicking thread left poisoned.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running VM, as the control socket sees it.
pub struct Machine {
    pub(crate) vm: Arc<VmFd>,
    pub(crate) devices: Arc<Devices>,
    pub(crate) vcpu_commands: Mutex<Vec<Sender<VcpuCommand>>>,
    pub(crate) vcpu_threads: Vec<JoinHandle<()>>,
    pub(crate) acks: Mutex<Receiver<u8>>,
    pub(crate) paused: Mutex<bool>,
    pub(crate) block_counters: Mutex<Vec<Arc<BlockCounters>>>,
    /// The guest's RAM, for devices plugged in while the VM runs.
    pub(crate) memory: vm_memory::GuestMemoryMmap,
    /// The memory balloon's target and what the guest reports.
    pub(crate) balloon: Arc<crate::virtio::balloon::BalloonControl>,
    pub(crate) vcpu_count: u8,
    pub(crate) memory_mib: u32,
}

impl Machine {
    /// Takes every vCPU out of `KVM_RUN`; returns once all are waiting.
    pub fn pause(&self) -> Result<(), VmmError> {
        let mut paused = lock(&self.paused);
        if *paused {
            return Ok(());
        }
        for commands in lock(&self.vcpu_commands).iter() {
            let _ = commands.send(VcpuCommand::Pause);
        }
        let acks = lock(&self.acks);
        let mut waiting: Vec<bool> = vec![true; self.vcpu_threads.len()];
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while waiting.iter().any(|w| *w) {
            if Instant::now() > deadline {
                return Err(VmmError::Device("vCPUs did not pause in time".into()));
            }
            // Kick those still inside KVM_RUN; a kick that lands before they enter it is
            // repeated on the next round.
            for (index, thread) in self.vcpu_threads.iter().enumerate() {
                if waiting[index] {
                    let _ = thread.kill(vcpu::KICK_SIGNAL());
                }
            }
            while let Ok(index) = acks.recv_timeout(Duration::from_millis(2)) {
                if let Some(slot) = waiting.get_mut(usize::from(index)) {
                    *slot = false;
                }
            }
        }
        *paused = true;
        Ok(())
    }

    pub fn resume(&self) -> Result<(), VmmError> {
        let mut paused = lock(&self.paused);
        for commands in lock(&self.vcpu_commands).iter() {
            let _ = commands.send(VcpuCommand::Resume);
        }
        *paused = false;
        Ok(())
    }

    /// Pauses the VM and writes its state (all but RAM) to `path`. The VM stays paused.
    pub fn snapshot(&self, path: &std::path::Path) -> Result<(), VmmError> {
        self.pause()?;
        let mut vcpus = Vec::new();
        for commands in lock(&self.vcpu_commands).iter() {
            let (reply, answer) = mpsc::channel();
            commands
                .send(VcpuCommand::Save(reply))
                .map_err(|_| VmmError::Device("a vCPU thread is gone".into()))?;
            vcpus.push(
                answer
                    .recv()
                    .map_err(|_| VmmError::Device("a vCPU thread is gone".into()))??,
            );
        }
        let (pic_master, pic_slave, ioapic, pit, clock) = snapshot::save_vm(&self.vm)?;
        let serial = lock(&self.devices.serial).record();
        let pci = lock(&self.devices.pci).save()?;
        let state = VmState {
            format: SNAPSHOT_FORMAT,
            vcpu_count: self.vcpu_count,
            memory_mib: self.memory_mib,
            vcpus,
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
            serial,
            pci,
        };
        snapshot::write(path, &state)
    }

    /// Lets the guest use `bytes` of its RAM (the balloon takes the rest); more than the
    /// VM has is refused.
    pub fn set_memory(&self, bytes: u64) -> Result<(), VmmError> {
        let size = u64::from(self.memory_mib) << 20;
        if bytes > size {
            return Err(VmmError::Device(format!(
                "{} MiB is more than the VM's {} MiB",
                bytes.div_ceil(1 << 20),
                self.memory_mib
            )));
        }
        let pages = (size - bytes) / crate::virtio::balloon::BALLOON_PAGE;
        self.balloon.set_target(pages as u32);
        Ok(())
    }

    /// Bytes read and written, reads and writes, all disks together.
    pub fn block_stats(&self) -> [u64; 4] {
        use std::sync::atomic::Ordering::Relaxed;
        lock(&self.block_counters)
            .iter()
            .fold([0; 4], |sum, counters| {
                [
                    sum[0] + counters.read_bytes.load(Relaxed),
                    sum[1] + counters.write_bytes.load(Relaxed),
                    sum[2] + counters.read_operations.load(Relaxed),
                    sum[3] + counters.write_operations.load(Relaxed),
                ]
            })
    }
}
