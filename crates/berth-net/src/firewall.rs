//! Filtering inside Berth's namespace, with nftables.
//!
//! One table, `inet berth`, replaced whole on every change (`nft -f` applies a file
//! atomically). Its rules:
//!
//! - `forward`: drop everything that crosses from one bridge to another. IP forwarding
//!   is off in the namespace as well; together they keep containers on different
//!   networks apart. Containers on one network talk through their bridge (which is not
//!   routing); where `br_netfilter` is loaded, bridged traffic would also pass this hook,
//!   so it is switched off in the namespace and same-bridge traffic is accepted anyway.
//! - `input`: a container may reach the namespace itself only at its own network's
//!   gateway address (where the network's DNS server listens); other gateway addresses
//!   are not reachable from it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::netns::Namespace;
use crate::NetError;

/// One network's bridge and gateway, as the rules see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRule {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway, on a network with `--ipv6`.
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// `--internal`: never forwarded out, even with outbound NAT.
    pub internal: bool,
}

/// The ruleset text for `bridges`; with `uplink` (outbound NAT), non-internal networks
/// may also go out through it, masqueraded.
pub fn ruleset(bridges: &[BridgeRule], uplink: Option<&str>) -> String {
    let mut text = String::from(
        "table inet berth\ndelete table inet berth\ntable inet berth {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy drop;\n",
    );
    // Where br_netfilter passes bridged traffic through this hook, in and out are the
    // bridge itself: traffic within one network stays allowed.
    for rule in bridges {
        text.push_str(&format!(
            "\t\tiifname \"{0}\" oifname \"{0}\" accept\n",
            rule.bridge
        ));
    }
    if let Some(uplink) = uplink {
        text.push_str(&format!(
            "\t\tiifname \"{uplink}\" ct state established,related accept\n"
        ));
        for rule in bridges.iter().filter(|r| !r.internal) {
            text.push_str(&format!(
                "\t\tiifname \"{}\" oifname \"{uplink}\" accept\n",
                rule.bridge
            ));
        }
    }
    text.push_str("\t}\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tct state established,related accept\n");
    for rule in bridges {
        text.push_str(&format!(
            "\t\tiifname \"{}\" ip daddr != {} drop\n",
            rule.bridge, rule.gateway
        ));
        // IPv6: the network's own gateway, and link-local and multicast (neighbour
        // discovery); never another network's addresses in the namespace.
        let own = rule
            .gateway6
            .map(|gateway| format!("{gateway}, "))
            .unwrap_or_default();
        text.push_str(&format!(
            "\t\tiifname \"{}\" ip6 daddr != {{ {own}fe80::/10, ff00::/8 }} drop\n",
            rule.bridge
        ));
    }
    text.push_str("\t}\n");
    if let Some(uplink) = uplink {
        text.push_str(&format!(
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\toifname \"{uplink}\" masquerade\n\t}}\n"
        ));
    }
    text.push_str("}\n");
    text
}

/// Applies the ruleset for `bridges` in the namespace.
pub fn apply(
    namespace: &Namespace,
    bridges: &[BridgeRule],
    uplink: Option<&str>,
) -> Result<(), NetError> {
    load_ruleset(namespace.command("nft"), &ruleset(bridges, uplink))
}

/// Loads a ruleset with `nft -f -` (atomically: all of it or none); `nft` is a command
/// already set up to run where the rules belong (Berth's namespace, or the host).
pub(crate) fn load_ruleset(mut nft: std::process::Command, text: &str) -> Result<(), NetError> {
    let mut child = nft
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Io("running nft (is the nftables package installed?)".into(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetError::Io("writing the nft ruleset".into(), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetError::Io("running nft".into(), e))?;
    if !output.status.success() {
        return Err(NetError::Command {
            command: "nft -f -".into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_drops_forwarding_and_foreign_gateways() {
        let bridges = [
            BridgeRule {
                bridge: "berth0".into(),
                gateway: Ipv4Addr::new(172, 17, 0, 1),
                gateway6: Some("fd00:1::1".parse().unwrap()),
                internal: false,
            },
            BridgeRule {
                bridge: "br-0123456789ab".into(),
                gateway: Ipv4Addr::new(172, 18, 0, 1),
                gateway6: None,
                internal: true,
            },
        ];
        let text = ruleset(&bridges, None);
        assert!(!text.contains("masquerade"));
        assert!(text.contains("hook forward priority 0; policy drop;"));
        assert!(text.contains("iifname \"berth0\" oifname \"berth0\" accept"));
        assert!(text.contains("iifname \"berth0\" ip daddr != 172.17.0.1 drop"));
        assert!(text.contains("iifname \"br-0123456789ab\" ip daddr != 172.18.0.1 drop"));
        assert!(text
            .contains("iifname \"berth0\" ip6 daddr != { fd00:1::1, fe80::/10, ff00::/8 } drop"));
        assert!(
            text.contains("iifname \"br-0123456789ab\" ip6 daddr != { fe80::/10, ff00::/8 } drop")
        );
        assert!(text.starts_with("table inet berth\ndelete table inet berth\n"));
        let nat = ruleset(&bridges, Some("uplink0"));
        assert!(nat.contains("iifname \"berth0\" oifname \"uplink0\" accept"));
        assert!(
            !nat.contains("iifname \"br-0123456789ab\" oifname \"uplink0\""),
            "an internal network goes out"
        );
        assert!(nat.contains("oifname \"uplink0\" masquerade"));
    }
}
