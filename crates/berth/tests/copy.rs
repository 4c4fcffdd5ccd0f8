//! `docker cp` both ways, with running and stopped containers, and hostile archives.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{scratch, shared, stderr};

/// A tar entry written raw (the tar crate would refuse or clean these names).
fn raw_entry(tar: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// `PUT /containers/{id}/archive?path=PATH` with `tar`: the status and body.
fn put_archive(daemon: &common::Daemon, id: &str, path: &str, tar: &[u8]) -> (u16, String) {
    let (status, body) = daemon
        .request(
            "PUT",
            &format!("/containers/{id}/archive?path={path}"),
            Some(tar),
        )
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn copy_in_and_out_of_a_running_container() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "600"]);
    let dir = scratch().join("cp-running");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file.txt"), "in the tree\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/file.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/file.txt", tree.join("link")).unwrap();

    daemon.docker_ok(&["cp", tree.to_str().unwrap(), &format!("{id}:/srv")]);
    let listed = daemon.docker_ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /srv/link; stat -c %a /srv/sub/file.txt",
    ]);
    assert_eq!(listed, "in the tree\n640");

    // Out again: the whole directory, then only its contents (`dir/.`).
    daemon.docker_ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo made-inside > /srv/sub/new.txt",
    ]);
    let back = dir.join("back");
    daemon.docker_ok(&["cp", &format!("{id}:/srv"), back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/new.txt")).unwrap(),
        "made-inside\n"
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap().to_str(),
        Some("sub/file.txt")
    );
    let contents = dir.join("contents");
    std::fs::create_dir_all(&contents).unwrap();
    daemon.docker_ok(&[
        "cp",
        &format!("{id}:/srv/sub/."),
        contents.to_str().unwrap(),
    ]);
    assert!(contents.join("new.txt").is_file());
    assert!(contents.join("file.txt").is_file());

    let missing = daemon.docker(&["cp", &format!("{id}:/no/such/path"), dir.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("Could not find the file"),
        "{}",
        stderr(&missing)
    );
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn copy_into_a_created_container_and_out_of_an_exited_one() {
    let daemon = shared();
    let dir = scratch().join("cp-stopped");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("app.conf");
    std::fs::write(&config, "setting=42\n").unwrap();
    let id = daemon.docker_ok(&["create", "busybox", "cat", "/etc/app.conf"]);
    daemon.docker_ok(&[
        "cp",
        config.to_str().unwrap(),
        &format!("{id}:/etc/app.conf"),
    ]);
    let printed = daemon.docker_ok(&["start", "-a", &id]);
    assert_eq!(printed, "setting=42");

    let built = daemon.docker_ok(&[
        "run",
        "-d",
        "busybox",
        "sh",
        "-c",
        "mkdir /out && echo artifact > /out/result.txt",
    ]);
    daemon.docker_ok(&["wait", &built]);
    let out = dir.join("out");
    daemon.docker_ok(&["cp", &format!("{built}:/out"), out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("result.txt")).unwrap(),
        "artifact\n"
    );
    // A read-only root takes no files (checked before any VM is booted).
    let read_only = daemon.docker_ok(&["create", "--read-only", "busybox", "true"]);
    let mut tar = Vec::new();
    raw_entry(&mut tar, "file", b'0', "", b"x\n");
    tar.extend_from_slice(&[0u8; 1024]);
    let (status, body) = put_archive(daemon, &read_only, "/etc", &tar);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"));
    daemon.docker_ok(&["rm", &read_only]);
    // The copy VMs are gone; the containers are as they were.
    let state = daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", &built]);
    assert_eq!(state, "exited");
    daemon.docker_ok(&["rm", &id, &built]);
}

#[test]
fn hostile_archives_never_write_outside_the_target() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "600"]);
    daemon.docker_ok(&["exec", &id, "mkdir", "-p", "/target"]);
    // What comes before the first hostile entry is extracted, as in Docker, which stops
    // at that entry ("... is outside of ..."); each hostile kind alone: tests/hostile_tar.rs.
    let mut tar = Vec::new();
    raw_entry(&mut tar, "fine.txt", b'0', "", b"fine\n");
    raw_entry(&mut tar, "../../escaped-dotdot", b'0', "", b"evil\n");
    raw_entry(&mut tar, "/escaped-absolute", b'0', "", b"evil\n");
    raw_entry(&mut tar, "to-etc", b'2', "/etc", b"");
    raw_entry(&mut tar, "to-etc/evil-through-link", b'0', "", b"evil\n");
    tar.extend_from_slice(&[0u8; 1024]);
    let (status, body) = put_archive(daemon, &id, "/target", &tar);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("message"));
    let outside = daemon.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "ls /escaped-dotdot /escaped-absolute /etc/evil-through-link /target/../escaped-dotdot",
    ]);
    assert!(
        !outside.status.success(),
        "something was written outside /target"
    );
    let inside = daemon.docker_ok(&["exec", &id, "cat", "/target/fine.txt"]);
    assert_eq!(inside, "fine");
    // Into a file, not a directory: refused.
    let (status, _) = put_archive(daemon, &id, "/target/fine.txt", &tar);
    assert_eq!(status, 400);
    // Garbage is an error, and the container keeps serving.
    let (status, _) = put_archive(
        daemon,
        &id,
        "/target",
        b"this is not a tar archive at all, not even close........",
    );
    assert_eq!(status, 400);
    daemon.docker_ok(&["exec", &id, "true"]);
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn export_then_import_round_trip() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "busybox",
        "sh",
        "-c",
        "echo exported-marker > /marker",
    ]);
    daemon.docker_ok(&["wait", &id]);
    let dir = scratch().join("export");
    std::fs::create_dir_all(&dir).unwrap();
    let tarball = dir.join("rootfs.tar");
    daemon.docker_ok(&["export", "-o", tarball.to_str().unwrap(), &id]);
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        names.push(entry.path().unwrap().display().to_string());
    }
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(names.iter().any(|n| n == "marker"), "{names:?}");
    // Mounted filesystems are left out: /proc is there, empty.
    assert!(
        names.iter().any(|n| n == "proc" || n == "proc/"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("proc/1")), "{names:?}");

    let imported = daemon.docker_ok(&[
        "import",
        "--change",
        r#"CMD ["cat", "/marker"]"#,
        "--change",
        "ENV IMPORTED=yes",
        tarball.to_str().unwrap(),
        "local/imported:1",
    ]);
    assert!(imported.starts_with("sha256:"), "{imported}");
    let ran = daemon.docker_ok(&["run", "--rm", "local/imported:1"]);
    assert_eq!(ran, "exported-marker");
    let env = daemon.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        "local/imported:1",
    ]);
    assert!(env.contains("IMPORTED=yes"), "{env}");
    let garbage = dir.join("garbage.tar");
    std::fs::write(&garbage, b"not a tarball").unwrap();
    let refused = daemon.docker(&["import", garbage.to_str().unwrap(), "local/garbage:1"]);
    assert!(!refused.status.success());
    daemon.docker_ok(&["rm", &id]);
    daemon.docker_ok(&["rmi", "local/imported:1"]);
}

#[test]
fn diff_and_commit_see_what_the_container_changed() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "busybox",
        "sh",
        "-c",
        "echo new > /added.txt; rm /bin/vi; mkdir -p /root/dir && echo x > /root/dir/f; sleep 600",
    ]);
    common::eventually("the container made its changes", || {
        daemon
            .docker(&["exec", &id, "test", "-f", "/root/dir/f"])
            .status
            .success()
    });
    let diff = daemon.docker_ok(&["diff", &id]);
    let lines: Vec<&str> = diff.lines().collect();
    for expected in [
        "A /added.txt",
        "C /bin",
        "D /bin/vi",
        "C /root",
        "A /root/dir",
        "A /root/dir/f",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected} missing from:\n{diff}"
        );
    }
    // Berth's own files and the mounted filesystems are not the container's changes.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/proc") || l.contains("/etc/hosts")),
        "{diff}"
    );

    let committed = daemon.docker_ok(&[
        "commit",
        "-c",
        r#"CMD ["cat", "/added.txt"]"#,
        "-m",
        "with changes",
        &id,
        "local/committed:1",
    ]);
    assert!(committed.starts_with("sha256:"), "{committed}");
    daemon.docker_ok(&["rm", "-f", &id]);
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "local/committed:1"]),
        "new"
    );
    let deleted = daemon.docker(&["run", "--rm", "local/committed:1", "ls", "/bin/vi"]);
    assert!(
        !deleted.status.success(),
        "the whiteout should hide /bin/vi"
    );
    let history = daemon.docker_ok(&["history", "--format", "{{.Comment}}", "local/committed:1"]);
    assert!(history.lines().next() == Some("with changes"), "{history}");
    // dockerd's CreatedBy for a commit: the container's command.
    let created_by = daemon.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "local/committed:1",
    ]);
    assert_eq!(
        created_by.lines().next(),
        Some("sh -c echo new > /added.txt; rm /bin/vi; mkdir -p /root/dir && echo x > /root/dir/f; sleep 600")
    );

    // A stopped container's changes are read too.
    let stopped = daemon.docker_ok(&["run", "-d", "busybox", "sh", "-c", "echo z > /z"]);
    daemon.docker_ok(&["wait", &stopped]);
    assert_eq!(daemon.docker_ok(&["diff", &stopped]), "A /z");
    // ... and committed (pause=true, the API's default, on an exited container).
    let from_exited = daemon.docker_ok(&["commit", &stopped, "local/from-exited:1"]);
    assert!(from_exited.starts_with("sha256:"), "{from_exited}");
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "local/from-exited:1", "cat", "/z"]),
        "z"
    );
    daemon.docker_ok(&["rmi", "local/from-exited:1"]);
    daemon.docker_ok(&["rm", &stopped]);
    daemon.docker_ok(&["rmi", "local/committed:1"]);
}
