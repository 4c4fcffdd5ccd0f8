//! Images made by other tools load and run.

mod common;

use common::{busybox_archive, scratch, shared, stderr};
use std::process::Command;

#[test]
fn skopeo_made_archive_loads_and_runs() {
    let daemon = shared();
    let out = scratch().join("skopeo-busybox.tar");
    let _ = std::fs::remove_file(&out);
    let copy = Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", busybox_archive().display()))
        .arg(format!(
            "docker-archive:{}:tools/skopeo-busybox:v1",
            out.display()
        ))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        copy.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let loaded = daemon.docker_ok(&["load", "-i", out.to_str().unwrap()]);
    assert!(
        loaded.contains("tools/skopeo-busybox:v1"),
        "load said: {loaded}"
    );
    let images = daemon.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(
        images.contains("tools/skopeo-busybox:v1"),
        "images: {images}"
    );
    let inspect = daemon.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Os}}/{{.Architecture}} {{len .RootFS.Layers}}",
        "tools/skopeo-busybox:v1",
    ]);
    assert_eq!(inspect, "linux/amd64 1");
    assert_eq!(
        daemon.docker_ok(&[
            "run",
            "--rm",
            "tools/skopeo-busybox:v1",
            "echo",
            "from skopeo"
        ]),
        "from skopeo"
    );
}

#[test]
fn unknown_image_cannot_be_run() {
    let daemon = shared();
    let output = daemon.docker(&["run", "--rm", "no-such-image:nope", "true"]);
    assert_eq!(
        output.status.code(),
        Some(125),
        "stderr: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("docker load"),
        "the error says what to do: {}",
        stderr(&output)
    );
}
