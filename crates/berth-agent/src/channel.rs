//! The agent's side of the channel: a shared, frame-at-a-time writer.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use berth_agent_proto::{
    encode_control, encode_frame, FrameKind, GuestMessage, MAX_DATA_CHUNK, MAX_FUSE_MESSAGE,
};

/// Writes whole frames to the port; clones share one file and one lock, so frames from
/// different threads never interleave.
#[derive(Clone)]
pub struct Channel {
    port: Arc<Mutex<File>>,
}

impl Channel {
    pub fn new(port: File) -> Self {
        Self {
            port: Arc::new(Mutex::new(port)),
        }
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let mut port = self
            .port
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        port.write_all(frame)?;
        port.flush()
    }

    /// Writes `marker` and then the message, with no other frame in between.
    pub fn send_after_marker(
        &self,
        marker: &[u8],
        stream: u32,
        message: &GuestMessage,
    ) -> io::Result<()> {
        let mut bytes = marker.to_vec();
        bytes.extend_from_slice(&encode_control(stream, message));
        self.write_frame(&bytes)
    }

    pub fn send(&self, stream: u32, message: &GuestMessage) -> io::Result<()> {
        self.write_frame(&encode_control(stream, message))
    }

    /// Sends `data` as one frame (a FUSE message, which must not be split).
    pub fn send_message(&self, stream: u32, kind: FrameKind, data: &[u8]) -> io::Result<()> {
        if data.len() > MAX_FUSE_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message larger than a frame may carry",
            ));
        }
        self.write_frame(&encode_frame(stream, kind, data))
    }

    pub fn send_data(&self, stream: u32, kind: FrameKind, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.write_frame(&encode_frame(stream, kind, chunk))?;
        }
        Ok(())
    }
}
