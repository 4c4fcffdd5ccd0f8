//! Bringing a new VM's guest up to a mounted root: a clone is given its identity
//! (entropy, clock: `Rebind`), a cold boot is waited for (`Hello`); then the guest is
//! set up (`Setup`: disk, hostname, first NIC, volumes). The setup, and the container's
//! process when nothing has to be connected after the setup, travel behind the first
//! message without waiting for its answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent_proto::{GuestMessage, HostMessage, RebindSpec, AGENT_STREAM};
use rand::RngCore;
use tokio::net::UnixStream;

use super::plan::StartPlan;
use crate::agent::{handshake, rebind, AgentError, AgentReader, AgentSession, MAIN_STREAM};
use crate::error::EngineError;
use crate::files::shares::ShareRelay;

/// How long a VM gets from process start to the agent's Hello. Generous: under software
/// emulation on a loaded host a boot can take many seconds.
pub(super) const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent gets, once the setup is done, to say that the container's process
/// runs (or could not be started). A guest that goes silent here is ended, not waited on.
pub(super) const PROCESS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A guest that answered its setup.
pub(super) struct GuestUp {
    pub session: Arc<AgentSession>,
    pub reader: AgentReader,
    /// When the agent first answered (Hello or Rebound).
    pub answered_at: Duration,
    /// The guest's own timing of its setup steps, e.g. `root=41ms network=12ms`.
    pub guest_steps: String,
}

/// Why a guest did not come up, and whether its agent ever answered (a clone whose
/// agent never answered condemns its template; a failed setup is the container's own).
pub(super) struct GuestFailure {
    pub error: EngineError,
    pub agent_answered: bool,
}

/// The agent channel of a start's VM.
pub(super) enum GuestChannel {
    /// A VM just booted or restored: its agent has not answered yet.
    New(UnixStream),
    /// A VM restored ahead of demand, whose agent took its identity then.
    Rebound(AgentSession, AgentReader),
}

/// Rebinds or waits for the guest, then sets it up (and sends the process when
/// `plan.pipelined()`).
pub(super) async fn bring_up(
    plan: &StartPlan,
    channel: GuestChannel,
    run_dir: &Path,
    begun: Instant,
) -> Result<GuestUp, GuestFailure> {
    let failed = |agent_answered| {
        move |error: EngineError| GuestFailure {
            error,
            agent_answered,
        }
    };
    let mut follow = vec![(
        AGENT_STREAM,
        HostMessage::Setup(plan.setup_spec().map_err(failed(false))?),
    )];
    if plan.pipelined() {
        follow.push((MAIN_STREAM, HostMessage::Spawn(plan.process.clone())));
    }
    let agent = match channel {
        GuestChannel::New(agent) => agent,
        GuestChannel::Rebound(session, reader) => {
            for (stream, message) in follow {
                session
                    .send(stream, &message)
                    .await
                    .map_err(|e| failed(true)(e.into()))?;
            }
            return set_up(plan, session, reader, run_dir, begun.elapsed()).await;
        }
    };
    let (session, reader) = if plan.is_clone() {
        let (session, reader, _steps) = rebind(agent, rebind_spec(), follow, SETUP_TIMEOUT)
            .await
            .map_err(|e| failed(false)(e.into()))?;
        (session, reader)
    } else {
        let (session, reader, _kernel) = handshake(agent, BOOT_TIMEOUT)
            .await
            .map_err(|e| failed(false)(e.into()))?;
        for (stream, message) in follow {
            session
                .send(stream, &message)
                .await
                .map_err(|e| failed(true)(e.into()))?;
        }
        (session, reader)
    };
    set_up(plan, session, reader, run_dir, begun.elapsed()).await
}

/// The rest of [`bring_up`] once the agent has answered: the shares' relay, then the
/// setup's answer.
async fn set_up(
    plan: &StartPlan,
    session: AgentSession,
    mut reader: AgentReader,
    run_dir: &Path,
    answered_at: Duration,
) -> Result<GuestUp, GuestFailure> {
    let failed = |agent_answered| {
        move |error: EngineError| GuestFailure {
            error,
            agent_answered,
        }
    };
    let session = Arc::new(session);
    // Before the setup's answer: the setup mounts the shares (and may copy into one).
    if !plan.shares.is_empty() {
        let relay = ShareRelay::connect(run_dir, &plan.shares, session.clone())
            .await
            .map_err(failed(true))?;
        reader.attach_shares(relay);
    }
    const SETTING_UP: &str = "setting the guest up";
    let answer = reader
        .expect_message(AGENT_STREAM, SETUP_TIMEOUT, SETTING_UP)
        .await
        .map_err(|e| failed(true)(e.into()))?;
    match answer {
        GuestMessage::SetupDone { steps_us } => Ok(GuestUp {
            session,
            reader,
            answered_at,
            guest_steps: describe_steps(&steps_us),
        }),
        GuestMessage::Error { message } => Err(failed(true)(
            AgentError::GuestFailed {
                during: SETTING_UP.into(),
                message,
            }
            .into(),
        )),
        other => Err(failed(true)(
            AgentError::unexpected(SETTING_UP, &other).into(),
        )),
    }
}

/// `steps` (name, microseconds) as `root=41.2ms network=12.0ms`, for the log; at most a
/// few dozen steps and short names are kept (the guest wrote them).
fn describe_steps(steps: &[(String, u64)]) -> String {
    steps
        .iter()
        .take(32)
        .map(|(name, micros)| {
            let name: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(16)
                .collect();
            format!("{name}={:.1}ms", *micros as f64 / 1000.0)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A clone's new identity: fresh entropy from the host and the host's clock.
pub(crate) fn rebind_spec() -> RebindSpec {
    let mut entropy = vec![0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    RebindSpec {
        entropy,
        realtime: (now.as_secs() as i64, now.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::describe_steps;

    #[test]
    fn guest_steps_read_as_milliseconds_and_stay_short() {
        let steps = vec![("root".to_owned(), 41_234), ("net\nwork".to_owned(), 500)];
        assert_eq!(describe_steps(&steps), "root=41.2ms network=0.5ms");
        let flood: Vec<(String, u64)> = (0..100).map(|i| ("x".repeat(100), i)).collect();
        let text = describe_steps(&flood);
        assert_eq!(text.split(' ').count(), 32);
        assert!(text.split(' ').all(|step| step.len() < 30));
    }
}
