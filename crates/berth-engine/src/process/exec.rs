//! `docker exec`: more processes in a running container's VM, each on a stream id of its
//! own on the agent channel (the container's main process is stream 1).
//!
//! Exec instances live in memory, as Docker's do: they are gone when their container
//! stops or the daemon restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use berth_agent_proto::{HostMessage, ProcessSpec, SpawnFailure};
use bollard_stubs::models::ExecConfig;
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::AgentError;
use crate::container::names;
use crate::container::ContainerStatus;
use crate::error::EngineError;
use crate::process::output::OutputHub;
use crate::{lock, Attachment, Engine, StdinEvent, StdinSink};

/// One exec instance.
pub struct ExecHandle {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    pub stream: u32,
    /// Runs the agent's own helper (`docker cp`), not a program of the image; no events.
    pub(crate) helper: bool,
    pub hub: OutputHub,
    pub(crate) state: watch::Sender<ExecState>,
    started: Mutex<Option<oneshot::Sender<Result<i32, String>>>>,
    stdin: Mutex<Option<mpsc::UnboundedSender<StdinEvent>>>,
}

/// Where an exec instance is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub pid: i32,
    pub exit_code: Option<i64>,
}

impl ExecHandle {
    pub fn snapshot(&self) -> ExecState {
        self.state.borrow().clone()
    }

    /// Called by the container's serve task when the agent reports on this exec's stream.
    pub(crate) fn on_started(&self, pid: i32) {
        self.state.send_modify(|s| {
            s.running = true;
            s.pid = pid;
        });
        if let Some(sender) = lock(&self.started).take() {
            let _ = sender.send(Ok(pid));
        }
    }

    pub(crate) fn on_spawn_failed(&self, reason: SpawnFailure, message: String) {
        let code = match reason {
            SpawnFailure::NotFound => 127,
            SpawnFailure::NotExecutable => 126,
            SpawnFailure::Other => 126,
        };
        if let Some(sender) = lock(&self.started).take() {
            let _ = sender.send(Err(message));
        }
        self.finish(code);
    }

    /// The process ended (or its container did): closes the output and records the code.
    pub(crate) fn finish(&self, code: i64) {
        self.hub.close();
        lock(&self.stdin).take();
        self.state.send_modify(|s| {
            s.running = false;
            if s.exit_code.is_none() {
                s.exit_code = Some(code);
            }
        });
        if let Some(sender) = lock(&self.started).take() {
            let _ = sender.send(Err("the container stopped".into()));
        }
    }
}

/// Exec instances of the engine, by id and by (container, stream).
#[derive(Default)]
pub(crate) struct ExecTable {
    by_id: Mutex<HashMap<String, Arc<ExecHandle>>>,
    next_stream: AtomicU32,
}

impl ExecTable {
    pub fn by_stream(&self, container_id: &str, stream: u32) -> Option<Arc<ExecHandle>> {
        lock(&self.by_id)
            .values()
            .find(|e| e.container_id == container_id && e.stream == stream)
            .cloned()
    }

    /// Ends every exec of a container that stopped, and forgets them.
    pub fn container_stopped(&self, container_id: &str) {
        let mut table = lock(&self.by_id);
        for exec in table.values().filter(|e| e.container_id == container_id) {
            exec.finish(137);
        }
        table.retain(|_, e| e.container_id != container_id || e.snapshot().exit_code.is_none());
    }
}

impl Engine {
    /// `POST /containers/{id}/exec`: records an exec instance.
    /// Kills an exec's process (SIGKILL on its stream).
    pub(crate) async fn kill_exec(&self, id: &str) {
        let Ok(exec) = self.exec(id) else { return };
        if let Ok((_, runtime)) =
            self.running_handle(&exec.container_id, ContainerStatus::can_use_vm)
        {
            let _ = runtime
                .session
                .send(
                    exec.stream,
                    &HostMessage::Signal {
                        signal: libc::SIGKILL,
                    },
                )
                .await;
        }
    }

    /// Drops an exec instance the engine ran for itself (a health check).
    pub(crate) fn forget_exec(&self, id: &str) {
        lock(&self.execs.by_id).remove(id);
    }

    pub fn create_exec(&self, reference: &str, config: ExecConfig) -> Result<String, EngineError> {
        self.create_exec_as(reference, config, false)
    }

    pub(crate) fn create_exec_as(
        &self,
        reference: &str,
        config: ExecConfig,
        helper: bool,
    ) -> Result<String, EngineError> {
        let (handle, _) = self.running_handle(reference, ContainerStatus::can_exec)?;
        if config.cmd.as_ref().is_none_or(|cmd| cmd.is_empty()) {
            return Err(EngineError::InvalidArgument(
                "No exec command specified".into(),
            ));
        }
        // Stream ids: 0 is the agent, 1 the main process; execs take 2, 3, ...
        let stream = self.execs.next_stream.fetch_add(1, Ordering::Relaxed) + 2;
        let id = names::new_id();
        let command_line = config.cmd.clone().unwrap_or_default().join(" ");
        if !helper {
            self.events.container(
                &handle.snapshot(),
                &format!("exec_create: {command_line}"),
                &[("execID", id.clone())],
            );
        }
        let exec = Arc::new(ExecHandle {
            id: id.clone(),
            container_id: handle.id.clone(),
            config,
            stream,
            helper,
            hub: OutputHub::default(),
            state: watch::channel(ExecState::default()).0,
            started: Mutex::new(None),
            stdin: Mutex::new(None),
        });
        lock(&self.execs.by_id).insert(id.clone(), exec);
        Ok(id)
    }

    pub fn exec(&self, id: &str) -> Result<Arc<ExecHandle>, EngineError> {
        lock(&self.execs.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec(id.to_owned()))
    }

    /// `POST /exec/{id}/start`: starts the process and returns once it runs, with its
    /// output (and input, if the exec attaches stdin).
    pub async fn start_exec(&self, id: &str) -> Result<Attachment, EngineError> {
        let exec = self.exec(id)?;
        if exec.snapshot().started {
            return Err(EngineError::Conflict(format!(
                "exec {id} has already been started"
            )));
        }
        exec.state.send_modify(|s| s.started = true);
        let (container, runtime) =
            self.running_handle(&exec.container_id, ContainerStatus::can_exec)?;
        let record = container.snapshot();
        let config = &exec.config;
        // The terminal is the exec's own, decided at create (as Docker).
        let tty = config.tty.unwrap_or(false);
        let with_stdin = config.attach_stdin.unwrap_or(false);
        // Links' variables are the targets' of now, as dockerd computes them per exec.
        let mut env = crate::container::links::with_link_environment(
            &self.link_targets(&record)?,
            &record.name,
            record.config.env.clone().unwrap_or_default(),
        );
        for pair in config.env.iter().flatten() {
            let key = pair.split('=').next().unwrap_or(pair);
            env.retain(|existing| existing.split('=').next() != Some(key));
            env.push(pair.clone());
        }
        let mut spec = ProcessSpec {
            argv: config.cmd.clone().unwrap_or_default(),
            env,
            cwd: config
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .or_else(|| record.config.working_dir.clone().filter(|w| !w.is_empty()))
                .unwrap_or_else(|| "/".into()),
            user: config
                .user
                .clone()
                .filter(|u| !u.is_empty())
                .or_else(|| record.config.user.clone())
                .unwrap_or_default(),
            tty,
            stdin: with_stdin,
            tty_size: config
                .console_size
                .as_ref()
                .filter(|s| s.len() == 2)
                .map(|s| (s[0] as u16, s[1] as u16)),
            rlimits: crate::container::security::rlimits(&record.host_config)?,
            capabilities: if config.privileged == Some(true) {
                None
            } else {
                crate::container::security::capabilities(&record.host_config)?
            },
            no_new_privileges: crate::container::security::no_new_privileges(&record.host_config),
            agent_helper: exec.helper,
            extra_groups: record.host_config.group_add.clone().unwrap_or_default(),
            // An exec joins the container's namespace; it never makes one.
            own_pid_namespace: false,
            container: None,
        };
        if exec.helper {
            // Berth's own helper: as root, with every capability, in `/`.
            spec.user = String::new();
            spec.capabilities = None;
            spec.no_new_privileges = false;
            spec.cwd = "/".into();
        }
        let output = exec.hub.subscribe();
        let (started_sender, started) = oneshot::channel();
        *lock(&exec.started) = Some(started_sender);
        runtime
            .session
            .send(exec.stream, &HostMessage::Spawn(spec))
            .await?;
        match started.await {
            Ok(Ok(_pid)) if exec.helper => {}
            Ok(Ok(_pid)) => {
                let command_line = config.cmd.clone().unwrap_or_default().join(" ");
                self.events.container(
                    &container.snapshot(),
                    &format!("exec_start: {command_line}"),
                    &[("execID", exec.id.clone())],
                );
            }
            Ok(Err(message)) => return Err(EngineError::StartFailed(message)),
            Err(_) => return Err(AgentError::VmEnded("before the exec started").into()),
        }
        let stdin = if with_stdin {
            let (sender, mut receiver) = mpsc::unbounded_channel::<StdinEvent>();
            *lock(&exec.stdin) = Some(sender.clone());
            let session = runtime.session.clone();
            let stream = exec.stream;
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    let sent = match event {
                        StdinEvent::Data(data) => session.send_stdin(stream, &data).await,
                        StdinEvent::Close => session.send(stream, &HostMessage::CloseStdin).await,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
            Some(StdinSink { sender })
        } else {
            None
        };
        Ok(Attachment { output, stdin, tty })
    }

    /// `POST /exec/{id}/resize`.
    pub async fn resize_exec(&self, id: &str, rows: u16, cols: u16) -> Result<(), EngineError> {
        let exec = self.exec(id)?;
        let (_, runtime) = self.running_handle(&exec.container_id, ContainerStatus::can_use_vm)?;
        runtime
            .session
            .send(exec.stream, &HostMessage::Resize { rows, cols })
            .await?;
        Ok(())
    }
}
