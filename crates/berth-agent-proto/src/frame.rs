//! Frame encoding and incremental decoding (see the crate docs for the layout).

use crate::MAX_FRAME_LEN;

/// Bytes in a frame after the length field and before the payload (stream id + kind).
pub const HEADER_AFTER_LEN: u32 = 5;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON control message.
    Control = 1,
    /// Bytes for a process's standard input (host to guest).
    Stdin = 2,
    /// Bytes a process wrote to standard output (guest to host).
    Stdout = 3,
    /// Bytes a process wrote to standard error (guest to host).
    Stderr = 4,
    /// One FUSE message of a shared directory (see [`crate::ShareMount`]): a request the
    /// guest kernel made (guest to host) or the file server's reply (host to guest). The
    /// stream id is the share's.
    Fuse = 5,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Control),
            2 => Some(Self::Stdin),
            3 => Some(Self::Stdout),
            4 => Some(Self::Stderr),
            5 => Some(Self::Fuse),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Why a byte stream or a message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame length {0} is outside the allowed range")]
    BadLength(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control message of {0} bytes is larger than allowed")]
    ControlTooLarge(usize),
    #[error("control message is not valid JSON for this protocol")]
    BadJson(#[source] serde_json::Error),
    #[error("invalid message field: {0}")]
    InvalidField(&'static str),
    #[error("expected a control frame, got {0:?}")]
    NotControl(FrameKind),
}

/// Encodes one frame. The caller keeps payloads within [`crate::MAX_DATA_CHUNK`] for data
/// and [`crate::MAX_CONTROL_LEN`] for control messages.
pub fn encode_frame(stream: u32, kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload fits in u32") + HEADER_AFTER_LEN;
    debug_assert!(len <= MAX_FRAME_LEN);
    let mut out = Vec::with_capacity(4 + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// Incremental frame decoder: push bytes as they arrive, pull whole frames out.
///
/// It never buffers more than one frame plus one read, so a peer cannot make it
/// allocate more than [`MAX_FRAME_LEN`] + the caller's read size. Taking a frame costs
/// its own size, not the buffer's: frames are read from a start offset, and what is
/// left is moved to the front once per push (moving it after every frame made a read
/// full of empty frames cost a copy of the rest of the read per frame).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Where the next frame starts in `buffer`.
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or an error
    /// if the stream is malformed (after which the stream cannot be trusted again).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let waiting = &self.buffer[self.start..];
        if waiting.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(waiting[0..4].try_into().expect("4 bytes"));
        if !(HEADER_AFTER_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(ProtoError::BadLength(len));
        }
        let kind_byte = match waiting.get(8) {
            Some(byte) => *byte,
            None => return Ok(None),
        };
        let kind = FrameKind::from_byte(kind_byte).ok_or(ProtoError::UnknownKind(kind_byte))?;
        let total = 4 + len as usize;
        if waiting.len() < total {
            return Ok(None);
        }
        let stream = u32::from_le_bytes(waiting[4..8].try_into().expect("4 bytes"));
        let payload = waiting[9..total].to_vec();
        self.start += total;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok(Some(Frame {
            stream,
            kind,
            payload,
        }))
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_split_at_every_byte() {
        let mut wire = encode_frame(7, FrameKind::Stdout, b"hello");
        wire.extend(encode_frame(0, FrameKind::Control, b"{}"));
        for split in 0..wire.len() {
            let mut decoder = FrameDecoder::new();
            decoder.push(&wire[..split]);
            let mut frames = Vec::new();
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
            decoder.push(&wire[split..]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].stream, 7);
            assert_eq!(frames[0].kind, FrameKind::Stdout);
            assert_eq!(frames[0].payload, b"hello");
            assert_eq!(frames[1].kind, FrameKind::Control);
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn rejects_oversized_length_before_buffering_payload() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&(MAX_FRAME_LEN + 1).to_le_bytes());
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtoError::BadLength(_))
        ));
    }

    #[test]
    fn rejects_short_length_and_unknown_kind() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&2u32.to_le_bytes());
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtoError::BadLength(2))
        ));

        let mut decoder = FrameDecoder::new();
        let mut wire = encode_frame(1, FrameKind::Stdin, b"x");
        wire[8] = 99;
        decoder.push(&wire);
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtoError::UnknownKind(99))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random byte soup: the decoder must return frames or
        // errors, never panic or loop.
        let mut state: u32 = 0x1234_5678;
        for _ in 0..200 {
            let mut decoder = FrameDecoder::new();
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state & 0xff) as u8
                })
                .collect();
            decoder.push(&bytes);
            for _ in 0..64 {
                match decoder.next_frame() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
