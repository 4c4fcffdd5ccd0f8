//! One container in memory: its record, its VM while it has one, its output and the
//! state its waiters watch.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::state::{ContainerStatus, Refusal};
use crate::agent::AgentSession;
use crate::lock;
use crate::process::output::{OutputChunk, OutputHub};
use crate::records::ContainerRecord;

/// Standard input for a container's process, from attached clients.
#[derive(Debug)]
pub(crate) enum StdinEvent {
    Data(bytes::Bytes),
    Close,
}

/// Where attached clients' input goes.
#[derive(Clone)]
pub struct StdinSink {
    pub(crate) sender: mpsc::UnboundedSender<StdinEvent>,
}

impl StdinSink {
    pub fn send(&self, data: bytes::Bytes) {
        let _ = self.sender.send(StdinEvent::Data(data));
    }

    /// No more input: closes the process's standard input.
    pub fn close(&self) {
        let _ = self.sender.send(StdinEvent::Close);
    }
}

/// An attached client's view of a container.
pub struct Attachment {
    pub output: mpsc::UnboundedReceiver<OutputChunk>,
    pub stdin: Option<StdinSink>,
    pub tty: bool,
}

/// What waiters (`docker wait`, stop, kill, health checks) watch: a mirror of the
/// record's state that only [`crate::Engine::transition`] updates.
#[derive(Debug, Clone)]
pub(crate) struct LifecycleState {
    pub status: ContainerStatus,
    /// Runs ended so far in this daemon.
    pub exits: u64,
    pub removed: bool,
    pub exit_code: i64,
    pub error: Option<String>,
}

/// What a running container's VM offers the engine.
pub(crate) struct Runtime {
    pub session: Arc<AgentSession>,
    pub control: Arc<dyn berth_vm::VmControl>,
    /// Where the serve task delivers the agent's answer to the one pending request on
    /// the agent's own stream (see [`Engine::agent_request`]).
    pub agent_reply: Mutex<Option<tokio::sync::oneshot::Sender<berth_agent_proto::GuestMessage>>>,
    /// Held while a request on the agent's stream is pending.
    pub agent_request: tokio::sync::Mutex<()>,
    /// Taken over from an engine before this one: the agent may report on exec streams
    /// this engine never knew (they are ignored).
    pub reattached: bool,
    /// Whether the image's root filesystem disk is attached (for `docker diff`/`commit`);
    /// held while it is being attached.
    pub base_disk: tokio::sync::Mutex<bool>,
}

impl Runtime {
    pub fn new(session: Arc<AgentSession>, control: Arc<dyn berth_vm::VmControl>) -> Self {
        Self {
            session,
            control,
            agent_reply: Mutex::new(None),
            agent_request: tokio::sync::Mutex::new(()),
            reattached: false,
            base_disk: tokio::sync::Mutex::new(false),
        }
    }
}

/// One container in memory.
pub(crate) struct ContainerHandle {
    pub id: String,
    pub record: Mutex<ContainerRecord>,
    pub hub: OutputHub,
    /// Serialises start, stop and remove.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// The container's VM while one exists (from boot, before the process starts, to
    /// teardown): set and cleared only by the start pipeline and the serve task.
    runtime: Mutex<Option<Arc<Runtime>>>,
    pub state: watch::Sender<LifecycleState>,
    /// The delay before the last restart (restart policies double it).
    pub restart_delay: Mutex<Option<std::time::Duration>>,
    stdin: Mutex<(
        mpsc::UnboundedSender<StdinEvent>,
        Option<mpsc::UnboundedReceiver<StdinEvent>>,
    )>,
}

impl ContainerHandle {
    pub fn new(record: ContainerRecord) -> Self {
        let initial = LifecycleState {
            status: record.state.status,
            exits: 0,
            removed: false,
            exit_code: record.state.exit_code,
            error: (!record.state.error.is_empty()).then(|| record.state.error.clone()),
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            id: record.id.clone(),
            record: Mutex::new(record),
            hub: OutputHub::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            runtime: Mutex::new(None),
            state: watch::channel(initial).0,
            restart_delay: Mutex::new(None),
            stdin: Mutex::new((sender, Some(receiver))),
        }
    }

    pub fn snapshot(&self) -> ContainerRecord {
        lock(&self.record).clone()
    }

    /// The container's VM, if it has one.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        lock(&self.runtime).clone()
    }

    /// The container's status now.
    pub fn status(&self) -> ContainerStatus {
        lock(&self.record).state.status
    }

    /// The container's VM, if the status allows the verb `check` stands for; a status
    /// that allows it without a VM (a start under way) is "not running".
    pub fn runtime_for(
        &self,
        check: impl FnOnce(ContainerStatus) -> Result<(), Refusal>,
    ) -> Result<Arc<Runtime>, Refusal> {
        check(self.status())?;
        self.runtime().ok_or(Refusal::NotRunning)
    }

    /// A VM now serves the container (booted for a start, or taken over).
    pub fn attach_runtime(&self, runtime: Arc<Runtime>) {
        *lock(&self.runtime) = Some(runtime);
    }

    /// The container's VM is gone.
    pub fn detach_runtime(&self) -> Option<Arc<Runtime>> {
        lock(&self.runtime).take()
    }

    pub fn stdin_sink(&self) -> StdinSink {
        StdinSink {
            sender: lock(&self.stdin).0.clone(),
        }
    }

    /// Takes the input queue for a run; the next run gets a fresh one.
    pub fn take_stdin(&self) -> Option<mpsc::UnboundedReceiver<StdinEvent>> {
        lock(&self.stdin).1.take()
    }

    pub fn reset_stdin(&self) {
        let (sender, receiver) = mpsc::unbounded_channel();
        *lock(&self.stdin) = (sender, Some(receiver));
    }
}
