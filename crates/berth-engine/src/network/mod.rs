//! Docker's networks on Berth's network parts (`berth-net`).
//!
//! A network is a [`NetworkRecord`] in the state database and, while the daemon runs, a
//! bridge in Berth's network namespace with the network's gateway address, a DNS server
//! on that address, and a line in the namespace's firewall. Two networks always exist:
//! `bridge` (Docker's default, 172.17.0.0/16, on the bridge `berth0`) and `none`.
//!
//! A container's endpoints are recorded on the container ([`EndpointRecord`], by network
//! name). Addresses are given when the container starts and given back when its run
//! ends, as Docker does; which addresses are taken is kept in memory, and rebuilt when
//! the daemon starts from the records of the containers whose VMs outlived the daemon
//! before it and are taken over (live restore); the others' addresses are given back.
//!
//! Each endpoint of a running container is one NIC of its VM: a virtio-net card in PCI
//! slot `FIRST_NIC_SLOT + n` backed by the tap `bt<id>n`, attached to the network's
//! bridge once the guest has taken the endpoint's MAC address. The first endpoint's NIC
//! is there from boot (a clone's template has one in the same slot); more are
//! hot-plugged. A container on `none` still has the boot NIC (its template has it), with
//! a tap attached to nothing, and the guest leaves it down.

mod endpoints;
mod host;
mod ports;
mod verbs;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use berth_net::dns::Resolver;
use berth_net::firewall::BridgeRule;
use berth_net::Subnet;

use crate::error::EngineError;
use crate::state::Store;
use crate::{lock, now_rfc3339};

pub use crate::records::{
    EndpointRecord, NetworkRecord, PortRecord, DEFAULT_NETWORK, NONE_NETWORK,
};
pub use berth_net::proxy::Protocol;
pub use endpoints::NetworkPlan;
pub use host::{HostNetwork, HostTask, NamespaceHost};
pub use verbs::{ConnectRequest, CreateNetwork};

/// The default network's bridge.
const DEFAULT_BRIDGE: &str = "berth0";

/// Live state of the networks.
#[derive(Default)]
struct LiveState {
    records: HashMap<String, NetworkRecord>,
    /// Per network id: its DNS server.
    dns: HashMap<String, HostTask>,
    /// Per network id: taken addresses and who holds them.
    allocations: HashMap<String, HashMap<Ipv4Addr, String>>,
    /// Per network id: taken IPv6 addresses and who holds them.
    allocations6: HashMap<String, HashMap<std::net::Ipv6Addr, String>>,
    /// Per network id, per container id: the names it answers to and its address.
    names: HashMap<String, HashMap<String, (Vec<String>, Ipv4Addr)>>,
    /// Per network id, per container id: its links there (`TARGET[:ALIAS]`), whose
    /// aliases it alone resolves.
    links: HashMap<String, HashMap<String, Vec<String>>>,
    /// Per container id: its published ports' relays.
    published: HashMap<String, Vec<HostTask>>,
}

/// The daemon's networks.
pub struct Networks {
    host: Arc<dyn HostNetwork>,
    store: Store,
    upstreams: Vec<SocketAddr>,
    resolver: Arc<Resolver>,
    live: Mutex<LiveState>,
    /// Serialises creating and removing networks.
    changes: Mutex<()>,
    /// Outbound NAT, when the daemon offers it.
    uplink: Option<berth_net::uplink::Uplink>,
}

impl Networks {
    /// Opens (creating if needed) Berth's namespace and brings every stored network up.
    /// Taps left by an earlier daemon are removed, except those of the containers in
    /// `live` (whose VMs still run and are being taken over).
    pub fn open(
        host: Arc<dyn HostNetwork>,
        store: Store,
        live: &[String],
        outbound_nat: Option<Subnet>,
        dns_upstreams: Vec<SocketAddr>,
    ) -> Result<Self, EngineError> {
        let uplink = match outbound_nat {
            Some(link) => Some(host.ensure_uplink(link)?),
            None => {
                host.remove_uplink()?;
                None
            }
        };
        let kept: Vec<String> = live
            .iter()
            .map(|id| format!("bt{}", &id[..12.min(id.len())]))
            .collect();
        for stale in host.links_with_prefix("bt")? {
            if kept.iter().any(|prefix| stale.starts_with(prefix.as_str())) {
                continue;
            }
            let _ = host.delete_link(&stale);
        }
        let networks = Self {
            host,
            store,
            upstreams: if dns_upstreams.is_empty() {
                berth_net::dns::host_resolvers()
            } else {
                dns_upstreams
            },
            resolver: Arc::new(Resolver::default()),
            live: Mutex::new(LiveState::default()),
            changes: Mutex::new(()),
            uplink,
        };
        let mut records = networks.store.all_networks()?;
        for (name, driver) in [(DEFAULT_NETWORK, "bridge"), (NONE_NETWORK, "null")] {
            if !records.iter().any(|r| r.name == name) {
                let subnet = (driver == "bridge").then(berth_net::ipam::default_bridge_subnet);
                let record = NetworkRecord {
                    id: crate::container::names::new_id(),
                    name: name.to_owned(),
                    driver: driver.to_owned(),
                    created: now_rfc3339(),
                    subnet,
                    gateway: subnet.map(Subnet::first_host),
                    internal: false,
                    labels: HashMap::new(),
                    options: HashMap::new(),
                    bridge: if driver == "bridge" {
                        DEFAULT_BRIDGE.to_owned()
                    } else {
                        String::new()
                    },
                    ip_range: None,
                    aux_addresses: Default::default(),
                    ipam_options: HashMap::new(),
                    subnet6: None,
                    gateway6: None,
                };
                networks.store.put_network(&record)?;
                records.push(record);
            }
        }
        for record in records {
            networks.bring_up(&record)?;
            lock(&networks.live)
                .records
                .insert(record.id.clone(), record);
        }
        networks.apply_firewall()?;
        Ok(networks)
    }

    /// The namespace's pinned path, where VM processes run.
    pub fn namespace_path(&self) -> std::path::PathBuf {
        self.host.path()
    }

    /// The host side: the namespace and what runs in it.
    pub fn host(&self) -> &dyn HostNetwork {
        &*self.host
    }

    /// Creates a network's bridge and starts its DNS server.
    fn bring_up(&self, record: &NetworkRecord) -> Result<(), EngineError> {
        if !record.has_connectivity() {
            return Ok(());
        }
        let (Some(subnet), Some(gateway)) = (record.subnet, record.gateway) else {
            return Err(EngineError::InvalidArgument(format!(
                "network {} has no subnet",
                record.name
            )));
        };
        self.host
            .ensure_bridge(&record.bridge, gateway, subnet.prefix())?;
        if let (Some(subnet6), Some(gateway6)) = (record.subnet6, record.gateway6) {
            self.host
                .add_bridge_address6(&record.bridge, gateway6, subnet6.prefix_len())?;
        }
        let server = self
            .host
            .start_dns(gateway, self.resolver.clone(), self.upstreams.clone())
            .map_err(|e| {
                EngineError::Network(berth_net::NetError::Io(
                    format!(
                        "starting the DNS server of network {} on {gateway}:53",
                        record.name
                    ),
                    e,
                ))
            })?;
        lock(&self.live).dns.insert(record.id.clone(), server);
        Ok(())
    }

    fn apply_firewall(&self) -> Result<(), EngineError> {
        let rules: Vec<BridgeRule> = lock(&self.live)
            .records
            .values()
            .filter(|r| r.has_connectivity())
            .filter_map(|r| {
                Some(BridgeRule {
                    bridge: r.bridge.clone(),
                    gateway: r.gateway?,
                    gateway6: r.gateway6,
                    internal: r.internal,
                })
            })
            .collect();
        let uplink = self.uplink.as_ref().map(|_| berth_net::uplink::UPLINK);
        self.host.apply_firewall(&rules, uplink)?;
        Ok(())
    }

    /// The daemon stops (and its containers with it): the host's side of outbound NAT
    /// goes. (A killed daemon leaves it for its successor.)
    pub fn shut_down(&self) {
        if self.uplink.is_some() {
            if let Err(error) = self.host.remove_uplink() {
                tracing::warn!(error = %crate::error_chain(&error), "removing outbound NAT failed");
            }
        }
    }

    /// Outbound NAT in use: (host's end, link subnet).
    pub fn outbound_nat(&self) -> Option<(String, Subnet)> {
        self.uplink.as_ref().map(|u| (u.host_link.clone(), u.link))
    }

    /// Looks a network up by full id, name, or unique id prefix.
    pub fn lookup(&self, reference: &str) -> Result<NetworkRecord, EngineError> {
        let live = lock(&self.live);
        if let Some(record) = live.records.get(reference) {
            return Ok(record.clone());
        }
        if let Some(record) = live.records.values().find(|r| r.name == reference) {
            return Ok(record.clone());
        }
        let matches: Vec<&NetworkRecord> = live
            .records
            .values()
            .filter(|r| !reference.is_empty() && r.id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NoSuchNetwork(reference.to_owned())),
            _ => Err(EngineError::InvalidArgument(format!(
                "network {reference} is ambiguous ({} matches found based on ID prefix)",
                matches.len()
            ))),
        }
    }

    /// Every network, by name.
    pub fn list(&self) -> Vec<NetworkRecord> {
        let mut records: Vec<NetworkRecord> = lock(&self.live).records.values().cloned().collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    /// Re-publishes every name and every client's scope from the names registered on
    /// the networks.
    fn refresh_dns(&self, live: &LiveState) {
        let resolving: Vec<&String> = live
            .records
            .values()
            .filter(|r| r.resolves_names())
            .map(|r| &r.id)
            .collect();
        let mut names = Vec::new();
        let mut networks_of: HashMap<&String, Vec<String>> = HashMap::new();
        let mut addresses_of: HashMap<&String, Vec<Ipv4Addr>> = HashMap::new();
        for (network, containers) in &live.names {
            let resolves = resolving.contains(&network);
            for (container, (container_names, ip)) in containers {
                addresses_of.entry(container).or_default().push(*ip);
                if resolves {
                    networks_of
                        .entry(container)
                        .or_default()
                        .push(network.clone());
                    for name in container_names {
                        names.push((network.clone(), name.clone(), *ip));
                    }
                }
            }
        }
        let scopes: Vec<(Ipv4Addr, Vec<String>)> = addresses_of
            .into_iter()
            .flat_map(|(container, ips)| {
                let networks = networks_of.get(container).cloned().unwrap_or_default();
                ips.into_iter().map(move |ip| (ip, networks.clone()))
            })
            .collect();
        let mut private = Vec::new();
        for (network, linkers) in &live.links {
            let Some(containers) = live.names.get(network) else {
                continue;
            };
            for (linker, links) in linkers {
                let Some((_, client)) = containers.get(linker) else {
                    continue;
                };
                for spec in links {
                    let (target, alias) = spec.split_once(':').unwrap_or((spec, spec));
                    let target = target.trim_start_matches('/');
                    let alias = alias.trim_start_matches('/');
                    let found = containers
                        .values()
                        .find(|(names, _)| names.iter().any(|n| n == target));
                    if let Some((_, address)) = found {
                        private.push((*client, alias.to_owned(), *address));
                    }
                }
            }
        }
        self.resolver.replace(names, scopes, private);
    }

    /// The container's endpoints on live networks, in NIC order: the one named by its
    /// network mode first, then the others by name.
    pub fn ordered_endpoints<'a>(
        primary: &str,
        endpoints: &'a BTreeMap<String, EndpointRecord>,
    ) -> Vec<(&'a String, &'a EndpointRecord)> {
        let mut ordered: Vec<_> = endpoints.iter().collect();
        ordered.sort_by_key(|(name, _)| (name.as_str() != primary, name.as_str()));
        ordered
    }
}

/// Docker's MAC address for an IPv4 address: `02:42` and the address's four bytes.
pub fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Checks a user-given MAC address: six hex bytes, unicast. Returns it in lower case.
pub fn validate_mac(mac: &str) -> Result<String, EngineError> {
    let invalid = || EngineError::InvalidArgument(format!("invalid MAC address: {mac}"));
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|part| {
            (part.len() == 2)
                .then(|| u8::from_str_radix(part, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(invalid)?;
    if bytes.len() != 6 || bytes[0] & 1 != 0 {
        return Err(invalid());
    }
    Ok(mac.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_docker_and_bad_ones_are_refused() {
        assert_eq!(mac_for(Ipv4Addr::new(172, 17, 0, 2)), "02:42:ac:11:00:02");
        assert_eq!(
            validate_mac("02:42:AC:11:00:09").unwrap(),
            "02:42:ac:11:00:09"
        );
        for bad in [
            "01:00:5e:00:00:01",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0g",
            "2:42:ac:11:0:9",
        ] {
            assert!(validate_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn primary_endpoint_comes_first() {
        let mut endpoints = BTreeMap::new();
        for name in ["alpha", "zeta", "mid"] {
            endpoints.insert(name.to_owned(), EndpointRecord::default());
        }
        let order: Vec<&str> = Networks::ordered_endpoints("zeta", &endpoints)
            .into_iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(order, ["zeta", "alpha", "mid"]);
    }
}
