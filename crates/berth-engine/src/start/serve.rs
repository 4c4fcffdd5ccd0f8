//! The task that owns a running container's run: it copies the main process's output
//! to the log and to attached clients, hands exec output and answers to the agent's
//! requests to their owners, and ends the run when the process exits, the agent breaks
//! the protocol or the VM dies; then it powers the VM off and records the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent_proto::{GuestMessage, HostMessage, AGENT_STREAM};
use berth_vm::VmControl;
use tokio::sync::oneshot;

use super::finish::RunEnd;
use crate::agent::{describe, AgentEvent, AgentReader, AgentSession, MAIN_STREAM};
use crate::container::Transition;
use crate::error::error_chain;
use crate::process::output::{LogWriter, OutputChunk};
use crate::{lock, ContainerHandle, Engine, StdinEvent};

/// What the serve task takes over from the start (or from a reattach).
pub(super) struct ServedRun {
    pub reader: AgentReader,
    pub log: LogWriter,
    pub control: Arc<dyn VmControl>,
    /// Told when the process has started (its guest pid), or why it did not.
    pub started: oneshot::Sender<Result<i32, String>>,
    /// For a start: the VM's pid, recorded by the `Started` transition when the agent
    /// reports the process started. The serve task applies it, before anything that
    /// ends the run: a process that exits at once is still started first, then exited.
    pub starting_vm_pid: Option<u32>,
    /// The process had exited already (found so on a reattach).
    pub already_exited: Option<i32>,
}

/// Serves a running container until its run ends, then powers the VM off and records
/// the end.
pub(super) async fn serve(engine: Arc<Engine>, handle: Arc<ContainerHandle>, run: ServedRun) {
    let ServedRun {
        mut reader,
        log,
        control,
        started,
        starting_vm_pid,
        already_exited,
    } = run;
    let reattached = handle.runtime().is_some_and(|r| r.reattached);
    let mut served = Served {
        engine: engine.clone(),
        handle: handle.clone(),
        log,
        started: Some(started),
        starting_vm_pid,
        reattached,
    };
    let end = match already_exited {
        Some(code) => RunEnd::Exited(code, false),
        None => served.until_end(&mut reader, &*control).await,
    };
    if let RunEnd::Broken(reason) = &end {
        tracing::warn!(id = %handle.id, %reason, "container run ended abnormally");
        if let Some(sender) = served.started.take() {
            let _ = sender.send(Err(reason.clone()));
        }
    }
    // An auto-removed container's disk is deleted next, and its guest synced what went to
    // its shares before it reported the exit (protocol 7): its VM needs no shutdown, which
    // under emulation is a tenth of a second of the guest's power-off path. Disk volumes
    // outlive it, so their filesystems are unmounted by a shutdown as always.
    let discard = matches!(end, RunEnd::Exited(..)) && {
        let record = handle.snapshot();
        record.auto_remove() && engine.disk_volume_mounts(&record).next().is_none()
    };
    if let Some(runtime) = handle.runtime().filter(|_| !discard) {
        // Bounded: a guest that stopped reading must not hold its teardown up.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            runtime.session.send(AGENT_STREAM, &HostMessage::Shutdown),
        )
        .await;
    }
    engine.execs.container_stopped(&handle.id);
    let stopping = Instant::now();
    if discard {
        control.discard().await;
    } else {
        control.shut_down(Duration::from_secs(5)).await;
    }
    tracing::info!(id = %&handle.id[..12], vm_teardown_ms = stopping.elapsed().as_millis() as u64, discarded = discard, "container's VM is gone");
    engine.finish_run(&handle, end);
}

/// A run being served.
struct Served {
    engine: Arc<Engine>,
    handle: Arc<ContainerHandle>,
    log: LogWriter,
    started: Option<oneshot::Sender<Result<i32, String>>>,
    starting_vm_pid: Option<u32>,
    /// Taken over from an engine before this one: the agent may report on exec streams
    /// this engine never knew (they are ignored).
    reattached: bool,
}

impl Served {
    /// Reads the agent until the run ends.
    async fn until_end(&mut self, reader: &mut AgentReader, control: &dyn VmControl) -> RunEnd {
        loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                _ = control.wait() => {
                    return RunEnd::Broken("the container's VM stopped unexpectedly".into())
                }
            };
            let end = match event {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => {
                    // A closed channel usually means the VM itself is gone; say which.
                    let vm_gone = tokio::time::timeout(Duration::from_secs(1), control.wait())
                        .await
                        .is_ok();
                    Some(RunEnd::Broken(if vm_gone {
                        "the container's VM stopped unexpectedly".into()
                    } else {
                        "the container's agent closed its channel".into()
                    }))
                }
                Err(error) => {
                    self.engine
                        .metrics
                        .agent_error(crate::metrics::AGENT_PROTOCOL);
                    Some(RunEnd::Broken(error_chain(&error)))
                }
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// One event from the agent; `Some` when it ends the run.
    fn on_event(&mut self, event: AgentEvent) -> Option<RunEnd> {
        match event {
            AgentEvent::Output {
                stream: MAIN_STREAM,
                kind,
                data,
            } => {
                let chunk = OutputChunk::from_agent(kind, data);
                let log = &mut self.log;
                self.handle
                    .hub
                    .record_and_publish(&chunk, || log.write(&chunk));
                None
            }
            AgentEvent::Message {
                stream: MAIN_STREAM,
                message,
            } => self.on_main_message(message),
            AgentEvent::Message {
                stream: AGENT_STREAM,
                message,
            } => self.on_agent_message(message),
            AgentEvent::Output { stream, kind, data } => {
                match self.engine.execs.by_stream(&self.handle.id, stream) {
                    Some(exec) => {
                        exec.hub.publish(&OutputChunk::from_agent(kind, data));
                        None
                    }
                    None if self.reattached => None, // an exec the engine before this one ran
                    None => Some(RunEnd::Broken(format!(
                        "the agent sent output on unknown stream {stream}"
                    ))),
                }
            }
            AgentEvent::Message { stream, message } => self.on_exec_message(stream, message),
        }
    }

    /// A message about the container's own process.
    fn on_main_message(&mut self, message: GuestMessage) -> Option<RunEnd> {
        match message {
            GuestMessage::Started { pid } => {
                if let Some(vm_pid) = self.starting_vm_pid.take() {
                    let started = Transition::Started { pid: vm_pid };
                    if let Err(error) = self.engine.transition(&self.handle, started) {
                        tracing::warn!(id = %self.handle.id, error = %error_chain(&error), "recording the start failed");
                    }
                }
                if let Some(sender) = self.started.take() {
                    let _ = sender.send(Ok(pid));
                }
                None
            }
            GuestMessage::SpawnFailed { reason, message } => {
                if let Some(sender) = self.started.take() {
                    let _ = sender.send(Err(message.clone()));
                }
                Some(RunEnd::SpawnFailed(reason, message))
            }
            GuestMessage::Exited {
                code, oom_killed, ..
            } => Some(RunEnd::Exited(code, oom_killed)),
            GuestMessage::Error { message } => {
                self.engine
                    .metrics
                    .agent_error(crate::metrics::AGENT_REPORTED);
                tracing::warn!(id = %self.handle.id, %message, "agent reported an error");
                None
            }
            other => {
                self.engine
                    .metrics
                    .agent_error(crate::metrics::AGENT_PROTOCOL);
                Some(RunEnd::Broken(format!(
                    "the agent sent an unexpected {}",
                    describe(&other)
                )))
            }
        }
    }

    /// A message on the agent's own stream: the answer to the pending request.
    fn on_agent_message(&mut self, message: GuestMessage) -> Option<RunEnd> {
        let waiting = self
            .handle
            .runtime()
            .and_then(|runtime| lock(&runtime.agent_reply).take());
        match (waiting, message) {
            (Some(sender), message) => {
                let _ = sender.send(message);
                None
            }
            (None, GuestMessage::Error { message }) => {
                self.engine
                    .metrics
                    .agent_error(crate::metrics::AGENT_REPORTED);
                tracing::warn!(id = %self.handle.id, %message, "agent reported an error");
                None
            }
            (None, other) => {
                self.engine
                    .metrics
                    .agent_error(crate::metrics::AGENT_PROTOCOL);
                Some(RunEnd::Broken(format!(
                    "the agent sent an unrequested {}",
                    describe(&other)
                )))
            }
        }
    }

    /// A message about an exec's process.
    fn on_exec_message(&mut self, stream: u32, message: GuestMessage) -> Option<RunEnd> {
        let Some(exec) = self.engine.execs.by_stream(&self.handle.id, stream) else {
            if self.reattached {
                return None;
            }
            return Some(RunEnd::Broken(format!(
                "the agent sent {} on unknown stream {stream}",
                describe(&message)
            )));
        };
        match message {
            GuestMessage::Started { pid } => exec.on_started(pid),
            GuestMessage::SpawnFailed { reason, message } => exec.on_spawn_failed(reason, message),
            GuestMessage::Exited { code, .. } => {
                exec.finish(i64::from(code));
                if !exec.helper {
                    self.engine.events.container(
                        &self.handle.snapshot(),
                        "exec_die",
                        &[("execID", exec.id.clone()), ("exitCode", code.to_string())],
                    );
                }
            }
            GuestMessage::Error { message } => {
                tracing::warn!(id = %self.handle.id, stream, %message, "agent reported an error for an exec")
            }
            other => {
                return Some(RunEnd::Broken(format!(
                    "the agent sent an unexpected {} for an exec",
                    describe(&other)
                )))
            }
        }
        None
    }
}

/// Copies attached clients' input to the container's process.
pub(super) async fn forward_stdin(
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
