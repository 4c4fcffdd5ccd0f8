//! What a container cannot reach, tried from inside one with the docker CLI: the host's
//! services (on its loopback or on every address), the host's processes and the daemon's
//! socket, the channel between its VM's agent and the daemon, and (unless privileged) its
//! VM's kernel settings through /sys; and a published port binds only where asked.
//!
//! Traffic goes only to 127.0.0.1 and into the daemon's own network namespace: the
//! container's packets to the host's addresses end there (it has no route out without
//! `--outbound-nat`).

mod common;

use std::net::TcpListener;

use common::shared;

/// Whether anyone connected to `listener` (non-blocking look).
fn was_reached(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

#[test]
fn host_services_are_out_of_reach() {
    let daemon = shared();
    let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let everywhere = TcpListener::bind("0.0.0.0:0").unwrap();
    let (loopback_port, everywhere_port) = (
        loopback.local_addr().unwrap().port(),
        everywhere.local_addr().unwrap().port(),
    );
    // Each try prints its target and whether it connected; nc gives up after 3 s.
    let script = format!(
        "gateway=$(ip route | awk '/^default/ {{ print $3 }}'); \
         for target in \"$gateway {loopback_port}\" \"$gateway {everywhere_port}\" \
                       \"169.254.123.1 {loopback_port}\" \"127.0.0.1 {loopback_port}\"; do \
             if echo x | nc -w 3 $target 2> /dev/null; then echo \"reached $target\"; \
             else echo \"refused $target\"; fi; \
         done"
    );
    let said = daemon.docker_ok(&["run", "--rm", "busybox", "sh", "-c", &script]);
    assert_eq!(said.lines().count(), 4, "{said}");
    assert!(!said.contains("reached"), "{said}");
    assert!(
        !was_reached(&loopback),
        "the host's loopback service was reached"
    );
    assert!(!was_reached(&everywhere), "the host's service was reached");
}

#[test]
fn the_host_processes_and_the_daemon_socket_are_not_visible() {
    let daemon = shared();
    let socket = daemon.socket.display().to_string();
    let script = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; \
         test -e {socket} && echo socket-\"visible\"; hostname"
    );
    let said = daemon.docker_ok(&["run", "--rm", "busybox", "sh", "-c", &script]);
    // The daemon's command line, as the host's /proc shows it.
    let daemon_cmdline = format!("daemon --netns {}", daemon.netns);
    assert!(
        !said.contains(&daemon_cmdline),
        "a host process is visible: {said}"
    );
    // The container's own processes only: its shell (and the `tr` of the moment).
    assert!(said.lines().count() <= 4, "{said}");
    assert!(!said.contains("socket-visible"), "{said}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(said.lines().last().unwrap_or(""), host.trim(), "{said}");
}

#[test]
fn the_agent_channel_cannot_be_opened_from_the_container() {
    let daemon = shared();
    let id = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    // Root in the container may make the port's device node (Docker grants mknod), but
    // the agent holds the port, and a virtio port has one opener at a time.
    let script = "for port in /sys/class/virtio-ports/*; do \
                      d=$(cat $port/dev); mknod /tmp/port c ${d%:*} ${d#*:} || exit 3; \
                      if echo '{\"forged\": true}' > /tmp/port; then echo \"opened $(cat $port/name)\"; fi; \
                      rm /tmp/port; \
                  done; echo tried";
    let output = daemon.docker(&["exec", &id, "sh", "-c", script]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("tried") && !said.contains("opened"), "{said}");
    // The container's channel to the daemon still works.
    assert_eq!(daemon.docker_ok(&["exec", &id, "echo", "still"]), "still");
    daemon.docker_ok(&["rm", "-f", &id]);
}

#[test]
fn sys_is_read_only_unless_privileged() {
    let daemon = shared();
    let script = "grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; \
                  if echo 0 > /sys/kernel/mm/ksm/run; then echo written; fi";
    let plain = daemon.docker_ok(&["run", "--rm", "busybox", "sh", "-c", script]);
    assert_eq!(plain, "ro", "{plain}");
    let privileged =
        daemon.docker_ok(&["run", "--rm", "--privileged", "busybox", "sh", "-c", script]);
    assert_eq!(privileged, "rw\nwritten", "{privileged}");
}

/// The local addresses (hex, as /proc/net/tcp and tcp6 show them) listening on `port`.
fn listening_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((address, hex_port)) = local.rsplit_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(hex_port, 16) == Ok(port) {
                found.push(address.to_owned());
            }
        }
    }
    found
}

#[test]
fn a_published_port_binds_only_where_asked() {
    let daemon = shared();
    let id = daemon.docker_ok(&[
        "run",
        "-d",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "sleep",
        "300",
    ]);
    let port = common::published_port(daemon, &id);
    // 127.0.0.1 as /proc/net/tcp writes it (little-endian hex), and nothing else.
    assert_eq!(listening_on(port), vec!["0100007F".to_owned()]);
    daemon.docker_ok(&["rm", "-f", &id]);
}
