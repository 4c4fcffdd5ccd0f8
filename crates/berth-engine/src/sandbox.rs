//! A sandbox: one VM, cloned from a template, whose root filesystem is a host directory
//! served as a share, and whose processes are named by the caller. It is what a
//! containerd task runs in (`berth-shim`): containerd hands a root filesystem it has
//! prepared (an overlay of its snapshots, mounted on the host from host directories),
//! and the task's processes (its init on [`INIT_STREAM`], each exec on a stream of
//! its own) run in the VM.
//!
//! Contracts:
//! - The root directory is served by `berth share-server` (as bind mounts are): the host
//!   kernel never mounts anything the guest writes; the guest kernel mounts a FUSE file
//!   system whose requests the host's file server answers (see docs/architecture.md).
//! - The VM is a clone (unless [`SandboxOptions::clone`] is off: then it boots cold) of a
//!   template with no network card (built once under
//!   `templates`; a build by another process is waited for through a lock file), restored
//!   with its own disk placeholder, entropy and clock; it runs in `netns` when given
//!   (the task's network namespace), otherwise in the caller's.
//! - The sandbox does not depend on a Berth daemon: its VM's run directory is the
//!   caller's, outside any daemon's exec root (a daemon kills the VMs it finds under its
//!   own at start).
//! - A process's events arrive in order on its receiver: output, then `Exited` (or
//!   `SpawnFailed`); if the VM ends first, every process still running gets `Exited`
//!   with code 137 (as if killed) and its receiver closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_agent_proto::{
    ContainerSpec, GuestMessage, HostMessage, InterfaceSpec, ProcessSpec, SetupSpec, TmpfsSpec,
    AGENT_STREAM, SHARE_STREAM_BASE,
};
pub use berth_agent_proto::{GroupMemory, Resources};
use berth_vm::{
    DiskFormat, DiskSpec, MemoryBacking, NicSpec, VmBackend, VmControl, VmSpec, FIRST_NIC_SLOT,
};
use tokio::sync::mpsc;

use crate::agent::{handshake, rebind, AgentEvent, AgentSession};
use crate::files::shares::{start_servers, PlannedShare, ShareRelay};
use crate::process::output::OutputChunk;
use crate::template::{create_container_disk, Shape, TemplateManager, TemplateNetwork};
use crate::EngineError;

pub use crate::container::security::{capability_number, rlimit_number};

/// The stream of the sandbox's first process (a containerd task's init).
pub const INIT_STREAM: u32 = crate::agent::MAIN_STREAM;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// What a process that was running when its VM ended exits with (killed).
const VM_ENDED_CODE: i32 = 137;

/// How to make a sandbox.
pub struct SandboxOptions {
    /// Names the VM (in logs and process listings).
    pub name: String,
    /// The VM's run directory (made; removed by [`Sandbox::shut_down`]).
    pub run_dir: PathBuf,
    /// Where templates are built and kept.
    pub templates: PathBuf,
    /// The guest files' cache (`berth daemon --cache`).
    pub cache: PathBuf,
    pub backend: Arc<dyn VmBackend>,
    /// The `berth` binary, whose `share-server` serves the root.
    pub share_server: PathBuf,
    pub shape: Shape,
    /// The host directory that becomes the root filesystem.
    pub root: PathBuf,
    pub hostname: String,
    /// Restore a clone of the template (built first if need be); `false`: boot cold.
    pub clone: bool,
    /// A network namespace to run the VM in (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// A NIC on a tap in `netns`, configured in the guest as `eth0` (a pod's interface).
    pub nic: Option<SandboxNic>,
    /// What else is mounted in the root, in this order within each kind (tmpfs mounts
    /// first, then shares, as the agent mounts them).
    pub mounts: Vec<SandboxMount>,
}

/// The sandbox's NIC: its tap (in the sandbox's network namespace) and the guest
/// interface's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNic {
    pub tap: String,
    pub mac: String,
    /// `a.b.c.d/prefix`.
    pub address: String,
    pub gateway: Option<String>,
}

/// A mount inside the sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxMount {
    /// A host directory or file, served as a share (a bind mount).
    Share {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A tmpfs of the guest (`mount -o` words in `options`).
    Tmpfs {
        target: String,
        options: Vec<String>,
    },
}

/// What happens to a process.
#[derive(Debug)]
pub enum ProcessEvent {
    Started {
        guest_pid: i32,
    },
    Output(OutputChunk),
    /// It could not be started; 126 or 127 as Docker maps them, or 1.
    SpawnFailed {
        code: i32,
        message: String,
    },
    /// Its exit code (128 + the signal's number when a signal ended it).
    Exited {
        code: i32,
    },
}

/// How long the steps of a sandbox's start took (logged with "sandbox ready").
#[derive(Default)]
struct StepTimes {
    guest_ms: u64,
    template_ms: u64,
    disk_ms: u64,
    vm_process_ms: u64,
    /// From the VM process to the guest's `SetupDone` (a clone's restore and rebind,
    /// its NIC's configuration).
    setup_ms: u64,
}

/// The tap of a sandbox template's VM: in the sandbox's own network namespace (the
/// host's is left alone), removed once the template is snapshotted.
struct SandboxTemplateTap {
    namespace: berth_net::netns::Namespace,
}

/// Its name in the sandbox's namespace, beside the sandbox's own tap.
const TEMPLATE_TAP: &str = "berthtpl0";

impl TemplateNetwork for SandboxTemplateTap {
    fn template_nic(&self, _key: &str) -> Result<NicSpec, EngineError> {
        berth_net::links::create_tap(&self.namespace, TEMPLATE_TAP)?;
        Ok(NicSpec {
            tap: TEMPLATE_TAP.into(),
            mac: berth_vm::TEMPLATE_NIC_MAC.into(),
            pci_slot: FIRST_NIC_SLOT,
        })
    }

    fn namespace_path(&self) -> PathBuf {
        self.namespace.path().to_owned()
    }

    fn remove_tap(&self, tap: &str) {
        let _ = berth_net::links::delete_link(&self.namespace, tap);
    }
}

/// Where the template of a sandbox with a NIC gets its own (a template of sandboxes
/// without one has none: the template's key tells them apart).
fn template_network(
    options: &SandboxOptions,
) -> Result<Option<Arc<dyn TemplateNetwork>>, EngineError> {
    let Some(_) = &options.nic else {
        return Ok(None);
    };
    let netns = options.netns.as_ref().ok_or_else(|| {
        EngineError::InvalidArgument("a sandbox's NIC needs its network namespace".into())
    })?;
    let namespace = berth_net::netns::Namespace::open(netns)?;
    Ok(Some(Arc::new(SandboxTemplateTap { namespace })))
}

type Routes = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<ProcessEvent>>>>;
/// Where the answer to the request on the agent's stream goes.
type Replies = Arc<Mutex<Option<tokio::sync::oneshot::Sender<GuestMessage>>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a container's processes use, as the guest counts it (its figures are the
/// guest's word: for reports, never for decisions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub processes: u64,
    /// CPU time of the living processes, nanoseconds.
    pub user_ns: u64,
    pub system_ns: u64,
    /// Resident (with a cgroup: anonymous) memory, bytes.
    pub rss_bytes: u64,
    /// What the container's cgroup counts, when it has one.
    pub memory: Option<GroupMemory>,
}

/// A further container: its root's share (stream and server's pid), and the pod
/// shares it mounts.
struct AddedContainer {
    root_stream: u32,
    root_server: Option<u32>,
    sources: Vec<SourceKey>,
}

/// What makes two further containers' mounts one share: the same host file or
/// directory, of the same kind, with the same access (the server enforces read-only).
type SourceKey = (PathBuf, bool, bool);

/// A share that serves every further container mounting its source: one file server,
/// one mount in the guest, bound into each (so that an emptyDir, `/dev/shm` or the
/// pod's /etc/hosts is one file system in the VM: its page cache, its inodes, its unix
/// sockets are the pod's, as on a Linux host).
struct PodShare {
    stream: u32,
    server: u32,
    users: usize,
}

fn source_key(share: &PlannedShare) -> SourceKey {
    (share.source.clone(), share.file, share.read_only)
}

/// A running sandbox VM.
pub struct Sandbox {
    session: Arc<AgentSession>,
    control: Arc<dyn VmControl>,
    vm_pid: u32,
    run_dir: PathBuf,
    routes: Routes,
    reader: tokio::task::JoinHandle<()>,
    replies: Replies,
    /// One request on the agent's stream at a time.
    requests: tokio::sync::Mutex<()>,
    relay: Arc<ShareRelay>,
    share_server: PathBuf,
    /// The stream of the next share.
    next_share: AtomicU32,
    /// Further containers, by name.
    containers: Mutex<HashMap<String, AddedContainer>>,
    /// The shares further containers mount, by source.
    pod_shares: Mutex<HashMap<SourceKey, PodShare>>,
    /// Adding and removing further containers one at a time (they count shares' users).
    membership: tokio::sync::Mutex<()>,
}

impl Sandbox {
    /// Restores a clone of the template for `options.shape` (built first when there is
    /// none), or boots a VM cold, and sets it up with `options.root` as its root filesystem.
    pub async fn start(options: SandboxOptions) -> Result<Self, EngineError> {
        let cache = options.cache.clone();
        let begun = std::time::Instant::now();
        let mut steps = StepTimes::default();
        let guest = tokio::task::spawn_blocking(move || {
            berth_guest::prepare_with(&cache, None, &|step| tracing::info!("{step}"))
        })
        .await
        .map_err(EngineError::panicked("guest preparation"))?
        .map_err(EngineError::Guest)?;
        steps.guest_ms = begun.elapsed().as_millis() as u64;
        let template = match options.clone {
            true => {
                let _build = TemplateBuildLock::take(&options.templates).await?;
                Some(
                    TemplateManager::new(options.templates.clone(), template_network(&options)?)
                        .get_or_build(options.backend.as_ref(), &guest, options.shape)
                        .await?,
                )
            }
            false => None,
        };
        let run_dir = &options.run_dir;
        let _ = std::fs::remove_dir_all(run_dir);
        std::fs::create_dir_all(run_dir).map_err(EngineError::io(run_dir))?;
        let (memory, restore_from) = match &template {
            Some(template) => (
                MemoryBacking::PrivateFile(template.memory_file()),
                Some(template.verified_state_copy(run_dir)?),
            ),
            None => (MemoryBacking::Anonymous, None),
        };
        steps.template_ms = begun.elapsed().as_millis() as u64 - steps.guest_ms;
        let placeholder = run_dir.join("vda.qcow2");
        create_container_disk(&placeholder, None)?;
        let spec = VmSpec {
            name: options.name.clone(),
            vcpus: options.shape.vcpus,
            memory_mib: options.shape.memory_mib,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            disks: vec![DiskSpec::new(placeholder, DiskFormat::Qcow2)],
            run_dir: run_dir.clone(),
            memory,
            restore_from,
            // In the template's slot: a clone's NIC is restored with it, not hot-plugged.
            nics: options
                .nic
                .iter()
                .map(|nic| NicSpec {
                    tap: nic.tap.clone(),
                    mac: nic.mac.clone(),
                    pci_slot: FIRST_NIC_SLOT,
                })
                .collect(),
            netns: options.netns.clone(),
        };
        let root_share = PlannedShare {
            stream: SHARE_STREAM_BASE,
            source: options.root.clone(),
            target: "/".into(),
            read_only: false,
            file: false,
            populate: false,
        };
        let (more_shares, tmpfs) = plan_mounts(&options.mounts, SHARE_STREAM_BASE + 1)?;
        let shares: Vec<PlannedShare> = std::iter::once(root_share).chain(more_shares).collect();
        let before_boot = begun.elapsed().as_millis() as u64;
        steps.disk_ms = before_boot - steps.guest_ms - steps.template_ms;
        let vm = options.backend.boot(&spec).await?;
        steps.vm_process_ms = begun.elapsed().as_millis() as u64 - before_boot;
        let vm_pid = vm.pid;
        let control: Arc<dyn VmControl> = Arc::from(vm.control);
        let set_up = async {
            let shares = shares.as_slice();
            start_servers(&options.share_server, run_dir, shares, vm_pid)?;
            let setup = SetupSpec {
                hostname: options.hostname.clone(),
                root_device: "/dev/vda".into(),
                root_share: Some(shares[0].to_mount()),
                shares: shares[1..].iter().map(PlannedShare::to_mount).collect(),
                tmpfs,
                interfaces: options
                    .nic
                    .iter()
                    .map(|nic| InterfaceSpec {
                        pci_slot: FIRST_NIC_SLOT,
                        name: "eth0".into(),
                        mac: nic.mac.clone(),
                        address: nic.address.clone(),
                        gateway: nic.gateway.clone(),
                        address6: None,
                        gateway6: None,
                        link_local: Vec::new(),
                    })
                    .collect(),
                ..Default::default()
            };
            let (session, mut reader) = match options.clone {
                true => {
                    let (session, reader, _steps) = rebind(
                        vm.agent,
                        crate::start::rebind_spec(),
                        vec![(AGENT_STREAM, HostMessage::Setup(setup))],
                        SETUP_TIMEOUT,
                    )
                    .await?;
                    (session, reader)
                }
                false => {
                    let (session, reader, _kernel) = handshake(vm.agent, BOOT_TIMEOUT).await?;
                    session
                        .send(AGENT_STREAM, &HostMessage::Setup(setup))
                        .await?;
                    (session, reader)
                }
            };
            let session = Arc::new(session);
            let relay = ShareRelay::connect(run_dir, shares, session.clone()).await?;
            reader.attach_shares(relay.clone());
            match reader
                .expect_message(AGENT_STREAM, SETUP_TIMEOUT, "setting the sandbox up")
                .await?
            {
                GuestMessage::SetupDone { .. } => {}
                other => {
                    return Err(crate::agent::AgentError::unexpected(
                        "setting the sandbox up",
                        &other,
                    )
                    .into())
                }
            }
            let setup_ms = (begun.elapsed().as_millis() as u64)
                .saturating_sub(before_boot + steps.vm_process_ms);
            Ok::<_, EngineError>((session, reader, relay, setup_ms))
        };
        let (session, mut reader, relay) = match set_up.await {
            Ok((session, reader, relay, setup_ms)) => {
                steps.setup_ms = setup_ms;
                (session, reader, relay)
            }
            Err(error) => {
                control.kill().await;
                let _ = std::fs::remove_dir_all(run_dir);
                return Err(error);
            }
        };
        tracing::info!(
            name = %options.name,
            clone = options.clone,
            ms = begun.elapsed().as_millis() as u64,
            guest_ms = steps.guest_ms,
            template_ms = steps.template_ms,
            disk_ms = steps.disk_ms,
            vm_process_ms = steps.vm_process_ms,
            setup_ms = steps.setup_ms,
            "sandbox ready"
        );
        let routes: Routes = Arc::default();
        let replies: Replies = Arc::default();
        let reader = {
            let (routes, replies, control) = (routes.clone(), replies.clone(), control.clone());
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        event = reader.next_event() => event,
                        _ = control.wait() => break,
                    };
                    match event {
                        Ok(Some(event)) => route(&routes, &replies, event),
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!("sandbox agent channel: {error}");
                            break;
                        }
                    }
                }
                end_all(&routes, &replies);
            })
        };
        Ok(Sandbox {
            session,
            control,
            vm_pid,
            run_dir: run_dir.clone(),
            routes,
            reader,
            replies,
            requests: tokio::sync::Mutex::new(()),
            relay,
            share_server: options.share_server.clone(),
            next_share: AtomicU32::new(SHARE_STREAM_BASE + shares.len() as u32),
            containers: Mutex::default(),
            pod_shares: Mutex::default(),
            membership: tokio::sync::Mutex::new(()),
        })
    }

    /// Adds the further container `name` to the VM (a pod's): `root` (a host directory)
    /// becomes its root filesystem, with `mounts` in it. Its processes are spawned with
    /// [`ProcessSpec::container`] set to `name`, in a mount namespace and a cgroup of
    /// its own in the guest, limited by `resources`.
    pub async fn add_container(
        &self,
        name: &str,
        root: PathBuf,
        mounts: &[SandboxMount],
        read_only: bool,
        resources: Resources,
    ) -> Result<(), EngineError> {
        if !berth_agent_proto::valid_container_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid container name {name:?}"
            )));
        }
        let _one_at_a_time = self.membership.lock().await;
        if lock(&self.containers).contains_key(name) {
            return Err(EngineError::Conflict(format!(
                "container {name} is in the sandbox already"
            )));
        }
        let (planned, tmpfs) = plan_mounts(mounts, 0)?;
        // Sources the pod serves already are bound in the guest; the others get a
        // stream and a server each, as does the root.
        let reused: HashMap<SourceKey, u32> = {
            let pod_shares = lock(&self.pod_shares);
            planned
                .iter()
                .filter_map(|share| {
                    let key = source_key(share);
                    pod_shares.get(&key).map(|known| (key, known.stream))
                })
                .collect()
        };
        let mut fresh: Vec<PlannedShare> = vec![PlannedShare {
            stream: self.next_share.fetch_add(1, Ordering::Relaxed),
            source: root,
            target: "/".into(),
            read_only: false,
            file: false,
            populate: false,
        }];
        let mut mounted = Vec::new();
        for share in planned {
            let key = source_key(&share);
            let stream = match reused.get(&key) {
                Some(stream) => *stream,
                None => match fresh[1..].iter().find(|new| source_key(new) == key) {
                    // The same source twice in one container: one share.
                    Some(new) => new.stream,
                    None => {
                        let stream = self.next_share.fetch_add(1, Ordering::Relaxed);
                        fresh.push(PlannedShare {
                            stream,
                            ..share.clone()
                        });
                        stream
                    }
                },
            };
            mounted.push(PlannedShare { stream, ..share });
        }
        let fresh_streams: Vec<u32> = fresh.iter().map(|share| share.stream).collect();
        let servers = start_servers(&self.share_server, &self.run_dir, &fresh, self.vm_pid)?;
        let added = async {
            self.relay.add(&self.run_dir, &fresh).await?;
            let spec = ContainerSpec {
                name: name.to_owned(),
                root_share: fresh[0].to_mount(),
                tmpfs,
                shares: mounted.iter().map(PlannedShare::to_mount).collect(),
                read_only,
                resources,
            };
            match self
                .request(HostMessage::AddContainer(spec), "adding a container")
                .await?
            {
                GuestMessage::ContainerAdded { .. } => Ok(()),
                other => {
                    Err(crate::agent::AgentError::unexpected("adding a container", &other).into())
                }
            }
        };
        if let Err(error) = added.await {
            self.relay.remove(&fresh_streams);
            stop_servers(&servers);
            return Err(error);
        }
        let mut pod_shares = lock(&self.pod_shares);
        for (share, server) in fresh.iter().zip(&servers).skip(1) {
            pod_shares.insert(
                source_key(share),
                PodShare {
                    stream: share.stream,
                    server: *server,
                    users: 0,
                },
            );
        }
        let mut sources: Vec<SourceKey> = mounted.iter().map(source_key).collect();
        sources.sort();
        sources.dedup();
        for key in &sources {
            if let Some(known) = pod_shares.get_mut(key) {
                known.users += 1;
            }
        }
        lock(&self.containers).insert(
            name.to_owned(),
            AddedContainer {
                root_stream: fresh[0].stream,
                root_server: servers.first().copied(),
                sources,
            },
        );
        Ok(())
    }

    /// Removes the further container `name`: its processes are killed, its root and
    /// mounts unmounted in the guest; its root's server stopped, and those of the pod
    /// shares no other container mounts.
    pub async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let _one_at_a_time = self.membership.lock().await;
        let Some(container) = lock(&self.containers).remove(name) else {
            return Err(EngineError::NotFound(format!(
                "no container {name} in the sandbox"
            )));
        };
        let mut streams = vec![container.root_stream];
        let mut servers: Vec<u32> = container.root_server.into_iter().collect();
        {
            let mut pod_shares = lock(&self.pod_shares);
            for key in &container.sources {
                let unused = pod_shares.get_mut(key).is_some_and(|known| {
                    known.users -= 1;
                    known.users == 0
                });
                if let Some(known) = unused.then(|| pod_shares.remove(key)).flatten() {
                    streams.push(known.stream);
                    servers.push(known.server);
                }
            }
        }
        let answer = self
            .request(
                HostMessage::RemoveContainer {
                    name: name.to_owned(),
                },
                "removing a container",
            )
            .await;
        self.relay.remove(&streams);
        stop_servers(&servers);
        match answer? {
            GuestMessage::ContainerRemoved { .. } => Ok(()),
            other => {
                Err(crate::agent::AgentError::unexpected("removing a container", &other).into())
            }
        }
    }

    /// Limits the processes of the container `name` (`None`: the VM's first) with its
    /// cgroup in the guest.
    pub async fn update_resources(
        &self,
        name: Option<&str>,
        resources: Resources,
    ) -> Result<(), EngineError> {
        let message = HostMessage::UpdateResources {
            container: name.map(str::to_owned),
            resources,
        };
        match self
            .request(message, "updating a container's resources")
            .await?
        {
            GuestMessage::ResourcesUpdated => Ok(()),
            other => Err(crate::agent::AgentError::unexpected(
                "updating a container's resources",
                &other,
            )
            .into()),
        }
    }

    /// Freezes (or thaws) the processes of the further container `name` alone.
    pub async fn freeze_container(&self, name: &str, frozen: bool) -> Result<(), EngineError> {
        let message = HostMessage::FreezeContainer {
            name: name.to_owned(),
            frozen,
        };
        match self.request(message, "freezing a container").await? {
            GuestMessage::ContainerFrozen { frozen: now, .. } if now == frozen => Ok(()),
            other => {
                Err(crate::agent::AgentError::unexpected("freezing a container", &other).into())
            }
        }
    }

    /// What the processes of the container `name` (`None`: the VM's first) use now.
    pub async fn usage(&self, name: Option<&str>) -> Result<ContainerUsage, EngineError> {
        let message = HostMessage::ContainerUsage {
            container: name.map(str::to_owned),
        };
        match self.request(message, "reading a container's usage").await? {
            GuestMessage::ContainerUsage {
                processes,
                user_ns,
                system_ns,
                rss_bytes,
                memory,
            } => Ok(ContainerUsage {
                processes,
                user_ns,
                system_ns,
                rss_bytes,
                memory,
            }),
            other => Err(crate::agent::AgentError::unexpected(
                "reading a container's usage",
                &other,
            )
            .into()),
        }
    }

    /// Sends `message` on the agent's stream and waits for its answer (one request at
    /// a time); the guest's `Error` is returned as an error.
    async fn request(
        &self,
        message: HostMessage,
        doing: &'static str,
    ) -> Result<GuestMessage, EngineError> {
        let _one_at_a_time = self.requests.lock().await;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        *lock(&self.replies) = Some(sender);
        self.session.send(AGENT_STREAM, &message).await?;
        let answer = tokio::time::timeout(SETUP_TIMEOUT, receiver).await;
        lock(&self.replies).take();
        match answer {
            Ok(Ok(GuestMessage::Error { message })) => {
                Err(EngineError::InvalidArgument(format!("{doing}: {message}")))
            }
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(EngineError::Conflict(format!(
                "{doing}: the VM ended before it answered"
            ))),
            Err(_) => Err(EngineError::Conflict(format!(
                "{doing}: the VM did not answer in {} s",
                SETUP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The VM's process on the host.
    pub fn vm_pid(&self) -> u32 {
        self.vm_pid
    }

    /// Starts `process` on `stream` ([`INIT_STREAM`] first; an exec on any other stream
    /// below [`SHARE_STREAM_BASE`] that no running process uses).
    pub async fn spawn(
        &self,
        stream: u32,
        process: ProcessSpec,
    ) -> Result<mpsc::UnboundedReceiver<ProcessEvent>, EngineError> {
        if stream == AGENT_STREAM || stream >= SHARE_STREAM_BASE {
            return Err(EngineError::InvalidArgument(format!(
                "stream {stream} cannot carry a process"
            )));
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        {
            let mut routes = lock(&self.routes);
            if routes.contains_key(&stream) {
                return Err(EngineError::Conflict(format!(
                    "a process already runs on stream {stream}"
                )));
            }
            routes.insert(stream, sender);
        }
        if let Err(error) = self
            .session
            .send(stream, &HostMessage::Spawn(process))
            .await
        {
            lock(&self.routes).remove(&stream);
            return Err(error.into());
        }
        Ok(receiver)
    }

    pub async fn send_stdin(&self, stream: u32, data: &[u8]) -> Result<(), EngineError> {
        Ok(self.session.send_stdin(stream, data).await?)
    }

    pub async fn close_stdin(&self, stream: u32) -> Result<(), EngineError> {
        Ok(self.session.send(stream, &HostMessage::CloseStdin).await?)
    }

    pub async fn signal(&self, stream: u32, signal: i32) -> Result<(), EngineError> {
        Ok(self
            .session
            .send(stream, &HostMessage::Signal { signal })
            .await?)
    }

    pub async fn resize(&self, stream: u32, rows: u16, cols: u16) -> Result<(), EngineError> {
        Ok(self
            .session
            .send(stream, &HostMessage::Resize { rows, cols })
            .await?)
    }

    /// Stops the VM's vCPUs (every process in it stops with them).
    pub async fn pause(&self) -> Result<(), EngineError> {
        Ok(self.control.pause().await?)
    }

    pub async fn resume(&self) -> Result<(), EngineError> {
        Ok(self.control.resume().await?)
    }

    /// Powers the VM off (killed if it has not in `grace`) and removes its run directory.
    pub async fn shut_down(&self, grace: Duration) {
        let _ = self
            .session
            .send(AGENT_STREAM, &HostMessage::Shutdown)
            .await;
        self.control.shut_down(grace).await;
        self.reader.abort();
        // The reader may have been stopped before it told the processes still running
        // (a pod's other containers hold this sandbox and wait on them).
        end_all(&self.routes, &self.replies);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Kills share servers (of a container that was removed).
fn stop_servers(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Splits `mounts` into shares (on streams from `first_stream` on) and tmpfs mounts.
fn plan_mounts(
    mounts: &[SandboxMount],
    first_stream: u32,
) -> Result<(Vec<PlannedShare>, Vec<TmpfsSpec>), EngineError> {
    let mut shares = Vec::new();
    let mut tmpfs = Vec::new();
    for mount in mounts {
        match mount {
            SandboxMount::Share {
                source,
                target,
                read_only,
            } => {
                let metadata = std::fs::metadata(source).map_err(|error| {
                    EngineError::InvalidArgument(format!(
                        "bind mount source {} cannot be read: {error}",
                        source.display()
                    ))
                })?;
                shares.push(PlannedShare {
                    stream: first_stream + shares.len() as u32,
                    source: source.clone(),
                    target: target.clone(),
                    read_only: *read_only,
                    file: !metadata.is_dir(),
                    populate: false,
                });
            }
            SandboxMount::Tmpfs { target, options } => tmpfs.push(TmpfsSpec {
                path: target.clone(),
                options: options.clone(),
            }),
        }
    }
    Ok((shares, tmpfs))
}

/// The VM or its channel is gone: whatever still runs has ended with it, and no
/// answer comes.
fn end_all(routes: &Routes, replies: &Replies) {
    lock(replies).take();
    for (_, sender) in lock(routes).drain() {
        let _ = sender.send(ProcessEvent::Exited {
            code: VM_ENDED_CODE,
        });
    }
}

/// Hands an agent event to the process it belongs to, or an answer on the agent's
/// stream to the request waiting for it.
fn route(routes: &Routes, replies: &Replies, event: AgentEvent) {
    if let AgentEvent::Message {
        stream: AGENT_STREAM,
        message,
    } = event
    {
        if let Some(reply) = lock(replies).take() {
            let _ = reply.send(message);
        }
        return;
    }
    let mut routes = lock(routes);
    match event {
        AgentEvent::Output { stream, kind, data } => {
            if let Some(sender) = routes.get(&stream) {
                let _ = sender.send(ProcessEvent::Output(OutputChunk::from_agent(kind, data)));
            }
        }
        AgentEvent::Message { stream, message } => {
            let last = match message {
                GuestMessage::Started { pid } => ProcessEvent::Started { guest_pid: pid },
                GuestMessage::SpawnFailed { reason, message } => ProcessEvent::SpawnFailed {
                    code: match reason {
                        berth_agent_proto::SpawnFailure::NotFound => 127,
                        berth_agent_proto::SpawnFailure::NotExecutable => 126,
                        berth_agent_proto::SpawnFailure::Other => 1,
                    },
                    message,
                },
                GuestMessage::Exited { code, .. } => ProcessEvent::Exited { code },
                _ => return,
            };
            let ends = !matches!(last, ProcessEvent::Started { .. });
            if let Some(sender) = routes.get(&stream) {
                let _ = sender.send(last);
            }
            if ends {
                routes.remove(&stream);
            }
        }
    }
}

/// An exclusive lock on the template directory between processes (each containerd
/// task has a shim process of its own, and two may need the template at once: the
/// template manager's own gate is per process).
struct TemplateBuildLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl TemplateBuildLock {
    async fn take(templates: &Path) -> Result<Self, EngineError> {
        std::fs::create_dir_all(templates).map_err(EngineError::io(templates))?;
        let path = templates.join(".build.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(EngineError::io(&path))?;
        let locked = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        })
        .await
        .map_err(EngineError::panicked("template lock"))?;
        match locked {
            Ok(file) => Ok(TemplateBuildLock { _file: file }),
            Err((_, errno)) => Err(EngineError::Io {
                path,
                source: errno.into(),
            }),
        }
    }
}
