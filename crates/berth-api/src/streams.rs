//! Attach (a hijacked connection) and logs.
//!
//! Stream format: a container without a terminal has its stdout and stderr multiplexed
//! in frames of an 8-byte header `[stream, 0, 0, 0, size as u32 big-endian]` (stream 1
//! stdout, 2 stderr) followed by `size` bytes. A container with a terminal has one raw
//! stream. Attach upgrades the HTTP connection (`101 UPGRADED`, `Upgrade: tcp`) and then
//! carries output to the client and the client's input to the container until the
//! process exits; a client that sends no `Upgrade` header gets the output as a body.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_engine::{LogFilter, OutputChunk, OutputStream};
use bytes::{BufMut, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::containers::flag;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

const RAW: &str = "application/vnd.docker.raw-stream";
const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";

/// One multiplexed frame.
pub fn frame(stream: OutputStream, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u8(match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
    });
    out.put_bytes(0, 3);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// Which streams a client wants, and how output is encoded for it.
#[derive(Clone, Copy)]
pub(crate) struct Encoding {
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Encoding {
    fn encode(&self, stream: OutputStream, data: &[u8]) -> Option<Bytes> {
        let wanted = match stream {
            OutputStream::Stdout => self.stdout,
            OutputStream::Stderr => self.stderr,
        };
        if !wanted {
            return None;
        }
        Some(if self.tty {
            Bytes::copy_from_slice(data)
        } else {
            frame(stream, data)
        })
    }

    fn content_type(&self) -> &'static str {
        if self.tty {
            RAW
        } else {
            MULTIPLEXED
        }
    }
}

/// `POST /containers/{id}/attach`.
pub async fn attach(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    mut request: Request,
) -> ApiResult<Response> {
    let options = berth_engine::AttachOptions {
        stdin: flag(&params, "stdin"),
        logs: flag(&params, "logs"),
        stream: flag(&params, "stream"),
    };
    let attachment = engine.attach_container(&id, options)?;
    let encoding = Encoding {
        stdout: flag(&params, "stdout"),
        stderr: flag(&params, "stderr"),
        tty: attachment.tty,
    };
    let stdin_once = engine.stdin_once(&id);
    let detach_keys = parse_detach_keys(params.get("detachKeys").map(String::as_str))?;
    Ok(serve_attachment(
        &mut request,
        attachment,
        encoding,
        stdin_once,
        detach_keys,
    ))
}

/// Docker's detach keys (`ctrl-p,ctrl-q` by default): `ctrl-<letter>` or one of
/// `@[\\]^_`, or a single character, comma-separated.
pub(crate) fn parse_detach_keys(text: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or("ctrl-p,ctrl-q");
    let mut keys = Vec::new();
    for key in text.split(',') {
        let invalid = || ApiError::bad_request(format!("Invalid detach keys ({key}) provided"));
        match key.strip_prefix("ctrl-") {
            Some(rest) if rest.len() == 1 => {
                let c = rest.as_bytes()[0].to_ascii_lowercase();
                keys.push(match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(invalid()),
                });
            }
            Some(_) => return Err(invalid()),
            None if key.len() == 1 => keys.push(key.as_bytes()[0]),
            None => return Err(invalid()),
        }
    }
    Ok(keys)
}

/// Finds the detach sequence in input: returns how many bytes to forward and whether
/// the sequence completed. `matched` carries a partial match across reads.
fn scan_for_detach(keys: &[u8], matched: &mut usize, input: &[u8], forward: &mut Vec<u8>) -> bool {
    for &byte in input {
        if byte == keys[*matched] {
            *matched += 1;
            if *matched == keys.len() {
                return true;
            }
        } else {
            // Not the sequence after all: what was held back goes through.
            forward.extend_from_slice(&keys[..*matched]);
            *matched = 0;
            if byte == keys[0] {
                *matched = 1;
                if keys.len() == 1 {
                    return true;
                }
            } else {
                forward.push(byte);
            }
        }
    }
    false
}

/// Carries an attachment over the request's connection: upgraded to a raw stream when the
/// client asks for it (output out, input in), else as a streamed response body.
pub(crate) fn serve_attachment(
    request: &mut Request,
    attachment: berth_engine::Attachment,
    encoding: Encoding,
    stdin_once: bool,
    detach_keys: Vec<u8>,
) -> Response {
    let wants_upgrade = request.headers().get(header::UPGRADE).is_some();
    if !wants_upgrade {
        let body = futures_util::stream::unfold(attachment.output, move |mut output| async move {
            loop {
                let chunk = output.recv().await?;
                if let Some(bytes) = encoding.encode(chunk.stream, &chunk.data) {
                    return Some((Ok::<_, std::io::Error>(bytes), output));
                }
            }
        });
        return (
            [(header::CONTENT_TYPE, encoding.content_type())],
            Body::from_stream(body),
        )
            .into_response();
    }

    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => pump(upgraded, attachment, encoding, stdin_once, detach_keys).await,
            Err(error) => tracing::warn!(%error, "attach upgrade failed"),
        }
    });
    upgraded_response(encoding)
}

/// The `101 UPGRADED` answer that turns the connection into a raw stream.
pub(crate) fn upgraded_response(encoding: Encoding) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    response
}

/// Copies output to the upgraded connection and its input to the process, until the
/// output ends; then closes the connection.
pub(crate) async fn pump(
    upgraded: hyper::upgrade::Upgraded,
    attachment: berth_engine::Attachment,
    encoding: Encoding,
    stdin_once: bool,
    detach_keys: Vec<u8>,
) {
    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
    let mut output = attachment.output;
    let detached = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(stdin) = attachment.stdin {
        let detached = detached.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            let mut matched = 0;
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut forward = Vec::with_capacity(n);
                        let done = !detach_keys.is_empty()
                            && scan_for_detach(
                                &detach_keys,
                                &mut matched,
                                &buffer[..n],
                                &mut forward,
                            );
                        if detach_keys.is_empty() {
                            forward.extend_from_slice(&buffer[..n]);
                        }
                        if !forward.is_empty() {
                            stdin.send(Bytes::from(forward));
                        }
                        if done {
                            // The client lets go; the container runs on.
                            detached.notify_one();
                            return;
                        }
                    }
                }
            }
            if stdin_once {
                stdin.close();
            }
        });
    }
    loop {
        let chunk = tokio::select! {
            chunk = output.recv() => chunk,
            _ = detached.notified() => break,
        };
        let Some(chunk) = chunk else { break };
        if let Some(bytes) = encoding.encode(chunk.stream, &chunk.data) {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Writes one message as output and closes an upgraded connection.
pub(crate) async fn write_and_close(
    upgraded: hyper::upgrade::Upgraded,
    encoding: Encoding,
    message: &str,
) {
    let mut io = TokioIo::new(upgraded);
    if let Some(bytes) = encoding.encode(OutputStream::Stdout, message.as_bytes()) {
        let _ = io.write_all(&bytes).await;
    }
    let _ = io.shutdown().await;
}

/// `GET /containers/{id}/logs`.
/// `since`/`until` as nanoseconds; Docker's `0` means "not set".
fn time_param(params: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match params.get(key).map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(value) => {
            crate::events::parse_time_nanos(value, chrono::Utc::now().timestamp()).map(Some)
        }
    }
}

pub async fn logs(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let filter = LogFilter {
        stdout: flag(&params, "stdout"),
        stderr: flag(&params, "stderr"),
        tail: params
            .get("tail")
            .filter(|t| t.as_str() != "all")
            .and_then(|t| t.parse().ok()),
        since: time_param(&params, "since")?,
        until: time_param(&params, "until")?,
    };
    if !filter.stdout && !filter.stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let timestamps = flag(&params, "timestamps");
    let berth_engine::ContainerLogs { entries, live, tty } = engine.container_logs(
        &id,
        &filter,
        flag(&params, "follow") && filter.until.is_none(),
    )?;
    let encoding = Encoding {
        stdout: filter.stdout,
        stderr: filter.stderr,
        tty,
    };
    let mut head = BytesMut::new();
    for entry in entries {
        let data = if timestamps {
            [entry.time.as_bytes(), b" ", &entry.data].concat()
        } else {
            entry.data
        };
        if let Some(bytes) = encoding.encode(entry.stream, &data) {
            head.extend_from_slice(&bytes);
        }
    }
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head.freeze()) });
    let body = match live {
        None => Body::from_stream(head),
        Some(live) => {
            let tail = futures_util::stream::unfold(live, move |mut live| async move {
                loop {
                    let chunk: OutputChunk = live.recv().await?;
                    let data = if timestamps {
                        Bytes::from(
                            [berth_engine::now_rfc3339().as_bytes(), b" ", &chunk.data].concat(),
                        )
                    } else {
                        chunk.data.clone()
                    };
                    if let Some(bytes) = encoding.encode(chunk.stream, &data) {
                        return Some((Ok::<_, std::io::Error>(bytes), live));
                    }
                }
            });
            Body::from_stream(futures_util::StreamExt::chain(head, tail))
        }
    };
    Ok(([(header::CONTENT_TYPE, encoding.content_type())], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplexed_frame_layout() {
        let bytes = frame(OutputStream::Stderr, b"hey");
        assert_eq!(&bytes[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'e', b'y']);
        let encoding = Encoding {
            stdout: true,
            stderr: false,
            tty: false,
        };
        assert!(encoding.encode(OutputStream::Stderr, b"x").is_none());
        assert_eq!(encoding.encode(OutputStream::Stdout, b"x").unwrap()[0], 1);
        let raw = Encoding {
            stdout: true,
            stderr: true,
            tty: true,
        };
        assert_eq!(&raw.encode(OutputStream::Stdout, b"x").unwrap()[..], b"x");
    }
}
