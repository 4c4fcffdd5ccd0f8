//! Outbound NAT (`berth daemon --outbound-nat`): containers reach the outside world
//! through the host, masqueraded; internal networks do not.
//!
//! "The outside world" here is a network namespace this test makes, joined to the host
//! by a veth pair on 10.254.77.0/24: nothing is sent to any address outside it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{busybox_archive, Daemon};

/// A namespace with a TCP server that answers each connection with the peer's address.
struct Outside {
    name: String,
    server: Child,
}

impl Outside {
    fn start() -> Outside {
        let name = format!("berth-test-{}-outside", std::process::id());
        let host_link = format!("bto{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().unwrap();
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["addr", "add", "10.254.77.1/24", "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&["-n", &name, "addr", "add", "10.254.77.2/24", "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c"])
            .arg(
                "import socket\n\
                 s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('10.254.77.2', 9000)); s.listen(8)\n\
                 while True:\n    c, peer = s.accept(); c.sendall((peer[0] + '\\n').encode()); c.close()\n",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Outside { name, server }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

#[test]
fn outbound_nat_reaches_out_masqueraded_and_internal_networks_do_not() {
    let outside = Outside::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let daemon = Daemon::start_with(&root, &["--outbound-nat", "--nat-link", "169.254.77.0/30"]);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);

    // Out from the default network: the far end sees the host's address, not the
    // container's.
    let seen = daemon.docker_ok(&[
        "run",
        "--rm",
        "busybox",
        "nc",
        "-w",
        "5",
        "10.254.77.2",
        "9000",
    ]);
    assert_eq!(seen, "10.254.77.1");

    // An internal network has no way out.
    daemon.docker_ok(&["network", "create", "--internal", "quiet"]);
    let blocked = daemon.docker(&[
        "run",
        "--rm",
        "--network",
        "quiet",
        "busybox",
        "nc",
        "-w",
        "3",
        "10.254.77.2",
        "9000",
    ]);
    assert!(
        !String::from_utf8_lossy(&blocked.stdout).contains("10.254.77"),
        "an internal network reached out"
    );

    let info = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(info.contains("\"Outbound NAT\",\"on ("), "{info}");

    // A clean stop takes the host's side of the NAT away.
    daemon.stop();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    drop(outside);
    assert!(
        !tables.contains("berth-nat-"),
        "host NAT table left: {tables}"
    );
    assert!(!links.contains(": bn"), "host veth left: {links}");
}
