//! `docker start`: boot the VM, set the guest up, start the process, and serve it
//! until it exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent_proto::{
    GuestMessage, HostMessage, ProcessSpec, SetupSpec, SpawnFailure, VolumeMount, AGENT_STREAM,
};
use berth_vm::{DiskFormat, DiskSpec, VmControl, VmSpec};
use tokio::sync::oneshot;

use crate::agent::{
    handshake, rebind, AgentError, AgentEvent, AgentReader, AgentSession, MAIN_STREAM,
};
use crate::container::{Refusal, Transition};
use crate::error::{error_chain, EngineError};
use crate::output::{LogWriter, OutputChunk};
use crate::template::Shape;
use crate::RUNTIME_CLONE;
use crate::{lock, ContainerHandle, Engine, Runtime, StdinEvent};
use berth_agent_proto::RebindSpec;
use berth_vm::MemoryBacking;
use rand::RngCore;

/// How long a VM gets from process start to the agent's Hello. Generous: under software
/// emulation on a loaded host a boot can take many seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent gets to answer a request on its own stream (e.g. configuring a
/// hot-plugged NIC, which waits for the guest to find the card).
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Gives a container's networks back when a start fails before its serve task runs.
struct ReleaseNetworks {
    engine: Arc<Engine>,
    handle: Option<Arc<ContainerHandle>>,
}

impl Drop for ReleaseNetworks {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.engine.release_networks(&handle);
        }
    }
}

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The container was already running (Docker answers 304).
    AlreadyRunning,
}

/// How a run ended.
enum RunEnd {
    /// The exit code, and whether the guest's out-of-memory killer ended it.
    Exited(i32, bool),
    SpawnFailed(SpawnFailure, String),
    Broken(String),
}

impl Engine {
    /// Starts a created or exited container and returns once its process runs.
    pub async fn start_container(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<StartOutcome, EngineError> {
        let handle = self.lookup(reference)?;
        {
            // A user's start: the restart policy applies again from here.
            let mut record = lock(&handle.record);
            record.manually_stopped = false;
            *lock(&handle.restart_delay) = None;
        }
        self.start_run(&handle).await
    }

    /// Starts a container's next run (a user's start, a restart, or the daemon's).
    pub(crate) async fn start_run(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<StartOutcome, EngineError> {
        let _guard = handle.lifecycle.lock().await;
        match handle.status().can_start() {
            Ok(()) => {}
            Err(Refusal::AlreadyRunning) => return Ok(StartOutcome::AlreadyRunning),
            Err(refusal) => return Err(EngineError::refused(&handle.id)(refusal)),
        }
        match self.boot_and_spawn(handle).await {
            Ok(()) => Ok(StartOutcome::Started),
            Err(error) => {
                if !matches!(error, EngineError::StartFailed(_)) {
                    // The run task records spawn failures (and auto-removes) itself;
                    // everything else is recorded here.
                    let failed = Transition::StartFailed {
                        error: error_chain(&error),
                    };
                    if let Err(error) = self.transition(handle, failed) {
                        tracing::warn!(id = %handle.id, error = %error_chain(&error), "recording a failed start failed");
                    }
                    if handle.snapshot().auto_remove() {
                        // As Docker does: a `--rm` container that fails to start is removed
                        // (a client waiting for its removal would wait forever otherwise).
                        let engine = self.clone();
                        let id = handle.id.clone();
                        tokio::spawn(async move {
                            let _ = engine.remove_container_and_volumes(&id, true, true).await;
                        });
                    }
                }
                Err(error)
            }
        }
    }

    async fn boot_and_spawn(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<(), EngineError> {
        let record = handle.snapshot();
        let begun = Instant::now();
        let guest = self.guest().await?.clone();
        let dir = self.container_dir(&record.id);
        let run_dir = self.vm_dir(&record.id);
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).map_err(EngineError::io(&run_dir))?;
        let (vcpus, memory_mib) = record.vm_shape(self.config.default_memory_mib);
        // A backend without snapshots cold-boots every runtime's VMs; one without
        // hot-plug cold-boots containers with volumes or several networks, whose disks
        // and NICs it then has from boot (a clone gets them hot-plugged).
        let backend = &self.config.backend;
        let hotplug = backend.supports_hotplug();
        let clone = record.runtime() == RUNTIME_CLONE
            && backend.supports_snapshot()
            && (hotplug || (record.mounts.is_empty() && record.networks.len() <= 1));
        // A clone restores a verified private copy of its template's state; a template
        // found damaged at that point is discarded and built again, once.
        let mut template = None;
        let mut restore_from = None;
        if clone {
            let shape = Shape { vcpus, memory_mib };
            for attempt in 0..2 {
                let candidate = self
                    .templates
                    .get_or_build(&*self.config.backend, &guest, shape)
                    .await?;
                match candidate.verified_state_copy(&run_dir) {
                    Ok(state) => {
                        restore_from = Some(state);
                        template = Some(candidate);
                        break;
                    }
                    Err(error) if attempt == 0 => {
                        tracing::warn!(error = %error_chain(&error), "template unusable; rebuilding it");
                        self.templates.discard(&candidate).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        let template_ready = begun.elapsed();
        // Addresses, MACs and taps for the container's networks; given back if the start
        // fails before the serve task owns the run.
        let plan = {
            let mut planned = handle.snapshot();
            let plan = self.networks.plan_start(&mut planned)?;
            lock(&handle.record).networks = planned.networks;
            plan
        };
        let mut release_on_failure = ReleaseNetworks {
            engine: self.clone(),
            handle: Some(handle.clone()),
        };
        self.check_volumes_free(&record.id, &record.mounts)?;
        // Volume disks: in the VM from boot, or hot-plugged into a clone (whose devices
        // must match its template's when it is restored).
        let volume_disks: Vec<DiskSpec> = record
            .mounts
            .iter()
            .enumerate()
            .map(|(index, mount)| DiskSpec {
                path: self.volume_disk(&mount.volume),
                format: DiskFormat::Raw,
                read_only: mount.read_only,
                serial: Some(volume_serial(index)),
                pci_slot: Some(berth_vm::FIRST_VOLUME_SLOT + index as u8),
            })
            .collect();
        let mut disks = vec![DiskSpec::new(dir.join("rootfs.qcow2"), DiskFormat::Qcow2)];
        if !clone {
            disks.extend(volume_disks.iter().cloned());
        }
        let spec = VmSpec {
            name: record.id.clone(),
            vcpus,
            memory_mib,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            disks,
            run_dir: run_dir.clone(),
            memory: match &template {
                Some(template) => MemoryBacking::PrivateFile(template.memory_file()),
                None => MemoryBacking::Anonymous,
            },
            restore_from,
            nics: std::iter::once(plan.boot_nic.clone())
                .chain(
                    plan.extra
                        .iter()
                        .filter(|_| !hotplug)
                        .map(|(nic, _)| nic.clone()),
                )
                .collect(),
            netns: Some(self.networks.namespace_path()),
        };
        // The container's process, checked before any VM is booted.
        let process = ProcessSpec {
            argv: std::iter::once(record.path.clone())
                .chain(record.args.iter().cloned())
                .collect(),
            env: record.config.env.clone().unwrap_or_default(),
            cwd: record
                .config
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            user: record.config.user.clone().unwrap_or_default(),
            tty: record.tty(),
            stdin: record.config.open_stdin.unwrap_or(false),
            tty_size: None,
            rlimits: crate::security::rlimits(&record.host_config)?,
            capabilities: crate::security::capabilities(&record.host_config)?,
            no_new_privileges: crate::security::no_new_privileges(&record.host_config),
            agent_helper: false,
        };
        let vm = match self.config.backend.boot(&spec).await {
            Ok(vm) => vm,
            Err(error) => {
                if let Some(template) = &template {
                    self.templates.discard(template).await;
                }
                return Err(error.into());
            }
        };
        let vm_up = begun.elapsed();
        let control: Arc<dyn VmControl> = Arc::from(vm.control);
        // Without networks to connect after setup, the host side of the container's
        // network is made ready first and its process is sent right behind the setup:
        // the agent starts it as soon as setup is done (and refuses it if setup failed),
        // which spares a round trip to the guest.
        let pipelined = plan.extra.is_empty();
        if pipelined {
            if let Err(error) = self.activate_networks(handle, &plan).await {
                control.kill().await;
                return Err(error);
            }
        }
        let mut follow = Vec::new();
        let mut hello_at = Duration::ZERO;
        let mut rebound = false;
        let prepared = async {
            if clone {
                for disk in &volume_disks {
                    control.add_disk(disk).await?;
                }
            }
            let mut setup = SetupSpec {
                hostname: record
                    .config
                    .hostname
                    .clone()
                    .unwrap_or_else(|| record.id[..12].to_owned()),
                root_device: "/dev/vda".into(),
                interfaces: plan.boot_interface.iter().cloned().collect(),
                nameservers: plan.nameservers.clone(),
                ..Default::default()
            };
            crate::guest_config::apply(&record, &plan, &mut setup)?;
            setup.volumes = record
                .mounts
                .iter()
                .enumerate()
                .map(|(index, mount)| VolumeMount {
                    serial: volume_serial(index),
                    target: mount.target.clone(),
                    read_only: mount.read_only,
                    populate: mount.populate,
                })
                .collect();
            follow.push((AGENT_STREAM, HostMessage::Setup(setup)));
            if pipelined {
                follow.push((MAIN_STREAM, HostMessage::Spawn(process.clone())));
            }
            let (session, mut reader) = if clone {
                let mut entropy = vec![0u8; 64];
                rand::rngs::OsRng.fill_bytes(&mut entropy);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let spec = RebindSpec {
                    entropy,
                    realtime: (now.as_secs() as i64, now.subsec_nanos()),
                };
                let (session, reader, _steps) =
                    rebind(vm.agent, spec, std::mem::take(&mut follow), SETUP_TIMEOUT).await?;
                (session, reader)
            } else {
                let (session, reader, _kernel) = handshake(vm.agent, BOOT_TIMEOUT).await?;
                for (stream, message) in std::mem::take(&mut follow) {
                    session.send(stream, &message).await?;
                }
                (session, reader)
            };
            hello_at = begun.elapsed();
            rebound = true;
            match reader
                .expect_message(AGENT_STREAM, SETUP_TIMEOUT, "setting the guest up")
                .await?
            {
                GuestMessage::SetupDone => Ok((session, reader)),
                GuestMessage::Error { message } => Err(AgentError::GuestFailed {
                    during: "setting the guest up".into(),
                    message,
                }
                .into()),
                other => Err(AgentError::unexpected("setting the guest up", &other).into()),
            }
        };
        let (session, reader) = match prepared.await {
            Ok(parts) => parts,
            Err(error) => {
                control.kill().await;
                // A clone that did not come up to its agent's answer condemns its
                // template; a setup that failed (a bad sysctl, a volume) is the
                // container's own.
                if let (Some(template), false) = (&template, rebound) {
                    self.templates.discard(template).await;
                }
                return Err(error);
            }
        };
        let setup_done = begun.elapsed();
        let session = Arc::new(session);
        let log = self.log_writer(&record)?;
        let (started_sender, started) = oneshot::channel();
        let runtime = Arc::new(Runtime::new(session.clone(), control.clone()));
        handle.attach_runtime(runtime);
        tokio::spawn(serve(
            self.clone(),
            handle.clone(),
            reader,
            log,
            control.clone(),
            started_sender,
            None,
        ));
        // From here the serve task owns the run, and gives the networks back when it ends.
        release_on_failure.handle = None;
        if !pipelined {
            let connected = async {
                self.connect_extra_nics(handle, &plan).await?;
                self.activate_networks(handle, &plan).await?;
                session
                    .send(MAIN_STREAM, &HostMessage::Spawn(process))
                    .await?;
                Ok::<(), EngineError>(())
            };
            if let Err(error) = connected.await {
                control.kill().await;
                return Err(error);
            }
        }
        let networked = begun.elapsed();
        match started.await {
            Ok(Ok(_guest_pid)) => {
                // Where a start's time goes: the VM process and its devices, the guest's
                // boot to the agent's Hello, mounting the disk, starting the process.
                tracing::info!(
                    id = %&record.id[..12],
                    runtime = record.runtime(),
                    template_ms = template_ready.as_millis() as u64,
                    vm_process_ms = vm_up.as_millis() as u64,
                    agent_hello_ms = hello_at.as_millis() as u64,
                    setup_done_ms = setup_done.as_millis() as u64,
                    networks_ms = networked.as_millis() as u64,
                    process_started_ms = begun.elapsed().as_millis() as u64,
                    "container started"
                );
                self.transition(handle, Transition::Started { pid: vm.pid })?;
                self.start_health_checks(handle);
                if let Some(input) = handle.take_stdin() {
                    tokio::spawn(forward_stdin(session, input));
                }
                Ok(())
            }
            Ok(Err(message)) => Err(EngineError::StartFailed(message)),
            Err(_) => Err(AgentError::VmEnded("before the process started").into()),
        }
    }

    /// Takes over the VMs of containers that ran on while the daemon was away (it was
    /// killed, not stopped): each VM's agent channel reconnects (QEMU retries it), the
    /// agent reports its processes, and the container is served again, with its
    /// addresses, names and published ports. A VM that cannot be taken over is killed and
    /// its container recorded as exited.
    pub(crate) async fn take_over(self: &Arc<Self>, ids: Vec<String>) {
        let mut tasks = Vec::new();
        for id in ids {
            let Ok(handle) = self.lookup(&id) else {
                continue;
            };
            let engine = self.clone();
            tasks.push(tokio::spawn(async move {
                match engine.reattach_container(&handle).await {
                    Ok(()) => {
                        tracing::info!(id = %&handle.id[..12], "took over the running container's VM");
                    }
                    Err(error) => {
                        tracing::warn!(id = %handle.id, error = %error_chain(&error), "could not take over the container's VM; stopping it");
                        handle.detach_runtime();
                        let mut record = handle.snapshot();
                        crate::lifecycle::kill_stale_vm(&record);
                        engine.networks.release(&mut record);
                        {
                            let mut current = lock(&handle.record);
                            current.networks = record.networks;
                            current.ports = record.ports;
                        }
                        let lost = Transition::Exited {
                            code: 255,
                            error: format!(
                                "the daemon restarted and could not take over the VM: {}",
                                error_chain(&error)
                            ),
                            oom_killed: false,
                        };
                        if let Err(error) = engine.transition(&handle, lost) {
                            tracing::warn!(id = %handle.id, error = %error_chain(&error), "recording the lost container failed");
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn reattach_container(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<(), EngineError> {
        let record = handle.snapshot();
        let vm = self
            .config
            .backend
            .reattach(record.state.pid, &self.vm_dir(&record.id))
            .await?;
        let control: Arc<dyn VmControl> = Arc::from(vm.control);
        let taken = crate::agent::reattach(vm.agent, SETUP_TIMEOUT).await;
        let (session, reader, processes) = match taken {
            Ok(parts) => parts,
            Err(error) => {
                control.kill().await;
                return Err(error.into());
            }
        };
        let already_exited = match processes.iter().find(|p| p.stream == MAIN_STREAM) {
            Some(process) => process.exit.map(|(code, _)| code),
            None => {
                control.kill().await;
                return Err(AgentError::Invalid {
                    what: "process list",
                    value: "no container process".into(),
                }
                .into());
            }
        };
        let session = Arc::new(session);
        let mut runtime = Runtime::new(session, control.clone());
        runtime.reattached = true;
        handle.attach_runtime(Arc::new(runtime));
        self.transition(handle, Transition::Reattached)?;
        let mut updated = handle.snapshot();
        self.networks.restore(&updated);
        self.networks.republish(&mut updated).await;
        lock(&handle.record).ports = updated.ports;
        self.persist(handle)?;
        let log = self.log_writer(&record)?;
        let (started, _nobody_waits) = oneshot::channel();
        tokio::spawn(serve(
            self.clone(),
            handle.clone(),
            reader,
            log,
            control,
            started,
            already_exited,
        ));
        if already_exited.is_none() {
            self.start_health_checks(handle);
        }
        Ok(())
    }

    /// Connects a started container's VM to its networks: NICs beyond the first are
    /// plugged (unless the backend had them in the VM from boot) and configured, taps go onto their bridges (the guest has its MAC
    /// addresses by now), names into the networks' DNS, and ports are published.
    /// Plugs in and configures a starting container's networks beyond the first (the
    /// agent must be serving: after setup).
    async fn connect_extra_nics(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        plan: &crate::network::NetworkPlan,
    ) -> Result<(), EngineError> {
        let runtime = handle
            .runtime()
            .ok_or(AgentError::VmEnded("while starting"))?;
        for (nic, interface) in &plan.extra {
            // Without hot-plug the NIC has been in the VM since boot.
            if self.config.backend.supports_hotplug() {
                runtime.control.add_nic(nic).await?;
            }
            match self
                .agent_request(handle, HostMessage::AddInterface(interface.clone()))
                .await?
            {
                GuestMessage::InterfaceReady { .. } => {}
                other => {
                    let during = format!("configuring {}", interface.name);
                    return Err(AgentError::unexpected(during, &other).into());
                }
            }
        }
        Ok(())
    }

    /// The host side of a starting container's networks: taps on their bridges, names
    /// in the networks' DNS, published ports. Done before its process is sent.
    async fn activate_networks(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        plan: &crate::network::NetworkPlan,
    ) -> Result<(), EngineError> {
        let mut record = handle.snapshot();
        self.networks.activate(&record, &plan.attach)?;
        for endpoint in record.networks.values().filter(|e| e.ip.is_some()) {
            if let Ok(network) = self.networks.lookup(&endpoint.network_id) {
                self.network_event(&network, "connect", Some(&record.id));
            }
        }
        self.networks.publish(&mut record).await?;
        lock(&handle.record).ports = record.ports;
        Ok(())
    }

    /// Sends a request on the agent's own stream of a running container and waits for
    /// the answer (one request at a time per container).
    pub(crate) async fn agent_request(
        &self,
        handle: &Arc<ContainerHandle>,
        message: HostMessage,
    ) -> Result<GuestMessage, EngineError> {
        let runtime = handle
            .runtime()
            .ok_or_else(|| EngineError::refused(&handle.id)(Refusal::NotRunning))?;
        let _one_at_a_time = runtime.agent_request.lock().await;
        let (sender, answer) = oneshot::channel();
        *lock(&runtime.agent_reply) = Some(sender);
        runtime.session.send(AGENT_STREAM, &message).await?;
        match tokio::time::timeout(AGENT_REQUEST_TIMEOUT, answer).await {
            Ok(Ok(GuestMessage::Error { message })) => Err(AgentError::Guest(message).into()),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(AgentError::VmEnded("before the agent answered").into()),
            Err(_) => {
                lock(&runtime.agent_reply).take();
                Err(AgentError::Timeout {
                    during: "answering a request".into(),
                    after: AGENT_REQUEST_TIMEOUT,
                }
                .into())
            }
        }
    }

    /// The container's log, kept as its log options say.
    fn log_writer(&self, record: &crate::ContainerRecord) -> Result<LogWriter, EngineError> {
        let log_config = record.host_config.log_config.clone().unwrap_or_default();
        let limits = crate::output::LogLimits::from_config(
            log_config.typ.as_deref(),
            &log_config.config.unwrap_or_default(),
        )?;
        LogWriter::open_with(
            &self.container_dir(&record.id).join("container.log"),
            limits,
        )
    }

    /// Gives back what a container's run held on its networks.
    fn release_networks(&self, handle: &ContainerHandle) {
        let mut record = handle.snapshot();
        for endpoint in record.networks.values().filter(|e| e.ip.is_some()) {
            if let Ok(network) = self.networks.lookup(&endpoint.network_id) {
                self.network_event(&network, "disconnect", Some(&record.id));
            }
        }
        self.networks.release(&mut record);
        let mut current = lock(&handle.record);
        current.networks = record.networks;
        current.ports.clear();
    }

    /// Records the end of a run, powers nothing: the VM is already gone.
    fn finish_run(self: &Arc<Self>, handle: &Arc<ContainerHandle>, end: RunEnd) {
        self.release_networks(handle);
        let run_lasted =
            chrono::DateTime::parse_from_rfc3339(&lock(&handle.record).state.started_at)
                .ok()
                .and_then(|started| {
                    (chrono::Utc::now() - started.with_timezone(&chrono::Utc))
                        .to_std()
                        .ok()
                })
                .unwrap_or_default();
        let oom_killed = matches!(end, RunEnd::Exited(_, true));
        let (code, error) = match end {
            RunEnd::Exited(code, _) => (i64::from(code), String::new()),
            RunEnd::SpawnFailed(SpawnFailure::NotFound, message) => (127, message),
            RunEnd::SpawnFailed(SpawnFailure::NotExecutable, message) => (126, message),
            RunEnd::SpawnFailed(SpawnFailure::Other, message) => (128, message),
            RunEnd::Broken(message) => (255, message),
        };
        handle.hub.close();
        handle.detach_runtime();
        handle.reset_stdin();
        // A run that never reached its process's start was never `running`.
        let exited = if handle.status().has_vm() {
            Transition::Exited {
                code,
                error,
                oom_killed,
            }
        } else {
            Transition::RunFailed { code, error }
        };
        if let Err(error) = self.transition(handle, exited) {
            tracing::error!(id = %handle.id, error = %error_chain(&error), "recording the container's exit failed");
        }
        if handle.snapshot().auto_remove() {
            let engine = self.clone();
            let id = handle.id.clone();
            tokio::spawn(async move {
                if let Err(error) = engine.remove_container_and_volumes(&id, true, true).await {
                    tracing::warn!(%id, error = %error_chain(&error), "auto-remove failed");
                }
            });
        } else {
            self.schedule_restart(handle, run_lasted);
        }
    }
}

/// Serves a running container: output to log and attached clients, until the process
/// exits, the agent breaks the protocol, or the VM dies. Then powers the VM off.
async fn serve(
    engine: Arc<Engine>,
    handle: Arc<ContainerHandle>,
    mut reader: AgentReader,
    mut log: LogWriter,
    control: Arc<dyn VmControl>,
    started: oneshot::Sender<Result<i32, String>>,
    already_exited: Option<i32>,
) {
    let mut started = Some(started);
    let reattached = handle.runtime().is_some_and(|r| r.reattached);
    let end = if let Some(code) = already_exited {
        RunEnd::Exited(code, false)
    } else {
        loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                _ = control.wait() => break RunEnd::Broken("the container's VM stopped unexpectedly".into()),
            };
            match event {
                Ok(Some(AgentEvent::Output {
                    stream: MAIN_STREAM,
                    kind,
                    data,
                })) => {
                    let chunk = OutputChunk::from_agent(kind, data);
                    handle.hub.record_and_publish(&chunk, || log.write(&chunk));
                }
                Ok(Some(AgentEvent::Message {
                    stream: MAIN_STREAM,
                    message,
                })) => match message {
                    GuestMessage::Started { pid } => {
                        if let Some(sender) = started.take() {
                            let _ = sender.send(Ok(pid));
                        }
                    }
                    GuestMessage::SpawnFailed { reason, message } => {
                        if let Some(sender) = started.take() {
                            let _ = sender.send(Err(message.clone()));
                        }
                        break RunEnd::SpawnFailed(reason, message);
                    }
                    GuestMessage::Exited {
                        code, oom_killed, ..
                    } => break RunEnd::Exited(code, oom_killed),
                    GuestMessage::Error { message } => {
                        tracing::warn!(id = %handle.id, %message, "agent reported an error")
                    }
                    other => {
                        break RunEnd::Broken(format!("the agent sent an unexpected {other:?}"))
                    }
                },
                Ok(Some(AgentEvent::Message {
                    stream: AGENT_STREAM,
                    message,
                })) => {
                    let waiting = handle
                        .runtime()
                        .and_then(|runtime| lock(&runtime.agent_reply).take());
                    match (waiting, message) {
                        (Some(sender), message) => {
                            let _ = sender.send(message);
                        }
                        (None, GuestMessage::Error { message }) => {
                            tracing::warn!(id = %handle.id, %message, "agent reported an error")
                        }
                        (None, other) => {
                            break RunEnd::Broken(format!(
                                "the agent sent an unrequested {other:?}"
                            ))
                        }
                    }
                }
                Ok(Some(AgentEvent::Output { stream, kind, data })) => {
                    match engine.execs.by_stream(&handle.id, stream) {
                        Some(exec) => {
                            exec.hub.publish(&OutputChunk::from_agent(kind, data));
                        }
                        None if reattached => {} // an exec the engine before this one ran
                        None => {
                            break RunEnd::Broken(format!(
                                "the agent sent output on unknown stream {stream}"
                            ))
                        }
                    }
                }
                Ok(Some(AgentEvent::Message { stream, message })) => {
                    match engine.execs.by_stream(&handle.id, stream) {
                        Some(exec) => match message {
                            GuestMessage::Started { pid } => exec.on_started(pid),
                            GuestMessage::SpawnFailed { reason, message } => {
                                exec.on_spawn_failed(reason, message)
                            }
                            GuestMessage::Exited { code, .. } => {
                                exec.finish(i64::from(code));
                                if !exec.helper {
                                    engine.events.container(
                                        &handle.snapshot(),
                                        "exec_die",
                                        &[
                                            ("execID", exec.id.clone()),
                                            ("exitCode", code.to_string()),
                                        ],
                                    );
                                }
                            }
                            GuestMessage::Error { message } => {
                                tracing::warn!(id = %handle.id, stream, %message, "agent reported an error for an exec")
                            }
                            other => {
                                break RunEnd::Broken(format!(
                                    "the agent sent an unexpected {other:?} for an exec"
                                ))
                            }
                        },
                        None if reattached => {}
                        None => {
                            break RunEnd::Broken(format!(
                                "the agent sent {message:?} on unknown stream {stream}"
                            ))
                        }
                    }
                }
                Ok(None) => {
                    // A closed channel usually means the VM itself is gone; say which.
                    let vm_gone = tokio::time::timeout(Duration::from_secs(1), control.wait())
                        .await
                        .is_ok();
                    break RunEnd::Broken(if vm_gone {
                        "the container's VM stopped unexpectedly".into()
                    } else {
                        "the container's agent closed its channel".into()
                    });
                }
                Err(error) => break RunEnd::Broken(error_chain(&error)),
            }
        }
    };
    if let RunEnd::Broken(reason) = &end {
        tracing::warn!(id = %handle.id, %reason, "container run ended abnormally");
        if let Some(sender) = started.take() {
            let _ = sender.send(Err(reason.clone()));
        }
    }
    if let Some(runtime) = handle.runtime() {
        let _ = runtime
            .session
            .send(AGENT_STREAM, &HostMessage::Shutdown)
            .await;
    }
    engine.execs.container_stopped(&handle.id);
    let stopping = Instant::now();
    control.shut_down(Duration::from_secs(5)).await;
    tracing::info!(id = %&handle.id[..12], vm_teardown_ms = stopping.elapsed().as_millis() as u64, "container's VM is gone");
    engine.finish_run(&handle, end);
}

async fn forward_stdin(
    session: Arc<AgentSession>,
    mut input: tokio::sync::mpsc::UnboundedReceiver<StdinEvent>,
) {
    while let Some(event) = input.recv().await {
        let sent = match event {
            StdinEvent::Data(data) => session.send_stdin(MAIN_STREAM, &data).await,
            StdinEvent::Close => session.send(MAIN_STREAM, &HostMessage::CloseStdin).await,
        };
        if sent.is_err() {
            break;
        }
    }
}

/// The disk serial of a container's `index`th volume, which the agent looks for.
fn volume_serial(index: usize) -> String {
    format!("berth-vol-{index}")
}
