//! Shared files: host bind mounts and volumes that several running containers use at
//! once, served to each VM by the host's file server over the agent channel, in clones
//! and cold boots; and what a guest must not get out of a share.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{eventually, scratch, shared, stderr, Daemon};

/// A fresh host directory for one test.
fn host_dir(name: &str) -> PathBuf {
    let dir = scratch().join("shares").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_bind_mount_is_a_share_seen_both_ways_while_the_container_runs() {
    let daemon = shared();
    let dir = host_dir("both-ways");
    std::fs::write(dir.join("from-host"), "host wrote this\n").unwrap();
    let bind = format!("{}:/app", path(&dir));
    daemon.docker_ok(&[
        "run", "-d", "--name", "share-rw", "-v", &bind, "busybox", "sleep", "600",
    ]);
    let exec = |script: &str| daemon.docker_ok(&["exec", "share-rw", "sh", "-c", script]);

    // Host to container, container to host, while it runs.
    assert_eq!(exec("cat /app/from-host"), "host wrote this");
    std::fs::write(dir.join("later"), "written after the start\n").unwrap();
    eventually("the container sees a file the host made", || {
        daemon
            .docker(&["exec", "share-rw", "cat", "/app/later"])
            .status
            .success()
    });
    exec("echo from the guest > /app/from-guest");
    assert_eq!(
        std::fs::read_to_string(dir.join("from-guest")).unwrap(),
        "from the guest\n"
    );

    // Rename, hard link, symlink (stored as written, never followed on the host).
    exec("mv /app/from-guest /app/renamed && ln /app/renamed /app/hard && ln -s /etc/shadow /app/link");
    assert!(!dir.join("from-guest").exists());
    let renamed = std::fs::metadata(dir.join("renamed")).unwrap();
    assert_eq!(renamed.nlink(), 2);
    assert_eq!(
        std::fs::metadata(dir.join("hard")).unwrap().ino(),
        renamed.ino()
    );
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("/etc/shadow")
    );

    // Numeric owners are the same on both sides.
    exec("touch /app/owned && chown 1234:5678 /app/owned");
    let owned = std::fs::metadata(dir.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    std::fs::write(dir.join("host-owned"), "x").unwrap();
    std::os::unix::fs::chown(dir.join("host-owned"), Some(4321), Some(8765)).unwrap();
    assert_eq!(exec("stat -c '%u %g' /app/host-owned"), "4321 8765");
    // A file the container's non-root user makes is that user's on the host too.
    exec("chmod 1777 /app");
    daemon.docker_ok(&[
        "exec",
        "-u",
        "65534:65534",
        "share-rw",
        "touch",
        "/app/by-nobody",
    ]);
    let by_nobody = std::fs::metadata(dir.join("by-nobody")).unwrap();
    assert_eq!((by_nobody.uid(), by_nobody.gid()), (65534, 65534));
    // ... who may not write into a file that is not theirs (this kernel checks modes).
    let denied = daemon.docker(&[
        "exec",
        "-u",
        "65534",
        "share-rw",
        "sh",
        "-c",
        "echo x >> /app/owned",
    ]);
    assert!(!denied.status.success());

    // Many small files, and a file past 4 GiB.
    exec("mkdir /app/many && cd /app/many && seq 1 2000 | xargs touch");
    assert_eq!(std::fs::read_dir(dir.join("many")).unwrap().count(), 2000);
    assert_eq!(exec("ls /app/many | wc -l"), "2000");
    let big = std::fs::File::create(dir.join("big")).unwrap();
    big.set_len(5 << 30).unwrap();
    std::os::unix::fs::FileExt::write_at(&big, b"tail!", (5 << 30) - 5).unwrap();
    drop(big);
    assert_eq!(exec("tail -c 5 /app/big"), "tail!");
    exec("echo past4g | dd of=/app/big2 bs=1 seek=4500000000 2>/dev/null");
    let big2 = std::fs::File::open(dir.join("big2")).unwrap();
    assert_eq!(big2.metadata().unwrap().len(), 4_500_000_000 + 7);
    let mut tail = [0u8; 7];
    std::os::unix::fs::FileExt::read_exact_at(&big2, &mut tail, 4_500_000_000).unwrap();
    assert_eq!(&tail, b"past4g\n");

    // docker cp into the bind of a running container writes into the share.
    let upload = scratch().join("shares-upload.txt");
    std::fs::write(&upload, "copied in\n").unwrap();
    daemon.docker_ok(&["cp", path(&upload), "share-rw:/app/copied.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("copied.txt")).unwrap(),
        "copied in\n"
    );

    // inspect shows the bind as Docker does.
    let mounts = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Source}} {{.Destination}} {{.RW}} {{.Propagation}}{{end}} {{json .HostConfig.Binds}}",
        "share-rw",
    ]);
    assert_eq!(
        mounts,
        format!("bind {} /app true rprivate [\"{bind}\"]", path(&dir))
    );
    daemon.docker_ok(&["rm", "-f", "share-rw"]);
    // The host's directory is the user's: it stays.
    assert!(dir.join("renamed").exists());
}

#[test]
fn read_only_binds_single_files_and_missing_sources_behave_as_docker() {
    let daemon = shared();
    let dir = host_dir("ro");
    std::fs::write(dir.join("keep"), "unchanged\n").unwrap();
    let ro = format!("{}:/data:ro", path(&dir));
    let refused = daemon.docker(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/keep; echo new > /data/new || exit 3; echo x >> /data/keep || exit 4",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("Read-only file system"),
        "{}",
        stderr(&refused)
    );
    assert!(!dir.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("keep")).unwrap(),
        "unchanged\n"
    );

    // One file, read-only, in a cold-booted VM as well as a clone.
    let config = dir.join("app.conf");
    std::fs::write(&config, "setting=1\n").unwrap();
    let file_bind = format!("{}:/etc/app.conf:ro", path(&config));
    for runtime in ["berth", "berth-coldboot"] {
        let out = daemon.docker_ok(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "-v",
            &file_bind,
            "busybox",
            "sh",
            "-c",
            "cat /etc/app.conf; ls /etc/app.conf",
        ]);
        assert_eq!(out, "setting=1\n/etc/app.conf", "{runtime}");
    }

    // -v makes a missing source directory; --mount refuses it, as Docker does.
    let missing = dir.join("made/by/v");
    let made = format!("{}:/m", path(&missing));
    daemon.docker_ok(&["run", "--rm", "-v", &made, "busybox", "touch", "/m/here"]);
    assert!(missing.join("here").exists());
    let absent = dir.join("absent");
    let mount = format!("type=bind,source={},target=/m", path(&absent));
    let refused = daemon.docker(&["run", "--rm", "--mount", &mount, "busybox", "true"]);
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        stderr(&refused).contains("bind source path does not exist"),
        "{}",
        stderr(&refused)
    );
    assert!(!absent.exists());
    // A source that is not absolute is a volume name, which `.` cannot start (the CLI
    // makes `./dir` absolute itself; the API sees what other clients send).
    let body = serde_json::json!({
        "Image": "busybox",
        "HostConfig": { "Binds": ["./rel:/m"] },
    });
    let (status, answer) = daemon
        .request(
            "POST",
            "/containers/create",
            Some(body.to_string().as_bytes()),
        )
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("invalid characters for a local volume name"),
        "{answer}"
    );

    // A bind of /etc/hosts is the user's; a volume over /etc does not hide the
    // container's own hostname file.
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "10.9.8.7 from-the-host\n").unwrap();
    let hosts_bind = format!("{}:/etc/hosts:ro", path(&hosts));
    let out = daemon.docker_ok(&[
        "run",
        "--rm",
        "--hostname",
        "seen",
        "-v",
        &hosts_bind,
        "-v",
        "etc-volume:/etc",
        "busybox",
        "sh",
        "-c",
        "cat /etc/hosts /etc/hostname",
    ]);
    assert_eq!(out, "10.9.8.7 from-the-host\nseen");
    daemon.docker_ok(&["volume", "rm", "etc-volume"]);

    // --mount with readonly and a propagation mode (accepted and shown).
    let mount = format!(
        "type=bind,source={},target=/m,readonly,bind-propagation=rslave",
        path(&dir)
    );
    daemon.docker_ok(&[
        "create",
        "--name",
        "share-mount",
        "--mount",
        &mount,
        "busybox",
        "true",
    ]);
    let shown = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.RW}} {{.Propagation}}{{end}}",
        "share-mount",
    ]);
    assert_eq!(shown, "bind false rslave");
    daemon.docker_ok(&["rm", "share-mount"]);
}

#[test]
fn running_containers_share_a_volume_and_volumes_from() {
    let daemon = shared();
    daemon.docker_ok(&["volume", "create", "team"]);
    daemon.docker_ok(&[
        "run", "-d", "--name", "team-writer", "-v", "team:/data", "busybox", "sh", "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /data/counter.tmp; mv /data/counter.tmp /data/counter; sleep 0.2; done",
    ]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "team-reader",
        "--runtime",
        "berth-coldboot",
        "-v",
        "team:/data",
        "busybox",
        "sleep",
        "600",
    ]);
    let read = || {
        daemon
            .docker_ok(&["exec", "team-reader", "cat", "/data/counter"])
            .parse::<u64>()
            .unwrap_or(0)
    };
    eventually("the reader sees the writer's counter", || read() > 0);
    let first = read();
    eventually("the counter moves while both run", || read() > first);
    // The reader writes too; the writer sees it.
    daemon.docker_ok(&["exec", "team-reader", "sh", "-c", "echo hello > /data/note"]);
    assert_eq!(
        daemon.docker_ok(&["exec", "team-writer", "cat", "/data/note"]),
        "hello"
    );
    // --volumes-from, read-only.
    let from = daemon.docker(&[
        "run",
        "--rm",
        "--volumes-from",
        "team-writer:ro",
        "busybox",
        "sh",
        "-c",
        "cat /data/note && touch /data/x",
    ]);
    assert_eq!(String::from_utf8_lossy(&from.stdout).trim(), "hello");
    assert!(!from.status.success());
    let mountpoint = daemon.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "team"]);
    assert!(mountpoint.ends_with("/volumes/team/_data"), "{mountpoint}");
    // The shape dockerd gives a volume: empty labels and options are null, the time in
    // seconds.
    let (status, body) = daemon.request("GET", "/volumes/team", None).unwrap();
    assert_eq!(status, 200);
    let volume: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(volume["Labels"], serde_json::Value::Null, "{volume}");
    assert_eq!(volume["Options"], serde_json::Value::Null, "{volume}");
    assert_eq!(
        (volume["Driver"].as_str(), volume["Scope"].as_str()),
        (Some("local"), Some("local"))
    );
    let created = volume["CreatedAt"].as_str().unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && !created.contains('.'),
        "{created}"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&mountpoint).join("note")).unwrap(),
        "hello\n"
    );
    daemon.docker_ok(&["rm", "-f", "team-writer", "team-reader"]);
    daemon.docker_ok(&["volume", "rm", "team"]);
}

#[test]
fn a_disk_volume_serves_one_running_vm() {
    let daemon = shared();
    daemon.docker_ok(&["volume", "create", "--opt", "type=disk", "one-writer"]);
    let mountpoint =
        daemon.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "one-writer"]);
    assert!(mountpoint.ends_with("/disk.raw"), "{mountpoint}");
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "disk-holder",
        "-v",
        "one-writer:/d",
        "busybox",
        "sh",
        "-c",
        "echo on-disk > /d/f && sync && touch /d/synced; sleep 600",
    ]);
    // Written and synced before the VM is killed (`rm -f`): a disk is the guest's own,
    // and what its page cache holds dies with it.
    eventually("the holder wrote to its disk volume", || {
        daemon
            .docker(&["exec", "disk-holder", "ls", "/d/synced"])
            .status
            .success()
    });
    let second = daemon.docker(&["run", "--rm", "-v", "one-writer:/d", "busybox", "true"]);
    assert_eq!(second.status.code(), Some(125));
    assert!(
        stderr(&second).contains("attached to running container"),
        "{}",
        stderr(&second)
    );
    daemon.docker_ok(&["rm", "-f", "disk-holder"]);
    let read = daemon.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "one-writer:/d",
        "busybox",
        "cat",
        "/d/f",
    ]);
    assert_eq!(read, "on-disk");
    daemon.docker_ok(&["volume", "rm", "one-writer"]);
    let bad = daemon.docker(&["volume", "create", "--opt", "size=1G", "sized"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("type=disk"), "{}", stderr(&bad));
}

#[test]
fn what_a_guest_makes_in_a_share_gives_nothing_on_the_host() {
    let daemon = shared();
    let dir = host_dir("hostile");
    let bind = format!("{}:/s", path(&dir));
    let out = daemon.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        "mknod /s/disk b 8 0 2>/dev/null && echo made-block; \
         mknod /s/mem c 1 1 2>/dev/null && echo made-char; \
         mkfifo /s/fifo && echo made-fifo; \
         cp /bin/busybox /s/suid && chmod 4755 /s/suid && chmod g+s /s/suid; \
         touch /s/plain && chmod 2755 /s/plain; \
         ln -s / /s/root-link; ls /s/root-link/ >/dev/null && echo link-ok",
    ]);
    assert_eq!(out, "made-fifo\nlink-ok");
    assert!(!dir.join("disk").exists() && !dir.join("mem").exists());
    for name in ["suid", "plain"] {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o6000, 0, "{name} kept a set-id bit: {mode:o}");
    }
    // The symlink is the guest's: stored as written, resolved in the guest only.
    assert_eq!(
        std::fs::read_link(dir.join("root-link")).unwrap(),
        Path::new("/")
    );
}

#[test]
fn shares_survive_a_killed_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let host = host_dir("live-restore");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", common::busybox_archive().to_str().unwrap()]);
    let bind = format!("{}:/app", path(&host));
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "kept",
        "-v",
        &bind,
        "-v",
        "kept-volume:/v",
        "busybox",
        "sh",
        "-c",
        "echo before > /app/before; sleep 600",
    ]);
    eventually("the container wrote into the share", || {
        host.join("before").exists()
    });
    daemon.kill9();
    let daemon = Daemon::start(&root);
    assert_eq!(
        daemon.docker_ok(&[
            "exec",
            "kept",
            "sh",
            "-c",
            "cat /app/before; echo after > /app/after; echo v > /v/f; cat /v/f"
        ]),
        "before\nv"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("after")).unwrap(),
        "after\n"
    );
    daemon.docker_ok(&["rm", "-f", "-v", "kept"]);
    daemon.stop();
}

#[test]
fn a_compose_project_shares_a_bind_and_a_volume_between_running_services() {
    let daemon = shared();
    let project = host_dir("compose-project");
    std::fs::create_dir_all(project.join("site")).unwrap();
    std::fs::write(project.join("site/index.html"), "from the host's project\n").unwrap();
    std::fs::write(
        project.join("docker-compose.yml"),
        r#"version: "3"
services:
  web:
    image: busybox
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    volumes:
      - ./site:/www:ro
      - spool:/spool
  worker:
    image: busybox
    command: ["sh", "-c", "while true; do date +%s > /spool/heartbeat; sleep 0.5; done"]
    volumes:
      - spool:/spool
volumes:
  spool: {}
"#,
    )
    .unwrap();
    let compose = |args: &[&str]| {
        std::process::Command::new("docker-compose")
            .current_dir(&project)
            .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
            .args(["-p", "sharesdemo"])
            .args(args)
            .output()
            .expect("docker-compose (apt-get install docker-compose)")
    };
    let up = compose(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {}", stderr(&up));
    // The worker writes the shared volume; the web service sees it while both run.
    eventually("the web service sees the worker's heartbeat", || {
        daemon
            .docker(&["exec", "sharesdemo_web_1", "cat", "/spool/heartbeat"])
            .status
            .success()
    });
    // The bind-mounted project directory, served by the web service.
    let page = daemon.docker_ok(&[
        "exec",
        "sharesdemo_web_1",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1/index.html",
    ]);
    assert_eq!(page, "from the host's project");
    std::fs::write(project.join("site/index.html"), "edited on the host\n").unwrap();
    eventually("the web service serves the host's edit", || {
        daemon
            .docker(&["exec", "sharesdemo_web_1", "cat", "/www/index.html"])
            .stdout
            .starts_with(b"edited on the host")
    });
    let down = compose(&["down", "-v"]);
    assert!(down.status.success(), "compose down: {}", stderr(&down));
}

#[test]
fn docker_py_binds_and_shares_volumes() {
    let daemon = shared();
    let dir = host_dir("docker-py");
    std::fs::write(dir.join("input"), "for docker-py\n").unwrap();
    let script = r#"
import sys, docker
c = docker.DockerClient(base_url="unix://" + sys.argv[1], version="auto")
host = sys.argv[2]
out = c.containers.run("busybox", ["sh", "-c", "cat /in/input; touch /in/x || echo refused"],
                       volumes={host: {"bind": "/in", "mode": "ro"}}, remove=True)
assert out == b"for docker-py\nrefused\n", out
c.volumes.create("pyshared")
a = c.containers.run("busybox", ["sh", "-c", "echo py > /v/f; sleep 60"],
                     volumes={"pyshared": {"bind": "/v", "mode": "rw"}}, detach=True)
import time
for _ in range(100):
    code, out = a.exec_run(["cat", "/v/f"])
    if code == 0: break
    time.sleep(0.2)
out = c.containers.run("busybox", ["cat", "/v/f"], volumes=["pyshared:/v"], remove=True)
assert out == b"py\n", out
mounts = c.api.inspect_container(a.id)["Mounts"]
assert mounts[0]["Type"] == "volume" and mounts[0]["Name"] == "pyshared", mounts
a.remove(force=True)
c.volumes.get("pyshared").remove()
print("ok")
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&daemon.socket)
        .arg(&dir)
        .output()
        .expect("python3-docker");
    assert!(
        output.status.success(),
        "docker-py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!dir.join("x").exists());
}

#[test]
fn docker_cp_reaches_the_binds_of_a_stopped_container() {
    let daemon = shared();
    let dir = host_dir("cp-stopped");
    std::fs::write(dir.join("on-host"), "read me out\n").unwrap();
    let bind = format!("{}:/work", path(&dir));
    daemon.docker_ok(&[
        "create",
        "--name",
        "cp-stopped",
        "-v",
        &bind,
        "busybox",
        "true",
    ]);
    let upload = scratch().join("cp-stopped-upload.txt");
    std::fs::write(&upload, "copied into a stopped container\n").unwrap();
    daemon.docker_ok(&["cp", path(&upload), "cp-stopped:/work/in.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("in.txt")).unwrap(),
        "copied into a stopped container\n"
    );
    let out = scratch().join("cp-stopped-out.txt");
    let _ = std::fs::remove_file(&out);
    daemon.docker_ok(&["cp", "cp-stopped:/work/on-host", path(&out)]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "read me out\n");
    daemon.docker_ok(&["rm", "cp-stopped"]);
}
