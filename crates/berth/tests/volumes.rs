//! Volumes of type disk: each is a disk of its own, attached to the VM of the container
//! that uses it; and anonymous volumes (directories, shared: see shares.rs).

mod common;

use common::{busybox_archive, busybox_layer, scratch, shared, stderr, stdout, Daemon};

fn exit_code(output: &std::process::Output) -> Option<i32> {
    output.status.code()
}

#[test]
fn volume_data_outlives_containers_and_the_daemon() {
    let root = scratch().join("volumes-restart");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    // A disk volume (the shared kind is in shares.rs): an ext4 disk of its own.
    daemon.docker_ok(&[
        "volume",
        "create",
        "--opt",
        "type=disk",
        "--label",
        "team=blue",
        "data",
    ]);
    // A new volume is empty, as Docker's (no ext4 lost+found in it).
    let fresh = daemon.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "ls",
        "-A",
        "/data",
    ]);
    assert_eq!(fresh, "", "a new volume holds: {fresh}");
    let listed = daemon.docker_ok(&["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(listed.lines().any(|l| l == "data local"), "{listed}");
    let df = daemon.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.lines().any(|l| l == "Local Volumes 1"), "{df}");
    let labels = daemon.docker_ok(&["volume", "inspect", "-f", "{{json .Labels}}", "data"]);
    assert!(labels.contains("\"team\":\"blue\""), "{labels}");

    // One container writes, the next reads; a read-only mount refuses writes.
    daemon.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/file",
    ]);
    let read = daemon.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "cat",
        "/data/file",
    ]);
    assert_eq!(read, "kept");
    let write_ro = daemon.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "sh",
        "-c",
        "echo x > /data/other",
    ]);
    assert_ne!(exit_code(&write_ro), Some(0), "{}", stdout(&write_ro));

    // The volume and its data survive a daemon restart; a cold-booted VM has its
    // volumes from boot (a clone has them hot-plugged).
    daemon.stop();
    let daemon = Daemon::start(&root);
    let read = daemon.docker_ok(&[
        "run",
        "--rm",
        "--runtime",
        "berth-coldboot",
        "--mount",
        "type=volume,source=data,target=/mnt/v",
        "busybox",
        "cat",
        "/mnt/v/file",
    ]);
    assert_eq!(read, "kept");

    // In use: refused removal (409), then removed once the container is gone.
    daemon.docker_ok(&[
        "create",
        "--name",
        "holder",
        "-v",
        "data:/data",
        "busybox",
        "true",
    ]);
    let in_use = daemon.docker(&["volume", "rm", "data"]);
    assert!(!in_use.status.success());
    assert!(
        stderr(&in_use).contains("volume is in use"),
        "{}",
        stderr(&in_use)
    );
    let filtered = daemon.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "volume=data",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(filtered, "holder");
    daemon.docker_ok(&["rm", "holder"]);
    daemon.docker_ok(&["volume", "rm", "data"]);
    let listed = daemon.docker_ok(&["volume", "ls", "-q"]);
    assert!(!listed.lines().any(|l| l == "data"), "{listed}");
    assert!(!root.join("volumes").join("data").exists());
    daemon.stop();
}

#[test]
fn anonymous_volumes_take_the_images_content_and_go_with_rm_v() {
    let daemon = shared();
    // An image with a VOLUME whose directory has content.
    let mut layer = tar::Builder::new(Vec::new());
    let data = b"from the image\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    layer
        .append_data(&mut header, "seed/hello", &data[..])
        .unwrap();
    let archive = scratch().join("volume-image.tar");
    common::write_archive_with(
        &archive,
        "local/with-volume:1",
        &[busybox_layer(), layer.into_inner().unwrap()],
        &["sh"],
        serde_json::json!({ "Volumes": { "/seed": {} } }),
    );
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = daemon.docker_ok(&[
        "run",
        "--name",
        "anon-volumes",
        "-v",
        "/scratch",
        "local/with-volume:1",
        "sh",
        "-c",
        "cat /seed/hello && echo more > /scratch/x && cat /scratch/x",
    ]);
    assert_eq!(out, "from the image\nmore");
    let mounts = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Destination}} {{.RW}};{{end}}",
        "anon-volumes",
    ]);
    assert!(mounts.contains("volume /seed true;"), "{mounts}");
    assert!(mounts.contains("volume /scratch true;"), "{mounts}");
    let names = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}} {{end}}",
        "anon-volumes",
    ]);
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let listed = daemon.docker_ok(&["volume", "ls", "-q"]);
    assert!(
        names.iter().all(|n| listed.lines().any(|l| l == *n)),
        "{listed}"
    );
    daemon.docker_ok(&["rm", "-v", "anon-volumes"]);
    let listed = daemon.docker_ok(&["volume", "ls", "-q"]);
    assert!(
        !names.iter().any(|n| listed.lines().any(|l| l == *n)),
        "{listed}"
    );
}
