//! A scripted agent: it speaks berth-agent-proto as Berth's agent does, and does what
//! the container's command line says:
//!
//! | argv                 | what the "process" does                                   |
//! |----------------------|-----------------------------------------------------------|
//! | `exit N`             | starts, writes `bye` to stdout, exits with N               |
//! | `sleep`              | starts and runs until a signal (exit 128 + signal)         |
//! | `ignore-term`        | like `sleep`, but only SIGKILL ends it                     |
//! | `missing`            | is not found (spawn fails: 127)                            |
//! | `crash-vm`           | starts, then its VM dies                                   |
//! | `garbage`            | starts, then the agent writes bytes that are no frame     |
//! | `hostile KIND`       | the agent breaks the protocol as [`hostile`] says         |
//!
//! A container whose hostname is `bad-setup` fails its guest setup.
//!
//! Exec processes (streams 2 and up) start and exit 0 at once. The VM ends when the
//! agent is told to shut down, and the agent stops when its VM ends.

use std::sync::Arc;

use std::os::unix::net::UnixStream as StdUnixStream;

use berth_agent_proto::{
    decode_host_message, encode_control, encode_frame, FrameDecoder, FrameKind, GuestMessage,
    HostMessage, ProcessStatus, SpawnFailure, AGENT_STREAM, PROTOCOL_VERSION, RESYNC_MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::backend::FakeVm;
use crate::agent::MAIN_STREAM;

/// The main process's state.
#[derive(Default)]
struct Main {
    running: bool,
    /// Its exit code, once it exited.
    exit: Option<i32>,
    ignores_term: bool,
    /// The VM dies once the process's start has been reported.
    crash: bool,
}

/// Serves one VM's agent channel until the VM ends or the engine shuts it down. When
/// the engine goes away without a word (a killed daemon), the "processes" run on and
/// the agent waits for the next engine to reconnect (`reconnects`), as Berth's agent does.
pub(crate) async fn serve(
    guest: StdUnixStream,
    mut reconnects: mpsc::UnboundedReceiver<StdUnixStream>,
    cold_boot: bool,
    vm: Arc<FakeVm>,
) {
    let Ok(mut stream) = UnixStream::from_std(guest) else {
        vm.end();
        return;
    };
    if cold_boot {
        let hello = GuestMessage::Hello {
            protocol: PROTOCOL_VERSION,
            kernel: "6.1.0-test".into(),
        };
        if stream
            .write_all(&encode_control(AGENT_STREAM, &hello))
            .await
            .is_err()
        {
            vm.end();
            return;
        }
    }
    let mut main = Main::default();
    while serve_connection(&mut stream, &mut main, &vm).await {
        let next = tokio::select! {
            next = reconnects.recv() => next,
            _ = vm.until_ended() => return,
        };
        match next.map(UnixStream::from_std) {
            Some(Ok(next)) => stream = next,
            _ => break,
        }
    }
    vm.end();
}

/// Serves one connection; true when the host went away with the VM still running.
async fn serve_connection(stream: &mut UnixStream, main: &mut Main, vm: &FakeVm) -> bool {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buffer) => read,
            _ = vm.until_ended() => return false,
        };
        match read {
            Ok(0) | Err(_) => return !vm.has_ended(),
            Ok(n) => decoder.push(&buffer[..n]),
        }
        while let Ok(Some(frame)) = decoder.next_frame() {
            if frame.kind != FrameKind::Control {
                continue;
            }
            let Ok(message) = decode_host_message(&frame) else {
                continue;
            };
            for bytes in answer(frame.stream, message, main, vm) {
                if stream.write_all(&bytes).await.is_err() {
                    return !vm.has_ended();
                }
            }
            if main.crash {
                // After the engine has read the start: then the VM is gone.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                vm.end();
            }
            if vm.has_ended() {
                return false;
            }
        }
    }
}

fn control(stream: u32, message: GuestMessage) -> Vec<u8> {
    encode_control(stream, &message)
}

/// What the agent sends back for one message.
fn answer(stream: u32, message: HostMessage, main: &mut Main, vm: &FakeVm) -> Vec<Vec<u8>> {
    match message {
        HostMessage::Rebind(_) => vec![control(
            AGENT_STREAM,
            GuestMessage::Rebound {
                protocol: PROTOCOL_VERSION,
                kernel: "6.1.0-test".into(),
                steps: vec!["entropy".into(), "reseed".into(), "clock".into()],
            },
        )],
        HostMessage::Setup(setup) if setup.hostname == "bad-setup" => vec![control(
            AGENT_STREAM,
            GuestMessage::Error {
                message: "mounting the root filesystem failed (scripted)".into(),
            },
        )],
        HostMessage::Setup(_) => vec![control(
            AGENT_STREAM,
            GuestMessage::SetupDone {
                steps_us: vec![("root".into(), 1)],
            },
        )],
        HostMessage::Spawn(process) if stream == MAIN_STREAM => spawn_main(&process.argv, main),
        HostMessage::Spawn(_) => vec![
            control(stream, GuestMessage::Started { pid: 200 }),
            control(
                stream,
                GuestMessage::Exited {
                    code: 0,
                    signal: None,
                    oom_killed: false,
                },
            ),
        ],
        HostMessage::Signal { signal } if stream == MAIN_STREAM && main.running => {
            if main.ignores_term && signal != libc::SIGKILL {
                return Vec::new();
            }
            main.running = false;
            main.exit = Some(128 + signal);
            vec![control(
                MAIN_STREAM,
                GuestMessage::Exited {
                    code: 128 + signal,
                    signal: Some(signal),
                    oom_killed: false,
                },
            )]
        }
        HostMessage::Shutdown => {
            vm.end();
            Vec::new()
        }
        HostMessage::Reattach => vec![
            RESYNC_MARKER.to_vec(),
            control(
                AGENT_STREAM,
                GuestMessage::Reattached {
                    protocol: PROTOCOL_VERSION,
                    processes: vec![ProcessStatus {
                        stream: MAIN_STREAM,
                        pid: 100,
                        exit: main.exit.map(|code| (code, None)),
                    }],
                },
            ),
        ],
        HostMessage::Signal { .. } | HostMessage::CloseStdin | HostMessage::Resize { .. } => {
            Vec::new()
        }
        HostMessage::UpdateResources { .. } => {
            vec![control(AGENT_STREAM, GuestMessage::ResourcesUpdated)]
        }
        other => vec![control(
            stream,
            GuestMessage::Error {
                message: format!("the scripted agent does not do {other:?}"),
            },
        )],
    }
}

/// The container's process, as its command line says.
fn spawn_main(argv: &[String], main: &mut Main) -> Vec<Vec<u8>> {
    let started = control(MAIN_STREAM, GuestMessage::Started { pid: 100 });
    match argv.first().map(String::as_str) {
        Some("missing") => vec![control(
            MAIN_STREAM,
            GuestMessage::SpawnFailed {
                reason: SpawnFailure::NotFound,
                message: "exec: \"missing\": executable file not found in $PATH".into(),
            },
        )],
        Some("exit") => {
            let code = argv.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            main.exit = Some(code);
            vec![
                started,
                encode_frame(MAIN_STREAM, FrameKind::Stdout, b"bye\n"),
                exited(code),
            ]
        }
        Some("crash-vm") => {
            main.running = true;
            main.crash = true;
            vec![started]
        }
        Some("garbage") => vec![started, vec![0xff; 64]],
        Some("hostile") => hostile(argv.get(1).map(String::as_str).unwrap_or(""), started),
        Some("ignore-term") => {
            main.running = true;
            main.ignores_term = true;
            vec![started]
        }
        _ => {
            main.running = true;
            vec![started]
        }
    }
}

/// The kinds of `hostile`, each what a broken or hostile agent could send after (or
/// instead of) reporting the main process started.
pub(crate) const HOSTILE_KINDS: &[&str] = &[
    "oversized-frame",
    "unknown-kind",
    "bad-json",
    "oversized-control",
    "bad-exit-code",
    "huge-unexpected",
    "stdin-frame",
    "fuse-frame",
    "unknown-stream",
    "unrequested",
    "exit-before-start",
];

/// How many one-byte frames of output `hostile flood` sends before it exits 0.
pub(crate) const FLOOD_FRAMES: usize = 100_000;

/// The main process's exit with `code`.
fn exited(code: i32) -> Vec<u8> {
    control(
        MAIN_STREAM,
        GuestMessage::Exited {
            code,
            signal: None,
            oom_killed: false,
        },
    )
}

/// What the agent sends for `hostile KIND`.
fn hostile(kind: &str, started: Vec<u8>) -> Vec<Vec<u8>> {
    let header = |length: u32, stream: u32, kind: u8| {
        let mut frame = length.to_le_bytes().to_vec();
        frame.extend(stream.to_le_bytes());
        frame.push(kind);
        frame
    };
    let broken = match kind {
        "oversized-frame" => header(berth_agent_proto::MAX_FRAME_LEN + 1, MAIN_STREAM, 3),
        "unknown-kind" => {
            let mut frame = header(6, MAIN_STREAM, 9);
            frame.push(0);
            frame
        }
        "bad-json" => encode_frame(MAIN_STREAM, FrameKind::Control, br#"{"started": "#),
        "oversized-control" => encode_frame(
            MAIN_STREAM,
            FrameKind::Control,
            &vec![b' '; berth_agent_proto::MAX_CONTROL_LEN + 1],
        ),
        // Valid JSON, out of range.
        "bad-exit-code" => {
            let mut json = serde_json::to_value(GuestMessage::Exited {
                code: 3,
                signal: None,
                oom_killed: false,
            })
            .unwrap_or_default();
            json["code"] = 300.into();
            encode_frame(MAIN_STREAM, FrameKind::Control, json.to_string().as_bytes())
        }
        // A valid message of 150 KiB where none is expected: quoted, cut short.
        "huge-unexpected" => control(
            MAIN_STREAM,
            GuestMessage::Processes {
                processes: (0..600)
                    .map(|pid| berth_agent_proto::ProcessInfo {
                        pid,
                        ppid: 1,
                        uid: 0,
                        user: "root".into(),
                        state: "S".into(),
                        tty: "?".into(),
                        cpu_ticks: 0,
                        start_ticks: 0,
                        vsz_kib: 0,
                        rss_kib: 0,
                        command: "x".repeat(200),
                    })
                    .collect(),
                boot_time: 0,
                ticks_per_second: 100,
                mem_total_kib: 0,
            },
        ),
        "stdin-frame" => encode_frame(MAIN_STREAM, FrameKind::Stdin, b"x"),
        "fuse-frame" => encode_frame(MAIN_STREAM, FrameKind::Fuse, b"x"),
        "unknown-stream" => encode_frame(99, FrameKind::Stdout, b"x"),
        "unrequested" => control(AGENT_STREAM, GuestMessage::ResourcesUpdated),
        "exit-before-start" => return vec![exited(0), started],
        "flood" => {
            let mut output = Vec::new();
            for _ in 0..FLOOD_FRAMES {
                output.extend(encode_frame(MAIN_STREAM, FrameKind::Stdout, b"x"));
            }
            return vec![started, output, exited(0)];
        }
        _ => Vec::new(),
    };
    vec![started, broken]
}
