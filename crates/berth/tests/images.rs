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
    // Not here, so the CLI asks the daemon to pull it: from a registry on loopback that
    // nothing listens on (tests never reach outside the machine).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("127.0.0.1:{port}/no-such-image:nope");
    let output = daemon.docker(&["run", "--rm", &name, "true"]);
    assert_eq!(
        output.status.code(),
        Some(125),
        "stderr: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("Unable to find image")
            && stderr(&output).contains(&format!("registry 127.0.0.1:{port}")),
        "the error says where the pull failed: {}",
        stderr(&output)
    );
}

/// An image of its own for these tests (other tests use busybox): busybox's layer
/// with one more file, so it has its own id, and a history.
fn own_image(tag: &str, marker: &str) {
    let daemon = shared();
    let archive = scratch().join(format!("{marker}.tar"));
    let mut extra = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(marker.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    extra
        .append_data(&mut header, "marker", marker.as_bytes())
        .unwrap();
    common::write_archive_with(
        &archive,
        tag,
        &[common::busybox_layer(), extra.into_inner().unwrap()],
        &["cat", "/marker"],
        serde_json::json!({}),
    );
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
}

#[test]
fn tag_rmi_history_and_prune_follow_docker() {
    let daemon = shared();
    own_image("tagged/one:v1", "rmi-marker");
    let id = daemon.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "tagged/one:v1"]);
    daemon.docker_ok(&["tag", "tagged/one:v1", "tagged/two:latest"]);
    let tags = daemon.docker_ok(&["image", "inspect", "-f", "{{json .RepoTags}}", &id]);
    assert!(
        tags.contains("tagged/one:v1") && tags.contains("tagged/two:latest"),
        "{tags}"
    );
    // The reference filter lists only the tags that match, as dockerd does (one image,
    // two names); an odd dangling value or an unknown filter is refused in its words.
    let by_reference = |pattern: &str| {
        daemon.docker_ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &format!("reference={pattern}"),
        ])
    };
    assert_eq!(by_reference("tagged/one:v*"), "tagged/one:v1");
    assert_eq!(by_reference("*/two"), "tagged/two:latest");
    assert_eq!(by_reference("tagged*"), "", "a * does not cross a /");
    let odd = daemon.docker(&["images", "--filter", "dangling=maybe"]);
    assert!(
        stderr(&odd).contains("Invalid filter 'dangling=[maybe]'"),
        "{}",
        stderr(&odd)
    );
    let unknown = daemon.docker(&["images", "--filter", "colour=red"]);
    assert!(
        stderr(&unknown).contains("Invalid filter 'colour'"),
        "{}",
        stderr(&unknown)
    );
    let history = daemon.docker_ok(&["history", "--format", "{{.ID}} {{.Size}}", "tagged/two"]);
    assert!(
        history.lines().next().unwrap().starts_with(&id[7..19]),
        "{history}"
    );

    // By id, with two names: refused unless forced.
    let refused = daemon.docker(&["rmi", &id[7..19]]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("referenced in multiple repositories"));
    // By name, with two names: only that name goes.
    assert_eq!(
        daemon.docker_ok(&["rmi", "tagged/two"]),
        "Untagged: tagged/two:latest"
    );
    // In use by a container: refused, then untagged only with -f (the container keeps it).
    let user = daemon.docker_ok(&["create", "tagged/one:v1"]);
    let in_use = daemon.docker(&["rmi", "tagged/one:v1"]);
    assert!(!in_use.status.success());
    assert!(stderr(&in_use).contains("is using its referenced image"));
    assert_eq!(
        daemon.docker_ok(&["rmi", "-f", "tagged/one:v1"]),
        "Untagged: tagged/one:v1"
    );
    assert_eq!(daemon.docker_ok(&["start", "-a", &user]), "rmi-marker");
    // Dangling and unused once the container goes: prune deletes it and its files.
    daemon.docker_ok(&["rm", &user]);
    let dangling = daemon.docker_ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert!(dangling.contains(&id), "{dangling}");
    let pruned = daemon.docker_ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(&id), "{pruned}");
    assert!(!daemon.docker(&["image", "inspect", &id]).status.success());
    let blob = daemon.root.join("images/blobs/sha256").join(&id[7..]);
    assert!(!blob.exists(), "the config blob is left");
    // busybox, which other containers use, is still there.
    daemon.docker_ok(&["image", "inspect", "busybox"]);

    // A plain rmi of an unused image deletes it.
    own_image("tagged/three:v1", "rmi-three");
    let removed = daemon.docker_ok(&["rmi", "tagged/three:v1"]);
    assert!(
        removed.starts_with("Untagged: tagged/three:v1\nDeleted: sha256:"),
        "{removed}"
    );
}

#[test]
fn save_and_load_round_trip_several_images() {
    let daemon = shared();
    own_image("saved/first:v1", "saved-first");
    own_image("saved/second:v2", "saved-second");
    let archive = scratch().join("saved.tar");
    let _ = std::fs::remove_file(&archive);
    daemon.docker_ok(&[
        "save",
        "-o",
        archive.to_str().unwrap(),
        "saved/first:v1",
        "saved/second:v2",
    ]);
    // Another tool reads it.
    let inspected = Command::new("skopeo")
        .arg("inspect")
        .arg(format!(
            "docker-archive:{}:saved/second:v2",
            archive.display()
        ))
        .output()
        .expect("skopeo");
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    daemon.docker_ok(&["rmi", "saved/first:v1", "saved/second:v2"]);
    assert!(!daemon
        .docker(&["image", "inspect", "saved/first:v1"])
        .status
        .success());
    let loaded = daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        loaded.contains("saved/first:v1") && loaded.contains("saved/second:v2"),
        "{loaded}"
    );
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "saved/second:v2"]),
        "saved-second"
    );
    daemon.docker_ok(&["rmi", "saved/first:v1", "saved/second:v2"]);
}

#[test]
fn system_df_counts_images_and_containers() {
    let daemon = shared();
    let id = daemon.docker_ok(&["create", "busybox", "true"]);
    let df = daemon.docker_ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}} {{.TotalCount}} {{.Active}}",
    ]);
    let images = df.lines().find(|l| l.starts_with("Images")).unwrap();
    let total: u32 = images.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total >= 1, "{df}");
    let containers = df.lines().find(|l| l.starts_with("Containers")).unwrap();
    let count: u32 = containers
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= 1, "{df}");
    daemon.docker_ok(&["rm", &id]);
}
