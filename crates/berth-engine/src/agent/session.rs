//! The engine's end of the agent channel: handshake, requests, and validated frames.
//!
//! Everything read here comes from the guest and is untrusted: frames go through
//! `berth-agent-proto`'s bounded decoder and validating message decoder, and anything
//! unexpected ends the session with an [`AgentError`] rather than a panic.

use std::sync::Arc;
use std::time::Duration;

use berth_agent_proto::{
    decode_guest_message, encode_control, encode_frame, Frame, FrameDecoder, FrameKind,
    GuestMessage, HostMessage, ProcessStatus, AGENT_STREAM, MAX_DATA_CHUNK, PROTOCOL_VERSION,
    RESYNC_MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::AgentError;
use crate::files::shares::ShareRelay;

/// The stream id of a container's main process.
pub const MAIN_STREAM: u32 = 1;

/// Sends requests to the agent. Shared by the tasks that serve a running container.
pub struct AgentSession {
    writer: Mutex<OwnedWriteHalf>,
}

impl AgentSession {
    async fn write(&self, bytes: &[u8]) -> Result<(), AgentError> {
        let mut writer = self.writer.lock().await;
        writer.write_all(bytes).await.map_err(AgentError::Write)
    }

    pub async fn send(&self, stream: u32, message: &HostMessage) -> Result<(), AgentError> {
        self.write(&encode_control(stream, message)).await
    }

    /// Sends one FUSE message (a share's reply) as one frame.
    pub async fn send_fuse(&self, stream: u32, message: &[u8]) -> Result<(), AgentError> {
        self.write(&encode_frame(stream, FrameKind::Fuse, message))
            .await
    }

    pub async fn send_stdin(&self, stream: u32, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.write(&encode_frame(stream, FrameKind::Stdin, chunk))
                .await?;
        }
        Ok(())
    }
}

/// Reads validated frames from the agent.
pub struct AgentReader {
    reader: OwnedReadHalf,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    /// Where FUSE requests of the container's shares go (none: the guest has no share,
    /// and a FUSE frame breaks the protocol).
    shares: Option<Arc<ShareRelay>>,
}

/// What the agent said.
#[derive(Debug)]
pub enum AgentEvent {
    Output {
        stream: u32,
        kind: FrameKind,
        data: Vec<u8>,
    },
    Message {
        stream: u32,
        message: GuestMessage,
    },
}

impl AgentReader {
    fn new(reader: OwnedReadHalf) -> Self {
        Self {
            reader,
            decoder: FrameDecoder::new(),
            buffer: vec![0u8; 64 * 1024],
            shares: None,
        }
    }

    /// From now on, FUSE requests go to `relay` (and never come out of `next_event`).
    pub fn attach_shares(&mut self, relay: Arc<ShareRelay>) {
        self.shares = Some(relay);
    }

    /// The next event; `Ok(None)` when the agent closed the channel.
    pub async fn next_event(&mut self) -> Result<Option<AgentEvent>, AgentError> {
        loop {
            match self.decoder.next_frame() {
                // Passed on, then the next frame: more may be buffered already.
                Ok(Some(frame)) if frame.kind == FrameKind::Fuse => match &self.shares {
                    Some(relay) => {
                        relay.forward(frame.stream, frame.payload).await?;
                        continue;
                    }
                    None => return Err(AgentError::UnexpectedFuse(frame.stream)),
                },
                Ok(Some(frame)) => return classify(frame).map(Some),
                Ok(None) => {}
                Err(error) => return Err(AgentError::Protocol(error)),
            }
            let n = self
                .reader
                .read(&mut self.buffer)
                .await
                .map_err(AgentError::Read)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buffer[..n]);
        }
    }

    /// Waits for a control message on `stream`, failing on anything else but output.
    pub async fn expect_message(
        &mut self,
        stream: u32,
        timeout: Duration,
        what: &str,
    ) -> Result<GuestMessage, AgentError> {
        let wait = async {
            match self.next_event().await? {
                None => Err(AgentError::Closed(what.to_owned())),
                Some(AgentEvent::Message {
                    stream: got,
                    message,
                }) if got == stream => Ok(message),
                Some(other) => Err(AgentError::unexpected(what, &other)),
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| AgentError::Timeout {
                during: what.to_owned(),
                after: timeout,
            })?
    }
}

fn classify(frame: Frame) -> Result<AgentEvent, AgentError> {
    match frame.kind {
        FrameKind::Control => {
            let message = decode_guest_message(&frame).map_err(AgentError::Protocol)?;
            Ok(AgentEvent::Message {
                stream: frame.stream,
                message,
            })
        }
        FrameKind::Stdout | FrameKind::Stderr => Ok(AgentEvent::Output {
            stream: frame.stream,
            kind: frame.kind,
            data: frame.payload,
        }),
        FrameKind::Stdin => Err(AgentError::StdinFrame),
        FrameKind::Fuse => Err(AgentError::UnexpectedFuse(frame.stream)),
    }
}

/// Most bytes skipped while looking for the agent's resync marker.
const MAX_RESYNC_SKIP: usize = 8 << 20;

/// Takes over the channel of a VM whose engine went away: sends `Reattach`, skips what
/// the old connection left half-sent up to the agent's resync marker, and returns the
/// agent's processes.
pub async fn reattach(
    stream: UnixStream,
    timeout: Duration,
) -> Result<(AgentSession, AgentReader, Vec<ProcessStatus>), AgentError> {
    let (reader, writer) = stream.into_split();
    let session = AgentSession {
        writer: Mutex::new(writer),
    };
    let mut reader = AgentReader::new(reader);
    session.send(AGENT_STREAM, &HostMessage::Reattach).await?;
    let resync = async {
        let mut seen: Vec<u8> = Vec::new();
        let mut skipped = 0usize;
        loop {
            let n = reader
                .reader
                .read(&mut reader.buffer)
                .await
                .map_err(AgentError::Read)?;
            if n == 0 {
                return Err(AgentError::Closed("reattaching".into()));
            }
            seen.extend_from_slice(&reader.buffer[..n]);
            if let Some(at) = seen
                .windows(RESYNC_MARKER.len())
                .position(|window| window == RESYNC_MARKER)
            {
                reader.decoder.push(&seen[at + RESYNC_MARKER.len()..]);
                return Ok(());
            }
            // Keep only what could be the start of the marker.
            let keep = seen.len().min(RESYNC_MARKER.len() - 1);
            skipped += seen.len() - keep;
            seen.drain(..seen.len() - keep);
            if skipped > MAX_RESYNC_SKIP {
                return Err(AgentError::NoResync);
            }
        }
    };
    tokio::time::timeout(timeout, resync)
        .await
        .map_err(|_| AgentError::Timeout {
            during: "reattaching".into(),
            after: timeout,
        })??;
    match reader
        .expect_message(AGENT_STREAM, timeout, "reattaching")
        .await?
    {
        GuestMessage::Reattached {
            protocol,
            processes,
        } if protocol == PROTOCOL_VERSION => Ok((session, reader, processes)),
        GuestMessage::Reattached { protocol, .. } => Err(AgentError::Version {
            got: protocol,
            expected: PROTOCOL_VERSION,
        }),
        other => Err(AgentError::unexpected("reattaching", &other)),
    }
}

/// Waits for the agent's Hello and checks its protocol version.
pub async fn handshake(
    stream: UnixStream,
    timeout: Duration,
) -> Result<(AgentSession, AgentReader, String), AgentError> {
    let (reader, writer) = stream.into_split();
    let mut reader = AgentReader::new(reader);
    match reader
        .expect_message(AGENT_STREAM, timeout, "waiting for the VM to boot")
        .await?
    {
        GuestMessage::Hello { protocol, kernel } if protocol == PROTOCOL_VERSION => Ok((
            AgentSession {
                writer: Mutex::new(writer),
            },
            reader,
            kernel,
        )),
        GuestMessage::Hello { protocol, .. } => Err(AgentError::Version {
            got: protocol,
            expected: PROTOCOL_VERSION,
        }),
        other => Err(AgentError::unexpected("waiting for hello", &other)),
    }
}

/// Gives a restored clone its identity: sends `Rebind` (first message on the channel) and
/// waits for `Rebound`, which names the steps the agent took. `then` (stream, message
/// pairs) is sent right after `Rebind`, without waiting: the agent handles requests in
/// order, so it travels while the agent rebinds, and its answers follow `Rebound` (a
/// clone that could not rebind refuses them).
pub async fn rebind(
    stream: UnixStream,
    spec: berth_agent_proto::RebindSpec,
    then: Vec<(u32, HostMessage)>,
    timeout: Duration,
) -> Result<(AgentSession, AgentReader, Vec<String>), AgentError> {
    let (reader, writer) = stream.into_split();
    let session = AgentSession {
        writer: Mutex::new(writer),
    };
    let mut reader = AgentReader::new(reader);
    session
        .send(AGENT_STREAM, &HostMessage::Rebind(spec))
        .await?;
    for (stream, message) in then {
        session.send(stream, &message).await?;
    }
    match reader
        .expect_message(AGENT_STREAM, timeout, "giving the clone its identity")
        .await?
    {
        GuestMessage::Rebound {
            protocol, steps, ..
        } if protocol == PROTOCOL_VERSION => {
            for required in ["entropy", "reseed", "clock"] {
                if !steps.iter().any(|step| step == required) {
                    return Err(AgentError::RebindStep(required.to_owned()));
                }
            }
            Ok((session, reader, steps))
        }
        GuestMessage::Rebound { protocol, .. } => Err(AgentError::Version {
            got: protocol,
            expected: PROTOCOL_VERSION,
        }),
        GuestMessage::Error { message } => Err(AgentError::GuestFailed {
            during: "rebinding the clone".into(),
            message,
        }),
        other => Err(AgentError::unexpected("rebinding the clone", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn garbage_from_the_guest_is_an_error_not_a_panic() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        guest.write_all(&[0xff; 64]).await.unwrap();
        let result = handshake(host, Duration::from_secs(2)).await;
        assert!(matches!(result, Err(AgentError::Protocol(_))));
    }

    #[tokio::test]
    async fn wrong_protocol_version_is_refused() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let hello = GuestMessage::Hello {
            protocol: PROTOCOL_VERSION + 1,
            kernel: "k".into(),
        };
        guest
            .write_all(&encode_control(AGENT_STREAM, &hello))
            .await
            .unwrap();
        let error = handshake(host, Duration::from_secs(2)).await.err().unwrap();
        assert!(error.to_string().contains("protocol"));
    }

    #[tokio::test]
    async fn silent_guest_times_out_and_closed_guest_is_reported() {
        let (host, _guest) = UnixStream::pair().unwrap();
        assert!(handshake(host, Duration::from_millis(100)).await.is_err());
        let (host, guest) = UnixStream::pair().unwrap();
        drop(guest);
        let error = handshake(host, Duration::from_secs(2)).await.err().unwrap();
        assert!(error.to_string().contains("closed"));
    }

    fn rebind_spec() -> berth_agent_proto::RebindSpec {
        berth_agent_proto::RebindSpec {
            entropy: vec![7; 64],
            realtime: (1, 2),
        }
    }

    #[tokio::test]
    async fn a_clone_must_confirm_every_rebind_step() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let partial = GuestMessage::Rebound {
            protocol: PROTOCOL_VERSION,
            kernel: "k".into(),
            steps: vec!["entropy".into(), "clock".into()],
        };
        guest
            .write_all(&encode_control(AGENT_STREAM, &partial))
            .await
            .unwrap();
        let error = rebind(host, rebind_spec(), Vec::new(), Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("reseed"), "{error}");

        let (host, mut guest) = UnixStream::pair().unwrap();
        let full = GuestMessage::Rebound {
            protocol: PROTOCOL_VERSION,
            kernel: "k".into(),
            steps: vec!["entropy".into(), "reseed".into(), "clock".into()],
        };
        guest
            .write_all(&encode_control(AGENT_STREAM, &full))
            .await
            .unwrap();
        let (_session, _reader, steps) =
            rebind(host, rebind_spec(), Vec::new(), Duration::from_secs(2))
                .await
                .unwrap();
        assert_eq!(steps.len(), 3);
        // What the host sent first is the Rebind with the entropy.
        let mut decoder = FrameDecoder::new();
        let mut buffer = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut guest, &mut buffer)
            .await
            .unwrap();
        decoder.push(&buffer[..n]);
        let frame = decoder.next_frame().unwrap().unwrap();
        match berth_agent_proto::decode_host_message(&frame).unwrap() {
            HostMessage::Rebind(spec) => assert_eq!(spec.entropy, vec![7; 64]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn hello_then_output_is_read() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let hello = GuestMessage::Hello {
            protocol: PROTOCOL_VERSION,
            kernel: "6.1".into(),
        };
        guest
            .write_all(&encode_control(AGENT_STREAM, &hello))
            .await
            .unwrap();
        guest
            .write_all(&encode_frame(MAIN_STREAM, FrameKind::Stderr, b"oops"))
            .await
            .unwrap();
        let (_session, mut reader, kernel) = handshake(host, Duration::from_secs(2)).await.unwrap();
        assert_eq!(kernel, "6.1");
        match reader.next_event().await.unwrap() {
            Some(AgentEvent::Output { stream, kind, data }) => {
                assert_eq!(
                    (stream, kind, data.as_slice()),
                    (MAIN_STREAM, FrameKind::Stderr, &b"oops"[..])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn reattach_skips_what_the_old_connection_left_half_sent() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        // The tail of a frame the agent was writing when the old engine went away, then
        // a whole frame that also went to nobody, then the marker and the answer.
        let stale = encode_frame(MAIN_STREAM, FrameKind::Stdout, b"lost output");
        guest.write_all(&stale[7..]).await.unwrap();
        guest.write_all(&stale).await.unwrap();
        guest.write_all(RESYNC_MARKER).await.unwrap();
        let answer = GuestMessage::Reattached {
            protocol: PROTOCOL_VERSION,
            processes: vec![ProcessStatus {
                stream: MAIN_STREAM,
                pid: 0,
                exit: Some((3, None)),
            }],
        };
        guest
            .write_all(&encode_control(AGENT_STREAM, &answer))
            .await
            .unwrap();
        guest
            .write_all(&encode_frame(MAIN_STREAM, FrameKind::Stdout, b"after"))
            .await
            .unwrap();
        let (_session, mut reader, processes) =
            reattach(host, Duration::from_secs(2)).await.unwrap();
        assert_eq!(processes[0].exit, Some((3, None)));
        match reader.next_event().await.unwrap() {
            Some(AgentEvent::Output { data, .. }) => assert_eq!(data, b"after"),
            other => panic!("unexpected {other:?}"),
        }
        // A guest that never sends the marker is given up on.
        let (host, mut guest) = UnixStream::pair().unwrap();
        guest.write_all(&[0x55; 1000]).await.unwrap();
        assert!(reattach(host, Duration::from_millis(300)).await.is_err());
    }
}
