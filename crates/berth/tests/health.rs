//! Health checks with the real docker CLI: `--health-*` options and an image's
//! `HEALTHCHECK`, status in inspect and `ps`, the `health` filter, and events.

mod common;

use std::time::Duration;

use common::{busybox_layer, eventually, scratch, shared, write_archive_with};

#[test]
fn health_checks_report_failure_and_recovery() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "--health-cmd",
        "test -e /tmp/ready",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--health-timeout",
        "5s",
        "busybox",
        "sleep",
        "300",
    ]);
    let status = |id: &str| daemon.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", id]);
    eventually("unhealthy", || status(&id) == "unhealthy");
    let listed = daemon.docker_ok(&["ps", "-q", "--no-trunc", "--filter", "health=unhealthy"]);
    assert!(listed.lines().any(|l| l == id), "{listed}");
    let shown = daemon.docker_ok(&[
        "ps",
        "--filter",
        &format!("id={id}"),
        "--format",
        "{{.Status}}",
    ]);
    assert!(shown.ends_with("(unhealthy)"), "{shown}");
    daemon.docker_ok(&["exec", &id, "touch", "/tmp/ready"]);
    eventually("healthy", || status(&id) == "healthy");
    let last = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Health.FailingStreak}}:{{range .State.Health.Log}} {{.ExitCode}}{{end}}",
        &id,
    ]);
    assert!(last.starts_with("0:") && last.ends_with(" 0"), "{last}");
    let events = daemon.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &format!("{}", chrono_now()),
        "--filter",
        &format!("container={id}"),
        "--format",
        "{{.Action}}",
    ]);
    assert!(events.contains("health_status: unhealthy"), "{events}");
    assert!(events.contains("health_status: healthy"), "{events}");
    daemon.docker_ok(&["rm", "-f", &id]);
}

fn chrono_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1
}

#[test]
fn an_images_healthcheck_is_used_unless_disabled() {
    let daemon = shared();
    let archive = scratch().join("healthy-image.tar");
    write_archive_with(
        &archive,
        "healthy:latest",
        &[busybox_layer()],
        &["sleep", "300"],
        serde_json::json!({ "Healthcheck": {
            "Test": ["CMD", "true"], "Interval": 1_000_000_000i64, "Retries": 1
        }}),
    );
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let id = daemon.docker_ok(&["run", "-d", "healthy"]);
    eventually("healthy from the image's check", || {
        daemon.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &id]) == "healthy"
    });
    let off = daemon.docker_ok(&["run", "-d", "--no-healthcheck", "healthy"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Health}}", &off]),
        "<nil>"
    );
    daemon.docker_ok(&["rm", "-f", &id, &off]);
}
