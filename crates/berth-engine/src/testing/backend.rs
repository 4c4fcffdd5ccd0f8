//! A VM backend whose VMs are tasks: each runs the scripted [`super::agent`] on one end
//! of a socketpair and gives the engine the other end, as a real backend gives it the
//! VM's agent channel.
//!
//! The VMs' tasks run on a runtime of their own (one thread for all tests), not on the
//! engine's: a test can drop an engine's runtime, as a killed daemon's tasks vanish,
//! and its VMs run on, to be taken over by the next engine (live restore). Each VM gets
//! a pid that no process has (above Linux's largest), which only this backend knows.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::{
    Accelerator, BlockStats, DiskSpec, MemoryBacking, NicSpec, RunningVm, VmBackend, VmControl,
    VmError, VmExit, VmSpec,
};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::agent;
use crate::lock;

/// Fake VM pids start above Linux's largest pid (2^22).
const FIRST_FAKE_PID: u32 = 1 << 23;

/// The runtime the fake VMs run on, apart from any engine's.
fn vm_runtime() -> tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the fake VMs' runtime");
            let handle = runtime.handle().clone();
            std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
            handle
        })
        .clone()
}

/// A connected socketpair: the engine's end, for the engine's runtime, and the guest's.
fn agent_channel() -> Result<(UnixStream, StdUnixStream), VmError> {
    let (host, guest) = StdUnixStream::pair().map_err(|e| VmError::Io("a socketpair", e))?;
    for end in [&host, &guest] {
        end.set_nonblocking(true)
            .map_err(|e| VmError::Io("a socketpair", e))?;
    }
    let host = UnixStream::from_std(host).map_err(|e| VmError::Io("a socketpair", e))?;
    Ok((host, guest))
}

/// One fake VM.
pub(crate) struct FakeVm {
    pub name: String,
    pub pid: u32,
    /// Restored from a template's snapshot (a clone) rather than booted.
    pub restored: bool,
    ended: watch::Sender<bool>,
    pub paused: AtomicBool,
    pub disks_added: Mutex<usize>,
    /// A new agent channel, when an engine takes the VM over.
    reconnect: mpsc::UnboundedSender<StdUnixStream>,
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

    /// The VM's name as the engine gives it: the container's id, or `template-KEY`.
    fn is_named(&self, name: &str) -> bool {
        self.name == name
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
    next_pid: AtomicU32,
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
            next_pid: AtomicU32::new(FIRST_FAKE_PID),
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

    fn vm_by_pid(&self, pid: u32) -> Option<Arc<FakeVm>> {
        lock(&self.vms).iter().find(|vm| vm.pid == pid).cloned()
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
        let (reconnect, reconnects) = mpsc::unbounded_channel();
        let vm = Arc::new(FakeVm {
            name: spec.name.clone(),
            pid: self.next_pid.fetch_add(1, Ordering::Relaxed),
            restored,
            ended: watch::channel(false).0,
            paused: AtomicBool::new(false),
            disks_added: Mutex::new(0),
            reconnect,
        });
        lock(&self.vms).push(vm.clone());
        let (host, guest) = agent_channel()?;
        if restored && self.break_next_clone.swap(false, Ordering::SeqCst) {
            drop(guest);
            vm.end();
        } else {
            vm_runtime().spawn(agent::serve(guest, reconnects, !restored, vm.clone()));
        }
        Ok(RunningVm {
            agent: host,
            pid: vm.pid,
            control: Box::new(FakeControl {
                vm,
                snapshots_taken: self.snapshots_taken.clone(),
            }),
        })
    }

    async fn reattach(&self, pid: u32, _run_dir: &Path) -> Result<RunningVm, VmError> {
        let vm = self
            .vm_by_pid(pid)
            .filter(|vm| !vm.has_ended())
            .ok_or(VmError::Gone)?;
        let (host, guest) = agent_channel()?;
        vm.reconnect.send(guest).map_err(|_| VmError::Gone)?;
        Ok(RunningVm {
            agent: host,
            pid,
            control: Box::new(FakeControl {
                vm,
                snapshots_taken: self.snapshots_taken.clone(),
            }),
        })
    }

    fn runs_vm(&self, pid: u32, name: &str) -> bool {
        self.vm_by_pid(pid)
            .is_some_and(|vm| vm.is_named(name) && !vm.has_ended())
    }

    fn kill_stale_vm(&self, pid: u32, name: &str) {
        if let Some(vm) = self.vm_by_pid(pid).filter(|vm| vm.is_named(name)) {
            vm.end();
        }
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
