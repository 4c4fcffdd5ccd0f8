//! What can go wrong with a VM's agent. Everything here is caused by the guest (or by
//! its VM ending), which is untrusted: each is reported, none panics the daemon.

use std::time::Duration;

/// Errors of the agent channel and of what the guest sends on it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Writing to the agent's channel failed.
    #[error("writing to the agent failed")]
    Write(#[source] std::io::Error),
    /// Reading from the agent's channel failed.
    #[error("reading from the agent failed")]
    Read(#[source] std::io::Error),
    /// A frame or message that breaks the protocol.
    #[error("the agent broke the protocol")]
    Protocol(#[source] berth_agent_proto::ProtoError),
    /// A FUSE frame on a stream that is no share of this container.
    #[error("the agent sent a FUSE message on stream {0}, which is no share")]
    UnexpectedFuse(u32),
    /// A share's FUSE message that breaks the FUSE protocol.
    #[error("the agent sent a malformed FUSE message")]
    FuseMessage(#[source] berth_share::wire::WireError),
    /// A share's file server went away.
    #[error("the file server of share {stream} failed")]
    ShareServer {
        stream: u32,
        #[source]
        source: std::io::Error,
    },
    /// A stdin frame, which only the host sends.
    #[error("the agent sent a stdin frame")]
    StdinFrame,
    /// The channel closed while the engine waited for something.
    #[error("the agent closed its channel while {0}")]
    Closed(String),
    /// No answer in time.
    #[error("no answer from the agent within {after:?} while {during}")]
    Timeout { during: String, after: Duration },
    /// A message that does not fit what the engine asked or expects.
    #[error("the agent sent an unexpected {got} while {during}")]
    Unexpected { during: String, got: String },
    /// The agent speaks another protocol version (an initramfs from another berth).
    #[error(
        "the agent speaks protocol {got}, the engine speaks {expected}: rebuild the initramfs"
    )]
    Version { got: u32, expected: u32 },
    /// A clone's agent did not confirm a step of its rebind.
    #[error("the clone did not confirm its {0} step")]
    RebindStep(String),
    /// After a reattach, the agent never sent its resync marker.
    #[error("the agent did not resynchronise its channel")]
    NoResync,
    /// The guest reported a failure in its own words.
    #[error("{0}")]
    Guest(String),
    /// The guest's answer failed in the guest (a setup, a NIC, a copy).
    #[error("{during} failed in the guest: {message}")]
    GuestFailed { during: String, message: String },
    /// The VM ended before the agent answered.
    #[error("the VM ended {0}")]
    VmEnded(&'static str),
    /// An answer over the size the engine accepts.
    #[error("the guest's {0} is too long")]
    TooLong(&'static str),
    /// A helper the agent ran for the engine (copy, diff) failed; its stderr, cut short.
    #[error("{during} failed in the guest: {stderr}")]
    HelperFailed {
        during: &'static str,
        stderr: String,
    },
    /// A change or entry from the guest that breaks the rules (a relative path).
    #[error("the guest sent an invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
    /// A JSON document from the guest (a stat, a change list) does not parse.
    #[error("the guest's {what} is malformed")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl AgentError {
    /// An unexpected message, shown as the protocol's debug form ([`describe`]).
    pub fn unexpected(during: impl Into<String>, got: &impl std::fmt::Debug) -> Self {
        Self::Unexpected {
            during: during.into(),
            got: describe(got),
        }
    }
}

/// Most bytes of a guest's message quoted in an error.
const MAX_QUOTED: usize = 256;

/// What the guest sent, in its debug form, cut to [`MAX_QUOTED`] bytes: a hostile guest's
/// message ends up in the container's record and the daemon's log.
pub fn describe(got: &impl std::fmt::Debug) -> String {
    let mut text = format!("{got:?}");
    if text.len() > MAX_QUOTED {
        let mut end = MAX_QUOTED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}
