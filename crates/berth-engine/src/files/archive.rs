//! `docker cp`: the archive API (`HEAD`, `GET` and `PUT /containers/{id}/archive`).
//!
//! The container's files are read and written inside its own VM, never by the host's
//! kernel: the agent runs its `berth-archive` helper chrooted in the container root (an
//! exec on a stream of its own; see `berth-agent`'s `archive` module) and the tar
//! crosses the agent channel as the helper's standard input or output. Paths are the
//! container's (a relative path is taken from `/`). A hostile archive meets the tar
//! reader's checks inside the guest and a chroot that has nothing of the host in it.
//!
//! For a stopped container the helper runs in a VM booted on its disk for the copy (see
//! `copy_vm`): the host never opens a container's filesystem, which is untrusted.

use std::sync::Arc;

use bollard_stubs::models::ExecConfig;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::agent::AgentError;
use crate::process::output::{OutputChunk, OutputStream};
use crate::vm::copy_vm::HelperRun;
use crate::{Engine, EngineError, StdinEvent};
use tokio::sync::oneshot;

/// Exit status of the helper for a path that does not exist.
const NOT_FOUND: i64 = 2;
/// Exit status of the helper for a write target that is not a directory.
const NOT_A_DIRECTORY: i64 = 3;
/// Exit status of the helper when the archive to extract is refused or broken.
const BAD_ARCHIVE: i64 = 4;
/// Largest stat answer read from the guest.
const MAX_STAT_LEN: usize = 64 * 1024;

fn container_path(path: &str) -> Result<String, EngineError> {
    if path.is_empty() {
        return Err(EngineError::InvalidArgument("path is required".into()));
    }
    if path.contains('\0') {
        return Err(EngineError::InvalidArgument(
            "path contains a NUL byte".into(),
        ));
    }
    Ok(if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    })
}

impl Engine {
    /// Runs `berth-archive OP PATH` in the container's VM, or, for a stopped container,
    /// in a VM booted on its disk for the purpose.
    async fn start_archive_helper(
        self: &Arc<Self>,
        reference: &str,
        op: &str,
        path: &str,
        stdin: bool,
    ) -> Result<HelperRun, EngineError> {
        let argv = vec!["berth-archive".to_owned(), op.to_owned(), path.to_owned()];
        // A copy reaches into the container's bind mounts and shared volumes, as
        // Docker's does; an export is of the container's own filesystem.
        let shares = op != "export";
        self.start_helper(reference, argv, stdin, false, shares)
            .await
    }

    /// Runs one of the agent's helpers (`argv[0]` names it) in the container's VM, or in
    /// a copy VM when the container is stopped; with `base_disk`, the image's root
    /// filesystem is attached to that VM first (read-only, serial `berth-base`); with
    /// `shares`, a copy VM has the container's shares mounted as its run would.
    pub(crate) async fn start_helper(
        self: &Arc<Self>,
        reference: &str,
        argv: Vec<String>,
        stdin: bool,
        base_disk: bool,
        shares: bool,
    ) -> Result<HelperRun, EngineError> {
        let handle = self.lookup(reference)?;
        let base = if base_disk {
            Some(self.base_disk_spec(&handle.snapshot().image_id)?)
        } else {
            None
        };
        let Some(runtime) = handle.runtime() else {
            return self
                .run_helper_in_copy_vm(handle, argv, stdin, base.into_iter().collect(), shares)
                .await;
        };
        if let Some(base) = base {
            let mut attached = runtime.base_disk.lock().await;
            if !*attached {
                match runtime.control.add_disk(&base).await {
                    Ok(()) => {}
                    // Attached by an engine before this one (live restore).
                    Err(berth_vm::VmError::AlreadyAttached(_)) => {}
                    Err(error) => return Err(error.into()),
                }
                *attached = true;
            }
        }
        let config = ExecConfig {
            cmd: Some(argv),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let id = self.create_exec_as(&handle.id, config, true)?;
        let exec = self.exec(&id)?;
        let attachment = self.start_exec(&id).await?;
        let (exit_sender, exit) = oneshot::channel();
        tokio::spawn(async move {
            let mut state = exec.state.subscribe();
            let code = loop {
                if let Some(code) = state.borrow().exit_code {
                    break code;
                }
                if state.changed().await.is_err() {
                    break -1;
                }
            };
            let _ = exit_sender.send(code);
        });
        Ok(HelperRun {
            output: attachment.output,
            stdin: attachment.stdin.map(|sink| sink.sender),
            exit,
        })
    }

    fn helper_error(path: &str, reference: &str, code: i64, stderr: &str) -> EngineError {
        match code {
            NOT_FOUND => EngineError::NotFound(format!(
                "Could not find the file {path} in container {reference}"
            )),
            NOT_A_DIRECTORY => {
                EngineError::InvalidArgument(format!("extraction point is not a directory: {path}"))
            }
            BAD_ARCHIVE => EngineError::InvalidArgument(format!(
                "extracting the archive into {path} failed: {}",
                stderr.trim().chars().take(1000).collect::<String>()
            )),
            _ => AgentError::HelperFailed {
                during: "copying",
                stderr: format!(
                    "{path}: {}",
                    stderr.trim().chars().take(1000).collect::<String>()
                ),
            }
            .into(),
        }
    }

    /// `HEAD /containers/{id}/archive`: Docker's PathStat of `path`, as JSON.
    pub async fn stat_container_path(
        self: &Arc<Self>,
        reference: &str,
        path: &str,
    ) -> Result<serde_json::Value, EngineError> {
        let path = container_path(path)?;
        let result = self
            .start_archive_helper(reference, "stat", &path, false)
            .await?
            .collect(MAX_STAT_LEN, "stat answer")
            .await?;
        if result.code != 0 {
            return Err(Self::helper_error(
                &path,
                reference,
                result.code,
                &String::from_utf8_lossy(&result.stderr),
            ));
        }
        parse_stat(&result.stdout)
    }

    /// `GET /containers/{id}/archive`: the stat of `path` and a tar of it, streamed.
    /// An error after the stream began ends it early (the client sees a short tar).
    pub async fn read_container_archive(
        self: &Arc<Self>,
        reference: &str,
        path: &str,
    ) -> Result<
        (
            serde_json::Value,
            impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        ),
        EngineError,
    > {
        let path = container_path(path)?;
        let mut run = self
            .start_archive_helper(reference, "read", &path, false)
            .await?;
        // The helper writes the stat line first, then the tar.
        let mut head = Vec::new();
        let mut stderr = Vec::new();
        let newline = loop {
            match run.output.recv().await {
                Some(OutputChunk {
                    stream: OutputStream::Stdout,
                    data,
                }) => {
                    head.extend_from_slice(&data);
                    if let Some(at) = head.iter().position(|&b| b == b'\n') {
                        break at;
                    }
                    if head.len() > MAX_STAT_LEN {
                        return Err(AgentError::TooLong("stat answer").into());
                    }
                }
                Some(OutputChunk { data, .. }) => {
                    if stderr.len() < MAX_STAT_LEN {
                        stderr.extend_from_slice(&data);
                    }
                }
                None => {
                    let code = run.exit.await.unwrap_or(-1);
                    return Err(Self::helper_error(
                        &path,
                        reference,
                        code,
                        &String::from_utf8_lossy(&stderr),
                    ));
                }
            }
        };
        let stat = parse_stat(&head[..newline])?;
        let first = Bytes::copy_from_slice(&head[newline + 1..]);
        let rest = helper_stdout(run.output, run.exit, stderr);
        let stream = futures_util::stream::once(async move { Ok(first) })
            .filter(|item: &Result<Bytes, std::io::Error>| {
                let keep = item.as_ref().map_or(true, |b| !b.is_empty());
                async move { keep }
            })
            .chain(rest);
        Ok((stat, stream))
    }

    /// `GET /containers/{id}/export`: the container's whole filesystem as a tar, streamed.
    pub async fn export_container(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, EngineError>
    {
        let run = self
            .start_archive_helper(reference, "export", "/", false)
            .await?;
        Ok(helper_stdout(run.output, run.exit, Vec::new()))
    }

    /// `PUT /containers/{id}/archive`: extracts the tar `body` into the directory `path`.
    pub async fn write_container_archive<S, E>(
        self: &Arc<Self>,
        reference: &str,
        path: &str,
        body: S,
    ) -> Result<(), EngineError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let path = container_path(path)?;
        let record = self.lookup(reference)?.snapshot();
        // As Docker: a read-only root takes files only into its writable volumes.
        let into_volume = record.mounts.iter().any(|m| {
            !m.read_only && (path == m.target || path.starts_with(&format!("{}/", m.target)))
        });
        if record.host_config.readonly_rootfs == Some(true) && !into_volume {
            return Err(EngineError::Forbidden(
                "container rootfs is marked read-only".into(),
            ));
        }
        let mut run = self
            .start_archive_helper(reference, "write", &path, true)
            .await?;
        let stdin = run
            .stdin
            .take()
            .ok_or(AgentError::VmEnded("before the copy helper took its input"))?;
        let mut body = body;
        let mut stderr = Vec::new();
        let mut body_done = false;
        let mut body_error = None;
        loop {
            tokio::select! {
                chunk = body.next(), if !body_done => match chunk {
                    Some(Ok(data)) => {
                        let _ = stdin.send(StdinEvent::Data(data));
                    }
                    Some(Err(error)) => {
                        body_error = Some(error.to_string());
                        body_done = true;
                        let _ = stdin.send(StdinEvent::Close);
                    }
                    None => {
                        body_done = true;
                        let _ = stdin.send(StdinEvent::Close);
                    }
                },
                chunk = run.output.recv() => match chunk {
                    Some(OutputChunk { data, .. }) => {
                        if stderr.len() < MAX_STAT_LEN {
                            stderr.extend_from_slice(&data);
                        }
                    }
                    None => break,
                },
            }
        }
        let code = run.exit.await.unwrap_or(-1);
        if let Some(error) = body_error {
            return Err(EngineError::InvalidArgument(format!(
                "reading the archive from the request: {error}"
            )));
        }
        if code != 0 {
            return Err(Self::helper_error(
                &path,
                reference,
                code,
                &String::from_utf8_lossy(&stderr),
            ));
        }
        Ok(())
    }
}

/// Docker's PathStat from the helper's JSON line (Unix mode and seconds): the mode as
/// Go's `os.FileMode`, the time in RFC 3339. The guest is untrusted: only these fields
/// pass, typed.
fn parse_stat(line: &[u8]) -> Result<serde_json::Value, EngineError> {
    let stat: serde_json::Value =
        serde_json::from_slice(line).map_err(|source| AgentError::Malformed {
            what: "stat answer",
            source,
        })?;
    let mode = stat["mode"].as_u64().unwrap_or(0) as u32;
    let mtime = chrono::DateTime::from_timestamp(stat["mtime"].as_i64().unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(serde_json::json!({
        "name": stat["name"].as_str().unwrap_or_default(),
        "size": stat["size"].as_i64().unwrap_or(0),
        "mode": go_file_mode(mode),
        "mtime": mtime,
        "linkTarget": stat["link_target"].as_str().unwrap_or_default(),
    }))
}

/// Go's `os.FileMode` bits (what the Docker CLI reads) for a Unix `st_mode`.
fn go_file_mode(mode: u32) -> u32 {
    const S_IFMT: u32 = 0o170_000;
    let mut go = mode & 0o777;
    go |= match mode & S_IFMT {
        0o040_000 => 1 << 31,               // directory
        0o120_000 => 1 << 27,               // symlink
        0o010_000 => 1 << 25,               // named pipe
        0o140_000 => 1 << 24,               // socket
        0o060_000 => 1 << 26,               // block device
        0o020_000 => (1 << 26) | (1 << 21), // character device
        _ => 0,
    };
    for (unix, go_bit) in [(0o4000, 1 << 23), (0o2000, 1 << 22), (0o1000, 1 << 20)] {
        if mode & unix != 0 {
            go |= go_bit;
        }
    }
    go
}

/// The rest of a helper's stdout as a byte stream; a helper that fails ends the stream
/// with an error (the client sees a short archive), after logging why.
fn helper_stdout(
    output: tokio::sync::mpsc::UnboundedReceiver<OutputChunk>,
    exit: oneshot::Receiver<i64>,
    stderr: Vec<u8>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(
        (output, Some(exit), stderr),
        |(mut output, mut exit, mut stderr)| async move {
            loop {
                match output.recv().await {
                    Some(OutputChunk {
                        stream: OutputStream::Stdout,
                        data,
                    }) => return Some((Ok(data), (output, exit, stderr))),
                    Some(OutputChunk { data, .. }) => {
                        if stderr.len() < MAX_STAT_LEN {
                            stderr.extend_from_slice(&data);
                        }
                    }
                    None => {
                        let code = match exit.take() {
                            Some(exit) => exit.await.unwrap_or(-1),
                            None => return None,
                        };
                        if code == 0 {
                            return None;
                        }
                        let message = String::from_utf8_lossy(&stderr).trim().to_owned();
                        tracing::warn!(code, %message, "reading an archive from a container failed");
                        return Some((
                            Err(std::io::Error::other(message)),
                            (output, None, Vec::new()),
                        ));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_stats_become_dockers_path_stat() {
        let stat = parse_stat(
            br#"{"name":"etc","size":4096,"mode":16877,"mtime":1767225600,"link_target":"","extra":"dropped"}"#,
        )
        .expect("parses");
        assert_eq!(stat["mode"], (1u64 << 31) | 0o755);
        assert_eq!(stat["mtime"], "2026-01-01T00:00:00Z");
        assert!(stat.get("extra").is_none());
        assert_eq!(go_file_mode(0o104_755), (1 << 23) | 0o755);
        assert_eq!(go_file_mode(0o120_777), (1 << 27) | 0o777);
        assert!(parse_stat(b"not json").is_err());
    }
}
