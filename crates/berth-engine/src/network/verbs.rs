//! The network verbs of Docker's API: create, inspect, list, remove, prune, connect and
//! disconnect.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use berth_agent_proto::{GuestMessage, HostMessage};
use berth_net::{ipam, Subnet};

use super::{validate_mac, EndpointRecord, NetworkRecord, Networks, NONE_NETWORK};
use crate::agent::AgentError;
use crate::error::EngineError;
use crate::{lock, now_rfc3339, ContainerRecord, Engine};

/// `docker network create`.
#[derive(Debug, Clone, Default)]
pub struct CreateNetwork {
    pub name: String,
    pub driver: Option<String>,
    pub internal: bool,
    pub labels: HashMap<String, String>,
    pub options: HashMap<String, String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub aux_addresses: HashMap<String, String>,
    pub ipam_options: HashMap<String, String>,
    /// `--ipv6`: the IPv6 subnet (required) and gateway (default: its first address).
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
}

/// `docker network connect`'s endpoint settings.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    pub aliases: Vec<String>,
    pub ip: Option<String>,
    /// `--ip6`.
    pub ip6: Option<String>,
    pub mac: Option<String>,
    /// `--link-local-ip`.
    pub link_local_ips: Vec<String>,
}

impl ConnectRequest {
    /// The endpoint this request describes, checked.
    pub fn endpoint(&self, network: &NetworkRecord) -> Result<EndpointRecord, EngineError> {
        let requested_ip = match self.ip.as_deref().filter(|ip| !ip.is_empty()) {
            None => None,
            Some(text) => {
                let ip: Ipv4Addr = text.parse().map_err(|_| {
                    EngineError::InvalidArgument(format!("invalid IPv4 address: {text}"))
                })?;
                if !network.subnet.is_some_and(|s| s.is_host(ip)) {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid endpoint settings: {ip} does not belong to network {}'s subnet",
                        network.name
                    )));
                }
                Some(ip)
            }
        };
        let requested_ip6 = match self.ip6.as_deref().filter(|ip| !ip.is_empty()) {
            None => None,
            Some(text) => {
                let ip: Ipv6Addr = text.parse().map_err(|_| {
                    EngineError::InvalidArgument(format!("invalid IPv6 address: {text}"))
                })?;
                let Some(subnet6) = network.subnet6 else {
                    return Err(EngineError::InvalidArgument(
                        "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
                    ));
                };
                if !subnet6.contains(&ip) || ip == subnet6.network() {
                    return Err(EngineError::InvalidArgument(format!(
                        "Invalid address {ip}: It does not belong to any of this network's subnets"
                    )));
                }
                Some(ip)
            }
        };
        let mut link_local_ips = Vec::new();
        for text in &self.link_local_ips {
            match text.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_link_local() => link_local_ips.push(ip),
                Ok(_) | Err(_) => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid link-local IP address: {text} (Berth takes IPv4 ones, in 169.254.0.0/16)"
                    )))
                }
            }
        }
        if requested_ip.is_some() && network.name == super::DEFAULT_NETWORK {
            return Err(EngineError::InvalidArgument(
                "user specified IP address is supported on user defined networks only".into(),
            ));
        }
        Ok(EndpointRecord {
            network_id: network.id.clone(),
            aliases: self.aliases.clone(),
            requested_ip,
            requested_ip6,
            link_local_ips,
            requested_mac: self
                .mac
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(validate_mac)
                .transpose()?,
            ..Default::default()
        })
    }
}

/// dockerd takes any name (spaces, `/`, `:` and non-ASCII included) but an empty one;
/// Berth also refuses control characters, which no client shows sensibly.
fn valid_network_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.chars().any(char::is_control)
}

/// The bridge interface a network asks for (`com.docker.network.bridge.name`), checked
/// as the kernel names interfaces.
fn requested_bridge_name(options: &HashMap<String, String>) -> Result<Option<String>, EngineError> {
    let Some(name) = options.get("com.docker.network.bridge.name") else {
        return Ok(None);
    };
    let valid = !name.is_empty()
        && name.len() < 16
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !name.starts_with("bt");
    if !valid {
        return Err(EngineError::InvalidArgument(format!(
            "invalid bridge name {name:?}: at most 15 letters, digits, '_', '.' or '-' (names starting with \"bt\" are Berth's taps)"
        )));
    }
    Ok(Some(name.clone()))
}

impl Engine {
    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// `POST /networks/create`.
    pub fn create_network(&self, request: CreateNetwork) -> Result<NetworkRecord, EngineError> {
        if !valid_network_name(&request.name) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid network name {:?}: a network needs a name without control characters",
                request.name
            )));
        }
        let bridge = requested_bridge_name(&request.options)?;
        match request.driver.as_deref() {
            None | Some("") | Some("bridge") => {}
            // Docker's own drivers that Berth does not offer.
            Some(other @ ("host" | "null" | "none" | "overlay" | "macvlan" | "ipvlan")) => {
                return Err(EngineError::NotSupported(format!(
                    "network driver {other:?} is not supported by Berth (it offers \"bridge\")"
                )))
            }
            // Anything else would be a plugin, as dockerd answers (404).
            Some(other) => {
                return Err(EngineError::NotFound(format!(
                    "plugin {other:?} not found (Berth's network driver is \"bridge\")"
                )))
            }
        }
        let networks = &self.networks;
        let _guard = networks.changes.lock().unwrap_or_else(|p| p.into_inner());
        if networks.list().iter().any(|n| n.name == request.name) {
            return Err(EngineError::Conflict(format!(
                "network with name {} already exists",
                request.name
            )));
        }
        let taken: Vec<Subnet> = networks.list().iter().filter_map(|n| n.subnet).collect();
        let subnet = match request.subnet.as_deref().filter(|s| !s.is_empty()) {
            Some(text) => {
                let subnet: Subnet = text.parse()?;
                if let Some(other) = networks
                    .list()
                    .into_iter()
                    .find(|n| n.subnet.is_some_and(|s| s.overlaps(subnet)))
                {
                    return Err(EngineError::Forbidden(format!(
                        "invalid pool request: Pool overlaps with other one on this address space (network {})",
                        other.name
                    )));
                }
                subnet
            }
            None => ipam::next_free_pool(&taken).ok_or_else(|| {
                EngineError::Forbidden(
                    "all predefined address pools have been fully subnetted".into(),
                )
            })?,
        };
        let gateway = match request.gateway.as_deref().filter(|g| !g.is_empty()) {
            Some(text) => {
                let gateway: Ipv4Addr = text.parse().map_err(|_| {
                    EngineError::InvalidArgument(format!("invalid gateway address {text}"))
                })?;
                if !subnet.is_host(gateway) {
                    return Err(EngineError::InvalidArgument(format!(
                        "gateway {gateway} is not a host address of subnet {subnet}"
                    )));
                }
                gateway
            }
            None => subnet.first_host(),
        };
        let ip_range = match request.ip_range.as_deref().filter(|r| !r.is_empty()) {
            Some(text) => {
                let range: Subnet = text.parse()?;
                if !subnet.contains(range.network()) || range.prefix() < subnet.prefix() {
                    return Err(EngineError::InvalidArgument(format!(
                        "no matching subnet for range {text}"
                    )));
                }
                Some(range)
            }
            None => None,
        };
        let mut aux_addresses = std::collections::BTreeMap::new();
        for (name, text) in &request.aux_addresses {
            let address: Ipv4Addr = text.parse().map_err(|_| {
                EngineError::InvalidArgument(format!("invalid auxiliary address {name}={text}"))
            })?;
            if !subnet.contains(address) {
                return Err(EngineError::Forbidden(format!(
                    "auxiliary address: ({name}:{address}) must belong to the master pool: {subnet}"
                )));
            }
            aux_addresses.insert(name.clone(), address);
        }
        let (subnet6, gateway6) = match request.subnet6.as_deref() {
            None => (None, None),
            Some(text) => {
                let subnet6 = berth_net::ipam::parse_subnet6(text)?;
                if let Some(other) = networks.list().into_iter().find(|n| {
                    n.subnet6.is_some_and(|s| {
                        s.contains(&subnet6.network()) || subnet6.contains(&s.network())
                    })
                }) {
                    return Err(EngineError::Forbidden(format!(
                        "invalid pool request: Pool overlaps with other one on this address space (network {})",
                        other.name
                    )));
                }
                let gateway6 = match request.gateway6.as_deref().filter(|g| !g.is_empty()) {
                    Some(text) => {
                        let gateway: Ipv6Addr = text.parse().map_err(|_| {
                            EngineError::InvalidArgument(format!("invalid gateway address {text}"))
                        })?;
                        if !subnet6.contains(&gateway) || gateway == subnet6.network() {
                            return Err(EngineError::InvalidArgument(format!(
                                "no matching subnet for gateway {gateway}"
                            )));
                        }
                        gateway
                    }
                    None => Ipv6Addr::from(u128::from(subnet6.network()) + 1),
                };
                (Some(subnet6), Some(gateway6))
            }
        };
        if let Some(bridge) = &bridge {
            if networks.list().iter().any(|n| &n.bridge == bridge) {
                return Err(EngineError::Conflict(format!(
                    "bridge name {bridge} is in use by another network"
                )));
            }
        }
        let id = crate::container::names::new_id();
        let record = NetworkRecord {
            bridge: bridge.unwrap_or_else(|| format!("br-{}", &id[..12])),
            ip_range,
            aux_addresses,
            ipam_options: request.ipam_options,
            subnet6,
            gateway6,
            id,
            name: request.name,
            driver: "bridge".into(),
            created: now_rfc3339(),
            subnet: Some(subnet),
            gateway: Some(gateway),
            internal: request.internal,
            labels: request.labels,
            options: request.options,
        };
        networks.bring_up(&record)?;
        lock(&networks.live)
            .records
            .insert(record.id.clone(), record.clone());
        let stored = networks
            .store
            .put_network(&record)
            .map_err(EngineError::from)
            .and_then(|()| networks.apply_firewall());
        if let Err(error) = stored {
            networks.take_down(&record);
            return Err(error);
        }
        self.network_event(&record, "create", None);
        Ok(record)
    }

    /// The containers on a network: running ones with their endpoints.
    pub fn network_containers(&self, network_id: &str) -> Vec<(ContainerRecord, EndpointRecord)> {
        self.list_containers()
            .into_iter()
            .filter_map(|record| {
                let endpoint = record
                    .networks
                    .values()
                    .find(|e| e.network_id == network_id && e.ip.is_some())
                    .cloned()?;
                Some((record, endpoint))
            })
            .collect()
    }

    /// `DELETE /networks/{id}`.
    pub fn remove_network(&self, reference: &str) -> Result<(), EngineError> {
        let networks = &self.networks;
        let _guard = networks.changes.lock().unwrap_or_else(|p| p.into_inner());
        let record = networks.lookup(reference)?;
        if record.predefined() {
            return Err(EngineError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                record.name
            )));
        }
        if networks.has_active_endpoints(&record.id) {
            return Err(EngineError::Conflict(format!(
                "error while removing network: network {} id {} has active endpoints",
                record.name, record.id
            )));
        }
        networks.store.delete_network(&record.id)?;
        networks.take_down(&record);
        networks.apply_firewall()?;
        self.network_event(&record, "destroy", None);
        Ok(())
    }

    /// `POST /networks/prune`: removes user networks no running container uses; returns
    /// their names.
    pub fn prune_networks(&self, keep: impl Fn(&NetworkRecord) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        for record in self.networks.list() {
            if record.predefined()
                || keep(&record)
                || self.networks.has_active_endpoints(&record.id)
            {
                continue;
            }
            if self.remove_network(&record.id).is_ok() {
                removed.push(record.name);
            }
        }
        removed
    }

    /// `POST /networks/{id}/connect`. A running container's VM gains a NIC.
    pub async fn connect_network(
        self: &Arc<Self>,
        network_ref: &str,
        container_ref: &str,
        request: ConnectRequest,
    ) -> Result<(), EngineError> {
        let network = self.networks.lookup(network_ref)?;
        let handle = self.lookup(container_ref)?;
        let _lifecycle = handle.lifecycle.lock().await;
        let record = handle.snapshot();
        if network.name == NONE_NETWORK
            || record.networks.contains_key(NONE_NETWORK)
            || Networks::primary_network_name(&record) == NONE_NETWORK
        {
            return Err(EngineError::Forbidden(
                "container cannot be disconnected from or connected to the none network while on other networks; Berth refuses to mix none with other networks".into(),
            ));
        }
        if record.networks.contains_key(&network.name) {
            return Err(EngineError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                record.name, network.name
            )));
        }
        let mut endpoint = request.endpoint(&network)?;
        let Some(runtime) = handle
            .runtime()
            .filter(|_| record.state.status.is_running())
        else {
            lock(&handle.record)
                .networks
                .insert(network.name.clone(), endpoint);
            self.network_event(&network, "connect", Some(&record.id));
            return self.persist(&handle);
        };
        let used: Vec<u8> = record
            .networks
            .values()
            .filter_map(|e| e.nic_slot)
            .collect();
        let index = (0..berth_vm::MAX_NICS)
            .find(|i| !used.contains(&(berth_vm::FIRST_NIC_SLOT + *i as u8)))
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "a container can be on at most {} networks",
                    berth_vm::MAX_NICS
                ))
            })?;
        let ready =
            self.networks
                .ready_endpoint(&record.id, index, &network.name, &mut endpoint, false)?;
        let plugged = async {
            let interface = ready
                .interface
                .clone()
                .ok_or_else(|| EngineError::InvalidArgument("network has no addresses".into()))?;
            runtime.control.add_nic(&ready.nic).await?;
            match self
                .agent_request(&handle, HostMessage::AddInterface(interface))
                .await?
            {
                GuestMessage::InterfaceReady { .. } => {}
                other => {
                    return Err(AgentError::unexpected("configuring the new NIC", &other).into())
                }
            }
            let mut updated = record.clone();
            updated
                .networks
                .insert(network.name.clone(), endpoint.clone());
            let attach: Vec<(String, String)> = ready
                .bridge
                .iter()
                .map(|bridge| (ready.nic.tap.clone(), bridge.clone()))
                .collect();
            self.networks.activate(&updated, &attach)
        };
        if let Err(error) = plugged.await {
            let _ = runtime.control.remove_nic(&ready.nic).await;
            self.networks.release_endpoint(&record.id, &mut endpoint);
            return Err(error);
        }
        lock(&handle.record)
            .networks
            .insert(network.name.clone(), endpoint);
        self.network_event(&network, "connect", Some(&record.id));
        self.persist(&handle)
    }

    /// `POST /networks/{id}/disconnect`. A running container's VM loses the NIC.
    pub async fn disconnect_network(
        self: &Arc<Self>,
        network_ref: &str,
        container_ref: &str,
    ) -> Result<(), EngineError> {
        let network = self.networks.lookup(network_ref)?;
        let handle = self.lookup(container_ref)?;
        let _lifecycle = handle.lifecycle.lock().await;
        let record = handle.snapshot();
        let Some(mut endpoint) = record.networks.get(&network.name).cloned() else {
            return Err(EngineError::Forbidden(format!(
                "container {} is not connected to network {}",
                record.id, network.name
            )));
        };
        if let Some(runtime) = handle.runtime().filter(|_| endpoint.nic_slot.is_some()) {
            let slot = endpoint.nic_slot.unwrap_or_default();
            if slot == berth_vm::FIRST_NIC_SLOT {
                return Err(EngineError::Forbidden(format!(
                    "Berth cannot unplug a running container's first network card: stop the container to disconnect it from {}",
                    network.name
                )));
            }
            let index = usize::from(slot - berth_vm::FIRST_NIC_SLOT);
            let name = format!("eth{index}");
            match self
                .agent_request(&handle, HostMessage::RemoveInterface { name })
                .await?
            {
                GuestMessage::InterfaceRemoved { .. } => {}
                other => return Err(AgentError::unexpected("releasing the NIC", &other).into()),
            }
            let nic = berth_vm::NicSpec {
                tap: berth_net::links::tap_name(&record.id, index),
                mac: endpoint.mac.clone(),
                pci_slot: slot,
            };
            runtime.control.remove_nic(&nic).await?;
            self.networks.release_endpoint(&record.id, &mut endpoint);
        }
        lock(&handle.record).networks.remove(&network.name);
        self.network_event(&network, "disconnect", Some(&record.id));
        self.persist(&handle)
    }

    pub(crate) fn network_event(
        &self,
        network: &NetworkRecord,
        action: &str,
        container: Option<&str>,
    ) {
        let mut attributes = HashMap::from([
            ("name".to_owned(), network.name.clone()),
            ("type".to_owned(), network.driver.clone()),
        ]);
        if let Some(container) = container {
            attributes.insert("container".to_owned(), container.to_owned());
        }
        self.events.emit("network", action, &network.id, attributes);
    }
}

impl Networks {
    /// Stops a network's DNS server and deletes its bridge.
    fn take_down(&self, record: &NetworkRecord) {
        let mut live = lock(&self.live);
        live.records.remove(&record.id);
        live.dns.remove(&record.id);
        live.names.remove(&record.id);
        live.allocations.remove(&record.id);
        drop(live);
        if !record.bridge.is_empty() {
            let _ = self.host.delete_link(&record.bridge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_follow_docker() {
        for good in [
            "web", "my_net", "a.b-c", "0x", "my net", "a/b", "x:y", "ü", "-x",
        ] {
            assert!(valid_network_name(good), "{good}");
        }
        for bad in ["", " ", "a\nb"] {
            assert!(!valid_network_name(bad), "{bad}");
        }
    }

    #[test]
    fn endpoint_requests_are_checked_against_the_network() {
        let network = NetworkRecord {
            id: "n".repeat(64),
            name: "web".into(),
            driver: "bridge".into(),
            created: String::new(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
            internal: false,
            labels: HashMap::new(),
            options: HashMap::new(),
            bridge: "br-nnnnnnnnnnnn".into(),
            ip_range: None,
            aux_addresses: Default::default(),
            ipam_options: HashMap::new(),
            subnet6: None,
            gateway6: None,
        };
        let ok = ConnectRequest {
            aliases: vec!["db".into()],
            ip: Some("10.9.0.7".into()),
            mac: Some("02:42:0A:09:00:07".into()),
            link_local_ips: vec!["169.254.1.5".into()],
            ..Default::default()
        }
        .endpoint(&network)
        .unwrap();
        assert_eq!(ok.requested_ip, Some(Ipv4Addr::new(10, 9, 0, 7)));
        assert_eq!(ok.requested_mac.as_deref(), Some("02:42:0a:09:00:07"));
        assert_eq!(ok.link_local_ips, vec![Ipv4Addr::new(169, 254, 1, 5)]);
        let not_link_local = ConnectRequest {
            link_local_ips: vec!["10.9.0.9".into()],
            ..Default::default()
        };
        assert!(not_link_local.endpoint(&network).is_err());
        for (ip, mac) in [
            ("10.9.1.7", None),
            ("nope", None),
            ("10.9.0.8", Some("01:00:00:00:00:01")),
        ] {
            let request = ConnectRequest {
                aliases: vec![],
                ip: Some(ip.into()),
                mac: mac.map(Into::into),
                ..Default::default()
            };
            assert!(request.endpoint(&network).is_err(), "{ip} {mac:?}");
        }
        // --ip6 needs a network with an IPv6 subnet, and an address inside it.
        let v6 = |ip6: &str, network: &NetworkRecord| {
            ConnectRequest {
                ip6: Some(ip6.into()),
                ..Default::default()
            }
            .endpoint(network)
        };
        assert!(v6("fd00:9::5", &network).is_err());
        let mut dual = network.clone();
        dual.subnet6 = Some("fd00:9::/64".parse().unwrap());
        dual.gateway6 = Some("fd00:9::1".parse().unwrap());
        assert_eq!(
            v6("fd00:9::5", &dual).unwrap().requested_ip6,
            Some("fd00:9::5".parse().unwrap())
        );
        assert!(v6("fd00:8::5", &dual).is_err());
    }
}
