//! A process's standard streams: the FIFOs containerd made (`ctr` and the CRI plugin
//! read stdout and stderr from them and write stdin into one), relayed to and from the
//! guest process's frames.
//!
//! Every FIFO is opened read-write: opening then neither blocks nor fails when the other
//! end is not open yet (a write-only open of a FIFO waits for its reader), and the
//! shim's stdin reader never sees an end of file of its own. The end of stdin is
//! containerd's `CloseIO` call ([`ProcessStdin::close`]): what the FIFO still holds then
//! is forwarded first. `CloseIO` may come before the relay starts (ctr calls it as soon
//! as its copy into the FIFO ends, which can be before `Start` has handed the relay
//! over): the close is recorded, and the relay ends the input as soon as it starts.
//!
//! A process's output is written by a task of its own ([`OutputWriter`]), so that its
//! exit is never held behind a reader that stopped reading (`ctr run -d` leaves FIFOs
//! nobody reads; the shim holds a read end, so a write to a full FIFO waits rather
//! than fails). At the exit, what is queued is written while the reader keeps taking
//! it; a reader that takes nothing for [`OUTPUT_STALL`] loses the rest.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_engine::sandbox::Sandbox;
use berth_engine::{OutputChunk, OutputStream};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// How long a process's exit waits for a reader that takes none of its output.
pub(crate) const OUTPUT_STALL: Duration = Duration::from_secs(5);

/// The output FIFOs of one process (absent when containerd gave no path).
pub(crate) struct OutputFifos {
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
}

fn open_sender(path: &str) -> std::io::Result<Option<pipe::Sender>> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(Path::new(path))
        .map(Some)
}

impl OutputFifos {
    pub fn open(stdout: &str, stderr: &str) -> std::io::Result<Self> {
        Ok(OutputFifos {
            stdout: open_sender(stdout)?,
            stderr: open_sender(stderr)?,
        })
    }

    /// Writes `data` to its stream's FIFO (stdout when there is no stderr FIFO: a
    /// terminal's one stream). A reader that went away loses the rest of its stream.
    pub async fn write(&mut self, stream: OutputStream, data: &[u8]) {
        let fifo = match stream {
            OutputStream::Stderr if self.stderr.is_some() => &mut self.stderr,
            _ => &mut self.stdout,
        };
        if let Some(sender) = fifo {
            if sender.write_all(data).await.is_err() {
                *fifo = None;
            }
        }
    }
}

/// Writes a process's output to its FIFOs from a task of its own.
pub(crate) struct OutputWriter {
    queue: mpsc::UnboundedSender<OutputChunk>,
    /// Chunks written so far: how [`OutputWriter::finish`] tells a slow reader from
    /// one that stopped.
    written: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl OutputWriter {
    /// Starts writing to `fifos` (on the current runtime).
    pub fn start(mut fifos: OutputFifos) -> Self {
        let (queue, mut chunks) = mpsc::unbounded_channel::<OutputChunk>();
        let written = Arc::new(AtomicU64::new(0));
        let counted = written.clone();
        let task = tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                fifos.write(chunk.stream, &chunk.data).await;
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        OutputWriter {
            queue,
            written,
            task,
        }
    }

    /// Queues `chunk` (never waits for the reader).
    pub fn write(&self, chunk: OutputChunk) {
        let _ = self.queue.send(chunk);
    }

    /// Returns once everything queued is written and the FIFOs are closed, or once the
    /// reader has taken nothing for `stall` (what is left is dropped).
    pub async fn finish(self, stall: Duration) {
        let OutputWriter {
            queue,
            written,
            mut task,
        } = self;
        drop(queue);
        let mut seen = written.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = &mut task => return,
                _ = tokio::time::sleep(stall) => {
                    let now = written.load(Ordering::Relaxed);
                    if now == seen {
                        tracing::warn!(
                            "the output's reader took nothing for {stall:?}: the rest of the output is dropped"
                        );
                        task.abort();
                        return;
                    }
                    seen = now;
                }
            }
        }
    }
}

/// Relays a stdin FIFO to a guest process until [`StdinRelay::close`].
pub(crate) struct StdinRelay {
    closing: Arc<Notify>,
}

impl StdinRelay {
    /// Starts relaying the FIFO at `path` to the process on `stream`.
    pub fn start(path: &str, sandbox: Arc<Sandbox>, stream: u32) -> std::io::Result<Self> {
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(Path::new(path))?;
        let closing = Arc::new(Notify::new());
        let closed = closing.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    // A close that is due wins over more reading: the drain below reads
                    // everything the FIFO holds anyway.
                    biased;
                    _ = closed.notified() => {
                        // Forward what the FIFO still holds, then end the process's input.
                        loop {
                            let n = read_held(&receiver, &mut buffer);
                            if n == 0 || sandbox.send_stdin(stream, &buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                    ready = receiver.readable() => {
                        if ready.is_err() {
                            break;
                        }
                        match receiver.try_read(&mut buffer) {
                            Ok(0) => break,
                            Ok(n) => {
                                if sandbox.send_stdin(stream, &buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                }
            }
            let _ = sandbox.close_stdin(stream).await;
        });
        Ok(StdinRelay { closing })
    }

    /// Ends the process's input once the FIFO is drained.
    fn close(&self) {
        self.closing.notify_one();
    }
}

/// Reads what the FIFO holds now into `buffer`: 0 when it holds nothing (or fails).
///
/// This is a read(2) of the descriptor itself, not the receiver's `try_read`: that
/// answers "would block" until the runtime's reactor has reported the FIFO readable,
/// which it may not have yet when the close comes right after the writer's last
/// write (ctr writes its whole input, then calls `CloseIO`). Bytes the writer wrote
/// before the close are in the FIFO's buffer by then, and a read of the
/// (non-blocking) descriptor returns them.
fn read_held(receiver: &pipe::Receiver, buffer: &mut [u8]) -> usize {
    nix::unistd::read(receiver.as_raw_fd(), buffer).unwrap_or(0)
}

/// A process's standard input, whichever of its relay's start and its close comes
/// first.
#[derive(Default)]
pub(crate) struct ProcessStdin {
    state: Mutex<StdinState>,
}

#[derive(Default)]
enum StdinState {
    /// Not relayed yet.
    #[default]
    Pending,
    /// Relayed from its FIFO.
    Relayed(StdinRelay),
    /// Closed (`CloseIO`, or the process's end).
    Closed,
}

impl ProcessStdin {
    fn state(&self) -> MutexGuard<'_, StdinState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands the relay over; when the input was closed already, the relay ends it at
    /// once (after forwarding what the FIFO holds).
    pub fn relay(&self, relay: StdinRelay) {
        let mut state = self.state();
        match *state {
            StdinState::Closed => relay.close(),
            _ => *state = StdinState::Relayed(relay),
        }
    }

    /// Ends the process's input after what its FIFO holds: now, or as soon as its
    /// relay starts.
    pub fn close(&self) {
        let was = std::mem::replace(&mut *self.state(), StdinState::Closed);
        if let StdinState::Relayed(relay) = was {
            relay.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay that only records whether it was told to close.
    fn relay() -> (StdinRelay, Arc<Notify>) {
        let closing = Arc::new(Notify::new());
        (
            StdinRelay {
                closing: closing.clone(),
            },
            closing,
        )
    }

    fn was_closed(closing: &Notify) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), closing.notified())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_close_before_the_relay_starts_ends_the_input_when_it_does() {
        let stdin = ProcessStdin::default();
        stdin.close();
        let (relay, closing) = relay();
        stdin.relay(relay);
        assert!(was_closed(&closing));
    }

    #[test]
    fn a_close_after_the_relay_starts_ends_the_input_once() {
        let stdin = ProcessStdin::default();
        let (relay, closing) = relay();
        stdin.relay(relay);
        assert!(!was_closed(&closing));
        stdin.close();
        assert!(was_closed(&closing));
        // The process's end closes again: nothing more is sent.
        stdin.close();
        assert!(!was_closed(&closing));
    }

    #[test]
    fn what_the_fifo_holds_at_the_close_is_read_before_the_reactor_reports_it() {
        let dir = std::env::temp_dir().join(format!("berth-shim-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdin");
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async {
            let receiver = pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&path)
                .unwrap();
            // The writer's whole input, written before its close and before the
            // runtime has polled the FIFO at all.
            let input: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            std::io::Write::write_all(
                &mut std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
                &input,
            )
            .unwrap();
            let mut buffer = vec![0u8; 16 * 1024];
            let mut read = Vec::new();
            loop {
                let n = read_held(&receiver, &mut buffer);
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buffer[..n]);
            }
            assert!(
                read == input,
                "read {} of the {} bytes the FIFO held",
                read.len(),
                input.len()
            );
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO in a directory of the test's own.
    fn fifo(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("berth-shim-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fifo");
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        (dir, path)
    }

    fn chunk(data: Vec<u8>) -> OutputChunk {
        OutputChunk {
            stream: OutputStream::Stdout,
            data: data.into(),
        }
    }

    #[test]
    fn a_reader_gets_all_the_output_before_finish_returns() {
        let (dir, path) = fifo("output-read");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let reader_path = path.clone();
        // Opening for reading waits for the writer (the shim's read-write open).
        let reader = std::thread::spawn(move || {
            let mut file = std::fs::File::open(&reader_path).unwrap();
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut read).unwrap();
            read
        });
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        runtime.block_on(async {
            let writer =
                OutputWriter::start(OutputFifos::open(path.to_str().unwrap(), "").unwrap());
            for piece in sent.chunks(32 * 1024) {
                writer.write(chunk(piece.to_vec()));
            }
            writer.finish(Duration::from_secs(5)).await;
        });
        // finish closed the FIFO (its read-write end): the reader sees the end.
        let read = reader.join().unwrap();
        assert!(read == sent, "read {} of {} bytes", read.len(), sent.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finish_gives_up_on_a_reader_that_takes_nothing() {
        let (dir, path) = fifo("output-stalled");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let finished = runtime.block_on(async {
            let writer =
                OutputWriter::start(OutputFifos::open(path.to_str().unwrap(), "").unwrap());
            // More than a FIFO holds, and nobody reads.
            for _ in 0..8 {
                writer.write(chunk(vec![b'x'; 64 * 1024]));
            }
            tokio::time::timeout(
                Duration::from_secs(20),
                writer.finish(Duration::from_millis(200)),
            )
            .await
            .is_ok()
        });
        assert!(finished, "finish waited on a reader that never read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
