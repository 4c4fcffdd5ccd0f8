//! A network's record, and a container's endpoint and published ports on networks.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use berth_net::proxy::Protocol;
use berth_net::Subnet;
use serde::{Deserialize, Serialize};

/// The default network's name.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The network without connectivity.
pub const NONE_NETWORK: &str = "none";
/// Everything Berth keeps about a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// `bridge`, or `null` for `none`.
    pub driver: String,
    pub created: String,
    /// `None` for the `null` driver.
    pub subnet: Option<Subnet>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub options: HashMap<String, String>,
    /// The Linux bridge in Berth's namespace (empty for `null`).
    pub bridge: String,
    /// `--ip-range`: where addresses are handed out from (inside `subnet`).
    #[serde(default)]
    pub ip_range: Option<Subnet>,
    /// `--aux-address NAME=IP`: addresses never handed out.
    #[serde(default)]
    pub aux_addresses: std::collections::BTreeMap<String, Ipv4Addr>,
    /// `--ipam-opt`: kept and shown.
    #[serde(default)]
    pub ipam_options: HashMap<String, String>,
    /// `--ipv6 --subnet V6`: the network's IPv6 subnet, beside its IPv4 one.
    #[serde(default)]
    pub subnet6: Option<berth_net::Subnet6>,
    #[serde(default)]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

impl NetworkRecord {
    /// `bridge` and `none` cannot be removed.
    pub fn predefined(&self) -> bool {
        self.name == DEFAULT_NETWORK || self.name == NONE_NETWORK
    }

    pub fn has_connectivity(&self) -> bool {
        self.driver == "bridge"
    }

    /// The network's DNS server serves container names (Docker: user-defined networks).
    pub fn resolves_names(&self) -> bool {
        self.has_connectivity() && self.name != DEFAULT_NETWORK
    }
}

/// A container's endpoint on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    /// `--network-alias`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub requested_ip: Option<Ipv4Addr>,
    /// `--mac-address`.
    #[serde(default)]
    pub requested_mac: Option<String>,
    /// `--link` on a user-defined network, as given (`TARGET[:ALIAS]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// While running: 64 hex digits.
    #[serde(default)]
    pub endpoint_id: String,
    /// While running.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// While running.
    #[serde(default)]
    pub mac: String,
    /// `--ip6`.
    #[serde(default)]
    pub requested_ip6: Option<std::net::Ipv6Addr>,
    /// `--link-local-ip`: more addresses in 169.254.0.0/16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<Ipv4Addr>,
    /// While running, on a network with IPv6.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// While running: the PCI slot of the endpoint's NIC.
    #[serde(default)]
    pub nic_slot: Option<u8>,
}

/// One published port of a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: String,
    pub host_port: u16,
}

impl PortRecord {
    /// Docker's key for the container side, `80/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol.as_str())
    }
}
