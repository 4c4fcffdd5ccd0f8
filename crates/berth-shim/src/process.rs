//! One process of a task (its init, exec id `""`, or an exec) and where it is in its
//! life.
//!
//! A process is `Created` until `Start`, `Starting` while the guest spawns it (`Kill`
//! waits that out, `Delete` refuses it), `Running` until the guest reports its exit,
//! then `Stopped` with its exit status. The phase is a watch channel: `Wait` and the
//! init's exit wait on it without missing a change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_agent_proto::ProcessSpec;
use tokio::sync::watch;

use crate::io::ProcessStdin;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Created,
    /// `Start` is spawning it in the guest.
    Starting,
    Running,
    Stopped {
        code: u32,
        at: SystemTime,
    },
}

impl Phase {
    /// Started and not stopped yet.
    pub fn is_live(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running)
    }
}

/// containerd's paths for a process's streams.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StreamPaths {
    /// The paths of a `Create` or `Exec` request.
    pub fn of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
        }
    }
}

/// One process of a task.
pub(crate) struct TaskProcess {
    pub exec_id: String,
    /// The process's stream on the VM's agent connection.
    pub stream: u32,
    pub spec: ProcessSpec,
    pub paths: StreamPaths,
    phase: watch::Sender<Phase>,
    pub stdin: ProcessStdin,
}

impl TaskProcess {
    pub fn new(exec_id: &str, stream: u32, spec: ProcessSpec, paths: StreamPaths) -> Arc<Self> {
        Arc::new(TaskProcess {
            exec_id: exec_id.to_owned(),
            stream,
            spec,
            paths,
            phase: watch::Sender::new(Phase::Created),
            stdin: ProcessStdin::default(),
        })
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// `Created` → `Starting`; false (and nothing changes) from any other phase.
    pub fn begin_start(&self) -> bool {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Created => {
                *phase = Phase::Starting;
                true
            }
            _ => false,
        })
    }

    /// `Created` → `Stopped` with `code` (a process killed before it ran); false (and
    /// nothing changes) from any other phase.
    pub fn stop_unstarted(&self, code: u32) -> bool {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Created => {
                *phase = Phase::Stopped {
                    code,
                    at: SystemTime::now(),
                };
                true
            }
            _ => false,
        })
    }

    /// `Starting` → `Running`, once the guest has started it.
    pub fn started(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Starting => {
                *phase = Phase::Running;
                true
            }
            _ => false,
        });
    }

    /// → `Stopped` with `code`, unless it is stopped already.
    pub fn stop(&self, code: u32) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Stopped { .. } => false,
            _ => {
                *phase = Phase::Stopped {
                    code,
                    at: SystemTime::now(),
                };
                true
            }
        });
    }

    /// The phase once no start is in progress.
    pub async fn settled(&self) -> Phase {
        let mut phase = self.phase.subscribe();
        // The sender is `self`'s: the channel cannot close while this waits.
        let settled = phase
            .wait_for(|phase| *phase != Phase::Starting)
            .await
            .map(|phase| *phase);
        settled.unwrap_or(Phase::Starting)
    }

    /// The exit status and time, once it has stopped.
    pub async fn stopped(&self) -> (u32, SystemTime) {
        let mut phase = self.phase.subscribe();
        loop {
            if let Phase::Stopped { code, at } = *phase.borrow_and_update() {
                return (code, at);
            }
            if phase.changed().await.is_err() {
                return (137, SystemTime::now());
            }
        }
    }

    /// Whether it stops (or was never started) within `limit`.
    pub async fn ends_within(&self, limit: Duration) -> bool {
        let mut phase = self.phase.subscribe();
        let ended = tokio::time::timeout(limit, phase.wait_for(|phase| !phase.is_live())).await;
        ended.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> Arc<TaskProcess> {
        let spec: ProcessSpec = serde_json::from_value(serde_json::json!({
            "argv": ["true"], "env": [], "cwd": "/", "user": "",
            "tty": false, "stdin": false, "tty_size": null,
        }))
        .unwrap();
        TaskProcess::new("exec", 3, spec, StreamPaths::default())
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn only_a_created_process_begins_to_start() {
        let process = process();
        assert!(process.begin_start());
        assert_eq!(process.phase(), Phase::Starting);
        assert!(!process.begin_start());
        process.started();
        assert_eq!(process.phase(), Phase::Running);
        assert!(!process.begin_start());
    }

    #[test]
    fn a_stopped_process_is_not_made_running_by_a_late_start() {
        let process = process();
        assert!(process.begin_start());
        process.stop(127);
        process.started();
        assert!(matches!(process.phase(), Phase::Stopped { code: 127, .. }));
        // The first stop's status stays.
        process.stop(0);
        assert!(matches!(process.phase(), Phase::Stopped { code: 127, .. }));
    }

    #[test]
    fn a_kill_stops_only_a_process_that_has_not_begun_to_start() {
        let process = process();
        assert!(process.begin_start());
        assert!(!process.stop_unstarted(137));
        assert_eq!(process.phase(), Phase::Starting);
        let unstarted = self::process();
        assert!(unstarted.stop_unstarted(143));
        assert!(!unstarted.begin_start());
        assert!(matches!(
            unstarted.phase(),
            Phase::Stopped { code: 143, .. }
        ));
    }

    #[test]
    fn settled_waits_out_a_start_in_progress() {
        let process = process();
        assert!(process.begin_start());
        let starter = process.clone();
        let phase = block_on(async move {
            let start = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                starter.started();
            });
            let phase = process.settled().await;
            start.await.unwrap();
            phase
        });
        assert_eq!(phase, Phase::Running);
    }

    #[test]
    fn ends_within_tells_a_live_process_from_an_ended_one() {
        let process = process();
        // Never started: nothing to wait for.
        assert!(block_on(process.ends_within(Duration::from_millis(10))));
        assert!(process.begin_start());
        process.started();
        assert!(!block_on(process.ends_within(Duration::from_millis(10))));
        process.stop(0);
        assert!(block_on(process.ends_within(Duration::from_millis(10))));
        assert_eq!(block_on(process.stopped()).0, 0);
    }
}
