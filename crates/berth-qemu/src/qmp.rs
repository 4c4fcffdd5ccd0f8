//! A minimal QMP (QEMU Machine Protocol) client.
//!
//! QMP is newline-delimited JSON over a unix socket: a greeting, `qmp_capabilities`, then
//! commands `{"execute": ...}` answered by `{"return": ...}` or `{"error": ...}`, with
//! asynchronous `{"event": ...}` objects in between. Written by hand: the `qapi` crates
//! generate bindings for QEMU's entire schema at build time, and Berth uses a handful of
//! commands.

use std::path::Path;
use std::time::Duration;

use berth_vm::VmError;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest line accepted from QEMU.
const MAX_LINE: usize = 1 << 20;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected QMP session in command mode.
pub struct QmpClient {
    stream: BufReader<UnixStream>,
}

impl QmpClient {
    /// Connects (retrying briefly while QEMU creates the socket) and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, VmError> {
        // QEMU makes the socket a little after it starts (after the agent's channel):
        // retried often, since every clone waits here.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(VmError::Io("connecting to QMP", error))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        let mut client = Self {
            stream: BufReader::new(stream),
        };
        let greeting = client.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Monitor(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    async fn read_message(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let read = tokio::time::timeout(
            REPLY_TIMEOUT,
            (&mut self.stream)
                .take(MAX_LINE as u64)
                .read_line(&mut line),
        )
        .await
        .map_err(|_| VmError::Timeout("answer on QMP", REPLY_TIMEOUT))?
        .map_err(|e| VmError::Io("reading QMP", e))?;
        if read == 0 {
            // QEMU closes its monitor only when it exits.
            return Err(VmError::Gone);
        }
        serde_json::from_str(&line).map_err(|e| VmError::Monitor(format!("bad QMP message: {e}")))
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| VmError::Io("writing QMP", e))?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(error) = message.get("error") {
                let description = error["desc"].as_str().unwrap_or_default();
                // QEMU's wording for an id in use ("Duplicate device ID ...", "Duplicate
                // node name"): only this backend knows it.
                if description.starts_with("Duplicate") {
                    return Err(VmError::AlreadyAttached(description.to_owned()));
                }
                return Err(VmError::Monitor(format!("{command}: {error}")));
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
        }
    }

    /// The VM's run state (`running`, `paused`, ...).
    pub async fn query_status(&mut self) -> Result<String, VmError> {
        let status = self.execute("query-status", None).await?;
        Ok(status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }

    /// Polls `query-migrate` until the migration ends; errors unless it completed.
    pub async fn wait_for_migration(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", None).await?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let detail = info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no detail");
                    return Err(VmError::Monitor(format!("migration failed: {detail}")));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(VmError::Timeout("finish its snapshot", timeout));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Turns on `x-ignore-shared`: RAM in a shared memory backend is not copied.
    pub async fn ignore_shared_memory(&mut self) -> Result<(), VmError> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
        )
        .await
        .map(|_| ())
    }

    /// Asks QEMU to exit at once.
    pub async fn quit(&mut self) -> Result<(), VmError> {
        self.execute("quit", None).await.map(|_| ())
    }
}

/// Quotes a path for the shell command of an `exec:` migration URI.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
