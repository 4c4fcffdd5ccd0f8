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
