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

impl OutputChunk {
    /// Output the agent sent in a frame of `kind` (stderr frames are stderr, the rest
    /// stdout).
    pub(crate) fn from_agent(kind: berth_agent_proto::FrameKind, data: Vec<u8>) -> Self {
        let stream = if kind == berth_agent_proto::FrameKind::Stderr {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        };
        Self {
            stream,
            data: Bytes::from(data),
        }
    }
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

/// How a container's log is kept: Docker's json-file options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogLimits {
    /// `max-size` in bytes: the log is rotated when it would grow past it.
    pub max_size: Option<u64>,
    /// `max-file`: how many files (the current one and rotated ones) are kept.
    pub max_files: u32,
}

/// Parses Docker's size form: `10m`, `512k`, `1g`, or bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (number, unit) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1u64 << 10),
        'm' => (&text[..text.len() - 1], 1 << 20),
        'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    number.parse::<u64>().ok().map(|n| n * unit)
}

impl LogLimits {
    /// From `--log-driver` and `--log-opt`: json-file (the default) with `max-size` and
    /// `max-file`, or `none`. Docker's other drivers are refused with the reason; a name
    /// Docker does not know either is refused in Docker's words.
    pub fn from_config(
        driver: Option<&str>,
        options: &std::collections::HashMap<String, String>,
    ) -> Result<Option<Self>, EngineError> {
        match driver {
            None | Some("") | Some("json-file") => {}
            Some("none") => return Ok(None),
            Some(other) if DOCKER_LOG_DRIVERS.contains(&other) => {
                return Err(EngineError::NotSupported(format!(
                    "log driver {other:?} is not supported by Berth (json-file or none)"
                )))
            }
            Some(other) => {
                return Err(EngineError::InvalidArgument(format!(
                    "logger: no log driver named '{other}' is registered"
                )))
            }
        }
        let mut limits = LogLimits {
            max_size: None,
            max_files: 1,
        };
        for (key, value) in options {
            match key.as_str() {
                "max-size" if value == "-1" => {}
                "max-size" => {
                    limits.max_size =
                        Some(parse_size(value).filter(|s| *s > 0).ok_or_else(|| {
                            EngineError::InvalidArgument(format!("invalid max-size {value:?}"))
                        })?)
                }
                "max-file" => {
                    limits.max_files = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        EngineError::InvalidArgument(format!("invalid max-file {value:?}"))
                    })?
                }
                "mode" | "labels" | "env" | "tag" | "compress" => {}
                other => {
                    return Err(EngineError::InvalidArgument(format!(
                        "unknown log opt '{other}' for json-file log driver"
                    )))
                }
            }
        }
        // As Docker: `max-file` without `max-size` is accepted, and means nothing (the
        // log is never rotated).
        Ok(Some(limits))
    }
}

/// The log drivers Docker ships, which Berth refuses by name (it keeps json-file logs).
const DOCKER_LOG_DRIVERS: &[&str] = &[
    "local",
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "etwlogs",
    "gcplogs",
    "logentries",
];

/// The `n`-th rotated file of the log at `path` (`container.log.1` is the newest).
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Appends output to the json-file log, rotating it at `max-size`.
pub struct LogWriter {
    file: Option<File>,
    path: PathBuf,
    limits: LogLimits,
    size: u64,
}

impl LogWriter {
    /// `limits` of `None`: the `none` driver, nothing is written.
    pub fn open_with(path: &Path, limits: Option<LogLimits>) -> Result<Self, EngineError> {
        let Some(limits) = limits else {
            return Ok(Self {
                file: None,
                path: path.to_path_buf(),
                limits: LogLimits::default(),
                size: 0,
            });
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(EngineError::io(path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
            limits,
            size,
        })
    }

    /// Moves `container.log` to `.1` (and `.1` to `.2`, ...), dropping the oldest.
    fn rotate(&mut self) {
        let keep = self.limits.max_files.saturating_sub(1);
        if keep == 0 {
            // max-file 1: the log starts over.
            if let Some(file) = &self.file {
                let _ = file.set_len(0);
            }
            self.size = 0;
            return;
        }
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }

    /// Writes a chunk as one log line per `\n`-terminated piece.
    pub fn write(&mut self, chunk: &OutputChunk) {
        if self.file.is_none() {
            return;
        }
        let time = crate::now_rfc3339();
        // One write per chunk, except where the log must rotate between two lines.
        let mut text = Vec::new();
        for piece in chunk.data.split_inclusive(|&byte| byte == b'\n') {
            let line = LogLine {
                log: String::from_utf8_lossy(piece).into_owned(),
                stream: chunk.stream,
                time: time.clone(),
            };
            let Ok(mut json) = serde_json::to_vec(&line) else {
                continue;
            };
            json.push(b'\n');
            if let Some(max) = self.limits.max_size {
                let pending = (self.size + (text.len() + json.len()) as u64) > max;
                if pending && self.size + text.len() as u64 > 0 {
                    self.append(&std::mem::take(&mut text));
                    self.rotate();
                }
            }
            text.extend_from_slice(&json);
        }
        self.append(&text);
    }

    fn append(&mut self, text: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if text.is_empty() {
            return;
        }
        match file.write_all(text) {
            Ok(()) => self.size += text.len() as u64,
            Err(error) => tracing::warn!(%error, "writing container log failed"),
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
    /// Only entries at or after this time (nanoseconds since the epoch).
    pub since: Option<i64>,
    /// Only entries before this time.
    pub until: Option<i64>,
}

fn entry_nanos(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0)
}

/// Reads the log at `path`, filtered. A missing log is an empty one.
pub fn read_log(path: &Path, filter: &LogFilter) -> Vec<LogEntry> {
    // Rotated files first, oldest first, then the current one.
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut entries: Vec<LogEntry> = files
        .iter()
        .filter_map(|path| File::open(path).ok())
        .flat_map(|file| BufReader::new(file).lines().map_while(Result::ok))
        .filter_map(|line| serde_json::from_str::<LogLine>(&line).ok())
        .filter(|line| match line.stream {
            OutputStream::Stdout => filter.stdout,
            OutputStream::Stderr => filter.stderr,
        })
        .filter(|line| {
            let at = || entry_nanos(&line.time);
            filter.since.is_none_or(|since| at() >= since)
                && filter.until.is_none_or(|until| at() < until)
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
        let mut writer = LogWriter::open_with(&path, Some(LogLimits::default())).unwrap();
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
                since: None,
                until: None,
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
                since: None,
                until: None,
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
                since: None,
                until: None,
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

    #[test]
    fn logs_rotate_at_max_size_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let options = std::collections::HashMap::from([
            ("max-size".to_owned(), "200".to_owned()),
            ("max-file".to_owned(), "3".to_owned()),
        ]);
        let limits = LogLimits::from_config(None, &options).unwrap();
        let mut writer = LogWriter::open_with(&path, limits).unwrap();
        for i in 0..20 {
            writer.write(&OutputChunk {
                stream: OutputStream::Stdout,
                data: Bytes::from(format!("line {i}\n")),
            });
        }
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "more files than max-file");
        let all = read_log(
            &path,
            &LogFilter {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        let texts: Vec<String> = all
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .collect();
        assert_eq!(texts.last().unwrap(), "line 19\n");
        assert!(texts.len() < 20, "nothing was dropped");
        let numbers: Vec<u32> = texts
            .iter()
            .map(|t| t.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        for (key, value) in [("max-size", "lots"), ("max-file", "0"), ("colour", "red")] {
            let options = std::collections::HashMap::from([(key.to_owned(), value.to_owned())]);
            assert!(
                LogLimits::from_config(None, &options).is_err(),
                "{key}={value}"
            );
        }
        let refused = LogLimits::from_config(Some("syslog"), &Default::default()).unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::NotSupported);
        let unknown = LogLimits::from_config(Some("bogus"), &Default::default()).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "logger: no log driver named 'bogus' is registered"
        );
        // max-file without max-size: accepted, as Docker.
        let options = std::collections::HashMap::from([("max-file".into(), "3".into())]);
        let limits = LogLimits::from_config(None, &options).unwrap().unwrap();
        assert_eq!(limits.max_size, None);
        assert_eq!(
            LogLimits::from_config(Some("none"), &Default::default()).unwrap(),
            None
        );
        assert_eq!(parse_size("10m"), Some(10 << 20));
    }

    #[test]
    fn since_and_until_select_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        std::fs::write(
            &path,
            "{\"log\":\"early\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.000000001Z\"}\n\
             {\"log\":\"late\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-02T00:00:00Z\"}\n",
        )
        .unwrap();
        let noon = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap();
        let filter = |since, until| LogFilter {
            stdout: true,
            stderr: true,
            tail: None,
            since,
            until,
        };
        assert_eq!(
            read_log(&path, &filter(Some(noon), None))[0].data,
            b"late\n"
        );
        assert_eq!(
            read_log(&path, &filter(None, Some(noon)))[0].data,
            b"early\n"
        );
        assert_eq!(read_log(&path, &filter(None, None)).len(), 2);
    }
}
