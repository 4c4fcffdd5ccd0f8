//! A daemon that is killed (SIGKILL: no clean-up at all) leaves its containers running:
//! each is a VM in a process of its own. The next daemon takes them over: they stay
//! running with the same VM, answer exec, keep logging, keep their addresses, names and
//! published ports, and can be stopped and removed.

mod common;

use std::time::Duration;

use common::{busybox_archive, eventually, http_get_once, Daemon};

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn containers_outlive_a_killed_daemon_and_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    daemon.docker_ok(&["network", "create", "keep"]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--hostname",
        "survivor",
        "--network",
        "keep",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
    ]);
    let port = common::published_port(&daemon, "web");
    eventually("the web server answers", || {
        http_get_once(port, "/hostname").is_ok_and(|b| b.trim() == "survivor")
    });
    let pid: i32 = daemon
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "web"])
        .parse()
        .unwrap();
    let address = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.keep.IPAddress}}",
        "web",
    ]);

    daemon.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the VM died with the daemon");

    let daemon = Daemon::start(&root);
    let state = daemon.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.Pid}}", "web"]);
    assert_eq!(state, format!("running {pid}"));
    assert_eq!(daemon.docker_ok(&["exec", "web", "hostname"]), "survivor");
    eventually("the published port answers again", || {
        http_get_once(port, "/hostname").is_ok_and(|b| b.trim() == "survivor")
    });
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.keep.IPAddress}}",
            "web"
        ]),
        address
    );
    let by_name = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "keep",
        "busybox",
        "wget",
        "-qO-",
        "http://web/hostname",
    ]);
    assert_eq!(by_name, "survivor");
    // A new container does not get the taken address.
    let other = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "keep",
        "busybox",
        "sh",
        "-c",
        "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'",
    ]);
    assert_ne!(other, format!("inet {address}"));

    // The talker's output goes on into its log.
    let before = daemon.docker_ok(&["logs", "talker"]).lines().count();
    eventually("the log grows after the takeover", || {
        daemon.docker_ok(&["logs", "talker"]).lines().count() > before + 3
    });

    // They stop and go as any container does.
    daemon.docker_ok(&["stop", "-t", "1", "talker"]);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", "talker"]),
        "exited"
    );
    daemon.docker_ok(&["rm", "-f", "web", "talker"]);
    eventually("the VM process is gone", || !alive(pid));
}

/// A daemon killed while it starts containers has VM processes it never recorded (the
/// seen case: six concurrent `docker run -d`, SIGKILL, a restart and `docker rm -f` of
/// everything left QEMU processes running that nothing would ever stop). The next daemon
/// finds them by the run directory in their environment and kills them.
#[test]
fn vms_a_killed_daemon_was_starting_do_not_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let exec_root = root.with_extension("run");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    daemon.docker_ok(&["run", "--rm", "busybox", "true"]);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let config = root.with_extension("docker-config");
            std::process::Command::new("docker")
                .env("DOCKER_CONFIG", &config)
                .arg("-H")
                .arg(format!("unix://{}", daemon.socket.display()))
                .args(["run", "-d", "busybox", "sleep", "600"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Killed as soon as the first of their VM processes exists: the others are being
    // started, and that one is not yet recorded as running (a clone's restore and setup
    // take hundreds of milliseconds).
    eventually("a VM process of the new containers starts", || {
        !berth_vm::process::vm_processes_under(&exec_root).is_empty()
    });
    daemon.kill9();
    let left = berth_vm::process::vm_processes_under(&exec_root);
    for mut run in runs {
        let _ = run.wait();
    }

    let daemon = Daemon::start(&root);
    let running = daemon.docker_ok(&["ps", "-q"]).lines().count();
    assert!(
        running <= left.len(),
        "{running} containers taken over, {} VM processes were there",
        left.len()
    );
    let all = daemon.docker_ok(&["ps", "-aq"]);
    let ids: Vec<&str> = all.lines().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(&ids);
        daemon.docker_ok(&args);
    }
    eventually("no VM process is left", || {
        berth_vm::process::vm_processes_under(&exec_root).is_empty()
    });
    // Nor a tap of theirs in the daemon's network namespace.
    let links = std::process::Command::new("ip")
        .args(["-n", &daemon.netns, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(
        !links.lines().any(|line| line.contains(": bt")),
        "taps left behind:\n{links}"
    );
    // The daemon still starts containers afterwards.
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "busybox", "echo", "ok"]),
        "ok"
    );
}
