//! The task's network namespace (a pod's, as CNI prepared it, or one `ctr run --with-ns
//! network:PATH` names) becomes the VM's NIC.
//!
//! CNI leaves an interface in the namespace (`eth0`: one end of a veth pair, with an
//! address and a default route). The shim adds a tap beside it, joins the two with tc
//! (every frame that arrives on one leaves by the other: `mirred` redirects at each
//! one's ingress, as Kata does), runs the VM in that namespace with the tap as its NIC,
//! and gives the guest's interface the veth's MAC address, address and route. Nothing of
//! Kubernetes' or CNI's view changes: the pod's address answers from the VM.
//!
//! The plumbing makes the tap with the tun driver's ioctls and runs `ip` and `tc` in the
//! namespace (`berth_net::Namespace`: entered between fork and exec), once per task.

use std::path::Path;

use berth_net::Namespace;

use crate::ShimError;

/// The tap's name inside the pod's namespace (which holds nothing else of Berth's).
const TAP: &str = "berth0";

/// What the guest's interface takes over from the namespace's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInterface {
    pub tap: String,
    pub mac: String,
    /// `a.b.c.d/prefix`.
    pub address: String,
    pub gateway: Option<String>,
}

fn run_in(namespace: &Namespace, program: &str, args: &[&str]) -> Result<String, ShimError> {
    let netns = namespace.path();
    let output = namespace
        .command(program)
        .args(args)
        .output()
        .map_err(ShimError::io(format!(
            "running {program} in {}",
            netns.display()
        )))?;
    if !output.status.success() {
        return Err(ShimError::Usage(format!(
            "{program} {} in {}: {}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The first interface of `addresses` (`ip -j addr show`: with `-4`, ip leaves the
/// MAC address out) other than loopback that
/// has an IPv4 address: its name, MAC address, `address/prefix` and MTU.
fn pick_interface(addresses: &serde_json::Value) -> Option<(String, String, String, u64)> {
    addresses.as_array()?.iter().find_map(|link| {
        let name = link.get("ifname")?.as_str()?;
        if name == "lo" || name == TAP {
            return None;
        }
        let mac = link.get("address")?.as_str()?;
        let inet = link
            .get("addr_info")?
            .as_array()?
            .iter()
            .find(|a| a.get("family").and_then(|f| f.as_str()) == Some("inet"))?;
        let local = inet.get("local")?.as_str()?;
        let prefix = inet.get("prefixlen")?.as_u64()?;
        let mtu = link.get("mtu").and_then(|m| m.as_u64()).unwrap_or(1500);
        Some((
            name.to_owned(),
            mac.to_owned(),
            format!("{local}/{prefix}"),
            mtu,
        ))
    })
}

/// The default route's gateway through `device` (`ip -j -4 route show default`).
fn pick_gateway(routes: &serde_json::Value, device: &str) -> Option<String> {
    routes.as_array()?.iter().find_map(|route| {
        (route.get("dev")?.as_str()? == device)
            .then(|| route.get("gateway")?.as_str().map(str::to_owned))
            .flatten()
    })
}

fn json(text: &str, what: &str) -> Result<serde_json::Value, ShimError> {
    serde_json::from_str(text).map_err(|error| ShimError::Usage(format!("reading {what}: {error}")))
}

/// Joins the namespace's interface to a new tap; `None` when it has no interface with
/// an address (a task with only loopback).
pub(crate) fn plumb(netns: &Path) -> Result<Option<PodInterface>, ShimError> {
    let netns = &Namespace::open(netns)?;
    let addresses = json(&run_in(netns, "ip", &["-j", "addr", "show"])?, "addresses")?;
    let Some((device, mac, address, mtu)) = pick_interface(&addresses) else {
        return Ok(None);
    };
    let routes = json(
        &run_in(netns, "ip", &["-j", "-4", "route", "show", "default"])?,
        "routes",
    )?;
    let gateway = pick_gateway(&routes, &device);
    let mtu = mtu.to_string();
    berth_net::links::create_tap(netns, TAP)?;
    run_in(netns, "ip", &["link", "set", TAP, "mtu", &mtu, "up"])?;
    for (from, to) in [(device.as_str(), TAP), (TAP, device.as_str())] {
        run_in(netns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run_in(
            netns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(Some(PodInterface {
        tap: TAP.to_owned(),
        mac,
        address,
        gateway,
    }))
}

/// Removes the tap (its redirect goes with it) and the other interface's redirect.
pub(crate) fn unplumb(netns: &Path) {
    let Ok(netns) = &Namespace::open(netns) else {
        return;
    };
    let _ = run_in(netns, "ip", &["link", "delete", TAP]);
    if let Ok(text) = run_in(netns, "ip", &["-j", "addr", "show"]) {
        if let Some((device, ..)) = json(&text, "addresses")
            .ok()
            .as_ref()
            .and_then(pick_interface)
        {
            let _ = run_in(netns, "tc", &["qdisc", "del", "dev", &device, "ingress"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnis_interface_and_route_are_read_from_ip_json() {
        let addresses = serde_json::json!([
            {"ifindex": 1, "ifname": "lo", "address": "00:00:00:00:00:00", "mtu": 65536,
             "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifindex": 3, "ifname": "eth0", "address": "0a:58:0a:f4:00:05", "mtu": 1450,
             "addr_info": [{"family": "inet", "local": "10.244.0.5", "prefixlen": 24}]}
        ]);
        assert_eq!(
            pick_interface(&addresses),
            Some((
                "eth0".into(),
                "0a:58:0a:f4:00:05".into(),
                "10.244.0.5/24".into(),
                1450
            ))
        );
        let routes = serde_json::json!([
            {"dst": "default", "gateway": "10.244.0.1", "dev": "eth0"}
        ]);
        assert_eq!(pick_gateway(&routes, "eth0"), Some("10.244.0.1".into()));
        assert_eq!(pick_gateway(&routes, "eth1"), None);
        let only_loopback = serde_json::json!([
            {"ifname": "lo", "address": "00:00:00:00:00:00",
             "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]}
        ]);
        assert_eq!(pick_interface(&only_loopback), None);
    }
}
