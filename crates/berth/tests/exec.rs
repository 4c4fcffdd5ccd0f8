//! `docker exec`: more processes in a running container's VM.

mod common;

use common::{shared, stderr, stdout};

#[test]
fn exec_runs_with_options_streams_and_exit_codes() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "-e", "FROM_RUN=1", "busybox", "sleep", "300"]);
    let output = daemon.docker(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "-e",
        "EXTRA=2",
        &id,
        "sh",
        "-c",
        "id -u; pwd; echo $FROM_RUN$EXTRA; echo err >&2; exit 4",
    ]);
    assert_eq!(output.status.code(), Some(4), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "65534\n/tmp\n12\n");
    assert_eq!(stderr(&output), "err\n");

    let piped = daemon.docker_with_input(
        &["exec", "-i", &id, "tr", "a-z", "A-Z"],
        Some(b"through exec\n"),
    );
    assert_eq!(stdout(&piped), "THROUGH EXEC\n");
    let tty = daemon.docker_ok(&["exec", "-t", &id, "tty"]);
    assert!(tty.starts_with("/dev/pts/"), "{tty}");

    let missing = daemon.docker(&["exec", &id, "no-such-program"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stdout(&missing));
    let not_executable = daemon.docker(&["exec", &id, "/etc/passwd"]);
    assert_eq!(not_executable.status.code(), Some(126));

    // A detached exec runs on its own; the container is unaffected by all of the above.
    daemon.docker_ok(&["exec", "-d", &id, "sh", "-c", "echo detached > /tmp/marker"]);
    let mut marker = String::new();
    for _ in 0..50 {
        marker = daemon.docker_ok(&["exec", &id, "cat", "/tmp/marker"]);
        if marker == "detached" {
            break;
        }
    }
    assert_eq!(marker, "detached");
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );
    // An exec that leaves a process behind, holding its output open, ends when it
    // exits, with what it wrote (Docker waits at most 2 s for an exec's streams).
    let left_behind = daemon.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo before; sleep 100000 & echo after; exit 5",
    ]);
    assert_eq!(
        left_behind.status.code(),
        Some(5),
        "stderr: {}",
        stderr(&left_behind)
    );
    assert_eq!(stdout(&left_behind), "before\nafter\n");
    daemon.docker_ok(&["rm", "-f", &id]);

    let stopped = daemon.docker(&["exec", &id, "true"]);
    assert!(!stopped.status.success());
}

#[test]
fn pause_halts_the_vm_and_unpause_resumes_it() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    daemon.docker_ok(&["pause", &id]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}} {{.State.Running}}",
            &id
        ]),
        "paused true true"
    );
    let status = daemon.docker_ok(&[
        "ps",
        "--filter",
        &format!("id={id}"),
        "--format",
        "{{.Status}}",
    ]);
    assert!(status.ends_with("(Paused)"), "ps: {status}");
    let vm_state = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "grep -c . /proc/{}/status",
            daemon.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        ))
        .output()
        .unwrap();
    assert!(
        vm_state.status.success(),
        "the VM process is still there while paused"
    );
    let refused = daemon.docker(&["exec", &id, "true"]);
    assert!(
        stderr(&refused).contains("paused"),
        "exec while paused: {}",
        stderr(&refused)
    );
    assert!(
        !daemon.docker(&["pause", &id]).status.success(),
        "pausing twice is refused"
    );
    daemon.docker_ok(&["unpause", &id]);
    assert_eq!(daemon.docker_ok(&["exec", &id, "echo", "back"]), "back");
    // A paused container can still be stopped.
    daemon.docker_ok(&["pause", &id]);
    daemon.docker_ok(&["stop", "-t", "1", &id]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", &id]),
        "exited"
    );
    daemon.docker_ok(&["rm", &id]);
}

#[test]
fn an_execs_terminal_is_decided_at_create_not_at_start() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "60"]);
    let create = br#"{"Cmd": ["echo", "on a tty"], "Tty": true, "AttachStdout": true}"#;
    let (status, body) = daemon
        .request("POST", &format!("/containers/{id}/exec"), Some(create))
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let exec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let exec_id = exec["Id"].as_str().unwrap();
    // The start asks for no terminal: as Docker, the exec still has the one it was
    // created with, and its output comes as a raw stream with a terminal's line ends.
    let (status, output) = daemon
        .request(
            "POST",
            &format!("/exec/{exec_id}/start"),
            Some(br#"{"Detach": false, "Tty": false}"#),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        output,
        b"on a tty\r\n",
        "{}",
        String::from_utf8_lossy(&output)
    );
    daemon.docker_ok(&["rm", "-f", &id]);
}
