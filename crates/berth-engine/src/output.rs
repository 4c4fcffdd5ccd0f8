//! A container's output: the live hub that attach clients subscribe to, and the
//! json-file log kept on disk.
//!
//! Log format (Docker's json-file driver, so tools that read it feel at home): one JSON
//! object per line, `{"log":"<text>","stream":"stdout"|"stderr","time":"<RFC 3339 nanos>"}`.
//! Output is split into log lines at `\n`; a trailing partial line is written as is.
//! The log lives at `<container dir>/container.log` and survives daemon restarts.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::EngineError;

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of output.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Bytes,
}

/// Fans output out to the clients attached to a container.
#[derive(Default)]
pub struct OutputHub {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<OutputChunk>>>,
}

impl OutputHub {
    /// A receiver that gets every chunk from now until [`OutputHub::close`].
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<OutputChunk> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().push(sender);
        receiver
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<OutputChunk>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn publish(&self, chunk: &OutputChunk) {
        self.lock()
            .retain(|subscriber| subscriber.send(chunk.clone()).is_ok());
    }

    /// Runs `record` (writing the chunk to the log) and publishes the chunk as one step
    /// with respect to [`OutputHub::subscribe_after`], so a follower sees each chunk once.
    pub fn record_and_publish(&self, chunk: &OutputChunk, record: impl FnOnce()) {
        let mut subscribers = self.lock();
        record();
        subscribers.retain(|subscriber| subscriber.send(chunk.clone()).is_ok());
    }

    /// Runs `read` (reading the log so far) and subscribes as one step: every chunk is
    /// either in what `read` returned or delivered to the receiver, never both.
    pub fn subscribe_after<T>(
        &self,
        read: impl FnOnce() -> T,
    ) -> (T, mpsc::UnboundedReceiver<OutputChunk>) {
        let mut subscribers = self.lock();
        let value = read();
        let (sender, receiver) = mpsc::unbounded_channel();
        subscribers.push(sender);
        (value, receiver)
    }

    /// Ends every current subscription (the process has exited).
    pub fn close(&self) {
        self.lock().clear();
    }
}

#[derive(Serialize, Deserialize)]
struct LogLine {
    log: String,
    stream: OutputStream,
    time: String,
}

/// Appends output to the json-file log.
pub struct LogWriter {
    file: File,
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(EngineError::io(path))?;
        Ok(Self { file })
    }

    /// Writes a chunk as one log line per `\n`-terminated piece.
    pub fn write(&mut self, chunk: &OutputChunk) {
        let time = crate::now_rfc3339();
        let mut text = Vec::new();
        for piece in chunk.data.split_inclusive(|&byte| byte == b'\n') {
            let line = LogLine {
                log: String::from_utf8_lossy(piece).into_owned(),
                stream: chunk.stream,
                time: time.clone(),
            };
            if let Ok(json) = serde_json::to_vec(&line) {
                text.extend_from_slice(&json);
                text.push(b'\n');
            }
        }
        if let Err(error) = self.file.write_all(&text) {
            tracing::warn!(%error, "writing container log failed");
        }
    }
}

/// A log entry read back.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub stream: OutputStream,
    pub time: String,
    pub data: Vec<u8>,
}

/// Which log entries to read.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub stdout: bool,
    pub stderr: bool,
    /// Only the last N entries.
    pub tail: Option<usize>,
}

/// Reads the log at `path`, filtered. A missing log is an empty one.
pub fn read_log(path: &PathBuf, filter: &LogFilter) -> Vec<LogEntry> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut entries: Vec<LogEntry> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<LogLine>(&line).ok())
        .filter(|line| match line.stream {
            OutputStream::Stdout => filter.stdout,
            OutputStream::Stderr => filter.stderr,
        })
        .map(|line| LogEntry {
            stream: line.stream,
            time: line.time,
            data: line.log.into_bytes(),
        })
        .collect();
    if let Some(tail) = filter.tail {
        let skip = entries.len().saturating_sub(tail);
        entries.drain(..skip);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trip_with_filters_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut writer = LogWriter::open(&path).unwrap();
        writer.write(&OutputChunk {
            stream: OutputStream::Stdout,
            data: Bytes::from_static(b"one\ntwo\npart"),
        });
        writer.write(&OutputChunk {
            stream: OutputStream::Stderr,
            data: Bytes::from_static(b"err\n"),
        });
        let all = read_log(
            &path,
            &LogFilter {
                stdout: true,
                stderr: true,
                tail: None,
            },
        );
        let texts: Vec<_> = all
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .collect();
        assert_eq!(texts, vec!["one\n", "two\n", "part", "err\n"]);
        let stderr = read_log(
            &path,
            &LogFilter {
                stdout: false,
                stderr: true,
                tail: None,
            },
        );
        assert_eq!(stderr.len(), 1);
        assert_eq!(stderr[0].stream, OutputStream::Stderr);
        let tail = read_log(
            &path,
            &LogFilter {
                stdout: true,
                stderr: true,
                tail: Some(2),
            },
        );
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].data, b"err\n");
    }

    #[test]
    fn followers_see_each_chunk_once() {
        let hub = OutputHub::default();
        let chunk = |text: &'static str| OutputChunk {
            stream: OutputStream::Stdout,
            data: Bytes::from_static(text.as_bytes()),
        };
        let mut log: Vec<&str> = Vec::new();
        hub.record_and_publish(&chunk("before"), || log.push("before"));
        let (seen, mut live) = hub.subscribe_after(|| log.clone());
        hub.record_and_publish(&chunk("after"), || log.push("after"));
        assert_eq!(seen, vec!["before"]);
        assert_eq!(live.try_recv().unwrap().data, Bytes::from_static(b"after"));
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn hub_delivers_until_closed() {
        let hub = OutputHub::default();
        let mut receiver = hub.subscribe();
        hub.publish(&OutputChunk {
            stream: OutputStream::Stdout,
            data: Bytes::from_static(b"x"),
        });
        hub.close();
        assert_eq!(receiver.try_recv().unwrap().data, Bytes::from_static(b"x"));
        assert!(receiver.try_recv().is_err());
    }
}
