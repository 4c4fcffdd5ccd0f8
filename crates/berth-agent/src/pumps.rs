//! The threads that copy a process's output (its pipes, or its terminal's controlling
//! side) to the channel as data frames of its stream.
//!
//! A process's `Exited` follows all of its output, so its end is told once every pump
//! has read its end of file. But the end of file comes only when every holder of the
//! pipe's write end has closed it, and a process the exited one left running in the
//! background (`sh -c 'daemon &'`) may hold it for as long as it runs. So an exec's
//! pumps are waited for only while they make progress ([`Pumps::finish`]): after
//! [`EXEC_OUTPUT_QUIET`] without a byte, or [`EXEC_OUTPUT_LIMIT`] in all, they are muted
//! (nothing more of the stream is sent: no frame of a stream follows its `Exited`) and
//! the end is told, as Docker tells an exec's end after waiting at most 2 s for its
//! streams. A container's first process is waited for to the end: everything in its
//! container is killed with it, which closes the pipes.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_agent_proto::FrameKind;

use crate::channel::Channel;

/// How long an exited exec's pumps may go without reading a byte.
pub const EXEC_OUTPUT_QUIET: Duration = Duration::from_secs(2);
/// How long an exited exec's pumps are waited for in all.
pub const EXEC_OUTPUT_LIMIT: Duration = Duration::from_secs(10);

/// The pumps of one process.
#[derive(Default)]
pub struct Pumps {
    threads: Vec<JoinHandle<()>>,
    /// Bytes read so far, by all of them: progress.
    read: Arc<AtomicU64>,
    /// Set, under its lock, once the process's end is told without them: a pump
    /// sends a frame only while holding the lock and finding it unset.
    muted: Arc<Mutex<bool>>,
}

impl Pumps {
    /// Starts a pump copying `source` to `channel` as `kind` frames of `stream`.
    pub fn add(&mut self, mut source: File, channel: Channel, stream: u32, kind: FrameKind) {
        let (read, muted) = (self.read.clone(), self.muted.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match source.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        read.fetch_add(n as u64, Ordering::Relaxed);
                        let muted = muted.lock().unwrap_or_else(|p| p.into_inner());
                        if *muted || channel.send_data(stream, kind, &buffer[..n]).is_err() {
                            break;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    // A terminal whose other side closed reads EIO: that is its end of file.
                    Err(_) => break,
                }
            }
        }));
    }

    /// Waits until every pump has reached its end of file: to the end (`bounded`
    /// false), or while they make progress (`bounded`: see the module's doc). Returns
    /// whether they all ended; if not, they are muted.
    pub fn finish(self, bounded: bool) -> bool {
        self.finish_within(bounded.then_some((EXEC_OUTPUT_QUIET, EXEC_OUTPUT_LIMIT)))
    }

    fn finish_within(self, limits: Option<(Duration, Duration)>) -> bool {
        let Some((quiet, limit)) = limits else {
            for thread in self.threads {
                let _ = thread.join();
            }
            return true;
        };
        let start = Instant::now();
        let (mut seen, mut since) = (self.read.load(Ordering::Relaxed), Instant::now());
        while !self.threads.iter().all(JoinHandle::is_finished) {
            let now = self.read.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            if since.elapsed() >= quiet || start.elapsed() >= limit {
                *self.muted.lock().unwrap_or_else(|p| p.into_inner()) = true;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    /// A pipe: (read end as a file, write end as a file).
    fn pipe() -> (File, File) {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        (File::from(read), File::from(write))
    }

    /// One pump on stream 3 whose frames land in a pipe: (the pumps, the write end of
    /// the process's output, the read end of the frames).
    fn pumping() -> (Pumps, File, File) {
        let (frames, channel_port) = pipe();
        let (source, sink) = pipe();
        let mut pumps = Pumps::default();
        pumps.add(source, Channel::new(channel_port), 3, FrameKind::Stdout);
        (pumps, sink, frames)
    }

    fn frames_bytes(mut frames: File) -> usize {
        let mut all = Vec::new();
        frames.read_to_end(&mut all).unwrap();
        all.len()
    }

    #[test]
    fn a_pump_whose_pipe_closes_ends_and_its_output_is_sent() {
        let (pumps, mut sink, frames) = pumping();
        sink.write_all(&[b'x'; 1000]).unwrap();
        drop(sink);
        assert!(pumps.finish_within(Some((Duration::from_secs(5), Duration::from_secs(20)))));
        assert!(frames_bytes(frames) > 1000);
    }

    #[test]
    fn a_pipe_held_open_by_a_quiet_holder_is_given_up_and_muted() {
        let (pumps, mut sink, frames) = pumping();
        sink.write_all(b"before").unwrap();
        let muted = pumps.muted.clone();
        // `sink` stays open: the process left behind.
        let ended =
            pumps.finish_within(Some((Duration::from_millis(200), Duration::from_secs(20))));
        assert!(!ended);
        assert!(*muted.lock().unwrap());
        // What the holder writes now is not sent; the pump ends at its next read.
        sink.write_all(b"after").unwrap();
        drop(sink);
        let before = berth_agent_proto::encode_frame(3, FrameKind::Stdout, b"before");
        assert_eq!(frames_bytes(frames), before.len());
    }
}
