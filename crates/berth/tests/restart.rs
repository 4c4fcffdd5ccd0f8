//! State survives a daemon restart: images and containers are still there.

mod common;

use common::{busybox_archive, scratch, Daemon};

#[test]
fn images_and_containers_survive_a_restart() {
    let root = scratch().join("restart");
    let id = {
        let daemon = Daemon::start(&root);
        daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
        let id = daemon.docker_ok(&["create", "--name", "keeper", "busybox", "echo", "kept"]);
        let running =
            daemon.docker_ok(&["run", "-d", "--name", "runner", "busybox", "sleep", "300"]);
        daemon.stop();
        // A stopped daemon leaves no VM behind.
        let marker = format!("berth-{running}");
        let leftovers: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path().join("cmdline")).ok())
            .filter(|cmdline| cmdline.contains(&marker))
            .collect();
        assert!(
            leftovers.is_empty(),
            "VM processes left after the daemon stopped: {leftovers:?}"
        );
        id
    };
    let daemon = Daemon::start(&root);
    let images = daemon.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.lines().any(|l| l == "busybox:latest"),
        "images after restart: {images}"
    );
    let containers = daemon.docker_ok(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.State}}"]);
    assert!(
        containers.contains(&format!("{} keeper created", &id[..12])),
        "containers after restart: {containers}"
    );
    let runner = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.Running}}",
        "runner",
    ]);
    assert_eq!(runner, "exited false");
    daemon.docker_ok(&["rm", "runner"]);
    // The container still works after the restart.
    daemon.docker_ok(&["start", "keeper"]);
    assert_eq!(daemon.docker_ok(&["wait", "keeper"]), "0");
    assert_eq!(daemon.docker_ok(&["logs", "keeper"]), "kept");
    daemon.docker_ok(&["rm", "keeper"]);
}
