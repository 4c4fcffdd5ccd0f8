//! Outbound NAT: an optional way out of Berth's namespace (off unless the daemon is
//! started with `--outbound-nat`).
//!
//! A veth pair joins the host (`bn<hash of the namespace name>`) and the namespace
//! (`uplink0`), with a /30 link subnet between them (the host takes the first address,
//! the namespace the second). In the namespace: a default route through the host's end,
//! IP forwarding on, and (in the firewall's table) container traffic masqueraded to the
//! namespace's link address and forwarded only from non-internal networks to the uplink.
//! On the host: IP forwarding on (a host-wide setting, as with Docker), and a table
//! `ip berth-nat-<hash>` masquerading the namespace's link address to whatever address
//! the host leaves by. Container addresses never appear outside the namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::netns::{run_checked, Namespace};
use crate::{NetError, Subnet};

/// The namespace's end of the veth pair.
pub const UPLINK: &str = "uplink0";

/// An outbound path from the namespace through the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The host's end of the veth pair.
    pub host_link: String,
    pub host_address: Ipv4Addr,
    pub namespace_address: Ipv4Addr,
    pub link: Subnet,
}

/// A short stable suffix for host-side names from the namespace's name (FNV-1a).
fn suffix(namespace: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in namespace.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

fn host_link_name(namespace: &Namespace) -> String {
    format!("bn{}", suffix(namespace.name()))
}

fn host_table(namespace: &Namespace) -> String {
    format!("berth-nat-{}", suffix(namespace.name()))
}

/// The host's masquerading table for `uplink`.
pub fn host_ruleset(table: &str, uplink: &Uplink) -> String {
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tip saddr {} oifname != \"{}\" masquerade\n\t}}\n}}\n",
        uplink.namespace_address, uplink.host_link
    )
}

fn nft_host(text: &str) -> Result<(), NetError> {
    crate::firewall::load_ruleset(Command::new("nft"), text)
}

/// Sets the uplink up (idempotent).
pub fn ensure(namespace: &Namespace, link: Subnet) -> Result<Uplink, NetError> {
    if link.prefix() != 30 {
        return Err(NetError::Invalid(format!(
            "the NAT link subnet must be a /30, not {link}"
        )));
    }
    let host_address = link.first_host();
    let namespace_address = Ipv4Addr::from(u32::from(host_address) + 1);
    let uplink = Uplink {
        host_link: host_link_name(namespace),
        host_address,
        namespace_address,
        link,
    };
    let exists = Command::new("ip")
        .args(["link", "show", "dev", &uplink.host_link])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        run_checked(Command::new("ip").args([
            "link",
            "add",
            &uplink.host_link,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK,
            "netns",
            namespace.name(),
        ]))?;
    }
    run_checked(Command::new("ip").args([
        "addr",
        "replace",
        &format!("{host_address}/30"),
        "dev",
        &uplink.host_link,
    ]))?;
    run_checked(Command::new("ip").args(["link", "set", "dev", &uplink.host_link, "up"]))?;
    namespace.ip(&[
        "addr",
        "replace",
        &format!("{namespace_address}/30"),
        "dev",
        UPLINK,
    ])?;
    namespace.ip(&["link", "set", "dev", UPLINK, "up"])?;
    namespace.ip(&[
        "route",
        "replace",
        "default",
        "via",
        &host_address.to_string(),
        "dev",
        UPLINK,
    ])?;
    namespace.sysctl("net.ipv4.ip_forward", "1")?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetError::Io("turning on the host's IP forwarding".into(), e))?;
    nft_host(&host_ruleset(&host_table(namespace), &uplink))?;
    Ok(uplink)
}

/// Removes the uplink (and the host's table) if it is there; forwarding in the
/// namespace goes off again.
pub fn remove(namespace: &Namespace) -> Result<(), NetError> {
    let host_link = host_link_name(namespace);
    let exists = Command::new("ip")
        .args(["link", "show", "dev", &host_link])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if exists {
        run_checked(Command::new("ip").args(["link", "delete", "dev", &host_link]))?;
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &host_table(namespace)])
        .output();
    namespace.sysctl("net.ipv4.ip_forward", "0")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_the_host_rule_masquerades_the_namespace() {
        let name = format!("bn{}", suffix("berth-test-0123456789ab"));
        assert!(name.len() <= 15, "{name}");
        assert_ne!(suffix("a"), suffix("b"));
        let uplink = Uplink {
            host_link: name.clone(),
            host_address: Ipv4Addr::new(169, 254, 123, 1),
            namespace_address: Ipv4Addr::new(169, 254, 123, 2),
            link: "169.254.123.0/30".parse().unwrap(),
        };
        let text = host_ruleset("berth-nat-x", &uplink);
        assert!(text.contains(&format!(
            "ip saddr 169.254.123.2 oifname != \"{name}\" masquerade"
        )));
        assert!(text.starts_with("table ip berth-nat-x\ndelete table ip berth-nat-x\n"));
    }
}
