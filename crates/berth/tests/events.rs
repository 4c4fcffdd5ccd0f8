//! `docker events`: past events between `--since` and `--until`, filters, and a live
//! stream, with the real docker CLI.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::shared;

fn now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[test]
fn a_containers_life_is_in_the_event_stream() {
    let daemon = shared();
    let since = now();
    let run = daemon.docker(&[
        "run",
        "--name",
        "eventful",
        "--label",
        "watch=yes",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(run.status.code(), Some(3));
    daemon.docker_ok(&["rename", "eventful", "eventful2"]);
    daemon.docker_ok(&["rm", "eventful2"]);
    let until = now();
    let actions = daemon.docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "label=watch=yes",
        "--format",
        "{{.Action}} {{.Actor.Attributes.exitCode}}",
    ]);
    let actions: Vec<&str> = actions
        .lines()
        .map(|l| l.trim_end_matches(" <no value>").trim())
        .collect();
    assert_eq!(actions, ["create", "start", "die 3", "rename", "destroy"]);
    // The network side of the same run.
    let network = daemon.docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=network",
        "--filter",
        "event=connect",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert!(network.lines().any(|l| l == "bridge"), "{network}");
}

#[test]
fn events_stream_live() {
    let daemon = shared();
    let mut follower = Command::new("docker")
        .env("DOCKER_CONFIG", daemon.root.with_extension("docker-config"))
        .arg("-H")
        .arg(format!("unix://{}", daemon.socket.display()))
        .args([
            "events",
            "--filter",
            "type=network",
            "--filter",
            "network=live-events",
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    daemon.docker_ok(&["network", "create", "live-events"]);
    daemon.docker_ok(&["network", "rm", "live-events"]);
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(first, "network create live-events");
    assert_eq!(second, "network destroy live-events");
}
