//! The end of a run: its networks given back, its exit recorded (the `Exited` or
//! `RunFailed` transition), then auto-removal or the restart policy.

use std::sync::Arc;

use berth_agent_proto::SpawnFailure;

use crate::container::Transition;
use crate::error::error_chain;
use crate::{lock, ContainerHandle, Engine};

/// How a run ended.
pub(super) enum RunEnd {
    /// The exit code, and whether the guest's out-of-memory killer ended it.
    Exited(i32, bool),
    SpawnFailed(SpawnFailure, String),
    Broken(String),
}

impl Engine {
    /// Gives back what a container's run held on its networks.
    pub(crate) fn release_networks(&self, handle: &ContainerHandle) {
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
    pub(super) fn finish_run(self: &Arc<Self>, handle: &Arc<ContainerHandle>, end: RunEnd) {
        self.release_networks(handle);
        berth_vm::cpu_limits::remove(&handle.id);
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
