//! A VM backend whose VMs are tasks: each runs the scripted [`super::agent`] on one end
//! of a socketpair and gives the engine the other end, as a real backend gives it the
//! VM's agent channel.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::{
    Accelerator, BlockStats, DiskSpec, MemoryBacking, NicSpec, RunningVm, VmBackend, VmControl,
    VmError, VmExit, VmSpec,
};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::agent;
use crate::lock;

/// One fake VM.
pub(crate) struct FakeVm {
    pub name: String,
    /// Restored from a template's snapshot (a clone) rather than booted.
    pub restored: bool,
    ended: watch::Sender<bool>,
    pub paused: AtomicBool,
    pub disks_added: Mutex<usize>,
}

impl FakeVm {
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// The VM process ends (powered off, killed or crashed).
    pub fn end(&self) {
        self.ended.send_replace(true);
    }

    pub async fn until_ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }
}

/// How the fake backend behaves.
pub(crate) struct FakeBackend {
    snapshots: bool,
    /// Every VM it made, in order.
    pub vms: Mutex<Vec<Arc<FakeVm>>>,
    /// The next boot fails (as a VM process that exits at once would).
    pub fail_next_boot: AtomicBool,
    /// The next clone's agent closes its channel at once (a broken template).
    pub break_next_clone: AtomicBool,
    /// Snapshots taken (template builds).
    pub snapshots_taken: Arc<Mutex<usize>>,
}

impl FakeBackend {
    /// A backend without snapshots: every VM boots cold.
    pub fn cold() -> Self {
        Self {
            snapshots: false,
            vms: Mutex::new(Vec::new()),
            fail_next_boot: AtomicBool::new(false),
            break_next_clone: AtomicBool::new(false),
            snapshots_taken: Arc::new(Mutex::new(0)),
        }
    }

    /// A backend with snapshots: containers are cloned from templates.
    pub fn cloning() -> Self {
        Self {
            snapshots: true,
            ..Self::cold()
        }
    }

    /// The VMs made for containers (not templates), in order.
    pub fn container_vms(&self) -> Vec<Arc<FakeVm>> {
        lock(&self.vms)
            .iter()
            .filter(|vm| !vm.name.starts_with("template-"))
            .cloned()
            .collect()
    }

    /// The newest VM made for a container.
    pub fn last_vm(&self) -> Arc<FakeVm> {
        self.container_vms().pop().expect("a container VM")
    }
}

#[async_trait]
impl VmBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn accelerator(&self) -> Accelerator {
        Accelerator::Tcg
    }

    fn supports_snapshot(&self) -> bool {
        self.snapshots
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        if self.fail_next_boot.swap(false, Ordering::SeqCst) {
            return Err(VmError::ExitedEarly("the scripted boot failure".into()));
        }
        if let MemoryBacking::SharedFile(path) = &spec.memory {
            // A template's RAM file, as a backend makes it (sparse).
            let file = std::fs::File::create(path).map_err(|e| VmError::Io("the RAM file", e))?;
            file.set_len(u64::from(spec.memory_mib) << 20)
                .map_err(|e| VmError::Io("the RAM file", e))?;
        }
        let restored = spec.restore_from.is_some();
        let vm = Arc::new(FakeVm {
            name: spec.name.clone(),
            restored,
            ended: watch::channel(false).0,
            paused: AtomicBool::new(false),
            disks_added: Mutex::new(0),
        });
        lock(&self.vms).push(vm.clone());
        let (host, guest) = UnixStream::pair().map_err(|e| VmError::Io("a socketpair", e))?;
        if restored && self.break_next_clone.swap(false, Ordering::SeqCst) {
            drop(guest);
            vm.end();
        } else {
            tokio::spawn(agent::serve(guest, !restored, vm.clone()));
        }
        Ok(RunningVm {
            agent: host,
            pid: 0,
            control: Box::new(FakeControl {
                vm,
                snapshots_taken: self.snapshots_taken.clone(),
            }),
        })
    }

    async fn reattach(&self, _pid: u32, _run_dir: &Path) -> Result<RunningVm, VmError> {
        Err(VmError::Gone)
    }
}

/// Control over a fake VM.
struct FakeControl {
    vm: Arc<FakeVm>,
    snapshots_taken: Arc<Mutex<usize>>,
}

#[async_trait]
impl VmControl for FakeControl {
    async fn shut_down(&self, grace: Duration) -> VmExit {
        if tokio::time::timeout(grace, self.vm.until_ended())
            .await
            .is_err()
        {
            self.vm.end();
        }
        VmExit { code: Some(0) }
    }

    async fn kill(&self) -> VmExit {
        self.vm.end();
        VmExit { code: None }
    }

    async fn wait(&self) -> VmExit {
        self.vm.until_ended().await;
        VmExit { code: Some(0) }
    }

    async fn pause(&self) -> Result<(), VmError> {
        self.vm.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn resume(&self) -> Result<(), VmError> {
        self.vm.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn snapshot(&self, state_file: &Path) -> Result<(), VmError> {
        std::fs::write(state_file, b"fake vm state").map_err(|e| VmError::Io("snapshot", e))?;
        *lock(&self.snapshots_taken) += 1;
        Ok(())
    }

    async fn block_stats(&self) -> Result<BlockStats, VmError> {
        Ok(BlockStats::default())
    }

    async fn add_nic(&self, _nic: &NicSpec) -> Result<(), VmError> {
        Ok(())
    }

    async fn remove_nic(&self, _nic: &NicSpec) -> Result<(), VmError> {
        Ok(())
    }

    async fn add_disk(&self, _disk: &DiskSpec) -> Result<(), VmError> {
        *lock(&self.vm.disks_added) += 1;
        Ok(())
    }
}
