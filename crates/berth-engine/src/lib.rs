//! Berth's engine: containers, their persistent state, their output, and their
//! lifecycle, on top of the image store (`berth-image`) and a VM backend (`berth-vm`).
//!
//! Every container runs in its own VM. `start` boots the VM, waits for the agent's
//! Hello, mounts the container's disk (Setup), and starts its process (Spawn); a task per
//! running container then copies output to the json-file log and to attached clients
//! until the process exits, powers the VM off and records the exit.
//!
//! On disk, under the daemon's root:
//!
//! ```text
//! berth.redb                   state database (containers; the image store's tables)
//! images/                      the image store (see berth-image)
//! containers/<id>/rootfs.qcow2 the container's writable disk over its image's ext4
//! containers/<id>/container.log json-file log
//! ```
//!
//! and under the exec root (`/run/berth` by default), `vms/<first 24 hex of the id>/`:
//! the running VM's sockets, console log and QEMU log.

mod agent;
pub mod build;
mod container;
mod error;
pub mod events;
mod files;
pub mod images;
pub mod metrics;
pub mod network;
mod process;
mod records;
pub mod sandbox;
mod start;
mod state;
#[cfg(test)]
mod testing;
mod vm;

// The modules the API layer names, at the paths it has always named them by.
pub use container::{health, links};
pub use files::{changes, volumes};
pub use images::registry;
pub use process::{exec, io_stats};
pub use vm::template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_guest::GuestImage;
use berth_vm::VmBackend;
use tokio::sync::OnceCell;

pub use berth_image::{ImageRecord, LoadedImage};
pub use berth_vm::{host_cpu_nanos, process_cpu_nanos, process_memory, ProcessMemory};
pub use container::lifecycle::{AttachOptions, ContainerLogs, WaitCondition, WaitOutcome};
pub use container::{
    Attachment, ContainerRecord, ContainerStatus, Refusal, StateRecord, StdinSink, ZERO_TIME,
};
pub use error::{error_chain, EngineError, ErrorKind};
pub use process::output::{LogEntry, LogFilter, OutputChunk, OutputStream};
pub use start::{StartOutcome, StartStep};

pub(crate) use container::{ContainerHandle, LifecycleState, Runtime, StdinEvent};
use state::Store;

/// How the engine is set up.
pub struct EngineConfig {
    /// State, images and containers live here.
    pub root: PathBuf,
    /// Guest kernel and initramfs cache (shared between roots).
    pub cache: PathBuf,
    /// Runtime files of running VMs (sockets, console logs): `<exec_root>/vms/<id prefix>`.
    /// Kept short, because unix socket paths are limited to 107 bytes.
    pub exec_root: PathBuf,
    pub backend: Arc<dyn VmBackend>,
    /// VM memory when the container sets no `--memory`.
    pub default_memory_mib: u32,
    /// The network namespace (`ip netns` name) that holds container networks.
    pub netns: String,
    /// Outbound NAT from the namespace through the host, over this /30 link subnet
    /// (`None`: containers reach nothing outside the namespace).
    pub outbound_nat: Option<berth_net::Subnet>,
    /// Where Berth's DNS servers forward names they do not know (empty: the host's
    /// resolvers from /etc/resolv.conf).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Registry mirrors and insecure registries (daemon.json).
    pub registry: berth_image::RegistryOptions,
    /// The guest kernel, when not Debian's cloud kernel.
    pub guest_kernel: Option<berth_guest::CustomKernel>,
    /// The program that serves shared directories, run as `PROGRAM share-server` (the
    /// berth binary); `None`: bind mounts and directory volumes cannot start.
    pub share_server: Option<PathBuf>,
    /// VMs restored ahead of demand per template, for starts to claim (0: none; see
    /// `vm::spares`).
    pub spare_vms: usize,
}

/// Facts for `docker info` and `docker version`.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub containers: usize,
    pub running: usize,
    pub paused: usize,
    pub stopped: usize,
    pub images: usize,
    pub backend: &'static str,
    pub accelerator: &'static str,
    pub root: PathBuf,
    pub guest_kernel: Option<String>,
    /// Memory of all running container VMs.
    pub vm_memory: berth_vm::ProcessMemory,
    /// The network namespace that holds container networks.
    pub netns: String,
    /// Outbound NAT, when on: the host's end of the uplink and the link subnet.
    pub outbound_nat: Option<(String, berth_net::Subnet)>,
    /// What an operator should know (`docker info` prints them): records of the state
    /// database that did not parse and were set aside.
    pub warnings: Vec<String>,
    /// VMs restored ahead of demand: ready now, and wanted per template (0: off).
    pub spare_vms: (usize, usize),
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Now, as Docker writes times: RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The engine.
pub struct Engine {
    config: EngineConfig,
    store: Store,
    images: berth_image::ImageStore,
    containers: Mutex<HashMap<String, Arc<ContainerHandle>>>,
    guest: OnceCell<GuestImage>,
    templates: template::TemplateManager,
    execs: exec::ExecTable,
    networks: Arc<network::Networks>,
    /// Set when the daemon shuts down: nothing is restarted from then on.
    shutting_down: std::sync::atomic::AtomicBool,
    events: events::EventLog,
    volumes: Mutex<HashMap<String, volumes::VolumeRecord>>,
    /// Held while a volume is made or removed.
    volume_lock: tokio::sync::Mutex<()>,
    /// `docker build`'s step cache.
    build_cache: build::BuildCache,
    /// VMs restored ahead of demand.
    spares: vm::spares::SparePool,
    /// What the engine counts, for `/metrics`.
    metrics: metrics::EngineMetrics,
}

/// The runtime that clones each container's VM from a template (the default).
pub const RUNTIME_CLONE: &str = "berth";
/// The runtime that boots each container's VM from scratch.
pub const RUNTIME_COLDBOOT: &str = "berth-coldboot";

impl Engine {
    /// Opens the state under `config.root`, reconciling containers that were running when
    /// the daemon last stopped: those whose VMs still run (the daemon was killed, not
    /// stopped) are taken over; the others are recorded as exited.
    pub async fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let host = network::NamespaceHost::ensure(&config.netns)?;
        Self::open_with(config, Arc::new(host)).await
    }

    /// [`Engine::open`] over another host side of the networks than Berth's network
    /// namespace (the engine's unit tests give it one that records what it is asked).
    pub async fn open_with(
        config: EngineConfig,
        host: Arc<dyn network::HostNetwork>,
    ) -> Result<Arc<Self>, EngineError> {
        let root = config.root.clone();
        for dir in [root.clone(), root.join("containers")] {
            std::fs::create_dir_all(&dir).map_err(EngineError::io(&dir))?;
        }
        // `<root>/tmp` holds uploads being received (load, import, cp, build contexts):
        // whatever is there now, a killed daemon was receiving, and nobody will finish.
        let spool = root.join("tmp");
        let left = std::fs::read_dir(&spool).map_or(0, |entries| entries.count());
        if left > 0 {
            tracing::info!(dir = %spool.display(), left, "removing uploads left by a daemon that was stopped while receiving them");
            std::fs::remove_dir_all(&spool).map_err(EngineError::io(&spool))?;
        }
        let store = Store::open(&root.join("berth.redb"))?;
        let images = berth_image::ImageStore::open(&root.join("images"), store.database())?;
        let mut containers = HashMap::new();
        // Containers whose VMs outlived the daemon before this one: taken over below.
        let mut live = Vec::new();
        // Containers recorded as running whose VMs are gone: recorded as exited below.
        let mut lost = Vec::new();
        for record in store.all()? {
            let backend = &config.backend;
            if record.state.status.is_running()
                && backend.runs_vm(record.state.pid, record.vm_name())
            {
                live.push(record.id.clone());
            } else if record.state.status.is_running() {
                backend.kill_stale_vm(record.state.pid, record.vm_name());
                lost.push(record.id.clone());
            }
            containers.insert(record.id.clone(), Arc::new(ContainerHandle::new(record)));
        }
        // VM processes that no record will take over: those of containers, templates and
        // helper VMs the daemon before this one was starting when it was killed.
        let kept: Vec<u32> = live
            .iter()
            .filter_map(|id| containers.get(id))
            .map(|handle| lock(&handle.record).state.pid)
            .collect();
        for pid in berth_vm::process::vm_processes_under(&config.exec_root) {
            if !kept.contains(&pid) {
                tracing::warn!(pid, "killing a VM process that no container record owns (left by a daemon that was killed)");
                berth_vm::process::kill_process(pid);
            }
        }
        vm::spares::remove_left_spare_dirs(
            &config.exec_root.join("vms"),
            containers
                .values()
                .map(|handle| lock(&handle.record).state.vm.clone()),
        );
        let networks = Arc::new(network::Networks::open(
            host,
            store.clone(),
            &live,
            config.outbound_nat,
            config.dns_upstreams.clone(),
        )?);
        for record in containers.values() {
            // Runs ended with the old daemon: their addresses and ports are gone.
            let mut record = lock(&record.record);
            if live.contains(&record.id) {
                continue;
            }
            if record.networks.values().any(|e| e.ip.is_some()) || !record.ports.is_empty() {
                networks.release(&mut record);
                store.put(&record)?;
            }
        }
        let volumes = store
            .all_volumes()?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let build_cache = build::BuildCache::open(&config.root.join("build"));
        let metrics = metrics::EngineMetrics::default();
        let templates = template::TemplateManager::new(
            config.exec_root.join("templates"),
            Some(networks.clone() as Arc<dyn template::TemplateNetwork>),
        )
        .with_metrics(metrics.clone());
        let spares = vm::spares::SparePool::new(config.spare_vms);
        let engine = Arc::new(Self {
            config,
            store,
            images,
            containers: Mutex::new(containers),
            guest: OnceCell::new(),
            templates,
            execs: exec::ExecTable::default(),
            networks,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            events: events::EventLog::default(),
            volumes: Mutex::new(volumes),
            volume_lock: tokio::sync::Mutex::new(()),
            build_cache,
            spares,
            metrics,
        });
        for id in lost {
            let handle = engine.lookup(&id)?;
            let lost = container::Transition::Exited {
                code: 255,
                error: "the daemon stopped while the container was running".into(),
                oom_killed: false,
            };
            engine.transition(&handle, lost)?;
        }
        engine.take_over(live).await;
        // A build step's container outlives its build only when the daemon stopped
        // during the build: nothing will use it again.
        let leftovers: Vec<String> = engine
            .list_containers()
            .into_iter()
            .filter(|record| record.build_step)
            .map(|record| record.id)
            .collect();
        for id in leftovers {
            if let Err(error) = engine.remove_container_and_volumes(&id, true, true).await {
                tracing::warn!(container = %id, error = %error_chain(&error), "could not remove an interrupted build's container");
            }
        }
        Ok(engine)
    }

    pub(crate) fn container_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("containers").join(id)
    }

    /// The running VM's directory of sockets and logs.
    pub(crate) fn vm_dir(&self, id: &str) -> PathBuf {
        self.config
            .exec_root
            .join("vms")
            .join(&id[..24.min(id.len())])
    }

    /// Removes the run directories of a container's VMs: the one named after it, and
    /// that of a VM restored ahead of demand its last run took.
    pub(crate) fn remove_vm_dirs(&self, record: &ContainerRecord) {
        let _ = std::fs::remove_dir_all(self.vm_dir(&record.id));
        if !record.state.vm.is_empty() {
            let _ = std::fs::remove_dir_all(self.vm_dir(&record.state.vm));
        }
    }

    /// The guest console log of a container's last run (the VM's serial console).
    pub fn vm_console_log(&self, record: &ContainerRecord) -> PathBuf {
        self.vm_dir(record.vm_name()).join("console.log")
    }

    /// The VM templates on disk, with how many running containers were cloned from each.
    pub fn template_summaries(&self) -> Vec<template::TemplateSummary> {
        let running = self.list_containers();
        self.templates
            .list()
            .into_iter()
            .map(|template| {
                let clones = running
                    .iter()
                    .filter(|record| {
                        record.state.status.has_vm() && record.state.template == template.record.key
                    })
                    .count();
                template::TemplateSummary {
                    memory_file_bytes: std::fs::metadata(template.memory_file())
                        .map_or(0, |m| m.len()),
                    record: template.record,
                    clones,
                }
            })
            .collect()
    }

    /// The engine's counters and histograms, for `/metrics`.
    pub fn metrics(&self) -> &metrics::EngineMetrics {
        &self.metrics
    }

    /// Whether the daemon is shutting down.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The event stream (`docker events`).
    pub fn events(&self) -> &events::EventLog {
        &self.events
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// VM memory (MiB) of containers that set no `--memory`.
    pub fn default_memory_mib(&self) -> u32 {
        self.config.default_memory_mib
    }

    /// The guest kernel and initramfs, prepared on first use (fetching the kernel the
    /// very first time). Call early to have it ready before the first container starts.
    pub async fn guest(&self) -> Result<&GuestImage, EngineError> {
        let cache = self.config.cache.clone();
        let custom = self.config.guest_kernel.clone();
        self.guest
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    berth_guest::prepare_with(&cache, custom.as_ref(), &|step| {
                        tracing::info!("{step}")
                    })
                    .map_err(EngineError::Guest)
                })
                .await
                .map_err(EngineError::panicked("guest preparation"))?
            })
            .await
    }

    /// Whether containers of the default runtime are cloned from templates.
    pub fn backend_supports_snapshot(&self) -> bool {
        self.config.backend.supports_snapshot()
    }

    /// Makes sure the template of the default VM shape exists (the daemon calls this at
    /// start, so that the first `docker run` clones rather than waits for a build).
    pub async fn prepare_default_template(&self) -> Result<template::Template, EngineError> {
        let guest = self.guest().await?;
        let shape = template::Shape {
            vcpus: 1,
            memory_mib: self.config.default_memory_mib,
        };
        self.templates
            .get_or_build(&*self.config.backend, guest, shape)
            .await
    }

    /// Looks a container up by full id, unique id prefix, or name.
    pub(crate) fn lookup(&self, reference: &str) -> Result<Arc<ContainerHandle>, EngineError> {
        let containers = lock(&self.containers);
        if let Some(handle) = containers.get(reference) {
            return Ok(handle.clone());
        }
        let name = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(handle) = containers.values().find(|h| lock(&h.record).name == name) {
            return Ok(handle.clone());
        }
        if !reference.is_empty() && reference.chars().all(|c| c.is_ascii_hexdigit()) {
            let matches: Vec<_> = containers
                .values()
                .filter(|h| h.id.starts_with(reference))
                .collect();
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                n if n > 1 => {
                    return Err(EngineError::InvalidArgument(format!(
                        "multiple containers found with provided prefix: {reference}"
                    )))
                }
                _ => {}
            }
        }
        Err(EngineError::NoSuchContainer(reference.to_owned()))
    }

    fn all_handles(&self) -> Vec<Arc<ContainerHandle>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// Every container's record, newest first.
    pub fn list_containers(&self) -> Vec<ContainerRecord> {
        let mut records: Vec<_> = self.all_handles().iter().map(|h| h.snapshot()).collect();
        records.sort_by(|a, b| b.created.cmp(&a.created));
        records
    }

    pub fn inspect_container(&self, reference: &str) -> Result<ContainerRecord, EngineError> {
        Ok(self.lookup(reference)?.snapshot())
    }

    pub(crate) fn persist(&self, handle: &ContainerHandle) -> Result<(), EngineError> {
        let record = handle.snapshot();
        Ok(self.store.put(&record)?)
    }

    pub fn info(&self) -> EngineInfo {
        let records = self.list_containers();
        let count =
            |status: ContainerStatus| records.iter().filter(|r| r.state.status == status).count();
        EngineInfo {
            containers: records.len(),
            running: count(ContainerStatus::Running),
            paused: count(ContainerStatus::Paused),
            stopped: records.len()
                - count(ContainerStatus::Running)
                - count(ContainerStatus::Paused),
            images: self.images.list().map(|l| l.len()).unwrap_or(0),
            backend: self.config.backend.name(),
            accelerator: self.config.backend.accelerator().name(),
            root: self.config.root.clone(),
            guest_kernel: self.guest.get().map(|g| g.kernel_package.clone()),
            vm_memory: records
                .iter()
                .filter(|r| r.state.status.is_running() && r.state.pid != 0)
                .filter_map(|r| berth_vm::process_memory(r.state.pid))
                .fold(berth_vm::ProcessMemory::default(), |total, m| total + m),
            netns: self.networks.host().name().to_owned(),
            outbound_nat: self.networks.outbound_nat(),
            warnings: self.state_warnings(),
            spare_vms: self.spare_counts(),
        }
    }

    /// Records set aside in the state database's quarantine, as warnings.
    fn state_warnings(&self) -> Vec<String> {
        match self.store.quarantined() {
            Ok(records) => records
                .into_iter()
                .map(|q| {
                    format!(
                        "WARNING: a {} record ({}) in the state database does not parse and was set aside in its quarantine table: {}",
                        q.table.trim_end_matches('s'),
                        q.key,
                        q.reason
                    )
                })
                .collect(),
            Err(error) => vec![format!(
                "WARNING: the state database's quarantine cannot be read: {}",
                error_chain(&error)
            )],
        }
    }

    // Images: thin pass-throughs to the image store, run off the async threads.

    pub async fn load_images(
        self: &Arc<Self>,
        archive: PathBuf,
    ) -> Result<(Vec<LoadedImage>, Vec<String>), EngineError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut steps = Vec::new();
            let loaded = engine
                .images
                .load_docker_archive(&archive, &mut |step: &str| steps.push(step.to_owned()))?;
            for image in &loaded {
                let mut attributes = std::collections::HashMap::new();
                attributes.insert(
                    "name".to_owned(),
                    image.tags.first().cloned().unwrap_or_default(),
                );
                engine.events.emit("image", "load", &image.id, attributes);
            }
            Ok((loaded, steps))
        })
        .await
        .map_err(EngineError::panicked("image load"))?
    }

    /// `docker import`: the root filesystem tarball at `source` becomes a one-layer image.
    pub async fn import_image(
        self: &Arc<Self>,
        source: PathBuf,
        changes: Vec<String>,
        message: String,
        reference: Option<String>,
    ) -> Result<String, EngineError> {
        let tag = reference
            .as_deref()
            .map(berth_image::reference::normalize)
            .transpose()?;
        let engine = self.clone();
        let id = tokio::task::spawn_blocking(move || {
            engine
                .images
                .import_rootfs(&source, &changes, &message, tag.as_ref())
        })
        .await
        .map_err(EngineError::panicked("image import"))??;
        let name = reference.unwrap_or_else(|| id.clone());
        self.events.emit(
            "image",
            "import",
            &id,
            std::collections::HashMap::from([("name".to_owned(), name)]),
        );
        Ok(id)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>, EngineError> {
        Ok(self.images.list()?)
    }

    pub fn resolve_image(&self, reference: &str) -> Result<ImageRecord, EngineError> {
        Ok(self.images.resolve(reference)?)
    }

    /// Number of containers using each image id.
    pub fn image_usage(&self) -> HashMap<String, usize> {
        let mut usage = HashMap::new();
        for record in self.list_containers() {
            *usage.entry(record.image_id).or_insert(0) += 1;
        }
        usage
    }

    /// Stops every running container (the daemon is shutting down).
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let running: Vec<_> = self
            .all_handles()
            .into_iter()
            .filter(|h| h.runtime().is_some())
            .collect();
        let mut tasks = Vec::new();
        for handle in running {
            let engine = self.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(error) = engine.stop_container(&handle.id, Some(0)).await {
                    tracing::warn!(id = %handle.id, error = %error_chain(&error), "stopping container at shutdown failed");
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        self.discard_spares().await;
        self.networks.shut_down();
    }
}
