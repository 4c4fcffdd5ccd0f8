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
        daemon.stop();
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
    // The container still works after the restart.
    daemon.docker_ok(&["start", "keeper"]);
    assert_eq!(daemon.docker_ok(&["wait", "keeper"]), "0");
    assert_eq!(daemon.docker_ok(&["logs", "keeper"]), "kept");
    daemon.docker_ok(&["rm", "keeper"]);
}
