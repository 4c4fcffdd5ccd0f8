//! Container networks end to end, with the real docker CLI: user networks with their own
//! subnets, names and aliases through Berth's DNS, published ports reachable from the
//! host, isolation between networks, connect and disconnect on a running container,
//! clean-up, and everything still there after a daemon restart.
//!
//! Traffic goes only to 127.0.0.1 (published ports) and to addresses inside the test
//! daemon's own network namespace.

mod common;

use std::net::TcpStream;

use common::{busybox_archive, http_get, published_port, Daemon};

/// A resolver on 127.0.0.1 that answers every A query with 10.1.2.3 (and every other
/// query with no records): the upstream the test daemon forwards unknown names to.
struct FakeResolver {
    port: u16,
    child: std::process::Child,
}

impl FakeResolver {
    fn start() -> FakeResolver {
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-c"])
            .arg(
                "import socket, struct\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])\n\
                 while True:\n\
                 \x20   q, peer = s.recvfrom(512)\n\
                 \x20   i = 12\n\
                 \x20   while q[i] != 0: i += q[i] + 1\n\
                 \x20   qtype = struct.unpack('>H', q[i + 1:i + 3])[0]\n\
                 \x20   a = qtype == 1\n\
                 \x20   header = q[:2] + b'\\x81\\x80' + q[4:6] + (b'\\x00\\x01' if a else b'\\x00\\x00') + b'\\x00' * 4\n\
                 \x20   answer = b'\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04' + bytes([10, 1, 2, 3]) if a else b''\n\
                 \x20   s.sendto(header + q[12:i + 5] + answer, peer)\n",
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        FakeResolver {
            port: line.trim().parse().expect("the resolver's port"),
            child,
        }
    }
}

impl Drop for FakeResolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn networks_names_ports_isolation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let resolver = FakeResolver::start();
    let upstream = format!("127.0.0.1:{}", resolver.port);
    let daemon = Daemon::start_with(&root, &["--dns", &upstream]);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);

    // Names Berth does not know go to the upstream resolver (here the test's own).
    let forwarded = daemon.docker_ok(&["run", "--rm", "busybox", "nslookup", "far.example"]);
    assert!(forwarded.contains("10.1.2.3"), "{forwarded}");

    // The predefined networks, and a user network with its own subnet.
    let listed = daemon.docker_ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        listed.contains("bridge bridge") && listed.contains("none null"),
        "{listed}"
    );
    let id = daemon.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.89.0.0/24",
        "--label",
        "purpose=test",
        "backend",
    ]);
    assert_eq!(id.len(), 64);
    let ipam = daemon.docker_ok(&[
        "network",
        "inspect",
        "backend",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{.Labels.purpose}}",
    ]);
    assert_eq!(ipam, "10.89.0.0/24 10.89.0.1 test");
    let duplicate = daemon.docker(&["network", "create", "backend"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let overlapping = daemon.docker(&["network", "create", "--subnet", "10.89.0.128/25", "other"]);
    assert!(
        !overlapping.status.success(),
        "an overlapping subnet was accepted"
    );

    // A web server on the user network, published on a free loopback port.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--hostname",
        "webhost",
        "--network",
        "backend",
        "--network-alias",
        "api",
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
    let port = published_port(&daemon, "web");
    assert_eq!(http_get(port, "/hostname").trim(), "webhost");
    let ports = daemon.docker_ok(&["ps", "--filter", "name=web", "--format", "{{.Ports}}"]);
    assert_eq!(ports, format!("127.0.0.1:{port}->80/tcp"));

    let address = daemon.docker_ok(&[
        "inspect",
        "web",
        "-f",
        "{{.NetworkSettings.Networks.backend.IPAddress}}",
    ]);
    assert!(address.starts_with("10.89.0."), "{address}");
    let mac = daemon.docker_ok(&[
        "inspect",
        "web",
        "-f",
        "{{.NetworkSettings.Networks.backend.MacAddress}}",
    ]);
    let octets: Vec<u8> = address.split('.').map(|o| o.parse().unwrap()).collect();
    assert_eq!(
        mac,
        format!(
            "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
            octets[0], octets[1], octets[2], octets[3]
        )
    );
    let names = daemon.docker_ok(&[
        "inspect",
        "web",
        "-f",
        "{{json .NetworkSettings.Networks.backend.DNSNames}}",
    ]);
    assert!(
        names.contains("\"web\"") && names.contains("\"api\""),
        "{names}"
    );

    // Another container on the network reaches it by name and by alias; its own MAC
    // (a clone's, rebound from its template's) is the one inspect shows.
    let client = daemon.docker_ok(&[
        "run", "--name", "client", "--network", "backend", "busybox", "sh", "-c",
        "wget -qO- http://web/hostname && wget -qO- http://api/hostname && cat /sys/class/net/eth0/address",
    ]);
    let lines: Vec<&str> = client.lines().collect();
    assert_eq!(lines[..2], ["webhost", "webhost"], "{client}");
    let client_mac = daemon.docker_ok(&[
        "inspect",
        "client",
        "-f",
        "{{.NetworkSettings.Networks.backend.MacAddress}}",
    ]);
    assert_eq!(client_mac, "", "a stopped container holds no address");
    assert!(lines[2].starts_with("02:42:0a:59:00:"), "{client}");
    assert_ne!(lines[2], mac, "two containers share a MAC address");

    // Chosen address and MAC.
    let chosen = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "backend",
        "--ip",
        "10.89.0.50",
        "--mac-address",
        "02:42:0a:59:00:99",
        "busybox",
        "sh",
        "-c",
        "cat /sys/class/net/eth0/address; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'",
    ]);
    assert_eq!(chosen, "02:42:0a:59:00:99\ninet 10.89.0.50/24");
    let taken = daemon.docker(&[
        "run",
        "--rm",
        "--network",
        "backend",
        "--ip",
        &address,
        "busybox",
        "true",
    ]);
    assert!(!taken.status.success(), "an address in use was given twice");

    // Isolation: from the default network neither the address nor the name is reachable.
    let isolated = daemon.docker(&[
        "run", "--rm", "busybox", "sh", "-c",
        &format!("nc -w 2 {address} 80 </dev/null && echo reached; nslookup web 2>/dev/null | grep -q 'Address: {address}$' && echo resolved; true"),
    ]);
    let isolated_out = String::from_utf8_lossy(&isolated.stdout);
    assert!(
        !isolated_out.contains("reached"),
        "crossed networks: {isolated_out}"
    );
    assert!(
        !isolated_out.contains("resolved"),
        "resolved across networks: {isolated_out}"
    );

    // --network none: as under Docker, no interface but the loopback (a clone gives up
    // its template's NIC); host and container: refused.
    let none = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net | tr '\\n' ' '; ip -4 addr | grep -c inet",
    ]);
    assert_eq!(
        none, "lo 1",
        "only the loopback, with its address, under --network none"
    );
    for refused in ["host", "container:web"] {
        let output = daemon.docker(&["run", "--rm", "--network", refused, "busybox", "true"]);
        assert!(!output.status.success(), "--network {refused} accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains("own kernel"));
    }

    // Connect and disconnect a running container: its VM gains and loses a NIC.
    daemon.docker_ok(&["run", "-d", "--name", "roamer", "busybox", "sleep", "600"]);
    daemon.docker_ok(&[
        "network", "connect", "--alias", "wanderer", "backend", "roamer",
    ]);
    let reached = daemon.docker_ok(&[
        "exec",
        "roamer",
        "sh",
        "-c",
        "ip -4 addr show eth1 | grep -o 'inet 10.89.0.[0-9]*'; wget -qO- http://api/hostname",
    ]);
    assert!(
        reached.starts_with("inet 10.89.0.") && reached.ends_with("webhost"),
        "{reached}"
    );
    let in_use = daemon.docker(&["network", "rm", "backend"]);
    assert!(!in_use.status.success(), "a network in use was removed");
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("active endpoints"));
    daemon.docker_ok(&["network", "disconnect", "backend", "roamer"]);
    let after = daemon.docker_ok(&["exec", "roamer", "sh", "-c", "ls /sys/class/net"]);
    assert!(!after.contains("eth1"), "eth1 still there: {after}");
    let networks = daemon.docker_ok(&[
        "inspect",
        "roamer",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
    ]);
    assert_eq!(networks, "bridge");

    // Restart the daemon: the network and its settings stay; containers start again with
    // addresses and published ports.
    // -P publishes what the container exposes, on a free port of every host address.
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "exposed",
        "--hostname",
        "exposedhost",
        "-P",
        "--expose",
        "80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let exposed = daemon.docker_ok(&["port", "exposed", "80/tcp"]);
    assert!(exposed.starts_with("0.0.0.0:"), "{exposed}");
    assert_eq!(
        http_get(published_port(&daemon, "exposed"), "/hostname").trim(),
        "exposedhost"
    );

    daemon.docker_ok(&["rm", "-f", "roamer", "client", "exposed"]);
    daemon.stop();
    let daemon = Daemon::start_with(&root, &["--dns", &upstream]);
    let same = daemon.docker_ok(&[
        "network",
        "inspect",
        "backend",
        "-f",
        "{{.Id}} {{range .IPAM.Config}}{{.Subnet}}{{end}}",
    ]);
    assert_eq!(same, format!("{id} 10.89.0.0/24"));
    daemon.docker_ok(&["start", "web"]);
    let port = published_port(&daemon, "web");
    assert_eq!(http_get(port, "/hostname").trim(), "webhost");
    let by_name = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "backend",
        "busybox",
        "wget",
        "-qO-",
        "http://api/hostname",
    ]);
    assert_eq!(by_name, "webhost");

    // Clean-up leaves no tap, bridge or relay behind.
    daemon.docker_ok(&["rm", "-f", "web"]);
    daemon.docker_ok(&["network", "rm", "backend"]);
    let links = daemon.ip_in_namespace(&["-o", "link", "show"]);
    assert!(!links.contains(": bt"), "taps left: {links}");
    assert!(
        !links.contains(&format!("br-{}", &id[..12])),
        "bridge left: {links}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port still answers"
    );
    let ruleset = std::process::Command::new("ip")
        .args(["netns", "exec", &daemon.netns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    assert!(ruleset.contains("berth0"), "no ruleset read: {ruleset}");
    assert!(
        !ruleset.contains(&format!("br-{}", &id[..12])),
        "rules left: {ruleset}"
    );
    // A chosen gateway is the containers' default route.
    let pruned_net = daemon.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.90.0.0/24",
        "--gateway",
        "10.90.0.254",
        "scratch",
    ]);
    assert_eq!(pruned_net.len(), 64);
    let route = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "scratch",
        "busybox",
        "ip",
        "route",
    ]);
    assert!(route.contains("default via 10.90.0.254"), "{route}");
    let pruned = daemon.docker_ok(&["network", "prune", "-f"]);
    assert!(pruned.contains("scratch"), "{pruned}");
    let left = daemon.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(left.lines().count(), 2, "{left}");
}

#[test]
fn ip_ranges_aux_addresses_options_and_names_as_docker() {
    let daemon = common::shared();
    daemon.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.55.0.0/16",
        "--ip-range",
        "10.55.5.0/24",
        "--gateway",
        "10.55.0.1",
        "--aux-address",
        "host1=10.55.0.5",
        "-o",
        "com.example.opt=1",
        "-o",
        "com.docker.network.bridge.name=br-ranged",
        "--ipam-opt",
        "foo=bar",
        "ranged",
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&daemon.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{json .}}",
        "ranged",
    ]))
    .unwrap();
    let config = &inspect["IPAM"]["Config"][0];
    assert_eq!(config["IPRange"], "10.55.5.0/24");
    assert_eq!(config["AuxiliaryAddresses"]["host1"], "10.55.0.5");
    assert_eq!(inspect["IPAM"]["Options"]["foo"], "bar");
    assert_eq!(inspect["Options"]["com.example.opt"], "1");
    assert_eq!(
        inspect["Options"]["com.docker.network.bridge.name"],
        "br-ranged"
    );
    // The bridge has the name asked for, in the daemon's namespace.
    assert!(daemon
        .ip_in_namespace(&["link", "show", "br-ranged"])
        .contains("br-ranged"));

    // Addresses come from the range (its first address first, as dockerd hands them
    // out); an auxiliary address is never given, and asking for it is refused.
    let address = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "ranged",
        "busybox",
        "sh",
        "-c",
        "ip -4 -o addr show eth0 | awk '{print $4}'",
    ]);
    assert_eq!(address, "10.55.5.0/16");
    let aux = daemon.docker(&[
        "run",
        "--rm",
        "--network",
        "ranged",
        "--ip",
        "10.55.0.5",
        "busybox",
        "true",
    ]);
    assert!(
        common::stderr(&aux).contains("Address already in use"),
        "{}",
        common::stderr(&aux)
    );
    let outside = daemon.docker(&[
        "network",
        "create",
        "--subnet",
        "10.56.0.0/16",
        "--aux-address",
        "h=10.57.0.5",
        "stray",
    ]);
    assert!(!outside.status.success());

    // --link-local-ip: another address on the NIC, shown in IPAMConfig.
    let link_local = daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "ranged",
        "--link-local-ip",
        "169.254.1.5",
        "busybox",
        "sh",
        "-c",
        "ip -4 -o addr show eth0 | awk '{print $4}'",
    ]);
    assert!(
        link_local.lines().any(|l| l == "169.254.1.5/16"),
        "{link_local}"
    );
    let created = daemon.docker_ok(&[
        "create",
        "--network",
        "ranged",
        "--link-local-ip",
        "169.254.1.6",
        "busybox",
        "true",
    ]);
    assert_eq!(
        daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{json .NetworkSettings.Networks.ranged.IPAMConfig.LinkLocalIPs}}",
            &created
        ]),
        r#"["169.254.1.6"]"#
    );
    daemon.docker_ok(&["rm", &created]);
    let not_link_local = daemon.docker(&[
        "create",
        "--network",
        "ranged",
        "--link-local-ip",
        "10.1.1.1",
        "busybox",
        "true",
    ]);
    assert!(common::stderr(&not_link_local).contains("invalid link-local IP address"));

    // Names as dockerd takes them, spaces included.
    daemon.docker_ok(&["network", "create", "my spaced net"]);
    let listed = daemon.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(listed.lines().any(|l| l == "my spaced net"), "{listed}");
    daemon.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "my spaced net",
        "busybox",
        "ip",
        "addr",
        "show",
        "eth0",
    ]);
    daemon.docker_ok(&["network", "rm", "my spaced net", "ranged"]);
}

#[test]
fn ipv6_networks_give_dual_stack_addresses() {
    let daemon = common::shared();
    daemon.docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.66.0.0/16",
        "--subnet",
        "fd00:66::/64",
        "dual",
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&daemon.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{json .}}",
        "dual",
    ]))
    .unwrap();
    assert_eq!(inspect["EnableIPv6"], true);
    let configs = inspect["IPAM"]["Config"].as_array().unwrap();
    assert!(
        configs
            .iter()
            .any(|c| c["Subnet"] == "fd00:66::/64" && c["Gateway"] == "fd00:66::1"),
        "{configs:?}"
    );

    // Addresses from ::2 up, or as asked with --ip6; inspect shows both families.
    let first = daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "dual-a",
        "--network",
        "dual",
        "busybox",
        "sleep",
        "600",
    ]);
    let fields = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.dual.IPAddress}} {{.NetworkSettings.Networks.dual.GlobalIPv6Address}}/{{.NetworkSettings.Networks.dual.GlobalIPv6PrefixLen}} {{.NetworkSettings.Networks.dual.IPv6Gateway}}",
        &first,
    ]);
    assert_eq!(fields, "10.66.0.2 fd00:66::2/64 fd00:66::1");
    let inside = daemon.docker_ok(&[
        "run", "--rm", "--network", "dual", "--ip6", "fd00:66::99", "busybox", "sh", "-c",
        "ip -6 -o addr show eth0 scope global | awk '{print $4}'; grep fd00 /etc/hosts | cut -f1; ping -6 -c 1 -W 5 fd00:66::2 >/dev/null && echo reached",
    ]);
    assert_eq!(inside, "fd00:66::99/64\nfd00:66::99\nreached");
    // --ip6 needs a network with an IPv6 subnet.
    let refused = daemon.docker(&["run", "--rm", "--ip6", "fd00:66::5", "busybox", "true"]);
    assert!(!refused.status.success());
    daemon.docker_ok(&["rm", "-f", "dual-a"]);
    daemon.docker_ok(&["network", "rm", "dual"]);
}
