//! The task API (`containerd.task.v2.Task`) over sandbox VMs.
//!
//! A task is a sandbox ([`berth_engine::sandbox::Sandbox`]) made at `Create` (the VM is
//! restored and its root mounted then, as runc creates its container then), whose
//! processes are its init (exec id `""`, the sandbox's first stream) and its execs (a
//! stream each), each a [`TaskProcess`] with its phases. `Wait` returns once the
//! process's output has reached its FIFOs (or its reader stopped taking it). Events
//! come in containerd's order: a process's start before its exit, and the init's exit
//! after those of its execs. The pid containerd sees for every process is the VM's
//! process on the host (the guest's pids mean nothing there).
//!
//! Calls arrive on ttrpc's threads; each runs its async work on the shim's runtime.
//! Unknown ids answer `NOT_FOUND`, calls out of order `FAILED_PRECONDITION`, what this
//! runtime does not do (`Checkpoint`) `UNIMPLEMENTED`. `Update` sets the limits of the
//! task's container's cgroup in the guest (`resources`); `Stats` reports what the
//! task's processes in the guest use (`stats`). `Pause` of a VM's first task stops the
//! VM's vCPUs, of a further container of a pod freezes its cgroup alone; `Resume`
//! undoes either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_engine::sandbox::{ProcessEvent, Sandbox, SandboxNic, SandboxOptions, INIT_STREAM};
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim_protos::Task;

use crate::events::{Publisher, TaskEvent};
use crate::io::{OutputFifos, OutputWriter, StdinRelay, OUTPUT_STALL};
use crate::process::{Phase, StreamPaths, TaskProcess};
use crate::rootfs::{mount_rootfs, unmount, vm_run_dir};
use crate::{ShimConfig, ShimError};

type Answer<T> = ttrpc::Result<T>;

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn timestamp_of(time: SystemTime) -> Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut stamp = Timestamp::new();
    stamp.seconds = since.as_secs() as i64;
    stamp.nanos = since.subsec_nanos() as i32;
    stamp
}

pub(crate) fn timestamp_now() -> Timestamp {
    timestamp_of(SystemTime::now())
}

/// One task: its sandbox and processes.
struct TaskEntry {
    id: String,
    bundle: PathBuf,
    rootfs: Option<PathBuf>,
    /// The network namespace whose interface the VM took over (given back at delete).
    plumbed: Option<PathBuf>,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    vm_pid: u32,
    processes: Mutex<HashMap<String, Arc<TaskProcess>>>,
    /// The next stream of the VM (shared by a pod's tasks).
    next_stream: Arc<AtomicU32>,
    /// The VM's vCPUs are stopped (`Pause`): its running processes show as paused.
    paused: AtomicBool,
    /// A pod's container: its name in the pod sandbox's VM (which it does not own).
    container: Option<String>,
    /// The guest reported the init's exit: no exec starts any more.
    init_exited: AtomicBool,
}

impl TaskEntry {
    fn process(&self, exec_id: &str) -> Answer<Arc<TaskProcess>> {
        lock(&self.processes)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("process {exec_id} not found")))
    }

    fn sandbox(&self) -> Answer<Arc<Sandbox>> {
        lock(&self.sandbox)
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the task's VM is gone"))
    }

    /// Waits, at most `limit` in all, for the task's started execs to end: the init's
    /// exit is published after theirs, as containerd expects of a shim (a `Delete` that
    /// follows the init's exit then finds no exec running).
    async fn execs_end(&self, limit: Duration) {
        let live: Vec<Arc<TaskProcess>> = lock(&self.processes)
            .values()
            .filter(|process| !process.is_init() && process.phase().is_live())
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        for exec in live {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !exec.ends_within(left).await {
                tracing::warn!(
                    task = %self.id,
                    exec = %exec.exec_id,
                    "an exec outlived the task's init by {limit:?}: the init's exit is published before its"
                );
                return;
            }
        }
    }
}

/// How long the init's exit waits for its execs' exits (the guest ends them with it).
const EXECS_AT_INIT_EXIT: Duration = Duration::from_secs(10);

/// The task service of one shim process.
pub(crate) struct Service {
    runtime: tokio::runtime::Handle,
    config: Arc<ShimConfig>,
    namespace: String,
    events: Publisher,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
    shutdown: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Service {
    pub fn new(
        runtime: tokio::runtime::Handle,
        config: ShimConfig,
        namespace: String,
        events: Publisher,
        shutdown: std::sync::mpsc::Sender<()>,
    ) -> Self {
        Service {
            runtime,
            config: Arc::new(config),
            namespace,
            events,
            tasks: Mutex::default(),
            shutdown: Mutex::new(Some(shutdown)),
        }
    }

    fn task(&self, id: &str) -> Answer<Arc<TaskEntry>> {
        lock(&self.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn create_task(&self, request: &api::CreateTaskRequest) -> Result<Arc<TaskEntry>, ShimError> {
        let bundle = PathBuf::from(&request.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))?;
        let rootfs = bundle.join("rootfs");
        let mounted = match request.rootfs.as_slice() {
            [] => None,
            mounts => {
                for m in mounts {
                    mount_rootfs(m, &rootfs)?;
                }
                Some(rootfs.clone())
            }
        };
        let root = match (&mounted, spec.root()) {
            (Some(rootfs), _) => rootfs.clone(),
            (None, Some(root)) if root.path().is_absolute() => root.path().clone(),
            (None, Some(root)) => bundle.join(root.path()),
            (None, None) => rootfs.clone(),
        };
        let pod = spec.annotations().as_ref().and_then(crate::pod::sandbox_of);
        let made = match pod {
            Some(pod) => self.join_pod(request, &spec, &bundle, root, &pod),
            None => self.make_task(request, &spec, &bundle, root),
        };
        if made.is_err() {
            if let Some(rootfs) = &mounted {
                unmount(rootfs);
            }
        }
        let mut task = made?;
        task.rootfs = mounted;
        Ok(Arc::new(task))
    }

    fn make_task(
        &self,
        request: &api::CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
        bundle: &Path,
        root: PathBuf,
    ) -> Result<TaskEntry, ShimError> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| ShimError::Usage("config.json has no process".into()))?;
        let guest = crate::spec::guest_process(process, true, !request.stdin.is_empty())?;
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.namespaces().as_ref())
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
                    .and_then(|ns| ns.path().clone())
            });
        let hostname = spec
            .hostname()
            .clone()
            .unwrap_or_else(|| request.id.chars().take(12).collect());
        let interface = match &netns {
            Some(netns) => crate::network::plumb(netns)?,
            None => None,
        };
        let options = SandboxOptions {
            name: format!("{}-{}", self.namespace, request.id),
            run_dir: vm_run_dir(&self.config, &self.namespace, &request.id),
            templates: self.config.root.join("templates"),
            cache: self.config.cache.clone(),
            backend: self.config.backend.clone(),
            share_server: self.config.berth_binary.clone(),
            shape: self.config.shape,
            root,
            hostname,
            netns: netns.clone(),
            clone: self.config.clone,
            nic: interface.map(|i| SandboxNic {
                tap: i.tap,
                mac: i.mac,
                address: i.address,
                gateway: i.gateway,
            }),
            mounts: crate::spec::sandbox_mounts(
                spec.mounts().as_deref().unwrap_or_default(),
                bundle,
            ),
        };
        let plumbed = options.nic.is_some();
        let sandbox = match self.runtime.block_on(Sandbox::start(options)) {
            Ok(sandbox) => sandbox,
            Err(error) => {
                if let (true, Some(netns)) = (plumbed, &netns) {
                    crate::network::unplumb(netns);
                }
                return Err(error.into());
            }
        };
        // The spec's limits (`ctr run --memory-limit`, a CRI container's) hold for the
        // task's processes, as under runc: a cgroup in the guest before the init starts.
        let resources = crate::resources::of_spec(spec);
        if crate::resources::limit_anything(&resources) {
            if let Err(error) = self
                .runtime
                .block_on(sandbox.update_resources(None, resources))
            {
                self.runtime.block_on(sandbox.shut_down(Duration::ZERO));
                if let (true, Some(netns)) = (plumbed, &netns) {
                    crate::network::unplumb(netns);
                }
                return Err(error.into());
            }
        }
        let vm_pid = sandbox.vm_pid();
        let paths = StreamPaths::of(
            &request.stdin,
            &request.stdout,
            &request.stderr,
            request.terminal,
        );
        let init = TaskProcess::new("", INIT_STREAM, guest, paths);
        Ok(TaskEntry {
            id: request.id.clone(),
            bundle: bundle.to_path_buf(),
            rootfs: None,
            plumbed: netns.filter(|_| plumbed),
            sandbox: Mutex::new(Some(Arc::new(sandbox))),
            vm_pid,
            processes: Mutex::new(HashMap::from([(String::new(), init)])),
            next_stream: Arc::new(AtomicU32::new(INIT_STREAM + 1)),
            paused: AtomicBool::new(false),
            init_exited: AtomicBool::new(false),
            container: None,
        })
    }

    /// A pod's container: added to the VM of its pod's sandbox task.
    fn join_pod(
        &self,
        request: &api::CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
        bundle: &Path,
        root: PathBuf,
        pod: &str,
    ) -> Result<TaskEntry, ShimError> {
        let sandbox_task = lock(&self.tasks).get(pod).cloned().ok_or_else(|| {
            ShimError::Usage(format!(
                "the pod sandbox {pod} of container {} is not served by this shim",
                request.id
            ))
        })?;
        let sandbox = lock(&sandbox_task.sandbox)
            .clone()
            .ok_or_else(|| ShimError::Usage(format!("the pod sandbox {pod} has no VM any more")))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| ShimError::Usage("config.json has no process".into()))?;
        let name = crate::pod::guest_name(&request.id);
        // A PID namespace of its own unless its spec joins the pod's (a path to the
        // sandbox's: Kubernetes' shareProcessNamespace).
        let shares_pids = spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.namespaces().as_ref())
            .is_some_and(|namespaces| {
                namespaces.iter().any(|ns| {
                    ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && ns.path().is_some()
                })
            });
        let mut guest =
            crate::spec::guest_process(process, !shares_pids, !request.stdin.is_empty())?;
        guest.container = Some(name.clone());
        let read_only = spec
            .root()
            .as_ref()
            .is_some_and(|root| root.readonly() == Some(true));
        let mounts =
            crate::spec::sandbox_mounts(spec.mounts().as_deref().unwrap_or_default(), bundle);
        let resources = crate::resources::of_spec(spec);
        self.runtime
            .block_on(sandbox.add_container(&name, root, &mounts, read_only, resources))?;
        let paths = StreamPaths::of(
            &request.stdin,
            &request.stdout,
            &request.stderr,
            request.terminal,
        );
        // Streams are the VM's: the pod's tasks take them from one counter.
        let next_stream = sandbox_task.next_stream.clone();
        let init = TaskProcess::new(
            "",
            next_stream.fetch_add(1, Ordering::Relaxed),
            guest,
            paths,
        );
        Ok(TaskEntry {
            id: request.id.clone(),
            bundle: bundle.to_path_buf(),
            rootfs: None,
            plumbed: None,
            vm_pid: sandbox.vm_pid(),
            sandbox: Mutex::new(Some(sandbox)),
            processes: Mutex::new(HashMap::from([(String::new(), init)])),
            next_stream,
            paused: AtomicBool::new(false),
            init_exited: AtomicBool::new(false),
            container: Some(name),
        })
    }

    /// Starts `process` in `task`'s VM and publishes its start; returns once the guest
    /// has started it (or refused to: then it is stopped with 126 or 127, and the call
    /// fails).
    fn start_process(&self, task: &Arc<TaskEntry>, process: &Arc<TaskProcess>) -> Answer<()> {
        if !process.is_init() && task.init_exited.load(Ordering::SeqCst) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "the task's init has exited: no exec starts in it",
            ));
        }
        if !process.begin_start() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {} is not in the created state", process.exec_id),
            ));
        }
        let sandbox = match task.sandbox() {
            Ok(sandbox) => sandbox,
            Err(error) => {
                process.stop(137);
                return Err(error);
            }
        };
        let paths = process.paths.clone();
        let started = self.runtime.block_on(async {
            let mut output = match OutputFifos::open(&paths.stdout, &paths.stderr) {
                Ok(output) => output,
                Err(error) => {
                    process.stop(137);
                    return Err(status(
                        Code::INTERNAL,
                        format!("opening the output FIFOs: {error}"),
                    ));
                }
            };
            let mut events = match sandbox.spawn(process.stream, process.spec.clone()).await {
                Ok(events) => events,
                Err(error) => {
                    process.stop(137);
                    return Err(status(Code::INTERNAL, error.to_string()));
                }
            };
            match events.recv().await {
                Some(ProcessEvent::Started { .. }) => {}
                Some(ProcessEvent::SpawnFailed { code, message }) => {
                    output
                        .write(
                            berth_engine::OutputStream::Stderr,
                            format!("{message}\n").as_bytes(),
                        )
                        .await;
                    process.stop(code as u32);
                    return Err(status(Code::FAILED_PRECONDITION, message));
                }
                Some(ProcessEvent::Exited { code }) => {
                    process.stop(code as u32);
                    return Err(status(
                        Code::INTERNAL,
                        "the VM ended before the process started",
                    ));
                }
                other => {
                    process.stop(137);
                    return Err(status(Code::INTERNAL, format!("unexpected: {other:?}")));
                }
            }
            Ok((output, events))
        });
        let (output, mut events) = started?;
        process.started();
        // The start is published before anything of the process's end can be.
        if process.is_init() {
            let mut event = TaskStart::new();
            event.container_id = task.id.clone();
            event.pid = task.vm_pid;
            self.events.publish(TaskEvent::Start(event));
        } else {
            let mut event = TaskExecStarted::new();
            event.container_id = task.id.clone();
            event.exec_id = process.exec_id.clone();
            event.pid = task.vm_pid;
            self.events.publish(TaskEvent::ExecStarted(event));
        }
        if process.spec.stdin && !paths.stdin.is_empty() {
            let relay = {
                let _entered = self.runtime.enter();
                StdinRelay::start(&paths.stdin, sandbox.clone(), process.stream)
            };
            match relay {
                Ok(relay) => process.stdin.relay(relay),
                Err(error) => tracing::warn!("opening the stdin FIFO {}: {error}", paths.stdin),
            }
        }
        let (process, task) = (process.clone(), task.clone());
        let events_out = self.events.clone();
        self.runtime.spawn(async move {
            let output = OutputWriter::start(output);
            let mut code = 137;
            while let Some(event) = events.recv().await {
                match event {
                    ProcessEvent::Output(chunk) => output.write(chunk),
                    ProcessEvent::Exited { code: exited } => {
                        code = exited;
                        break;
                    }
                    _ => {}
                }
            }
            if process.is_init() {
                task.init_exited.store(true, Ordering::SeqCst);
            }
            // The output is in the FIFOs before anyone hears of the exit.
            output.finish(OUTPUT_STALL).await;
            process.stdin.close();
            if process.is_init() {
                task.execs_end(EXECS_AT_INIT_EXIT).await;
            }
            process.stop(code as u32);
            let mut exit = TaskExit::new();
            exit.container_id = task.id.clone();
            exit.id = match process.is_init() {
                true => task.id.clone(),
                false => process.exec_id.clone(),
            };
            exit.pid = task.vm_pid;
            exit.exit_status = code as u32;
            exit.exited_at = Some(timestamp_now()).into();
            events_out.publish(TaskEvent::Exit(exit));
        });
        Ok(())
    }

    fn state_of(&self, task: &TaskEntry, process: &TaskProcess) -> api::StateResponse {
        let mut state = api::StateResponse::new();
        state.id = task.id.clone();
        state.exec_id = process.exec_id.clone();
        state.bundle = task.bundle.display().to_string();
        state.pid = task.vm_pid;
        state.stdin = process.paths.stdin.clone();
        state.stdout = process.paths.stdout.clone();
        state.stderr = process.paths.stderr.clone();
        state.terminal = process.paths.terminal;
        match process.phase() {
            Phase::Created | Phase::Starting => state.status = Status::CREATED.into(),
            Phase::Running if task.paused.load(Ordering::Relaxed) => {
                state.status = Status::PAUSED.into()
            }
            Phase::Running => state.status = Status::RUNNING.into(),
            Phase::Stopped { code, at } => {
                state.status = Status::STOPPED.into();
                state.exit_status = code;
                state.exited_at = Some(timestamp_of(at)).into();
            }
        }
        state
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        request: api::CreateTaskRequest,
    ) -> Answer<api::CreateTaskResponse> {
        if lock(&self.tasks).contains_key(&request.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", request.id),
            ));
        }
        let task = self
            .create_task(&request)
            .map_err(|error| status(Code::INTERNAL, berth_engine::error_chain(&error)))?;
        lock(&self.tasks).insert(request.id.clone(), task.clone());
        let mut event = TaskCreate::new();
        event.container_id = request.id.clone();
        event.bundle = request.bundle.clone();
        event.pid = task.vm_pid;
        self.events.publish(TaskEvent::Create(event));
        let mut response = api::CreateTaskResponse::new();
        response.pid = task.vm_pid;
        Ok(response)
    }

    fn start(&self, _ctx: &TtrpcContext, request: api::StartRequest) -> Answer<api::StartResponse> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        self.start_process(&task, &process)?;
        let mut response = api::StartResponse::new();
        response.pid = task.vm_pid;
        Ok(response)
    }

    fn state(&self, _ctx: &TtrpcContext, request: api::StateRequest) -> Answer<api::StateResponse> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        Ok(self.state_of(&task, &process))
    }

    fn wait(&self, _ctx: &TtrpcContext, request: api::WaitRequest) -> Answer<api::WaitResponse> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        let (code, at) = self.runtime.block_on(process.stopped());
        let mut response = api::WaitResponse::new();
        response.exit_status = code;
        response.exited_at = Some(timestamp_of(at)).into();
        Ok(response)
    }

    fn kill(&self, _ctx: &TtrpcContext, request: api::KillRequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        let signal = i32::try_from(request.signal)
            .ok()
            .filter(|signal| (1..=64).contains(signal))
            .ok_or_else(|| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("invalid signal {}", request.signal),
                )
            })?;
        // Never started: it ends here, as a process killed before it ran.
        if process.stop_unstarted(128 + signal as u32) {
            return Ok(api::Empty::new());
        }
        // A start in progress is waited out: the signal then reaches what it started.
        match self.runtime.block_on(process.settled()) {
            Phase::Running => {
                let sandbox = task.sandbox()?;
                self.runtime
                    .block_on(sandbox.signal(process.stream, signal))
                    .map_err(|error| status(Code::INTERNAL, error.to_string()))?;
                Ok(api::Empty::new())
            }
            Phase::Stopped { .. } => Err(status(Code::NOT_FOUND, "process already finished")),
            Phase::Created | Phase::Starting => Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {} is being started", process.exec_id),
            )),
        }
    }

    fn exec(&self, _ctx: &TtrpcContext, request: api::ExecProcessRequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        if lock(&task.processes).contains_key(&request.exec_id) || request.exec_id.is_empty() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {:?} already exists", request.exec_id),
            ));
        }
        // As runc: a process started among frozen ones would freeze before it runs.
        if task.paused.load(Ordering::Relaxed) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "cannot exec in a paused container",
            ));
        }
        let spec = request
            .spec
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "the exec has no process spec"))?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&spec.value).map_err(|error| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("the exec's process spec: {error}"),
                )
            })?;
        let mut guest = crate::spec::guest_process(&process, false, !request.stdin.is_empty())
            .map_err(|error| status(Code::INVALID_ARGUMENT, error.to_string()))?;
        guest.container = task.container.clone();
        let stream = task.next_stream.fetch_add(1, Ordering::Relaxed);
        let paths = StreamPaths::of(
            &request.stdin,
            &request.stdout,
            &request.stderr,
            request.terminal,
        );
        lock(&task.processes).insert(
            request.exec_id.clone(),
            TaskProcess::new(&request.exec_id, stream, guest, paths),
        );
        let mut event = TaskExecAdded::new();
        event.container_id = task.id.clone();
        event.exec_id = request.exec_id.clone();
        self.events.publish(TaskEvent::ExecAdded(event));
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        request: api::ResizePtyRequest,
    ) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        if process.phase() == Phase::Running {
            let (rows, cols) = (
                request.height.min(u16::MAX as u32) as u16,
                request.width.min(u16::MAX as u32) as u16,
            );
            self.runtime
                .block_on(task.sandbox()?.resize(process.stream, rows, cols))
                .map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, request: api::CloseIORequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        if request.stdin {
            process.stdin.close();
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        request: api::DeleteRequest,
    ) -> Answer<api::DeleteResponse> {
        let task = self.task(&request.id)?;
        let process = task.process(&request.exec_id)?;
        let (code, at) = match process.phase() {
            Phase::Stopped { code, at } => (code, at),
            Phase::Created => (0, SystemTime::now()),
            Phase::Starting | Phase::Running => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {} is running: kill it first", request.exec_id),
                ))
            }
        };
        if !request.exec_id.is_empty() {
            lock(&task.processes).remove(&request.exec_id);
        } else {
            let running = lock(&task.processes).values().any(|p| p.phase().is_live());
            if running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    "the task still has processes running",
                ));
            }
            // The lock is not held while the VM stops (Stats and Kill take it).
            let sandbox = lock(&task.sandbox).take();
            if let Some(sandbox) = sandbox {
                match &task.container {
                    // A pod's container leaves its pod's VM running.
                    Some(name) => {
                        if let Err(error) = self.runtime.block_on(sandbox.remove_container(name)) {
                            tracing::warn!("removing container {name} from its pod's VM: {error}");
                        }
                    }
                    None => self
                        .runtime
                        .block_on(sandbox.shut_down(Duration::from_secs(5))),
                }
            }
            if let Some(rootfs) = &task.rootfs {
                unmount(rootfs);
            }
            if let Some(netns) = &task.plumbed {
                crate::network::unplumb(netns);
            }
            lock(&self.tasks).remove(&request.id);
            let mut event = TaskDelete::new();
            event.container_id = task.id.clone();
            event.id = task.id.clone();
            event.pid = task.vm_pid;
            event.exit_status = code;
            event.exited_at = Some(timestamp_of(at)).into();
            self.events.publish(TaskEvent::Delete(event));
        }
        let mut response = api::DeleteResponse::new();
        response.pid = task.vm_pid;
        response.exit_status = code;
        response.exited_at = Some(timestamp_of(at)).into();
        Ok(response)
    }

    fn pause(&self, _ctx: &TtrpcContext, request: api::PauseRequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        if task.process("")?.phase() != Phase::Running {
            return Err(status(Code::FAILED_PRECONDITION, "the task is not running"));
        }
        let sandbox = task.sandbox()?;
        let paused = match &task.container {
            Some(name) => self.runtime.block_on(sandbox.freeze_container(name, true)),
            None => self.runtime.block_on(sandbox.pause()),
        };
        paused.map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        task.paused.store(true, Ordering::Relaxed);
        let mut event = TaskPaused::new();
        event.container_id = task.id.clone();
        self.events.publish(TaskEvent::Paused(event));
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, request: api::ResumeRequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        if !task.paused.load(Ordering::Relaxed) {
            return Err(status(Code::FAILED_PRECONDITION, "the task is not paused"));
        }
        let sandbox = task.sandbox()?;
        let resumed = match &task.container {
            Some(name) => self.runtime.block_on(sandbox.freeze_container(name, false)),
            None => self.runtime.block_on(sandbox.resume()),
        };
        resumed.map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        task.paused.store(false, Ordering::Relaxed);
        let mut event = TaskResumed::new();
        event.container_id = task.id.clone();
        self.events.publish(TaskEvent::Resumed(event));
        Ok(api::Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, request: api::PidsRequest) -> Answer<api::PidsResponse> {
        let task = self.task(&request.id)?;
        let mut info = api::ProcessInfo::new();
        info.pid = task.vm_pid;
        let mut response = api::PidsResponse::new();
        response.processes.push(info);
        Ok(response)
    }

    fn update(&self, _ctx: &TtrpcContext, request: api::UpdateTaskRequest) -> Answer<api::Empty> {
        let task = self.task(&request.id)?;
        if task.process("")?.phase() != Phase::Running {
            return Err(status(Code::FAILED_PRECONDITION, "the task is not running"));
        }
        let Some(any) = request.resources.as_ref() else {
            return Ok(api::Empty::new());
        };
        let resources = crate::resources::of_update(&any.type_url, &any.value)
            .map_err(|error| status(Code::INVALID_ARGUMENT, error.to_string()))?;
        self.runtime
            .block_on(
                task.sandbox()?
                    .update_resources(task.container.as_deref(), resources),
            )
            .map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        Ok(api::Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, request: api::StatsRequest) -> Answer<api::StatsResponse> {
        let task = self.task(&request.id)?;
        let usage = self
            .runtime
            .block_on(task.sandbox()?.usage(task.container.as_deref()))
            .map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        let metrics = crate::stats::metrics(&usage);
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = crate::stats::METRICS_TYPE.to_owned();
        any.value = metrics
            .write_to_bytes()
            .map_err(|error| status(Code::INTERNAL, error.to_string()))?;
        let mut response = api::StatsResponse::new();
        response.stats = Some(any).into();
        Ok(response)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        request: api::ConnectRequest,
    ) -> Answer<api::ConnectResponse> {
        let mut response = api::ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = self.task(&request.id).map(|t| t.vm_pid).unwrap_or(0);
        response.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(response)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _request: api::ShutdownRequest) -> Answer<api::Empty> {
        if lock(&self.tasks).is_empty() {
            if let Some(shutdown) = lock(&self.shutdown).take() {
                let _ = shutdown.send(());
            }
        }
        Ok(api::Empty::new())
    }
}
