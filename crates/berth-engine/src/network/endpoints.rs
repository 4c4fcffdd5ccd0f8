//! A container's endpoints over its runs: addresses, MACs and taps when it starts, bridges
//! and names once its guest is configured, all given back when the run ends.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use berth_agent_proto::InterfaceSpec;
use berth_net::links;
use berth_vm::{NicSpec, FIRST_NIC_SLOT, MAX_NICS};

use super::{mac_for, EndpointRecord, NetworkRecord, Networks, DEFAULT_NETWORK};
use crate::error::EngineError;
use crate::lock;
use crate::records::ContainerRecord;

/// What a container's VM needs for its networks.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    /// The NIC present from boot, in [`FIRST_NIC_SLOT`].
    pub boot_nic: NicSpec,
    /// The guest's interfaces to configure at Setup (the boot NIC's, unless on `none`).
    pub boot_interface: Option<InterfaceSpec>,
    /// NICs to hot-plug after Setup, with their interfaces.
    pub extra: Vec<(NicSpec, InterfaceSpec)>,
    /// `(tap, bridge)` pairs to attach once the guest has its MAC addresses.
    pub attach: Vec<(String, String)>,
    /// For the container's /etc/resolv.conf.
    pub nameservers: Vec<String>,
}

/// One endpoint made ready: its NIC, and its interface unless on `none`.
pub(crate) struct ReadyEndpoint {
    pub nic: NicSpec,
    pub interface: Option<InterfaceSpec>,
    pub bridge: Option<String>,
}

impl Networks {
    /// The network an endpoint belongs to.
    fn endpoint_network(
        &self,
        name: &str,
        endpoint: &EndpointRecord,
    ) -> Result<NetworkRecord, EngineError> {
        self.lookup(&endpoint.network_id)
            .or_else(|_| self.lookup(name))
            .map_err(|_| EngineError::NoSuchNetwork(name.to_owned()))
    }

    /// The network mode a container's record names, with Docker's `default` resolved.
    pub fn primary_network_name(record: &ContainerRecord) -> String {
        match record.host_config.network_mode.as_deref() {
            None | Some("") | Some("default") => DEFAULT_NETWORK.to_owned(),
            Some(mode) => mode.to_owned(),
        }
    }

    /// Gives endpoint `name` of container `container_id` an address, a MAC and a tap for
    /// NIC number `index` (slot `FIRST_NIC_SLOT + index`); records them in `endpoint`.
    pub(crate) fn ready_endpoint(
        &self,
        container_id: &str,
        index: usize,
        name: &str,
        endpoint: &mut EndpointRecord,
        primary: bool,
    ) -> Result<ReadyEndpoint, EngineError> {
        if index >= MAX_NICS {
            return Err(EngineError::InvalidArgument(format!(
                "a container can be on at most {MAX_NICS} networks"
            )));
        }
        let network = self.endpoint_network(name, endpoint)?;
        endpoint.network_id = network.id.clone();
        let slot = FIRST_NIC_SLOT + index as u8;
        let tap = links::tap_name(container_id, index);
        self.host.create_tap(&tap)?;
        let Some((subnet, gateway)) = network.subnet.zip(network.gateway) else {
            // `none`: a card the guest leaves down, on a tap attached to nothing.
            endpoint.nic_slot = Some(slot);
            return Ok(ReadyEndpoint {
                nic: NicSpec {
                    tap,
                    mac: mac_for(Ipv4Addr::new(0, 0, 0, index as u8 + 1)),
                    pci_slot: slot,
                },
                interface: None,
                bridge: None,
            });
        };
        let address = {
            let mut live = lock(&self.live);
            let taken = live.allocations.entry(network.id.clone()).or_default();
            let reserved = network.aux_addresses.values().copied();
            let address = match endpoint.requested_ip {
                Some(wanted) => {
                    if !subnet.is_host(wanted) {
                        return Err(EngineError::InvalidArgument(format!(
                            "Invalid address {wanted}: It does not belong to any of this network's subnets"
                        )));
                    }
                    if wanted == gateway || network.aux_addresses.values().any(|a| *a == wanted) {
                        return Err(EngineError::Conflict("Address already in use".into()));
                    }
                    if taken.contains_key(&wanted) {
                        return Err(EngineError::Conflict(format!(
                            "Address already in use: {wanted} on network {}",
                            network.name
                        )));
                    }
                    wanted
                }
                None => {
                    let mut used: HashSet<Ipv4Addr> = taken.keys().copied().collect();
                    used.insert(gateway);
                    used.extend(reserved);
                    // Addresses asked for with --ip by stopped containers stay theirs.
                    match network.ip_range {
                        Some(range) => subnet.allocate_in(range, &used),
                        None => subnet.allocate(&used),
                    }
                    .ok_or_else(|| {
                        EngineError::Conflict(format!(
                            "no available IPv4 addresses on network {}",
                            network.name
                        ))
                    })?
                }
            };
            taken.insert(address, container_id.to_owned());
            address
        };
        let address6 = match network.subnet6.zip(network.gateway6) {
            None => None,
            Some((subnet6, gateway6)) => {
                let mut live = lock(&self.live);
                let taken = live.allocations6.entry(network.id.clone()).or_default();
                let chosen = match endpoint.requested_ip6 {
                    Some(wanted) if wanted == gateway6 || taken.contains_key(&wanted) => {
                        // Recorded, so that the failed start gives the IPv4 address back.
                        endpoint.ip = Some(address);
                        return Err(EngineError::Conflict("Address already in use".into()));
                    }
                    Some(wanted) => Some(wanted),
                    None => {
                        let mut used: HashSet<Ipv6Addr> = taken.keys().copied().collect();
                        used.insert(gateway6);
                        berth_net::ipam::allocate6(subnet6, &used)
                    }
                };
                if let Some(chosen) = chosen {
                    taken.insert(chosen, container_id.to_owned());
                }
                chosen.map(|a| (a, subnet6.prefix_len(), gateway6))
            }
        };
        endpoint.ip6 = address6.map(|(a, _, _)| a);
        let mac = endpoint
            .requested_mac
            .clone()
            .unwrap_or_else(|| mac_for(address));
        endpoint.ip = Some(address);
        endpoint.mac = mac.clone();
        endpoint.endpoint_id = crate::container::names::new_id();
        endpoint.nic_slot = Some(slot);
        let gateway_route = (primary && !network.internal).then(|| gateway.to_string());
        Ok(ReadyEndpoint {
            nic: NicSpec {
                tap,
                mac: mac.clone(),
                pci_slot: slot,
            },
            interface: Some(InterfaceSpec {
                pci_slot: slot,
                name: format!("eth{index}"),
                mac,
                address: format!("{address}/{}", subnet.prefix()),
                gateway: gateway_route,
                address6: address6.map(|(a, prefix, _)| format!("{a}/{prefix}")),
                link_local: endpoint
                    .link_local_ips
                    .iter()
                    .map(|ip| format!("{ip}/16"))
                    .collect(),
                gateway6: address6
                    .filter(|_| primary && !network.internal)
                    .map(|(_, _, gateway6)| gateway6.to_string()),
            }),
            bridge: Some(network.bridge.clone()),
        })
    }

    /// Readies every endpoint of a container that is starting; on failure, whatever was
    /// readied is given back.
    pub fn plan_start(&self, record: &mut ContainerRecord) -> Result<NetworkPlan, EngineError> {
        let primary = Self::primary_network_name(record);
        if record.networks.is_empty() {
            // Records made before Berth had networks: the network mode's network.
            let network = self.lookup(&primary)?;
            record.networks.insert(
                network.name.clone(),
                EndpointRecord {
                    network_id: network.id,
                    ..Default::default()
                },
            );
        }
        let result = self.plan_endpoints(record, &primary);
        if result.is_err() {
            self.release(record);
        }
        result
    }

    fn plan_endpoints(
        &self,
        record: &mut ContainerRecord,
        primary: &str,
    ) -> Result<NetworkPlan, EngineError> {
        let names: Vec<String> = Networks::ordered_endpoints(primary, &record.networks)
            .into_iter()
            .map(|(name, _)| name.clone())
            .collect();
        let id = record.id.clone();
        let mut plan: Option<NetworkPlan> = None;
        for (index, name) in names.iter().enumerate() {
            let endpoint = record
                .networks
                .get_mut(name)
                .expect("names come from the same map");
            let ready = self.ready_endpoint(&id, index, name, endpoint, index == 0)?;
            let attach = ready
                .bridge
                .clone()
                .map(|bridge| (ready.nic.tap.clone(), bridge));
            match &mut plan {
                None => {
                    let nameservers = self
                        .lookup(name)
                        .ok()
                        .filter(NetworkRecord::has_connectivity)
                        .and_then(|n| n.gateway)
                        .map(|g| vec![g.to_string()])
                        .unwrap_or_default();
                    plan = Some(NetworkPlan {
                        boot_nic: ready.nic,
                        boot_interface: ready.interface,
                        extra: Vec::new(),
                        attach: attach.into_iter().collect(),
                        nameservers,
                    });
                }
                Some(plan) => {
                    plan.attach.extend(attach);
                    if let Some(interface) = ready.interface {
                        plan.extra.push((ready.nic, interface));
                    }
                }
            }
        }
        plan.ok_or_else(|| EngineError::InvalidArgument("the container is on no network".into()))
    }

    /// The names a container answers to on a network: its name, short id and aliases.
    fn dns_names(record: &ContainerRecord, endpoint: &EndpointRecord) -> Vec<String> {
        let mut names = vec![record.name.clone(), record.id[..12].to_owned()];
        names.extend(endpoint.aliases.iter().cloned());
        names
    }

    /// Attaches a started container's taps to their bridges (its guest has taken its MAC
    /// addresses) and makes its names resolvable.
    pub fn activate(
        &self,
        record: &ContainerRecord,
        attach: &[(String, String)],
    ) -> Result<(), EngineError> {
        for (tap, bridge) in attach {
            self.host.attach_tap(tap, bridge)?;
        }
        let mut live = lock(&self.live);
        for endpoint in record.networks.values() {
            let Some(ip) = endpoint.ip else { continue };
            live.names
                .entry(endpoint.network_id.clone())
                .or_default()
                .insert(record.id.clone(), (Self::dns_names(record, endpoint), ip));
            live.links
                .entry(endpoint.network_id.clone())
                .or_default()
                .insert(record.id.clone(), endpoint.links.clone());
        }
        self.refresh_dns(&live);
        Ok(())
    }

    /// Takes back the addresses and names of a container whose VM ran on while the daemon
    /// was away (its taps are still on their bridges).
    pub fn restore(&self, record: &ContainerRecord) {
        let mut live = lock(&self.live);
        for endpoint in record.networks.values() {
            let Some(ip) = endpoint.ip else { continue };
            live.allocations
                .entry(endpoint.network_id.clone())
                .or_default()
                .insert(ip, record.id.clone());
            if let Some(ip6) = endpoint.ip6 {
                live.allocations6
                    .entry(endpoint.network_id.clone())
                    .or_default()
                    .insert(ip6, record.id.clone());
            }
            live.names
                .entry(endpoint.network_id.clone())
                .or_default()
                .insert(record.id.clone(), (Self::dns_names(record, endpoint), ip));
            live.links
                .entry(endpoint.network_id.clone())
                .or_default()
                .insert(record.id.clone(), endpoint.links.clone());
        }
        self.refresh_dns(&live);
    }

    /// Gives back one endpoint's address and name, and removes its tap.
    pub(crate) fn release_endpoint(&self, container_id: &str, endpoint: &mut EndpointRecord) {
        let mut live = lock(&self.live);
        if let Some(ip) = endpoint.ip.take() {
            if let Some(taken) = live.allocations.get_mut(&endpoint.network_id) {
                if taken.get(&ip).is_some_and(|holder| holder == container_id) {
                    taken.remove(&ip);
                }
            }
        }
        if let Some(ip6) = endpoint.ip6.take() {
            if let Some(taken) = live.allocations6.get_mut(&endpoint.network_id) {
                if taken.get(&ip6).is_some_and(|holder| holder == container_id) {
                    taken.remove(&ip6);
                }
            }
        }
        if let Some(names) = live.names.get_mut(&endpoint.network_id) {
            names.remove(container_id);
        }
        if let Some(links) = live.links.get_mut(&endpoint.network_id) {
            links.remove(container_id);
        }
        self.refresh_dns(&live);
        drop(live);
        if let Some(slot) = endpoint.nic_slot.take() {
            let index = usize::from(slot.saturating_sub(FIRST_NIC_SLOT));
            let _ = self.host.delete_link(&links::tap_name(container_id, index));
        }
        endpoint.mac.clear();
        endpoint.endpoint_id.clear();
    }

    /// Gives back everything a container's run held: addresses, names, taps, relays.
    pub fn release(&self, record: &mut ContainerRecord) {
        let id = record.id.clone();
        for endpoint in record.networks.values_mut() {
            self.release_endpoint(&id, endpoint);
        }
        lock(&self.live).published.remove(&id);
        record.ports.clear();
        if let Ok(stale) = self.host.links_with_prefix(&format!("bt{}", &id[..12])) {
            for tap in stale {
                let _ = self.host.delete_link(&tap);
            }
        }
    }

    /// The tap and NIC a template VM boots with (clones have one in the same slot).
    pub fn template_nic(&self, key: &str) -> Result<NicSpec, EngineError> {
        let tap = format!("btt{}", &key[..12.min(key.len())]);
        self.host.create_tap(&tap)?;
        Ok(NicSpec {
            tap,
            mac: berth_vm::TEMPLATE_NIC_MAC.into(),
            pci_slot: FIRST_NIC_SLOT,
        })
    }

    /// The NIC of a VM restored ahead of demand (`name`, see `vm::spares`): a tap of its
    /// own, down and attached to nothing, and a MAC address of its own until a container
    /// gives it one.
    pub fn spare_nic(&self, name: &str, mac: String) -> Result<NicSpec, EngineError> {
        let tap = links::tap_name(name, 0);
        self.host.create_tap(&tap)?;
        Ok(NicSpec {
            tap,
            mac,
            pci_slot: FIRST_NIC_SLOT,
        })
    }

    /// Gives a VM restored ahead of demand's tap (`spare_tap`) the name of a container's
    /// first tap, which the start's plan made: the VM has its tap open already.
    pub fn adopt_tap(&self, spare_tap: &str, tap: &str) -> Result<(), EngineError> {
        Ok(self.host.rename_tap(spare_tap, tap)?)
    }

    pub fn remove_tap(&self, tap: &str) {
        let _ = self.host.delete_link(tap);
    }

    /// Whether any container holds an endpoint on this network while running.
    pub fn has_active_endpoints(&self, network_id: &str) -> bool {
        lock(&self.live)
            .allocations
            .get(network_id)
            .is_some_and(|taken| !taken.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NONE_NETWORK;

    #[test]
    fn network_mode_default_is_the_bridge_network() {
        let mut record: ContainerRecord = crate::records::test_record(serde_json::json!({}));
        assert!(
            record.networks.is_empty(),
            "old records read with no networks"
        );
        assert_eq!(Networks::primary_network_name(&record), DEFAULT_NETWORK);
        record.host_config.network_mode = Some("default".into());
        assert_eq!(Networks::primary_network_name(&record), DEFAULT_NETWORK);
        record.host_config.network_mode = Some(NONE_NETWORK.into());
        assert_eq!(Networks::primary_network_name(&record), NONE_NETWORK);
    }
}
