//! The walking skeleton, end to end: the real docker CLI against a real daemon that runs
//! every container in its own QEMU VM.

mod common;

use common::{shared, stderr, stdout};

#[test]
fn run_echo_prints_hello_and_removes_the_container() {
    let daemon = shared();
    let output = daemon.docker(&[
        "run", "--rm", "--name", "hello-rm", "busybox", "echo", "hello",
    ]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "hello\n");
    let names = daemon.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !names.lines().any(|n| n == "hello-rm"),
        "--rm left the container: {names}"
    );
}

#[test]
fn uname_reports_the_guest_kernel_not_the_host() {
    let daemon = shared();
    let guest = daemon.docker_ok(&["run", "--rm", "busybox", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest, host.trim());
    assert!(guest.ends_with("-cloud-amd64"), "guest kernel {guest}");
    let info = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        info.contains("cloud-amd64"),
        "docker info names the guest kernel: {info}"
    );
}

#[test]
fn exit_status_is_passed_through() {
    let daemon = shared();
    let output = daemon.docker(&["run", "--rm", "busybox", "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
}

#[test]
fn missing_executable_exits_127() {
    let daemon = shared();
    let output = daemon.docker(&["run", "--rm", "busybox", "no-such-program"]);
    assert_eq!(
        output.status.code(),
        Some(127),
        "stderr: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("executable file not found"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn detached_container_logs_ps_wait_and_rm() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "detached",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--hostname",
        "box1",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING; pwd; hostname; echo oops >&2; sleep 1; exit 7",
    ]);
    assert_eq!(id.len(), 64, "docker run -d prints the id: {id}");
    let running = daemon.docker_ok(&["ps", "--format", "{{.ID}} {{.Names}} {{.Status}}"]);
    assert!(
        running.contains("detached"),
        "ps shows the running container: {running}"
    );
    assert_eq!(daemon.docker_ok(&["wait", &id[..12]]), "7");

    let logs = daemon.docker(&["logs", "detached"]);
    assert_eq!(stdout(&logs), "hi there\n/tmp\nbox1\n");
    assert_eq!(stderr(&logs), "oops\n");

    let all = daemon.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "name=detached",
        "--format",
        "{{.Names}}|{{.Status}}|{{.Command}}",
    ]);
    assert!(all.starts_with("detached|Exited (7)"), "ps -a: {all}");
    assert_eq!(
        all.lines().count(),
        1,
        "the name filter selects one container: {all}"
    );
    let by_code = daemon.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "exited=7",
        "--filter",
        "status=exited",
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        by_code.lines().any(|n| n == "detached"),
        "exited=7: {by_code}"
    );
    assert!(!by_code.lines().any(|n| n == "hello-rm"));
    let none = daemon.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "name=detached",
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(none, "", "filters on different keys must all match");
    let bad = daemon.docker(&["ps", "--filter", "colour=blue"]);
    assert!(!bad.status.success(), "an unknown filter is refused");
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.Config.Hostname}}",
            "detached"
        ]),
        "exited 7 box1"
    );

    daemon.docker_ok(&["rm", &id]);
    let gone = daemon.docker(&["inspect", &id]);
    assert!(!gone.status.success());
    assert!(
        stderr(&gone).contains("No such"),
        "stderr: {}",
        stderr(&gone)
    );
}

#[test]
fn stdin_reaches_the_process() {
    let daemon = shared();
    let output = daemon.docker_with_input(
        &["run", "-i", "--rm", "busybox", "sh", "-c", "tr a-z A-Z"],
        Some(b"piped data\n"),
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "PIPED DATA\n");
}

#[test]
fn tty_gives_the_process_a_terminal() {
    let daemon = shared();
    let output = daemon.docker(&[
        "run",
        "-t",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "tty; echo err >&2",
    ]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("/dev/pts/"), "tty output: {text:?}");
    assert!(
        text.contains("err"),
        "a terminal merges stderr into the one stream: {text:?}"
    );
}

#[test]
fn kill_stops_a_running_container_with_137() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    daemon.docker_ok(&["kill", &id]);
    // As Docker: the kill returns once the container has stopped.
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &id
        ]),
        "exited 137"
    );
    assert_eq!(daemon.docker_ok(&["wait", &id]), "137");
    // A stopped container cannot be killed again; removal works.
    let again = daemon.docker(&["kill", &id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not running"),
        "stderr: {}",
        stderr(&again)
    );
    daemon.docker_ok(&["rm", &id]);
}

#[test]
fn start_attach_streams_the_next_run_and_attach_replays_the_log() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "echo", "again"]);
    assert_eq!(daemon.docker_ok(&["wait", &id]), "0");
    // `docker start -a` of an exited container attaches first, then starts.
    assert_eq!(daemon.docker_ok(&["start", "-a", &id]), "again");
    // The log of both runs, and the end of the answer: nothing streams after it.
    let path = format!("/containers/{id}/attach?logs=1&stream=0&stdout=1&stderr=1");
    let (status, body) = daemon.request("POST", &path, None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body[0], 1, "a stdout frame first: {body:?}");
    assert_eq!(String::from_utf8_lossy(&body).matches("again\n").count(), 2);
    daemon.docker_ok(&["rm", &id]);
}

#[test]
fn inspect_and_info_carry_dockers_fields() {
    let daemon = shared();
    let id = daemon.docker_ok(&["create", "busybox", "true"]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", &id]),
        "berth"
    );
    let cold = daemon.docker_ok(&["create", "--runtime", "berth-coldboot", "busybox", "true"]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", &cold]),
        "berth-coldboot"
    );
    assert_eq!(
        daemon.docker_ok(&["info", "--format", "{{.Debug}}"]),
        "false"
    );
    // Every endpoint field dockerd sends, null when empty (raw API clients see them).
    let (status, body) = daemon
        .request("GET", &format!("/containers/{id}/json"), None)
        .unwrap();
    assert_eq!(status, 200);
    let inspect: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let endpoint = &inspect["NetworkSettings"]["Networks"]["bridge"];
    for key in ["IPAMConfig", "Links", "Aliases", "DriverOpts", "DNSNames"] {
        assert!(
            endpoint.get(key).is_some(),
            "no {key} in the endpoint: {endpoint}"
        );
    }
    daemon.docker_ok(&["rm", &id, &cold]);

    // A client of API 1.41 asks for a MAC in Config.MacAddress: the container gets it.
    let request = br#"{"Image":"busybox","Cmd":["sleep","600"],"MacAddress":"02:42:ac:11:00:77"}"#;
    let (status, body) = daemon
        .request("POST", "/v1.41/containers/create", Some(request))
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = created["Id"].as_str().unwrap();
    daemon.docker_ok(&["start", id]);
    assert_eq!(
        daemon.docker_ok(&["exec", id, "cat", "/sys/class/net/eth0/address"]),
        "02:42:ac:11:00:77"
    );
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.bridge.MacAddress}}",
            id
        ]),
        "02:42:ac:11:00:77"
    );
    daemon.docker_ok(&["rm", "-f", id]);
}

#[test]
fn rm_right_after_wait_removes() {
    let daemon = shared();
    for code in ["0", "3"] {
        let id = daemon.docker_ok(&["run", "-d", "busybox", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(daemon.docker_ok(&["wait", &id]), code);
        daemon.docker_ok(&["rm", &id]);
    }
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "300"]);
    let refused = daemon.docker(&["rm", &id]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            "cannot remove container \"/busy\": container is running: stop the container before removing or force remove"
        ),
        "stderr: {}",
        stderr(&refused)
    );
    daemon.docker_ok(&["rm", "-f", &id]);
    assert!(!daemon.docker(&["inspect", &id]).status.success());
}

#[test]
fn user_option_resolves_in_the_container() {
    let daemon = shared();
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "-u", "nobody", "busybox", "id", "-u"]),
        "65534"
    );
    assert_eq!(
        daemon.docker_ok(&[
            "run",
            "--rm",
            "-u",
            "1234:4321",
            "busybox",
            "sh",
            "-c",
            "echo $(id -u) $(id -g)"
        ]),
        "1234 4321"
    );
}

#[test]
fn a_vm_that_dies_ends_its_container_and_the_daemon_keeps_serving() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    let pid: i32 = daemon
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .unwrap();
    assert!(pid > 0);
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    // QEMU, or Berth's own VMM (where this suite runs in the KVM lab).
    assert!(
        cmdline.contains("qemu-system") || cmdline.contains("vmm\0--config"),
        "State.Pid is the container's VM: {cmdline}"
    );
    // SAFETY: kill takes no pointers; the pid was just checked to be the container's VM.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert_eq!(daemon.docker_ok(&["wait", &id]), "255");
    let error = daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}: {{.State.Error}}", &id]);
    assert!(
        error.starts_with("exited: ") && error.contains("VM"),
        "inspect: {error}"
    );
    // Still serving, and the container can run again.
    daemon.docker_ok(&["start", &id]);
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn logs_follow_streams_until_the_container_exits() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "busybox",
        "sh",
        "-c",
        "echo one; sleep 2; echo two >&2; sleep 1; echo three",
    ]);
    let followed = daemon.docker(&["logs", "-f", &id]);
    assert!(followed.status.success());
    assert_eq!(stdout(&followed), "one\nthree\n");
    assert_eq!(stderr(&followed), "two\n");
    let tail = daemon.docker_ok(&["logs", "--tail", "1", &id]);
    assert_eq!(tail, "three");
    daemon.docker_ok(&["rm", &id]);
}

#[test]
fn a_guest_kernel_of_the_operators_choice_is_booted() {
    // The cached Debian kernel, given as a custom one: the daemon takes its release from
    // the bzImage and builds an initramfs with the modules from the given directory.
    let cache = std::path::Path::new("/var/cache/berth/kernel");
    let current = std::fs::read_to_string(cache.join("current")).expect("kernel cache");
    let dir = cache.join(current.trim());
    let vmlinuz = dir.join("vmlinuz");
    let modules = dir.join("modules");
    let root = common::scratch().join("custom-kernel");
    let daemon = common::Daemon::start_with(
        &root,
        &[
            "--guest-kernel",
            vmlinuz.to_str().unwrap(),
            "--guest-modules",
            modules.to_str().unwrap(),
        ],
    );
    daemon.docker_ok(&["load", "-i", common::busybox_archive().to_str().unwrap()]);
    let release = daemon.docker_ok(&[
        "run",
        "--rm",
        "--runtime",
        "berth-coldboot",
        "busybox",
        "uname",
        "-r",
    ]);
    assert!(release.ends_with("-cloud-amd64"), "{release}");
    let info = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        info.contains(&format!("custom {}", vmlinuz.display())),
        "{info}"
    );
    daemon.stop();
}
