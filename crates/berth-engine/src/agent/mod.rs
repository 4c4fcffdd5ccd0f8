//! The engine's end of a VM's agent channel (berth-agent-proto over a unix socket):
//! the handshakes (boot, rebind of a clone, reattach after a daemon restart) and
//! validated frames, with the errors a guest can cause. Requests to a running
//! container's agent go through its serve task (`container::agent_request`).

mod error;
mod session;

pub use error::{describe, AgentError};
pub use session::{
    handshake, reattach, rebind, AgentEvent, AgentReader, AgentSession, MAIN_STREAM,
};
