//! `run` options that the guest applies, and the verbs around the lifecycle, with the
//! real docker CLI: capabilities, limits, read-only roots, tmpfs, sysctls, hosts and
//! resolver settings; what Berth cannot honour is refused; restart, rename, update and
//! container prune.

mod common;

use common::{eventually, shared, stderr, stdout};

fn output_of(args: &[&str]) -> String {
    shared().docker_ok(args)
}

#[test]
fn capabilities_and_limits_are_dockers() {
    // Docker's default bounding set, and the same for an exec.
    let default = output_of(&[
        "run",
        "--rm",
        "busybox",
        "grep",
        "CapBnd",
        "/proc/self/status",
    ]);
    assert_eq!(default, "CapBnd:\t00000000a80425fb");
    let added = output_of(&[
        "run",
        "--rm",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "CHOWN",
        "busybox",
        "grep",
        "CapBnd",
        "/proc/self/status",
    ]);
    assert_eq!(added, "CapBnd:\t00000000a80435fa");
    let none = output_of(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "busybox",
        "grep",
        "CapBnd",
        "/proc/self/status",
    ]);
    assert_eq!(none, "CapBnd:\t0000000000000000");
    let privileged = output_of(&[
        "run",
        "--rm",
        "--privileged",
        "busybox",
        "grep",
        "CapBnd",
        "/proc/self/status",
    ]);
    assert_ne!(privileged, default);
    assert!(privileged.ends_with("ffffffffff"), "{privileged}");
    let limits = output_of(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=512:1024",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; grep NoNewPrivs /proc/self/status",
    ]);
    assert_eq!(limits, "512\n1024\nNoNewPrivs:\t1");
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "--cap-drop", "ALL", "busybox", "sleep", "60"]);
    let exec = daemon.docker_ok(&["exec", &id, "grep", "CapBnd", "/proc/self/status"]);
    assert_eq!(exec, "CapBnd:\t0000000000000000");
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn group_add_puts_the_process_and_its_execs_in_more_groups() {
    let daemon = shared();
    // Names from the image's /etc/group and numbers, beside the user's own group (`id`
    // lists the effective group, then the others in the kernel's order).
    assert_eq!(
        output_of(&[
            "run",
            "--rm",
            "-u",
            "nobody",
            "--group-add",
            "4321",
            "--group-add",
            "root",
            "busybox",
            "id",
            "-G",
        ]),
        "65534 0 4321"
    );
    let unknown = daemon.docker(&[
        "run",
        "--rm",
        "--group-add",
        "no-such-group",
        "busybox",
        "true",
    ]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no-such-group"),
        "{}",
        stderr(&unknown)
    );
    let id = daemon.docker_ok(&["run", "-d", "--group-add", "777", "busybox", "sleep", "600"]);
    assert_eq!(daemon.docker_ok(&["exec", &id, "id", "-G"]), "0 777");
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{json .HostConfig.GroupAdd}}", &id]),
        "[\"777\"]"
    );
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn devices_are_usable_by_any_user_as_on_docker() {
    let devices = output_of(&[
        "run", "--rm", "-u", "nobody", "busybox", "sh", "-c",
        "echo x > /dev/null && head -c 4 /dev/urandom > /dev/null && echo wrote; stat -c '%n %A' /dev/null /dev/zero /dev/urandom /dev/tty /dev/shm /dev/pts/ptmx",
    ]);
    let lines: Vec<&str> = devices.lines().collect();
    assert_eq!(lines[0], "wrote", "{devices}");
    for device in [
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/tty",
        "/dev/pts/ptmx",
    ] {
        assert!(
            lines.contains(&format!("{device} crw-rw-rw-").as_str()),
            "{device}: {devices}"
        );
    }
    assert!(lines.contains(&"/dev/shm drwxrwxrwt"), "{devices}");
}

#[test]
fn filesystem_and_guest_settings_are_applied() {
    let read_only = output_of(&[
        "run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
        "touch /file 2>/dev/null && echo wrote-root; touch /scratch/x && echo wrote-tmpfs; grep ' /scratch ' /proc/mounts",
    ]);
    let lines: Vec<&str> = read_only.lines().collect();
    assert_eq!(lines[0], "wrote-tmpfs", "{read_only}");
    assert!(
        lines[1].contains("tmpfs")
            && lines[1].contains("noexec")
            && lines[1].contains("size=1024k"),
        "{read_only}"
    );
    let settings = output_of(&[
        "run", "--rm", "--sysctl", "net.core.somaxconn=512", "--add-host", "db.internal:10.0.0.5",
        "--dns-search", "example.test", "--shm-size", "32m", "busybox", "sh", "-c",
        "cat /proc/sys/net/core/somaxconn; grep db.internal /etc/hosts; grep search /etc/resolv.conf; grep ' /dev/shm ' /proc/mounts",
    ]);
    let lines: Vec<&str> = settings.lines().collect();
    assert_eq!(lines[0], "512");
    assert_eq!(lines[1], "10.0.0.5\tdb.internal");
    assert_eq!(lines[2], "search example.test");
    assert!(lines[3].contains("size=32768k"), "{settings}");
}

#[test]
fn the_container_is_pid_1_of_its_own_namespace_and_pid_host_is_its_vms() {
    let daemon = shared();
    // Docker's default: the container's first process is PID 1 and sees only the
    // container's processes; an exec joins that namespace.
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "busybox",
        "sh",
        "-c",
        "echo $$; exec sleep 600",
    ]);
    eventually("the first process wrote its pid", || {
        !stdout(&daemon.docker(&["logs", &id])).is_empty()
    });
    assert_eq!(stdout(&daemon.docker(&["logs", &id])).trim(), "1");
    let processes = daemon.docker_ok(&["exec", &id, "ps", "-o", "pid,args"]);
    let lines: Vec<&str> = processes.lines().skip(1).map(str::trim).collect();
    assert_eq!(lines.len(), 2, "{processes}");
    assert_eq!(lines[0], "1 sleep 600");
    assert!(lines[1].ends_with("ps -o pid,args"), "{processes}");
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.HostConfig.PidMode}}", &id]),
        ""
    );
    daemon.docker_ok(&["rm", "-f", &id]);

    // `--init`: an init is PID 1; it passes `docker stop`'s SIGTERM on (a PID 1 without
    // a handler would lose it: 143, not 137 after the timeout), reaps orphans, and a
    // missing program is 127.
    let id = daemon.docker_ok(&["run", "-d", "--init", "busybox", "sleep", "600"]);
    let processes = daemon.docker_ok(&["exec", &id, "ps", "-o", "pid,args"]);
    assert!(
        processes.contains("1 {exe} berth-init sleep 600"),
        "{processes}"
    );
    daemon.docker_ok(&["stop", &id]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.ExitCode}} {{.HostConfig.Init}}",
            &id
        ]),
        "143 true"
    );
    daemon.docker_ok(&["rm", &id]);
    let orphans = daemon.docker_ok(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "(sleep 1 &); sleep 3; ps -o stat,args | grep -c '^Z' || true",
    ]);
    assert_eq!(orphans, "0", "an orphan was left a zombie");
    let missing = daemon.docker(&["run", "--rm", "--init", "busybox", "no-such-program"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));

    // `--pid host`: the VM's namespace, whose PID 1 is Berth's agent; `--uts host` and
    // `--ipc host` are the VM's too. Inspect shows what was asked.
    let id = daemon.docker_ok(&[
        "run", "-d", "--pid", "host", "--uts", "host", "--ipc", "host", "busybox", "sleep", "600",
    ]);
    let first = daemon.docker_ok(&["exec", &id, "cat", "/proc/1/cmdline"]);
    assert_eq!(first.trim_end_matches('\0'), "/init");
    assert!(daemon
        .docker_ok(&["exec", &id, "ps", "-o", "pid,args"])
        .contains("sleep 600"));
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.PidMode}} {{.HostConfig.UTSMode}} {{.HostConfig.IpcMode}}",
            &id
        ]),
        "host host host"
    );
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn what_cannot_be_honoured_is_refused() {
    let daemon = shared();
    for args in [
        &["--device", "/dev/null"][..],
        &["--pid", "container:other"],
        &["--ipc", "container:other"],
        &["--cpuset-cpus", "4095"],
        &["--cpus", "1", "--cpu-quota", "50000"],
        &["--security-opt", "seccomp=/nonexistent.json"],
        &["--cap-add", "FLYING"],
        &["--ulimit", "wings=1:1"],
    ] {
        let mut command = vec!["run", "--rm"];
        command.extend_from_slice(args);
        command.extend(["busybox", "true"]);
        let output = daemon.docker(&command);
        assert_eq!(output.status.code(), Some(125), "{args:?} was not refused");
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn restart_rename_update_and_prune() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "before-rename",
        "--label",
        "prune=me",
        "busybox",
        "sleep",
        "300",
    ]);
    daemon.docker_ok(&["rename", "before-rename", "after-rename"]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.Name}}", &id]),
        "/after-rename"
    );
    let started = daemon.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", &id]);
    daemon.docker_ok(&["restart", "-t", "1", "after-rename"]);
    let restarted = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.StartedAt}}",
        &id,
    ]);
    assert!(
        restarted.starts_with("running ") && !restarted.ends_with(&started),
        "{restarted}"
    );
    daemon.docker_ok(&["update", "--restart", "on-failure:3", &id]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            &id
        ]),
        "on-failure 3"
    );
    // A clone's memory is its template's (no balloon): a memory cgroup in the guest
    // limits the container's processes instead, as Docker's -m does; a process beyond
    // it is killed (137) and the container runs on.
    daemon.docker_ok(&["update", "--memory", "48m", &id]);
    assert_eq!(
        daemon.docker_ok(&["exec", &id, "cat", "/proc/self/cgroup"]),
        "0::/container"
    );
    let hog = daemon.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "x=0123456789abcdef; while true; do x=$x$x; done",
    ]);
    assert_eq!(hog.status.code(), Some(137), "{}", stderr(&hog));
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.HostConfig.Memory}}",
            &id
        ]),
        "true 50331648"
    );
    // A cold-booted VM's memory: lowered through its balloon (the guest sees less),
    // raised back up to its size, never above it.
    let cold = daemon.docker_ok(&[
        "run",
        "-d",
        "--runtime",
        "berth-coldboot",
        "-m",
        "256m",
        "busybox",
        "sleep",
        "600",
    ]);
    let mem_total_kib = || -> u64 {
        let line = daemon.docker_ok(&["exec", &cold, "grep", "MemTotal", "/proc/meminfo"]);
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let full = mem_total_kib();
    daemon.docker_ok(&["update", "--memory", "128m", &cold]);
    eventually("the guest gave memory back to its balloon", || {
        mem_total_kib() + 64 * 1024 < full
    });
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", &cold]),
        "134217728"
    );
    let too_much = daemon.docker(&["update", "--memory", "384m", &cold]);
    assert!(
        stderr(&too_much).contains("can only be given up to that while it runs"),
        "{}",
        stderr(&too_much)
    );
    daemon.docker_ok(&["update", "--memory", "256m", &cold]);
    eventually("the balloon gave the memory back", || {
        mem_total_kib() == full
    });
    daemon.docker_ok(&["rm", "-f", &cold]);
    daemon.docker_ok(&["stop", "-t", "0", &id]);
    daemon.docker_ok(&["update", "--memory", "300m", &id]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", &id]),
        "314572800"
    );
    let kept = daemon.docker_ok(&["create", "--label", "prune=keep", "busybox", "true"]);
    let pruned = daemon.docker_ok(&["container", "prune", "-f", "--filter", "label=prune=me"]);
    assert!(pruned.contains(&id), "{pruned}");
    assert!(!pruned.contains(&kept));
    assert!(!daemon.docker(&["inspect", &id]).status.success());
    daemon.docker_ok(&["rm", &kept]);
}

#[test]
fn logs_rotate_and_select_by_time() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run", "-d", "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "busybox", "sh", "-c",
        "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done; echo first-mark; sleep 2; echo second-mark; sleep 300",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let logs = loop {
        let logs = daemon.docker_ok(&["logs", "-t", &id]);
        if logs.contains("second-mark") {
            break logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second mark: {logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(!logs.contains("line-0\n"), "rotated lines are gone");
    assert!(logs.contains("line-199"));
    let dir = daemon.root.join("containers").join(&id);
    assert!(dir.join("container.log.1").exists());
    assert!(
        !dir.join("container.log.2").exists(),
        "more files than max-file"
    );
    // --since and --until, at the second mark's own timestamp.
    let second_time = logs
        .lines()
        .find(|l| l.ends_with("second-mark"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let after = daemon.docker_ok(&["logs", "--since", &second_time, &id]);
    assert_eq!(after, "second-mark");
    let before = daemon.docker_ok(&["logs", "--until", &second_time, &id]);
    assert!(before.ends_with("first-mark"), "{before}");
    daemon.docker_ok(&["rm", "-f", &id]);
    let refused = daemon.docker(&["run", "--rm", "--log-driver", "syslog", "busybox", "true"]);
    assert_eq!(refused.status.code(), Some(125));
    // A driver nobody has, in Docker's words; max-file alone is accepted, as Docker.
    let unknown = daemon.docker(&["run", "--rm", "--log-driver", "bogus", "busybox", "true"]);
    assert_eq!(unknown.status.code(), Some(125));
    assert!(
        stderr(&unknown).contains("logger: no log driver named 'bogus' is registered"),
        "{}",
        stderr(&unknown)
    );
    let id = daemon.docker_ok(&["create", "--log-opt", "max-file=3", "busybox", "true"]);
    daemon.docker_ok(&["rm", &id]);
}

#[test]
fn top_lists_the_containers_processes() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    let table = daemon.docker_ok(&["top", &id]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    assert!(
        lines.any(|l| l.starts_with("root") && l.ends_with("sleep 300")),
        "{table}"
    );
    let aux = daemon.docker_ok(&["top", &id, "aux"]);
    assert!(aux.lines().next().unwrap().ends_with("COMMAND"), "{aux}");
    let custom = daemon.docker_ok(&["top", &id, "-o", "pid,comm"]);
    let mut rows = custom.lines();
    assert_eq!(
        rows.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["PID", "COMMAND"]
    );
    assert!(rows.any(|l| l.ends_with("sleep")), "{custom}");
    let refused = daemon.docker(&["top", &id, "-o", "pid,wchan"]);
    assert!(!refused.status.success());
    daemon.docker_ok(&["rm", "-f", &id]);
}

/// Sends `request` (head and body) on a new connection, checks that the daemon upgrades
/// it, types `typed` and then ctrl-x x, and waits for the daemon to close it.
fn hijack_and_detach(daemon: &common::Daemon, request: &[u8], typed: &[u8]) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(typed).unwrap();
    stream.write_all(&[24, b'x']).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the daemon closes the connection after the detach keys");
}

#[test]
fn detach_keys_let_go_and_leave_the_container_running() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "-i", "-t", "busybox", "sh"]);
    let attach = format!(
        "POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1&detachKeys=ctrl-x,x HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    );
    hijack_and_detach(daemon, attach.as_bytes(), b"echo still-here\n");
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );

    // An exec's detach keys come from its own config (the CLI sends the client's
    // `detachKeys` there): the client lets go, the exec's process runs on.
    let body = br#"{"AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Tty":true,"DetachKeys":"ctrl-x,x","Cmd":["sh"]}"#;
    let (status, created) = daemon
        .request("POST", &format!("/containers/{id}/exec"), Some(body))
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let exec = created["Id"].as_str().unwrap().to_owned();
    let start = r#"{"Detach":false,"Tty":true}"#;
    let request = format!(
        "POST /exec/{exec}/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{start}",
        start.len()
    );
    hijack_and_detach(daemon, request.as_bytes(), b"echo in-exec\n");
    let (_, state) = daemon
        .request("GET", &format!("/exec/{exec}/json"), None)
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(state["Running"], true, "the exec's shell ended: {state}");
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn an_out_of_memory_kill_is_reported() {
    let daemon = shared();
    // A shell that keeps growing a string in a 96 MiB VM, until the guest's kernel kills it.
    let output = daemon.docker(&[
        "run",
        "--name",
        "hungry",
        "-m",
        "96m",
        "busybox",
        "sh",
        "-c",
        "x=0123456789abcdef; while true; do x=$x$x; done",
    ]);
    assert_eq!(
        output.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.ExitCode}}",
            "hungry"
        ]),
        "true 137"
    );
    daemon.docker_ok(&["rm", "hungry"]);
}

#[test]
fn sizes_and_endpoints_berth_does_not_offer() {
    let daemon = shared();
    let id = daemon.docker_ok(&["create", "busybox", "true"]);
    let size: u64 = daemon
        .docker_ok(&["inspect", "-s", "-f", "{{.SizeRw}}", &id])
        .parse()
        .unwrap();
    assert!(size > 0, "the container's disk takes room");
    let listed = daemon.docker_ok(&[
        "ps",
        "-a",
        "-s",
        "--filter",
        &format!("id={id}"),
        "--format",
        "{{.Size}}",
    ]);
    assert!(!listed.is_empty() && listed != "0B", "{listed}");
    daemon.docker_ok(&["rm", &id]);
    assert_eq!(daemon.docker_ok(&["plugin", "ls", "-q"]), "");
    // No container has volumes yet.
    assert_eq!(
        daemon.docker_ok(&["ps", "-a", "-q", "--filter", "volume=data"]),
        ""
    );
    let info = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        info.contains(&format!("[\"Network namespace\",\"{}\"]", daemon.netns)),
        "{info}"
    );
    // A build without a Dockerfile is refused before it starts; BuildKit's session
    // endpoint is not offered (the classic builder is).
    let (status, body) = daemon.request("POST", "/build", Some(b"")).unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("Cannot locate specified Dockerfile"));
    let (status, body) = daemon.request("POST", "/session", Some(b"")).unwrap();
    assert_eq!(status, 501);
    assert!(String::from_utf8_lossy(&body).contains("BuildKit"));
    let (status, _) = daemon.request("GET", "/tasks", None).unwrap();
    assert_eq!(status, 503);
}

#[test]
fn stats_show_network_and_disk_io() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run", "-d", "busybox", "sh", "-c",
        "ping -c 3 -i 0.2 $(ip route | awk '/default/ {print $3}'); dd if=/dev/zero of=/written bs=64k count=32; sync; sleep 300",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let io = daemon.docker_ok(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.NetIO}}|{{.BlockIO}}",
            &id,
        ]);
        let (net, block) = io.split_once('|').unwrap();
        let (_, written) = block.split_once(" / ").unwrap();
        // 32 x 64 KiB written: at least 2 MB on the VM's disk once `sync` ran.
        let disk_written = written.contains("MB") || written.contains("GB");
        if !net.starts_with("0B") && !net.ends_with(" 0B") && disk_written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "network traffic and 2 MB written were not both seen: {io}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // PIDS counts the container's processes, those `docker top` lists (not 0).
    let pids = daemon.docker_ok(&["stats", "--no-stream", "--format", "{{.PIDs}}", &id]);
    let listed = daemon.docker_ok(&["top", &id]).lines().count() - 1;
    assert_eq!(pids, listed.to_string());
    assert_ne!(pids, "0");
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn older_api_versions_get_their_shapes() {
    let daemon = shared();
    let (status, old) = daemon.request("GET", "/v1.41/images/json", None).unwrap();
    assert_eq!(status, 200);
    let old: serde_json::Value = serde_json::from_slice(&old).unwrap();
    assert!(old[0].get("VirtualSize").is_some(), "{old}");
    let (_, new) = daemon.request("GET", "/v1.53/images/json", None).unwrap();
    let new: serde_json::Value = serde_json::from_slice(&new).unwrap();
    assert!(new[0].get("VirtualSize").is_none(), "{new}");
    let (_, inspect) = daemon
        .request("GET", "/v1.43/images/busybox/json", None)
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&inspect).unwrap();
    assert!(inspect.get("ContainerConfig").is_some() && inspect.get("VirtualSize").is_some());
}

#[test]
fn links_give_variables_hosts_lines_and_names_as_docker() {
    let daemon = shared();
    daemon.docker_ok(&[
        "run", "-d", "--name", "link-db", "-e", "DBVAR=x", "--expose", "5432", "busybox", "sleep",
        "600",
    ]);
    let db_id = daemon.docker_ok(&["inspect", "-f", "{{.Id}}", "link-db"]);
    let db_ip = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.bridge.IPAddress}}",
        "link-db",
    ]);

    // The default bridge: variables, a hosts line, HostConfig.Links; the alias answers.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "link-web",
        "--link",
        "link-db:dbalias",
        "busybox",
        "sleep",
        "600",
    ]);
    let environment = daemon.docker_ok(&["exec", "link-web", "env"]);
    for expected in [
        format!("DBALIAS_PORT=tcp://{db_ip}:5432"),
        format!("DBALIAS_PORT_5432_TCP_ADDR={db_ip}"),
        "DBALIAS_PORT_5432_TCP_PROTO=tcp".to_owned(),
        "DBALIAS_NAME=/link-web/dbalias".to_owned(),
        "DBALIAS_ENV_DBVAR=x".to_owned(),
    ] {
        assert!(
            environment.lines().any(|l| l == expected),
            "{expected} not in {environment}"
        );
    }
    let hosts = daemon.docker_ok(&["exec", "link-web", "cat", "/etc/hosts"]);
    let line = format!("{db_ip}\tdbalias {} link-db", &db_id[..12]);
    assert!(hosts.lines().any(|l| l == line), "{line:?} not in {hosts}");
    daemon.docker_ok(&["exec", "link-web", "ping", "-c", "1", "-W", "5", "dbalias"]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{json .HostConfig.Links}}", "link-web"]),
        r#"["/link-db:/link-web/dbalias"]"#
    );
    // docker ps names the target by its link too, as dockerd lists it.
    assert_eq!(
        daemon.docker_ok(&[
            "ps",
            "--no-trunc",
            "--filter",
            "name=link-db",
            "--format",
            "{{.Names}}"
        ]),
        "link-db,link-web/dbalias"
    );

    // docker rm --link takes the link away; a plain name or an unknown link is refused.
    assert_eq!(
        daemon.docker_ok(&["rm", "--link", "/link-web/dbalias"]),
        "/link-web/dbalias"
    );
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{json .HostConfig.Links}}", "link-web"]),
        "null"
    );
    let unknown = daemon.docker(&["rm", "--link", "/link-web/dbalias"]);
    assert!(
        stderr(&unknown).contains("No such container: link-web/dbalias"),
        "{}",
        stderr(&unknown)
    );
    let plain = daemon.docker(&["rm", "--link", "link-db"]);
    assert!(
        stderr(&plain).contains("cannot remove the default link name"),
        "{}",
        stderr(&plain)
    );

    // Docker's refusals: a target that does not exist (at create), or does not run (at start).
    let missing = daemon.docker(&["create", "--link", "no-such-db:x", "busybox", "true"]);
    assert!(
        stderr(&missing)
            .contains("could not get container for no-such-db: No such container: no-such-db"),
        "{}",
        stderr(&missing)
    );
    daemon.docker_ok(&[
        "create",
        "--name",
        "link-late",
        "--link",
        "link-web:w",
        "busybox",
        "true",
    ]);
    daemon.docker_ok(&["rm", "-f", "link-web"]);
    let stopped = daemon.docker(&["start", "link-late"]);
    assert!(
        stderr(&stopped)
            .contains("Cannot link to a non running container: /link-web AS /link-late/w"),
        "{}",
        stderr(&stopped)
    );
    daemon.docker_ok(&["rm", "link-late"]);

    // A user-defined network: no variables or hosts lines, the link is the endpoint's,
    // and its alias resolves through Berth's DNS (for the linking container alone: a unit
    // test of the resolver; asking from another container would send the name upstream).
    daemon.docker_ok(&["network", "create", "link-net"]);
    daemon.docker_ok(&["network", "connect", "link-net", "link-db"]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "link-user",
        "--network",
        "link-net",
        "--link",
        "link-db:store",
        "busybox",
        "sleep",
        "600",
    ]);
    let found = daemon.docker_ok(&["exec", "link-user", "nslookup", "store"]);
    let db_on_net = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"link-net\").IPAddress}}",
        "link-db",
    ]);
    assert!(found.contains(&format!("Address: {db_on_net}")), "{found}");
    assert!(!daemon
        .docker_ok(&["exec", "link-user", "env"])
        .contains("STORE_"));
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{json .HostConfig.Links}} {{json (index .NetworkSettings.Networks \"link-net\").Links}}",
            "link-user"
        ]),
        r#"null ["link-db:store"]"#
    );
    daemon.docker_ok(&["rm", "-f", "link-user", "link-db"]);
    daemon.docker_ok(&["network", "rm", "link-net"]);
}

/// The cgroup file `file` of the VM process `pid` in the hierarchy with `controller`
/// (cgroup v2's unified one, or v1's).
fn vm_cgroup_file(pid: &str, controller: &str, file: &str) -> String {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (mount, path) = table
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            if unified && controllers.is_empty() {
                return Some(("".to_owned(), path.to_owned()));
            }
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| (controllers.to_owned(), path.to_owned()))
        })
        .unwrap_or_else(|| panic!("no {controller} group in {table}"));
    let path = format!("/sys/fs/cgroup/{mount}{path}/{file}").replace("//", "/");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn cpu_controls_limit_the_vm_process_and_update_while_it_runs() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--cpuset-cpus",
        "0",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}} {{.HostConfig.CpusetCpus}}",
            &id
        ]),
        "500000000 512 0"
    );
    let pid = daemon.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let quota = |pid: &str| {
        if unified {
            vm_cgroup_file(pid, "cpu", "cpu.max")
        } else {
            vm_cgroup_file(pid, "cpu", "cpu.cfs_quota_us")
        }
    };
    assert_eq!(quota(&pid), if unified { "50000 100000" } else { "50000" });
    if !unified {
        assert_eq!(vm_cgroup_file(&pid, "cpu", "cpu.shares"), "512");
    }
    assert_eq!(vm_cgroup_file(&pid, "cpuset", "cpuset.cpus"), "0");

    // docker update on the running container: the new quota at once.
    daemon.docker_ok(&["update", "--cpus", "1.5", &id]);
    assert_eq!(
        quota(&pid),
        if unified { "150000 100000" } else { "150000" }
    );
    let conflict = daemon.docker(&["update", "--cpu-quota", "20000", &id]);
    assert!(
        stderr(&conflict).contains("Nano CPUs and CPU Quota cannot both be set"),
        "{}",
        stderr(&conflict)
    );

    // --cpu-quota/--cpu-period at create.
    let other = daemon.docker_ok(&[
        "run",
        "-d",
        "--cpu-quota",
        "25000",
        "--cpu-period",
        "50000",
        "busybox",
        "sleep",
        "600",
    ]);
    let other_pid = daemon.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &other]);
    if unified {
        assert_eq!(vm_cgroup_file(&other_pid, "cpu", "cpu.max"), "25000 50000");
    } else {
        assert_eq!(
            vm_cgroup_file(&other_pid, "cpu", "cpu.cfs_period_us"),
            "50000"
        );
        assert_eq!(
            vm_cgroup_file(&other_pid, "cpu", "cpu.cfs_quota_us"),
            "25000"
        );
    }
    daemon.docker_ok(&["rm", "-f", &id, &other]);
}

#[test]
fn memory_swap_and_reservation_follow_dockers_rules() {
    let daemon = shared();
    // -m alone: dockerd's default swap limit is as much again.
    let id = daemon.docker_ok(&["create", "-m", "128m", "busybox", "true"]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
            &id
        ]),
        "134217728 268435456"
    );
    // A swap limit above memory and a reservation below it are kept.
    let kept = daemon.docker_ok(&[
        "create",
        "-m",
        "128m",
        "--memory-swap",
        "512m",
        "--memory-reservation",
        "64m",
        "busybox",
        "true",
    ]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.MemorySwap}} {{.HostConfig.MemoryReservation}}",
            &kept
        ]),
        "536870912 67108864"
    );
    // docker update: a new limit above the swap limit needs a new swap limit.
    let raised = daemon.docker(&["update", "-m", "1g", &id]);
    assert!(
        stderr(&raised)
            .contains("Memory limit should be smaller than already set memoryswap limit"),
        "{}",
        stderr(&raised)
    );
    daemon.docker_ok(&["update", "-m", "192m", "--memory-swap", "1g", &id]);
    for (args, words) in [
        (
            &["--memory-swap", "64m", "-m", "128m"][..],
            "Minimum memoryswap limit should be larger than memory limit",
        ),
        (&["-m", "3m"], "Minimum memory limit allowed is 6MB"),
        (
            &["--memory-reservation", "256m", "-m", "128m"],
            "Minimum memory limit can not be less than memory reservation limit",
        ),
    ] {
        let mut command = vec!["create"];
        command.extend_from_slice(args);
        command.extend(["busybox", "true"]);
        let refused = daemon.docker(&command);
        assert!(
            stderr(&refused).contains(words),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    daemon.docker_ok(&["rm", &id, &kept]);
}
