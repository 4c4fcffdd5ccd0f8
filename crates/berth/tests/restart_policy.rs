//! Restart policies with the real docker CLI: on-failure with a limit, always until a
//! user stops the container, and what a daemon restart starts again (with its published
//! port working).

mod common;

use std::time::{Duration, Instant};

use common::{busybox_archive, Daemon};

/// Polls `docker inspect -f FORMAT NAME` until `done` accepts the output (up to 60 s).
fn wait_for(daemon: &Daemon, name: &str, format: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = daemon.docker_ok(&["inspect", "-f", format, name]);
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {format} stayed {value:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn restart_policies_apply_between_runs_and_across_daemon_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);

    // on-failure:2 restarts a failing container twice, then leaves it exited.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    ]);
    let settled = wait_for(
        &daemon,
        "flaky",
        "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}",
        |v| v == "exited 2 3",
    );
    assert_eq!(settled, "exited 2 3");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"]),
        "2"
    );
    // on-failure does not restart a clean exit.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "clean",
        "--restart",
        "on-failure",
        "busybox",
        "true",
    ]);
    wait_for(&daemon, "clean", "{{.State.Status}}", |v| v == "exited");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.RestartCount}}", "clean"]),
        "0"
    );

    // always: restarted after every exit, until a user stops it.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "looper",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 1",
    ]);
    wait_for(&daemon, "looper", "{{.RestartCount}}", |v| {
        v.parse::<u32>().unwrap_or(0) >= 2
    });
    daemon.docker_ok(&["stop", "-t", "1", "looper"]);
    let stopped = wait_for(&daemon, "looper", "{{.State.Status}}", |v| v == "exited");
    assert_eq!(stopped, "exited");
    let count = daemon.docker_ok(&["inspect", "-f", "{{.RestartCount}}", "looper"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.RestartCount}}",
            "looper"
        ]),
        format!("exited {count}")
    );

    // --restart with --rm is refused.
    let conflicting = daemon.docker(&["run", "--rm", "--restart", "always", "busybox", "true"]);
    assert!(!conflicting.status.success());

    // Across a daemon restart: unless-stopped comes back with its published port,
    // unless a user stopped it; always comes back even then; on-failure does not.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "server",
        "--hostname",
        "kept",
        "--restart",
        "unless-stopped",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "parked",
        "--restart",
        "unless-stopped",
        "busybox",
        "sleep",
        "600",
    ]);
    daemon.docker_ok(&["stop", "-t", "0", "parked"]);
    daemon.stop();
    let daemon = Daemon::start(&root);
    wait_for(&daemon, "server", "{{.State.Status}}", |v| v == "running");
    wait_for(&daemon, "looper", "{{.State.Status}}", |v| {
        v == "running" || v == "restarting"
    });
    let port = common::published_port(&daemon, "server");
    let body = common::http_get(port, "/hostname").trim().to_owned();
    assert_eq!(body, "kept");
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", "parked"]),
        "exited"
    );
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", "flaky"]),
        "exited"
    );
    daemon.docker_ok(&["rm", "-f", "server", "looper", "parked", "flaky", "clean"]);
}
