//! Waiting on, signalling, stopping, removing, attaching to and reading the logs of
//! containers.

use std::sync::Arc;
use std::time::Duration;

use berth_agent_proto::HostMessage;

use crate::agent::MAIN_STREAM;
use crate::container::state::{RemoveAction, StopAction};
use crate::container::{ContainerStatus, Refusal, Transition};
use crate::error::EngineError;
use crate::process::output::{read_log, LogEntry, LogFilter, OutputChunk};
use crate::{lock, Attachment, ContainerHandle, Engine};

/// `docker wait --condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(value: &str) -> Result<Self, EngineError> {
        match value {
            "" | "not-running" => Ok(Self::NotRunning),
            "next-exit" => Ok(Self::NextExit),
            "removed" => Ok(Self::Removed),
            other => Err(EngineError::InvalidArgument(format!(
                "invalid condition: \"{other}\""
            ))),
        }
    }
}

/// What `docker logs` reads: the log so far, and with `follow` a live feed after it.
pub struct ContainerLogs {
    pub entries: Vec<LogEntry>,
    /// Output from now until the process exits (only when following a running container).
    pub live: Option<tokio::sync::mpsc::UnboundedReceiver<OutputChunk>>,
    /// The container has a terminal: one raw stream, no multiplexing.
    pub tty: bool,
}

/// What an attach asks for: Docker's `stdin`, `logs` and `stream` parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Input from the client goes to the process (if it has `OpenStdin`).
    pub stdin: bool,
    /// The log so far comes first.
    pub logs: bool,
    /// Output from now on, until the run (the current or the next one) ends.
    pub stream: bool,
}

/// What a wait returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOutcome {
    pub status_code: i64,
    pub error: Option<String>,
}

/// A signal by name (`SIGTERM`, `TERM`) or number.
pub fn parse_signal(value: &str) -> Result<i32, EngineError> {
    if let Ok(number) = value.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
    }
    let name = value.trim_start_matches("SIG").to_ascii_uppercase();
    let number = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            return Err(EngineError::InvalidArgument(format!(
                "Invalid signal: {value}"
            )))
        }
    };
    Ok(number)
}

impl Engine {
    /// `POST /containers/{id}/wait`: checks the container now, and returns a future
    /// that resolves when the condition is met (the API sends its headers in between,
    /// as Docker does, so clients know the wait is in place before they start).
    pub fn wait_container(
        &self,
        reference: &str,
        condition: WaitCondition,
    ) -> Result<impl std::future::Future<Output = WaitOutcome> + Send + 'static, EngineError> {
        let handle = self.lookup(reference)?;
        let mut state = handle.state.subscribe();
        let initial = state.borrow().clone();
        drop(handle);
        Ok(async move {
            let outcome = |s: &crate::LifecycleState| WaitOutcome {
                status_code: s.exit_code,
                error: s.error.clone(),
            };
            if condition == WaitCondition::NotRunning && !initial.status.has_vm() {
                return outcome(&initial);
            }
            loop {
                if state.changed().await.is_err() {
                    // The container is gone.
                    return outcome(&state.borrow());
                }
                let now = state.borrow().clone();
                let done = match condition {
                    WaitCondition::NotRunning | WaitCondition::NextExit => {
                        now.exits > initial.exits || now.removed
                    }
                    WaitCondition::Removed => now.removed,
                };
                if done {
                    return outcome(&now);
                }
            }
        })
    }

    /// The container and its VM, if its state allows the verb that `check` stands for
    /// (one of [`ContainerStatus`]'s `can_*`), or Docker's refusal.
    pub(crate) fn running_handle(
        &self,
        reference: &str,
        check: fn(ContainerStatus) -> Result<(), Refusal>,
    ) -> Result<(Arc<ContainerHandle>, Arc<crate::Runtime>), EngineError> {
        let handle = self.lookup(reference)?;
        let runtime = handle
            .runtime_for(check)
            .map_err(EngineError::refused(&handle.id))?;
        Ok((handle, runtime))
    }

    /// `POST /containers/{id}/pause`: the container's VM stops running (its vCPUs halt).
    pub async fn pause_container(&self, reference: &str) -> Result<(), EngineError> {
        let (handle, runtime) = self.running_handle(reference, ContainerStatus::can_pause)?;
        let _guard = handle.lifecycle.lock().await;
        handle
            .status()
            .can_pause()
            .map_err(EngineError::refused(&handle.id))?;
        runtime.control.pause().await?;
        self.transition(&handle, Transition::Paused)
    }

    /// `POST /containers/{id}/unpause`.
    pub async fn unpause_container(&self, reference: &str) -> Result<(), EngineError> {
        let (handle, runtime) = self.running_handle(reference, ContainerStatus::can_unpause)?;
        let _guard = handle.lifecycle.lock().await;
        handle
            .status()
            .can_unpause()
            .map_err(EngineError::refused(&handle.id))?;
        runtime.control.resume().await?;
        self.transition(&handle, Transition::Unpaused { announced: true })
    }

    /// Runs a paused container's VM again, so that it can act on a signal.
    async fn resume_if_paused(
        &self,
        handle: &ContainerHandle,
        runtime: &crate::Runtime,
    ) -> Result<(), EngineError> {
        if handle.status() == ContainerStatus::Paused {
            runtime.control.resume().await?;
            self.transition(handle, Transition::Unpaused { announced: false })?;
        }
        Ok(())
    }

    /// `POST /containers/{id}/kill`.
    pub async fn kill_container(&self, reference: &str, signal: &str) -> Result<(), EngineError> {
        let signal = parse_signal(if signal.is_empty() { "SIGKILL" } else { signal })?;
        let handle = self.lookup(reference)?;
        let action = handle
            .status()
            .can_kill()
            .map_err(EngineError::refused(&handle.id))?;
        if action == StopAction::CancelRestart {
            // Between runs, as Docker: no process to signal; the pending restart is off.
            lock(&handle.record).manually_stopped = true;
            self.transition(&handle, Transition::RestartEnded)?;
            let attributes = [("signal", signal.to_string())];
            self.events
                .container(&handle.snapshot(), "kill", &attributes);
            return Ok(());
        }
        let runtime = handle
            .runtime_for(|status| status.can_kill().map(drop))
            .map_err(EngineError::refused(&handle.id))?;
        lock(&handle.record).manually_stopped = true;
        self.events.container(
            &handle.snapshot(),
            "kill",
            &[("signal", signal.to_string())],
        );
        let mut state = handle.state.subscribe();
        let exits = state.borrow().exits;
        self.resume_if_paused(&handle, &runtime).await?;
        runtime
            .session
            .send(MAIN_STREAM, &HostMessage::Signal { signal })
            .await?;
        if signal == libc::SIGKILL {
            // As Docker, a SIGKILL returns once the run has ended (and is recorded); if
            // the guest does not act on it, the VM goes.
            let exited =
                tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.exits > exits))
                    .await
                    .is_ok();
            if !exited {
                runtime.control.kill().await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    state.wait_for(|s| s.exits > exits),
                )
                .await;
            }
        }
        Ok(())
    }

    /// `POST /containers/{id}/stop`: the stop signal, then SIGKILL after `timeout`
    /// seconds, then the VM is killed if the process still runs. Returns false if the
    /// container was not running (Docker answers 304).
    pub async fn stop_container(
        &self,
        reference: &str,
        timeout: Option<i64>,
    ) -> Result<bool, EngineError> {
        let handle = self.lookup(reference)?;
        // The daemon stopping its containers at shutdown is not a user's stop.
        if !self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            lock(&handle.record).manually_stopped = true;
        }
        match handle.status().can_stop() {
            Err(_) => return Ok(false),
            Ok(StopAction::CancelRestart) => {
                self.transition(&handle, Transition::RestartEnded)?;
                return Ok(true);
            }
            Ok(StopAction::EndRun) => {}
        }
        let Some(runtime) = handle.runtime() else {
            return Ok(false);
        };
        self.resume_if_paused(&handle, &runtime).await?;
        let record = handle.snapshot();
        let signal = parse_signal(record.config.stop_signal.as_deref().unwrap_or("SIGTERM"))?;
        let timeout = timeout.or(record.config.stop_timeout).unwrap_or(10).max(0) as u64;
        let mut state = handle.state.subscribe();
        let exits = state.borrow().exits;
        let exited = |limit: u64| {
            let mut state = state.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(limit),
                    state.wait_for(|s| s.exits > exits),
                )
                .await
                .is_ok()
            }
        };
        if timeout > 0 {
            let _ = runtime
                .session
                .send(MAIN_STREAM, &HostMessage::Signal { signal })
                .await;
            if exited(timeout).await {
                self.events.container(&handle.snapshot(), "stop", &[]);
                return Ok(true);
            }
        }
        let _ = runtime
            .session
            .send(
                MAIN_STREAM,
                &HostMessage::Signal {
                    signal: libc::SIGKILL,
                },
            )
            .await;
        if !exited(5).await {
            runtime.control.kill().await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.exits > exits))
                    .await
                    .is_ok();
        }
        self.events.container(&handle.snapshot(), "stop", &[]);
        Ok(true)
    }

    /// `DELETE /containers/{id}`.
    pub async fn remove_container(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        self.remove_container_and_volumes(reference, force, false)
            .await
    }

    /// `DELETE /containers/{id}?v=1` (and `--rm`): also removes the container's anonymous
    /// volumes when `volumes` is set.
    pub async fn remove_container_and_volumes(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let handle = self.lookup(reference)?;
        // Docker names the container by its name in these refusals.
        let shown = format!("/{}", handle.snapshot().name);
        let action = handle
            .status()
            .can_remove(force)
            .map_err(EngineError::refused(&shown))?;
        if handle.runtime().is_some() && !force {
            // A start under way: its VM exists already.
            return Err(EngineError::refused(&shown)(Refusal::RunningRemove));
        }
        if action == RemoveAction::StopFirst || handle.runtime().is_some() {
            self.stop_container(&handle.id, Some(0)).await?;
        }
        let _guard = handle.lifecycle.lock().await;
        if lock(&self.containers).get(&handle.id).is_none() {
            return Ok(()); // removed meanwhile (auto-remove)
        }
        // A start that held the lifecycle may have finished meanwhile: its run ends too.
        if handle.runtime().is_some() || handle.status().has_vm() {
            if !force {
                return Err(EngineError::refused(&shown)(Refusal::RunningRemove));
            }
            self.stop_container(&handle.id, Some(0)).await?;
        }
        self.transition(&handle, Transition::Removing)?;
        self.remove_vm_dirs(&handle.snapshot());
        let dir = self.container_dir(&handle.id);
        let deleted = std::fs::remove_dir_all(&dir)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(EngineError::io(&dir))
            .and_then(|()| Ok(self.store.delete(&handle.id)?));
        if let Err(error) = deleted {
            let failed = Transition::RemovalFailed {
                error: crate::error_chain(&error),
            };
            self.transition(&handle, failed)?;
            return Err(error);
        }
        lock(&self.containers).remove(&handle.id);
        self.transition(&handle, Transition::Removed)?;
        if volumes {
            let mounts = handle.snapshot().mounts;
            self.remove_anonymous_volumes(&mounts).await;
        }
        Ok(())
    }

    /// `POST /containers/{id}/attach`: the log so far (`logs`), output from now until the
    /// current or next run ends (`stream`), and input if asked for. A container that is
    /// not running yet, or any more, can be attached to: the stream waits for its next
    /// run (`docker start -a`).
    pub fn attach_container(
        &self,
        reference: &str,
        options: AttachOptions,
    ) -> Result<Attachment, EngineError> {
        let handle = self.lookup(reference)?;
        let record = handle.snapshot();
        record
            .state
            .status
            .can_attach()
            .map_err(EngineError::refused(&handle.id))?;
        let output = if options.logs {
            self.replay_then_follow(&handle, options.stream)
        } else if options.stream {
            handle.hub.subscribe()
        } else {
            // Neither the log nor the stream: nothing to send.
            tokio::sync::mpsc::unbounded_channel().1
        };
        let stdin = (options.stdin && record.config.open_stdin.unwrap_or(false))
            .then(|| handle.stdin_sink());
        Ok(Attachment {
            output,
            stdin,
            tty: record.tty(),
        })
    }

    /// The container's log, then (with `follow`) its output from now on, in one stream:
    /// each chunk once, read and subscribed as one step.
    fn replay_then_follow(
        &self,
        handle: &ContainerHandle,
        follow: bool,
    ) -> tokio::sync::mpsc::UnboundedReceiver<OutputChunk> {
        let path = self.container_dir(&handle.id).join("container.log");
        let everything = LogFilter {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let (entries, live) = if follow {
            let (entries, live) = handle.hub.subscribe_after(|| read_log(&path, &everything));
            (entries, Some(live))
        } else {
            (read_log(&path, &everything), None)
        };
        let (sender, output) = tokio::sync::mpsc::unbounded_channel();
        for entry in entries {
            let chunk = OutputChunk {
                stream: entry.stream,
                data: entry.data.into(),
            };
            let _ = sender.send(chunk);
        }
        if let Some(mut live) = live {
            tokio::spawn(async move {
                while let Some(chunk) = live.recv().await {
                    if sender.send(chunk).is_err() {
                        break;
                    }
                }
            });
        }
        output
    }

    /// Whether closing an attached client's input closes the process's (`StdinOnce`).
    pub fn stdin_once(&self, reference: &str) -> bool {
        self.lookup(reference)
            .map(|h| h.snapshot().config.stdin_once.unwrap_or(false))
            .unwrap_or(false)
    }

    /// `GET /containers/{id}/logs`: what is logged, and with `follow` a live feed after it.
    pub fn container_logs(
        &self,
        reference: &str,
        filter: &LogFilter,
        follow: bool,
    ) -> Result<ContainerLogs, EngineError> {
        let handle = self.lookup(reference)?;
        let path = self.container_dir(&handle.id).join("container.log");
        let (entries, live) = if follow && handle.runtime().is_some() {
            // Read and subscribe as one step: nothing is lost or shown twice in between.
            let (entries, live) = handle.hub.subscribe_after(|| read_log(&path, filter));
            (entries, Some(live))
        } else {
            (read_log(&path, filter), None)
        };
        Ok(ContainerLogs {
            entries,
            live,
            tty: handle.snapshot().tty(),
        })
    }

    /// `POST /containers/{id}/resize`.
    pub async fn resize_container(
        &self,
        reference: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), EngineError> {
        let (_, runtime) = self.running_handle(reference, ContainerStatus::can_use_vm)?;
        runtime
            .session
            .send(MAIN_STREAM, &HostMessage::Resize { rows, cols })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("kill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn wait_conditions() {
        assert_eq!(WaitCondition::parse("").unwrap(), WaitCondition::NotRunning);
        assert_eq!(
            WaitCondition::parse("removed").unwrap(),
            WaitCondition::Removed
        );
        assert!(WaitCondition::parse("bogus").is_err());
    }
}
