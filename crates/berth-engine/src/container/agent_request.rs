//! Requests on the agent's own stream of a running container (configure a NIC, list
//! processes), answered through the container's serve task.

use std::sync::Arc;
use std::time::Duration;

use berth_agent_proto::{GuestMessage, HostMessage, AGENT_STREAM};
use tokio::sync::oneshot;

use crate::agent::AgentError;
use crate::container::Refusal;
use crate::error::EngineError;
use crate::{lock, ContainerHandle, Engine};

/// How long the agent gets to answer a request on its own stream (e.g. configuring a
/// hot-plugged NIC, which waits for the guest to find the card).
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Engine {
    /// Sends a request on the agent's own stream of a running container and waits for
    /// the answer (one request at a time per container).
    pub(crate) async fn agent_request(
        &self,
        handle: &Arc<ContainerHandle>,
        message: HostMessage,
    ) -> Result<GuestMessage, EngineError> {
        let runtime = handle
            .runtime()
            .ok_or_else(|| EngineError::refused(&handle.id)(Refusal::NotRunning))?;
        let _one_at_a_time = runtime.agent_request.lock().await;
        let (sender, answer) = oneshot::channel();
        *lock(&runtime.agent_reply) = Some(sender);
        runtime.session.send(AGENT_STREAM, &message).await?;
        match tokio::time::timeout(AGENT_REQUEST_TIMEOUT, answer).await {
            Ok(Ok(GuestMessage::Error { message })) => Err(AgentError::Guest(message).into()),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(AgentError::VmEnded("before the agent answered").into()),
            Err(_) => {
                lock(&runtime.agent_reply).take();
                Err(AgentError::Timeout {
                    during: "answering a request".into(),
                    after: AGENT_REQUEST_TIMEOUT,
                }
                .into())
            }
        }
    }
}
