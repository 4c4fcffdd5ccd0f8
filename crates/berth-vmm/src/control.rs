//! The control socket: how the engine pauses, resumes and snapshots a running VM and
//! reads its disk counters.
//!
//! One request per connection, each a line of JSON, answered by one line of JSON:
//!
//! ```text
//! {"command":"pause"}            {"ok":true}
//! {"command":"resume"}           {"ok":true}
//! {"command":"snapshot","path":"/…/state"}   (the VM stays paused)
//! {"command":"block_stats"}      {"ok":true,"block_stats":[rb,wb,rops,wops]}
//! failures                       {"ok":false,"error":"…"}
//! ```
//! A request longer than [`MAX_REQUEST`] bytes or that does not parse is answered with
//! an error; the VM is not affected.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// Longest request line taken.
pub const MAX_REQUEST: u64 = 4096;

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Pause,
    Resume,
    Snapshot { path: PathBuf },
    BlockStats,
}

/// The answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes read, bytes written, reads, writes: all disks together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_stats: Option<[u64; 4]>,
}

fn answer(machine: &Machine, line: &str) -> ControlResponse {
    let request: ControlRequest = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(error) => {
            return ControlResponse {
                ok: false,
                error: Some(format!("bad request: {error}")),
                ..Default::default()
            }
        }
    };
    let result = match request {
        ControlRequest::Pause => machine.pause().map(|()| None),
        ControlRequest::Resume => machine.resume().map(|()| None),
        ControlRequest::Snapshot { path } => machine.snapshot(&path).map(|()| None),
        ControlRequest::BlockStats => Ok(Some(machine.block_stats())),
    };
    match result {
        Ok(block_stats) => ControlResponse {
            ok: true,
            block_stats,
            ..Default::default()
        },
        Err(error) => ControlResponse {
            ok: false,
            error: Some(crate::error_chain(&error)),
            ..Default::default()
        },
    }
}

/// Serves `listener` on a thread of its own for as long as the VM runs.
pub fn serve(listener: UnixListener, machine: Arc<Machine>) -> Result<(), crate::VmmError> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else {
                    continue;
                };
                let mut line = String::new();
                let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
                let response = match read {
                    Ok(_) if line.ends_with('\n') => answer(&machine, line.trim_end()),
                    _ => ControlResponse {
                        ok: false,
                        error: Some("a request is one line of JSON".into()),
                        ..Default::default()
                    },
                };
                let mut text = serde_json::to_string(&response).unwrap_or_default();
                text.push('\n');
                let _ = stream.write_all(text.as_bytes());
            }
        })
        .map_err(crate::VmmError::Thread)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let snapshot: ControlRequest =
            serde_json::from_str(r#"{"command":"snapshot","path":"/x/state"}"#).unwrap();
        assert_eq!(
            snapshot,
            ControlRequest::Snapshot {
                path: "/x/state".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Pause).unwrap(),
            r#"{"command":"pause"}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"command":"reboot"}"#).is_err());
    }
}
