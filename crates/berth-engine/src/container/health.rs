//! Health checks: the image's `HEALTHCHECK` and `--health-*`, run as Docker runs them.
//!
//! While a container with a check runs, a task runs the check's command in it (as an
//! exec) every interval (`StartInterval` during the start period), each with its
//! timeout. Exit 0 is healthy; anything else, or a timeout, is a failure; `Retries`
//! consecutive failures after the start period make the container unhealthy. The
//! status (`starting`, `healthy`, `unhealthy`), the failing streak and the last five
//! results are on the record (`State.Health` in inspect, `(healthy)` in `ps`), and each
//! change of status is a `health_status` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard_stubs::models::{ExecConfig, HealthConfig};

pub use crate::records::{HealthResult, HealthState};
use crate::{lock, now_rfc3339, ContainerHandle, Engine};

/// How many results are kept.
const KEPT_RESULTS: usize = 5;
/// How much of a check's output is kept.
const KEPT_OUTPUT: usize = 4096;

/// A check's settings with Docker's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: i64,
    pub start_period: Duration,
    pub start_interval: Duration,
}

fn nanos(value: Option<i64>, default: Duration) -> Duration {
    match value {
        Some(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => default,
    }
}

impl Check {
    /// The check a container's configuration asks for, if any (`NONE` disables it).
    pub fn of(config: Option<&HealthConfig>) -> Option<Self> {
        let config = config?;
        let test = config.test.clone().unwrap_or_default();
        let argv = match test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            _ => return None,
        };
        Some(Self {
            argv,
            interval: nanos(config.interval, Duration::from_secs(30)),
            timeout: nanos(config.timeout, Duration::from_secs(30)),
            retries: config.retries.filter(|r| *r > 0).unwrap_or(3),
            start_period: nanos(config.start_period, Duration::ZERO),
            start_interval: nanos(config.start_interval, Duration::from_secs(5)),
        })
    }
}

/// The image's check merged with the request's, field by field, as Docker merges them.
pub fn merge(image: Option<HealthConfig>, request: Option<HealthConfig>) -> Option<HealthConfig> {
    let Some(request) = request else {
        return image;
    };
    let Some(image) = image else {
        return Some(request);
    };
    let pick = |mine: Option<i64>, theirs: Option<i64>| mine.filter(|v| *v != 0).or(theirs);
    Some(HealthConfig {
        test: request
            .test
            .clone()
            .filter(|t| !t.is_empty())
            .or(image.test),
        interval: pick(request.interval, image.interval),
        timeout: pick(request.timeout, image.timeout),
        retries: pick(request.retries, image.retries),
        start_period: pick(request.start_period, image.start_period),
        start_interval: pick(request.start_interval, image.start_interval),
    })
}

/// Folds one result into the state; returns the new status.
pub fn record(state: &mut HealthState, check: &Check, result: HealthResult, in_start_period: bool) {
    if result.exit_code == 0 {
        state.status = "healthy".into();
        state.failing_streak = 0;
    } else if !in_start_period {
        state.failing_streak += 1;
        if state.failing_streak >= check.retries {
            state.status = "unhealthy".into();
        }
    }
    state.log.push(result);
    if state.log.len() > KEPT_RESULTS {
        state.log.remove(0);
    }
}

impl Engine {
    /// Starts checking a container that just started, if it has a check.
    pub(crate) fn start_health_checks(self: &Arc<Self>, handle: &Arc<ContainerHandle>) {
        let Some(check) = Check::of(handle.snapshot().config.healthcheck.as_ref()) else {
            return;
        };
        let run = handle.state.borrow().exits;
        lock(&handle.record).health = Some(HealthState {
            status: "starting".into(),
            ..Default::default()
        });
        let engine = self.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let in_start_period = started.elapsed() < check.start_period;
                let wait = if in_start_period {
                    check.start_interval
                } else {
                    check.interval
                };
                tokio::time::sleep(wait).await;
                if handle.state.borrow().exits != run || handle.runtime().is_none() {
                    return;
                }
                let result = engine.probe(&handle, &check).await;
                let in_start_period = started.elapsed() < check.start_period;
                let (before, after) = {
                    let mut record = lock(&handle.record);
                    let state = record.health.get_or_insert_with(Default::default);
                    let before = state.status.clone();
                    self::record(state, &check, result, in_start_period);
                    (before, state.status.clone())
                };
                let _ = engine.persist(&handle);
                if before != after {
                    engine.events.container(
                        &handle.snapshot(),
                        &format!("health_status: {after}"),
                        &[],
                    );
                }
            }
        });
    }

    /// Runs the check's command once in the container.
    async fn probe(self: &Arc<Self>, handle: &Arc<ContainerHandle>, check: &Check) -> HealthResult {
        let start = now_rfc3339();
        let failed = |message: String| HealthResult {
            start: start.clone(),
            end: now_rfc3339(),
            exit_code: -1,
            output: message,
        };
        let config = ExecConfig {
            cmd: Some(check.argv.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let id = match self.create_exec(&handle.id, config) {
            Ok(id) => id,
            Err(error) => return failed(crate::error_chain(&error)),
        };
        let outcome = async {
            let mut attachment = self.start_exec(&id).await?;
            let mut output = Vec::new();
            while let Some(chunk) = attachment.output.recv().await {
                if output.len() < KEPT_OUTPUT {
                    output.extend_from_slice(&chunk.data);
                }
            }
            Ok::<_, crate::EngineError>(output)
        };
        let result = match tokio::time::timeout(check.timeout, outcome).await {
            Ok(Ok(mut output)) => {
                output.truncate(KEPT_OUTPUT);
                let code = self
                    .exec(&id)
                    .ok()
                    .and_then(|exec| exec.snapshot().exit_code)
                    .unwrap_or(-1);
                HealthResult {
                    start: start.clone(),
                    end: now_rfc3339(),
                    exit_code: code,
                    output: String::from_utf8_lossy(&output).into_owned(),
                }
            }
            Ok(Err(error)) => failed(crate::error_chain(&error)),
            Err(_) => {
                self.kill_exec(&id).await;
                failed(format!(
                    "Health check exceeded timeout ({:?})",
                    check.timeout
                ))
            }
        };
        self.forget_exec(&id);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_follow_dockers_forms_and_defaults() {
        let shell = HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), "test -e /ready".into()]),
            ..Default::default()
        };
        let check = Check::of(Some(&shell)).unwrap();
        assert_eq!(check.argv, ["/bin/sh", "-c", "test -e /ready"]);
        assert_eq!(
            (check.interval, check.retries),
            (Duration::from_secs(30), 3)
        );
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert_eq!(Check::of(Some(&none)), None);
        let merged = merge(
            Some(HealthConfig {
                test: Some(vec!["CMD".into(), "true".into()]),
                interval: Some(5_000_000_000),
                ..Default::default()
            }),
            Some(HealthConfig {
                retries: Some(7),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(merged.test.unwrap(), ["CMD", "true"]);
        assert_eq!(
            (merged.interval, merged.retries),
            (Some(5_000_000_000), Some(7))
        );
    }

    #[test]
    fn retries_failures_make_it_unhealthy_and_one_success_heals() {
        let check = Check::of(Some(&HealthConfig {
            test: Some(vec!["CMD".into(), "false".into()]),
            retries: Some(2),
            ..Default::default()
        }))
        .unwrap();
        let result = |code| HealthResult {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: String::new(),
        };
        let mut state = HealthState {
            status: "starting".into(),
            ..Default::default()
        };
        record(&mut state, &check, result(1), true);
        assert_eq!(
            (state.status.as_str(), state.failing_streak),
            ("starting", 0)
        );
        record(&mut state, &check, result(1), false);
        assert_eq!(state.status, "starting");
        record(&mut state, &check, result(1), false);
        assert_eq!(state.status, "unhealthy");
        record(&mut state, &check, result(0), false);
        assert_eq!(
            (state.status.as_str(), state.failing_streak),
            ("healthy", 0)
        );
        for _ in 0..10 {
            record(&mut state, &check, result(0), false);
        }
        assert_eq!(state.log.len(), KEPT_RESULTS);
    }
}
