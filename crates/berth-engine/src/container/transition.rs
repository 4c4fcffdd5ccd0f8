//! The one function that changes a container's state: it checks the change against the
//! lifecycle table ([`ContainerStatus::after`]), applies it to the record, persists the
//! record, emits the change's events and wakes the container's waiters, in that order.

use super::handle::ContainerHandle;
use super::state::Transition;
use crate::error::EngineError;
use crate::{lock, now_rfc3339, Engine};

impl Engine {
    /// Applies `transition` to the container. An illegal transition changes nothing and
    /// is an error (a bug in the engine, never the user's). A record that cannot be
    /// persisted is reported, but the change still reaches events and waiters: the
    /// container's state in memory is what happened.
    pub(crate) fn transition(
        &self,
        handle: &ContainerHandle,
        transition: Transition,
    ) -> Result<(), EngineError> {
        let record = {
            let mut record = lock(&handle.record);
            let next = record.state.status.after(&transition)?;
            record.state.status = next;
            let state = &mut record.state;
            match &transition {
                Transition::Started { pid } => {
                    state.pid = *pid;
                    state.started_at = now_rfc3339();
                    state.error.clear();
                    state.exit_code = 0;
                    state.oom_killed = false;
                }
                Transition::StartFailed { error } => {
                    state.error = error.clone();
                    state.exit_code = 128;
                }
                Transition::Exited {
                    code,
                    error,
                    oom_killed,
                } => {
                    state.exit_code = *code;
                    state.error = error.clone();
                    state.finished_at = now_rfc3339();
                    state.pid = 0;
                    state.oom_killed = *oom_killed;
                }
                Transition::RunFailed { code, error } => {
                    state.exit_code = *code;
                    state.error = error.clone();
                    state.finished_at = now_rfc3339();
                    state.pid = 0;
                    state.oom_killed = false;
                }
                Transition::RemovalFailed { error } => state.error = error.clone(),
                Transition::Paused
                | Transition::Unpaused { .. }
                | Transition::RestartScheduled
                | Transition::RestartEnded
                | Transition::Reattached
                | Transition::Removing
                | Transition::Removed => {}
            }
            record.clone()
        };
        let persisted = match transition {
            // The record is deleted (or about to be): nothing to keep.
            Transition::Removing | Transition::Removed => Ok(()),
            _ => self.store.put(&record),
        };
        match &transition {
            Transition::Started { .. } => self.events.container(&record, "start", &[]),
            Transition::Paused => self.events.container(&record, "pause", &[]),
            Transition::Unpaused { announced: true } => {
                self.events.container(&record, "unpause", &[])
            }
            Transition::Exited {
                code, oom_killed, ..
            } => {
                if *oom_killed {
                    self.events.container(&record, "oom", &[]);
                }
                self.events
                    .container(&record, "die", &[("exitCode", code.to_string())]);
            }
            Transition::RunFailed { code, .. } => {
                self.events
                    .container(&record, "die", &[("exitCode", code.to_string())]);
            }
            Transition::Removed => self.events.container(&record, "destroy", &[]),
            _ => {}
        }
        handle.state.send_modify(|watched| {
            watched.status = record.state.status;
            match &transition {
                Transition::Exited { code, error, .. } | Transition::RunFailed { code, error } => {
                    watched.exits += 1;
                    watched.exit_code = *code;
                    watched.error = (!error.is_empty()).then(|| error.clone());
                }
                Transition::Removed => watched.removed = true,
                _ => {}
            }
        });
        Ok(persisted?)
    }
}
