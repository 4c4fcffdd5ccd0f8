//! Restart policies (`--restart no|always|unless-stopped|on-failure[:N]`), applied as
//! Docker applies them:
//!
//! - when a run ends, `always` and `unless-stopped` start the container again unless a
//!   user stopped it (`docker stop`/`kill`); `on-failure` does so only after a non-zero
//!   exit, at most N times if N is given. Between runs the container is `restarting`,
//!   for a delay that starts at 100 ms and doubles up to a minute, back to 100 ms after a
//!   run that lasted 10 s or more. `RestartCount` counts the restarts.
//! - when the daemon starts, `always` containers that have run before are started, and
//!   `unless-stopped` ones unless a user stopped them. `on-failure` containers are not.
//! - nothing is restarted while the daemon shuts down, or once the container is removed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bollard_stubs::models::RestartPolicyNameEnum;

use crate::container::{ContainerRecord, ContainerStatus, Transition, ZERO_TIME};
use crate::error::{error_chain, EngineError};
use crate::{lock, ContainerHandle, Engine};

/// Docker's first delay between runs.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Docker's longest delay between runs.
const LONGEST_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// A container's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    /// At most this many restarts (0: no limit).
    OnFailure(i64),
}

impl Policy {
    pub fn of(record: &ContainerRecord) -> Self {
        let Some(policy) = &record.host_config.restart_policy else {
            return Self::No;
        };
        match policy.name {
            Some(RestartPolicyNameEnum::ALWAYS) => Self::Always,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED) => Self::UnlessStopped,
            Some(RestartPolicyNameEnum::ON_FAILURE) => {
                Self::OnFailure(policy.maximum_retry_count.unwrap_or(0).max(0))
            }
            _ => Self::No,
        }
    }

    /// Whether a run that ended with `exit_code` is followed by another.
    pub fn restarts_after(
        self,
        exit_code: i64,
        restart_count: i64,
        manually_stopped: bool,
    ) -> bool {
        if manually_stopped {
            return false;
        }
        match self {
            Self::No => false,
            Self::Always | Self::UnlessStopped => true,
            Self::OnFailure(limit) => exit_code != 0 && (limit == 0 || restart_count < limit),
        }
    }

    /// Whether the daemon starts the container when it starts.
    pub fn starts_with_daemon(self, manually_stopped: bool) -> bool {
        match self {
            Self::Always => true,
            Self::UnlessStopped => !manually_stopped,
            Self::No | Self::OnFailure(_) => false,
        }
    }
}

/// Checks a policy at create: Docker's rules.
pub fn validate(
    record_policy: Option<&bollard_stubs::models::RestartPolicy>,
    auto_remove: bool,
) -> Result<(), EngineError> {
    let Some(policy) = record_policy else {
        return Ok(());
    };
    let name = policy.name.unwrap_or(RestartPolicyNameEnum::EMPTY);
    if auto_remove
        && !matches!(
            name,
            RestartPolicyNameEnum::NO | RestartPolicyNameEnum::EMPTY
        )
    {
        return Err(EngineError::InvalidArgument(
            "conflicting options: cannot specify both --restart and --rm".into(),
        ));
    }
    let count = policy.maximum_retry_count.unwrap_or(0);
    if count < 0 {
        return Err(EngineError::InvalidArgument(
            "invalid restart policy: maximum retry count cannot be negative".into(),
        ));
    }
    if count > 0 && name != RestartPolicyNameEnum::ON_FAILURE {
        return Err(EngineError::InvalidArgument(format!(
            "invalid restart policy: maximum retry count can only be used with 'on-failure' (not '{name}')"
        )));
    }
    Ok(())
}

/// The delay before the next run, from the last delay and how long the run lasted.
pub fn next_delay(last: Option<Duration>, run_lasted: Duration) -> Duration {
    match last {
        Some(last) if run_lasted < RESET_AFTER => (last * 2).min(LONGEST_DELAY),
        _ => FIRST_DELAY,
    }
}

impl Engine {
    /// After a run ended (its exit is recorded): schedules the next run if the policy
    /// says so. Returns true if one was scheduled.
    pub(crate) fn schedule_restart(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        run_lasted: Duration,
    ) -> bool {
        if self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        let delay = {
            let record = lock(&handle.record);
            let policy = Policy::of(&record);
            if record.auto_remove()
                || !policy.restarts_after(
                    record.state.exit_code,
                    record.restart_count,
                    record.manually_stopped,
                )
            {
                return false;
            }
            let mut last = lock(&handle.restart_delay);
            let delay = next_delay(*last, run_lasted);
            *last = Some(delay);
            delay
        };
        if let Err(error) = self.transition(handle, Transition::RestartScheduled) {
            tracing::warn!(id = %handle.id, error = %error_chain(&error), "scheduling a restart failed");
            return false;
        }
        let engine = self.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            engine.restart_now(&handle).await;
        });
        true
    }

    /// The delayed part of a restart: starts the container unless it was stopped or
    /// removed meanwhile, or the daemon is shutting down.
    async fn restart_now(self: &Arc<Self>, handle: &Arc<ContainerHandle>) {
        if handle.status() != ContainerStatus::Restarting {
            return;
        }
        if let Err(error) = self.transition(handle, Transition::RestartEnded) {
            tracing::warn!(id = %handle.id, error = %error_chain(&error), "ending a restart's wait failed");
            return;
        }
        {
            let mut record = lock(&handle.record);
            if record.manually_stopped || self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            record.restart_count += 1;
        }
        if lock(&self.containers).get(&handle.id).is_none() {
            return;
        }
        if let Err(error) = self.start_run(handle).await {
            tracing::warn!(id = %handle.id, error = %error_chain(&error), "restarting the container failed");
            if !matches!(error, EngineError::StartFailed(_)) {
                // A start that failed before a run began counts as a failed run.
                self.schedule_restart(handle, Duration::ZERO);
            }
        }
    }

    /// Starts, once the daemon is up, the containers whose policy says they run with
    /// the daemon.
    pub async fn start_with_daemon(self: &Arc<Self>) {
        let due: Vec<Arc<ContainerHandle>> = self
            .all_handles()
            .into_iter()
            .filter(|handle| {
                let record = lock(&handle.record);
                record.state.status.can_start().is_ok()
                    && record.state.started_at != ZERO_TIME
                    && Policy::of(&record).starts_with_daemon(record.manually_stopped)
            })
            .collect();
        for handle in due {
            tracing::info!(id = %&handle.id[..12], "starting container (restart policy)");
            if let Err(error) = self.start_run(&handle).await {
                tracing::warn!(id = %handle.id, error = %error_chain(&error), "starting the container with the daemon failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::RestartPolicy;

    #[test]
    fn policies_decide_as_docker_does() {
        assert!(!Policy::No.restarts_after(1, 0, false));
        assert!(Policy::Always.restarts_after(0, 5, false));
        assert!(!Policy::Always.restarts_after(0, 5, true));
        assert!(Policy::OnFailure(2).restarts_after(3, 1, false));
        assert!(!Policy::OnFailure(2).restarts_after(3, 2, false));
        assert!(!Policy::OnFailure(0).restarts_after(0, 0, false));
        assert!(Policy::OnFailure(0).restarts_after(1, 100, false));
        assert!(Policy::Always.starts_with_daemon(true));
        assert!(!Policy::UnlessStopped.starts_with_daemon(true));
        assert!(Policy::UnlessStopped.starts_with_daemon(false));
        assert!(!Policy::OnFailure(3).starts_with_daemon(false));
    }

    #[test]
    fn delays_double_and_reset() {
        assert_eq!(next_delay(None, Duration::ZERO), FIRST_DELAY);
        assert_eq!(
            next_delay(Some(FIRST_DELAY), Duration::ZERO),
            FIRST_DELAY * 2
        );
        assert_eq!(
            next_delay(Some(Duration::from_secs(50)), Duration::ZERO),
            LONGEST_DELAY
        );
        assert_eq!(
            next_delay(Some(Duration::from_secs(50)), RESET_AFTER),
            FIRST_DELAY
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        let always = RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        };
        assert!(validate(Some(&always), true).is_err());
        assert!(validate(Some(&always), false).is_ok());
        let counted = RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: Some(3),
        };
        assert!(validate(Some(&counted), false).is_err());
        let negative = RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(-1),
        };
        assert!(validate(Some(&negative), false).is_err());
        assert!(validate(None, true).is_ok());
    }
}
