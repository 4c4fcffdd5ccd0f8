//! The control socket: how the engine pauses, resumes and snapshots a running VM, reads
//! its disk counters, and hot-plugs disks and NICs.
//!
//! One request per connection, each a line of JSON, answered by one line of JSON:
//!
//! ```text
//! {"command":"pause"}            {"ok":true}
//! {"command":"resume"}           {"ok":true}
//! {"command":"snapshot","path":"/…/state"}   (the VM stays paused)
//! {"command":"block_stats"}      {"ok":true,"block_stats":[rb,wb,rops,wops]}
//! {"command":"add_disk","slot":16,"read_only":false,"serial":"…"}   + a raw disk's fd
//! {"command":"add_nic","slot":9,"mac":"02:…"}                       + a tap's fd
//! {"command":"replace_disk","slot":2,"format":"qcow2"}  + the image's fd [+ its backing file's]
//!                                (the disk in that slot serves from the new image)
//! {"command":"remove","slot":9}  {"ok":true}  (the guest is asked; see `slots`)
//! {"command":"slots"}            {"ok":true,"slots":[0,2,3,4,8,9]}
//! {"command":"set_memory","bytes":N}  {"ok":true}  (the balloon takes the rest)
//! {"command":"balloon"}          {"ok":true,"balloon":[target,actual,given_back_bytes]}
//! failures                       {"ok":false,"error":"…"}
//!                                ("code":"slot_in_use" when the slot is taken)
//! ```
//! The descriptors of an `add_` or `replace_` request travel with the request's bytes as
//! `SCM_RIGHTS` ancillary data (at most [`MAX_DESCRIPTORS`]): the VMM opens no file
//! itself (see `hotplug`). A request
//! longer than [`MAX_REQUEST`] bytes, that does not parse, or that lacks its descriptor
//! is answered with an error; the VM is not affected.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::machine::Machine;

/// Longest request line taken.
pub const MAX_REQUEST: u64 = 4096;
/// Most descriptors a request carries (a disk image and its backing file).
pub const MAX_DESCRIPTORS: usize = 2;

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Pause,
    Resume,
    Snapshot {
        path: PathBuf,
    },
    BlockStats,
    AddDisk {
        slot: u8,
        read_only: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
    },
    AddNic {
        slot: u8,
        mac: String,
    },
    Remove {
        slot: u8,
    },
    ReplaceDisk {
        slot: u8,
        format: crate::config::DiskFormat,
    },
    Slots,
    SetMemory {
        bytes: u64,
    },
    Balloon,
}

/// [`ControlResponse::code`] of a request for a slot that has a device already.
pub const CODE_SLOT_IN_USE: &str = "slot_in_use";

/// The answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes read, bytes written, reads, writes: all disks together.
    /// What kind of failure, where the engine acts on it ([`CODE_SLOT_IN_USE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_stats: Option<[u64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<u8>>,
    /// The balloon's target and actual size in 4 KiB pages, and the bytes it has given
    /// back to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<[u64; 3]>,
}

/// What an answer carries besides `ok`.
#[derive(Default)]
struct Answer {
    block_stats: Option<[u64; 4]>,
    slots: Option<Vec<u8>>,
    balloon: Option<[u64; 3]>,
}

fn answer(machine: &Machine, line: &str, files: Vec<File>) -> ControlResponse {
    let mut files = files.into_iter();
    let file = files.next();
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
    let descriptor = |file: Option<File>| {
        file.ok_or_else(|| {
            crate::VmmError::Device("the request came without its descriptor".into())
        })
    };
    let nothing = |()| Answer::default();
    let result = match request {
        ControlRequest::Pause => machine.pause().map(nothing),
        ControlRequest::Resume => machine.resume().map(nothing),
        ControlRequest::Snapshot { path } => machine.snapshot(&path).map(nothing),
        ControlRequest::BlockStats => Ok(Answer {
            block_stats: Some(machine.block_stats()),
            ..Default::default()
        }),
        ControlRequest::AddDisk {
            slot,
            read_only,
            serial,
        } => descriptor(file)
            .and_then(|file| machine.add_disk(slot, file, read_only, serial.as_deref()))
            .map(nothing),
        ControlRequest::AddNic { slot, mac } => descriptor(file)
            .and_then(|file| machine.add_nic(slot, file, &mac))
            .map(nothing),
        ControlRequest::Remove { slot } => machine.remove(slot).map(nothing),
        ControlRequest::ReplaceDisk { slot, format } => descriptor(file)
            .and_then(|image| machine.replace_disk(slot, image, format, files.next()))
            .map(nothing),
        ControlRequest::Slots => Ok(Answer {
            slots: Some(machine.occupied_slots()),
            ..Default::default()
        }),
        ControlRequest::SetMemory { bytes } => machine.set_memory(bytes).map(nothing),
        ControlRequest::Balloon => Ok(Answer {
            balloon: Some([
                u64::from(machine.balloon.target_pages()),
                u64::from(machine.balloon.actual_pages()),
                machine.balloon.given_back_bytes(),
            ]),
            ..Default::default()
        }),
    };
    match result {
        Ok(answer) => ControlResponse {
            ok: true,
            block_stats: answer.block_stats,
            slots: answer.slots,
            balloon: answer.balloon,
            ..Default::default()
        },
        Err(error) => ControlResponse {
            ok: false,
            code: matches!(error, crate::VmmError::SlotInUse(_)).then(|| CODE_SLOT_IN_USE.into()),
            error: Some(crate::error_chain(&error)),
            ..Default::default()
        },
    }
}

/// Reads one request line, and the descriptors that came with it.
fn read_request(stream: &UnixStream) -> Result<(String, Vec<File>), &'static str> {
    const MALFORMED: &str = "a request is one line of JSON";
    let mut buffer = vec![0u8; MAX_REQUEST as usize];
    let mut filled = 0;
    let mut files = Vec::new();
    loop {
        if filled == buffer.len() {
            return Err(MALFORMED);
        }
        let (count, received) =
            receive_with_files(stream, &mut buffer[filled..]).map_err(|_| MALFORMED)?;
        if files.len() + received.len() > MAX_DESCRIPTORS {
            return Err("a request carries at most two descriptors");
        }
        files.extend(received);
        if count == 0 {
            return Err(MALFORMED);
        }
        filled += count;
        if let Some(end) = buffer[..filled].iter().position(|byte| *byte == b'\n') {
            buffer.truncate(end);
            let line = String::from_utf8(buffer).map_err(|_| MALFORMED)?;
            return Ok((line, files));
        }
    }
}

/// One `recvmsg` into `buffer`, with up to [`MAX_DESCRIPTORS`] descriptors (the kernel
/// closes any beyond them).
fn receive_with_files(
    stream: &UnixStream,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Vec<File>)> {
    use std::os::fd::FromRawFd;
    let mut descriptors = [-1; MAX_DESCRIPTORS];
    let mut iovecs = [libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    }];
    // SAFETY: the one iovec points at `buffer`, which is borrowed mutably for the call and
    // may take any bytes.
    let (count, received) = unsafe { stream.recv_with_fds(&mut iovecs, &mut descriptors) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let files = descriptors[..received.min(MAX_DESCRIPTORS)]
        .iter()
        // SAFETY: each of the first `received` descriptors was just received, so this
        // process owns it and nothing else holds it.
        .map(|descriptor| unsafe { File::from_raw_fd(*descriptor) })
        .collect();
    Ok((count, files))
}

/// How long the control thread waits for a client's request, or for it to take the
/// answer.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `listener` on a thread of its own for as long as the VM runs.
pub fn serve(listener: UnixListener, machine: Arc<Machine>) -> Result<(), crate::VmmError> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else {
                    continue;
                };
                // One client at a time: one that connects and goes quiet must not hold
                // the socket from the next for good.
                let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
                let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                let response = match read_request(&stream) {
                    Ok((line, files)) => answer(&machine, line.trim_end(), files),
                    Err(error) => ControlResponse {
                        ok: false,
                        error: Some(error.into()),
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
        let disk: ControlRequest = serde_json::from_str(
            r#"{"command":"add_disk","slot":16,"read_only":true,"serial":"berth-vol0"}"#,
        )
        .unwrap();
        assert_eq!(
            disk,
            ControlRequest::AddDisk {
                slot: 16,
                read_only: true,
                serial: Some("berth-vol0".into())
            }
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Remove { slot: 9 }).unwrap(),
            r#"{"command":"remove","slot":9}"#
        );
        assert!(
            serde_json::from_str::<ControlRequest>(r#"{"command":"add_nic","slot":300,"mac":"x"}"#)
                .is_err(),
            "slots are bytes"
        );
    }

    #[test]
    fn a_request_is_read_with_its_descriptor_across_several_writes() {
        let (client, server) = UnixStream::pair().unwrap();
        let disk = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        client
            .send_with_fd(&br#"{"command":"add_disk","#[..], disk.as_raw_fd())
            .unwrap();
        (&client)
            .write_all(br#""slot":16,"read_only":false}"#)
            .unwrap();
        (&client).write_all(b"\n").unwrap();
        let (line, files) = read_request(&server).unwrap();
        assert!(line.ends_with("false}"), "{line}");
        assert_eq!(files.len(), 1);
        // A disk image and its backing file travel together; a third is refused.
        let (client, server) = UnixStream::pair().unwrap();
        let (image, backing) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        client
            .send_with_fds(
                &[&br#"{"command":"replace_disk","slot":4,"format":"qcow2"}"#[..]],
                &[image.as_raw_fd(), backing.as_raw_fd()],
            )
            .unwrap();
        (&client).write_all(b"\n").unwrap();
        let (line, files) = read_request(&server).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&line).unwrap(),
            ControlRequest::ReplaceDisk {
                slot: 4,
                format: crate::config::DiskFormat::Qcow2
            }
        );
        let (client, server) = UnixStream::pair().unwrap();
        client
            .send_with_fds(&[&b"{"[..]], &[image.as_raw_fd(), backing.as_raw_fd()])
            .unwrap();
        client.send_with_fd(&b"}"[..], image.as_raw_fd()).unwrap();
        (&client).write_all(b"\n").unwrap();
        assert!(read_request(&server).is_err(), "three descriptors taken");
        // No newline before the end: refused.
        let (client, server) = UnixStream::pair().unwrap();
        (&client).write_all(b"{\"command\":\"slots\"}").unwrap();
        drop(client);
        assert!(read_request(&server).is_err());
        // Too long: refused without reading forever.
        let (client, server) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let _ = (&client).write_all(&vec![b' '; MAX_REQUEST as usize + 10]);
        });
        assert!(read_request(&server).is_err());
    }
}
