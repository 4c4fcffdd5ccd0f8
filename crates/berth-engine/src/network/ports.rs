//! Published ports (`-p`, `-P`): what a container asks for, and the relays that serve it
//! while it runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use berth_net::proxy::Protocol;

use super::Networks;
use crate::error::EngineError;
use crate::lock;
use crate::records::ContainerRecord;
use crate::records::PortRecord;

/// A binding asked for: container port and protocol, host address, host ports to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedBinding {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: IpAddr,
    /// Inclusive range; `(0, 0)` for any free port.
    pub host_ports: (u16, u16),
}

/// Parses Docker's port key, `80`, `80/tcp` or `53/udp`.
pub fn parse_port_key(key: &str) -> Result<(u16, Protocol), EngineError> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = Protocol::parse(protocol).ok_or_else(|| {
        EngineError::InvalidArgument(format!(
            "invalid port {key:?}: Berth publishes tcp and udp ports"
        ))
    })?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| EngineError::InvalidArgument(format!("invalid port {key:?}")))?;
    Ok((port, protocol))
}

fn parse_host_ports(text: &str) -> Result<(u16, u16), EngineError> {
    let invalid = || EngineError::InvalidArgument(format!("invalid host port {text:?}"));
    if text.is_empty() {
        return Ok((0, 0));
    }
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u16 = low.parse().map_err(|_| invalid())?;
    let high: u16 = high.parse().map_err(|_| invalid())?;
    if low > high || (low == 0) != (high == 0) {
        return Err(invalid());
    }
    Ok((low, high))
}

/// Every binding a container asks for: its `-p` bindings, and with `-P` each port it
/// exposes (itself or through its image) that has none, on a free host port.
pub fn requested_bindings(record: &ContainerRecord) -> Result<Vec<RequestedBinding>, EngineError> {
    let mut bindings = Vec::new();
    let mut keys: Vec<(&String, &Option<Vec<bollard_stubs::models::PortBinding>>)> =
        record.host_config.port_bindings.iter().flatten().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, list) in keys {
        let (container_port, protocol) = parse_port_key(key)?;
        let list = list.clone().unwrap_or_default();
        let list = if list.is_empty() {
            vec![Default::default()]
        } else {
            list
        };
        for binding in list {
            let host_ip = match binding.host_ip.as_deref() {
                None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(text) => text.parse().map_err(|_| {
                    EngineError::InvalidArgument(format!("invalid host IP address {text:?}"))
                })?,
            };
            bindings.push(RequestedBinding {
                container_port,
                protocol,
                host_ip,
                host_ports: parse_host_ports(binding.host_port.as_deref().unwrap_or(""))?,
            });
        }
    }
    if record.host_config.publish_all_ports == Some(true) {
        let mut exposed: Vec<&String> = record.config.exposed_ports.iter().flatten().collect();
        exposed.sort();
        for key in exposed {
            let (container_port, protocol) = parse_port_key(key)?;
            if !bindings
                .iter()
                .any(|b| b.container_port == container_port && b.protocol == protocol)
            {
                bindings.push(RequestedBinding {
                    container_port,
                    protocol,
                    host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    host_ports: (0, 0),
                });
            }
        }
    }
    Ok(bindings)
}

impl Networks {
    /// Starts again, on the same host ports, the relays of a container whose VM ran on
    /// while the daemon was away; a port that cannot be bound again is dropped (and
    /// logged).
    pub async fn republish(&self, record: &mut ContainerRecord) {
        let primary = Self::primary_network_name(record);
        let Some(target) = record.networks.get(&primary).and_then(|e| e.ip) else {
            record.ports.clear();
            return;
        };
        let mut relays = Vec::new();
        let mut kept = Vec::new();
        for port in std::mem::take(&mut record.ports) {
            let Ok(host_ip) = port.host_ip.parse::<IpAddr>() else {
                continue;
            };
            match self
                .host
                .publish(
                    port.protocol,
                    SocketAddr::new(host_ip, port.host_port),
                    SocketAddr::new(IpAddr::V4(target), port.container_port),
                )
                .await
            {
                Ok((_, relay)) => {
                    relays.push(relay);
                    kept.push(port);
                }
                Err(error) => {
                    tracing::warn!(id = %record.id, port = port.host_port, %error, "a published port could not be bound again")
                }
            }
        }
        lock(&self.live).published.insert(record.id.clone(), relays);
        record.ports = kept;
    }

    /// Starts the relays of a container that runs, to its first endpoint's address;
    /// records them in `record.ports`.
    pub async fn publish(&self, record: &mut ContainerRecord) -> Result<(), EngineError> {
        let bindings = requested_bindings(record)?;
        if bindings.is_empty() {
            return Ok(());
        }
        let primary = Self::primary_network_name(record);
        let Some(target) = record.networks.get(&primary).and_then(|e| e.ip) else {
            return Err(EngineError::InvalidArgument(
                "ports cannot be published: the container is not on a network with addresses"
                    .into(),
            ));
        };
        let mut relays = Vec::new();
        let mut records = Vec::new();
        for binding in bindings {
            let container = SocketAddr::new(IpAddr::V4(target), binding.container_port);
            let (low, high) = binding.host_ports;
            let mut last_error = None;
            let mut published = None;
            for port in low..=high {
                match self
                    .host
                    .publish(
                        binding.protocol,
                        SocketAddr::new(binding.host_ip, port),
                        container,
                    )
                    .await
                {
                    Ok(relay) => {
                        published = Some(relay);
                        break;
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            let Some((listening, relay)) = published else {
                let error = last_error.map(|e| e.to_string()).unwrap_or_default();
                return Err(EngineError::InvalidArgument(format!(
                    "failed to bind host port {}:{}-{}/{}: {error}",
                    binding.host_ip,
                    low,
                    high,
                    binding.protocol.as_str()
                )));
            };
            records.push(PortRecord {
                container_port: binding.container_port,
                protocol: binding.protocol,
                host_ip: binding.host_ip.to_string(),
                host_port: listening.port(),
            });
            relays.push(relay);
        }
        lock(&self.live).published.insert(record.id.clone(), relays);
        record.ports = records;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::PortBinding;

    #[test]
    fn keys_and_ranges_parse() {
        assert_eq!(parse_port_key("80/tcp").unwrap(), (80, Protocol::Tcp));
        assert_eq!(parse_port_key("53/udp").unwrap(), (53, Protocol::Udp));
        assert_eq!(parse_port_key("8080").unwrap(), (8080, Protocol::Tcp));
        assert!(parse_port_key("80/sctp").is_err());
        assert!(parse_port_key("0/tcp").is_err());
        assert!(parse_port_key("x/tcp").is_err());
        assert_eq!(parse_host_ports("").unwrap(), (0, 0));
        assert_eq!(parse_host_ports("8000-8010").unwrap(), (8000, 8010));
        assert!(parse_host_ports("9-8").is_err());
        assert!(parse_host_ports("0-8").is_err());
    }

    #[test]
    fn publish_all_adds_exposed_ports_without_bindings() {
        let mut record: ContainerRecord = crate::records::test_record(
            serde_json::json!({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}),
        );
        assert!(requested_bindings(&record).unwrap().is_empty());
        record.host_config.publish_all_ports = Some(true);
        record.host_config.port_bindings = Some(
            [(
                "80/tcp".to_owned(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("8080".into()),
                }]),
            )]
            .into_iter()
            .collect(),
        );
        let bindings = requested_bindings(&record).unwrap();
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[0].host_ports, (8080, 8080));
        assert_eq!(bindings[0].host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (
                bindings[1].container_port,
                bindings[1].protocol,
                bindings[1].host_ports
            ),
            (53, Protocol::Udp, (0, 0))
        );
    }
}
