//! Legacy container links (`docker run --link TARGET[:ALIAS]`), kept as dockerd keeps
//! them (checked against dockerd 20.10).
//!
//! Contract:
//! - On the default bridge a link is stored in `HostConfig.Links` as
//!   `/TARGET:/LINKER/ALIAS`; create checks that the target exists ("could not get
//!   container for X: No such container: X"). At every start and exec the target must be
//!   running on the bridge ("Cannot link to a non running container: /T AS /L/A"); the
//!   linker then gets the target's variables ([`environment`]) before its own, and a
//!   hosts line `IP\tALIAS SHORTID [NAME]` (the name only when it is not the alias).
//! - On a user-defined network links are the endpoint's `Links`, as given and unchecked;
//!   the alias resolves to the target through Berth's DNS for the linking container only.
//! - `docker rm --link /LINKER/ALIAS` removes one stored link.

use std::net::Ipv4Addr;

use crate::error::EngineError;
use crate::records::ContainerRecord;
use crate::Engine;

/// One link: the container linked to and the name the linker knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub target: String,
    pub alias: String,
}

/// Parses a link as clients send it (`TARGET[:ALIAS]`, the target with or without its
/// leading `/`). `TARGET:` (an empty alias) is no link at all, as for dockerd.
pub fn parse(spec: &str) -> Result<Option<Link>, EngineError> {
    if spec.is_empty() {
        return Err(EngineError::InvalidArgument(
            "empty string specified for links".into(),
        ));
    }
    let mut parts = spec.split(':');
    let target = parts.next().unwrap_or_default().trim_start_matches('/');
    let alias = parts.next();
    if parts.next().is_some() {
        return Err(EngineError::InvalidArgument(format!(
            "bad format for links: {spec}"
        )));
    }
    if alias == Some("") {
        return Ok(None);
    }
    Ok(Some(Link {
        target: target.to_owned(),
        alias: alias.unwrap_or(target).to_owned(),
    }))
}

impl Link {
    /// The form `HostConfig.Links` keeps: `/TARGET:/LINKER/ALIAS`.
    pub fn stored(&self, linker: &str) -> String {
        format!("/{}:/{linker}/{}", self.target, self.alias)
    }

    /// Reads the stored form back.
    pub fn from_stored(stored: &str) -> Option<Link> {
        let (target, path) = stored.split_once(':')?;
        let alias = path.rsplit('/').next()?;
        Some(Link {
            target: target.trim_start_matches('/').to_owned(),
            alias: alias.to_owned(),
        })
    }

    /// Why a start or exec cannot use this link.
    pub fn not_running(&self, linker: &str) -> EngineError {
        EngineError::InvalidArgument(format!(
            "Cannot link to a non running container: /{} AS /{linker}/{}",
            self.target, self.alias
        ))
    }
}

/// A link whose target runs: what a start or exec gives the linker from it.
pub struct LinkedTarget {
    pub link: Link,
    pub target: ContainerRecord,
    /// The target's address on the default bridge.
    pub ip: Ipv4Addr,
}

impl Engine {
    /// The running targets of `record`'s default-bridge links; an error names the first
    /// link whose target is gone or not running.
    pub(crate) fn link_targets(
        &self,
        record: &ContainerRecord,
    ) -> Result<Vec<LinkedTarget>, EngineError> {
        let mut targets = Vec::new();
        for stored in record.host_config.links.iter().flatten() {
            let Some(link) = Link::from_stored(stored) else {
                continue;
            };
            let target = self.lookup(&link.target).ok().map(|h| h.snapshot());
            let ip = target
                .as_ref()
                .and_then(|t| t.networks.get(crate::network::DEFAULT_NETWORK))
                .and_then(|endpoint| endpoint.ip);
            match (target, ip) {
                (Some(target), Some(ip)) => targets.push(LinkedTarget { link, target, ip }),
                _ => return Err(link.not_running(&record.name)),
            }
        }
        Ok(targets)
    }

    /// `docker rm --link LINKER/ALIAS`: removes that link from the linker's record. A
    /// plain container name is refused as dockerd refuses it.
    pub fn remove_link(&self, name: &str) -> Result<(), EngineError> {
        let name = name.trim_start_matches('/');
        let Some((linker, alias)) = name.rsplit_once('/') else {
            return match self.lookup(name) {
                Ok(_) => Err(EngineError::InvalidArgument(
                    "Conflict, cannot remove the default link name of the container".into(),
                )),
                Err(_) => Err(EngineError::NoSuchContainer(name.to_owned())),
            };
        };
        let missing = || EngineError::NoSuchContainer(name.to_owned());
        let handle = self.lookup(linker).map_err(|_| missing())?;
        {
            let mut record = crate::lock(&handle.record);
            let links = record.host_config.links.get_or_insert_with(Vec::new);
            let before = links.len();
            links.retain(|stored| Link::from_stored(stored).is_none_or(|l| l.alias != alias));
            if links.len() == before {
                return Err(missing());
            }
            if links.is_empty() {
                record.host_config.links = None;
            }
        }
        self.persist(&handle)
    }
}

impl LinkedTarget {
    /// The variables the linker gets from this link.
    pub fn environment(&self, linker: &str) -> Vec<String> {
        environment(&self.link, linker, &self.target, self.ip)
    }

    /// The linker's hosts line for this link: address and names.
    pub fn host_line(&self) -> (String, Vec<String>) {
        (self.ip.to_string(), host_names(&self.link, &self.target))
    }
}

/// The names each link target also goes by in `docker ps` (`/LINKER/ALIAS`), by the
/// target's name, from every container's stored links.
pub fn names_by_target<'a>(
    records: impl IntoIterator<Item = &'a ContainerRecord>,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
    for linker in records {
        for stored in linker.host_config.links.iter().flatten() {
            if let Some(link) = Link::from_stored(stored) {
                names
                    .entry(link.target)
                    .or_default()
                    .push(format!("/{}/{}", linker.name, link.alias));
            }
        }
    }
    names
}

/// The variables of every link, then `own` (the container's, which win).
pub fn with_link_environment(
    targets: &[LinkedTarget],
    linker: &str,
    own: Vec<String>,
) -> Vec<String> {
    let mut variables: Vec<String> = targets.iter().flat_map(|t| t.environment(linker)).collect();
    variables.extend(own);
    variables
}

/// One exposed port of a link's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    number: u16,
    /// `tcp` sorts before `udp` and `sctp` at the same number, as dockerd's sort does.
    protocol_rank: u8,
}

impl Port {
    fn parse(key: &str) -> Option<Port> {
        let (number, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
        let protocol_rank = match protocol {
            "tcp" => 0,
            "udp" => 1,
            "sctp" => 2,
            _ => return None,
        };
        Some(Port {
            number: number.parse().ok()?,
            protocol_rank,
        })
    }

    fn protocol(self) -> &'static str {
        ["tcp", "udp", "sctp"][usize::from(self.protocol_rank)]
    }
}

/// The variables a link gives the linker, in dockerd's order: `ALIAS_PORT` (the lowest
/// port), then each port's `ALIAS_PORT_N_PROTO`, `_ADDR`, `_PORT`, `_PROTO` (and, for a
/// run of consecutive ports, `_START`, `_PORT_START`, `_END`, `_PORT_END` at its first
/// port), `ALIAS_NAME=/LINKER/ALIAS`, then `ALIAS_ENV_K=V` for the target's variables
/// but HOME and PATH. The prefix is the alias upper-cased with `-` as `_`.
pub fn environment(
    link: &Link,
    linker: &str,
    target: &ContainerRecord,
    ip: Ipv4Addr,
) -> Vec<String> {
    let prefix = link.alias.to_uppercase().replace('-', "_");
    let mut ports: Vec<Port> = target
        .config
        .exposed_ports
        .iter()
        .flatten()
        .filter_map(|key| Port::parse(key))
        .collect();
    ports.sort();
    ports.dedup();
    let url = |port: Port| format!("{}://{ip}:{}", port.protocol(), port.number);
    let mut variables = Vec::new();
    if let Some(first) = ports.first() {
        variables.push(format!("{prefix}_PORT={}", url(*first)));
    }
    let mut index = 0;
    while index < ports.len() {
        // The run of consecutive ports of one protocol that starts here.
        let start = ports[index];
        let mut end = index;
        while end + 1 < ports.len()
            && ports[end + 1].protocol_rank == start.protocol_rank
            && ports[end + 1].number == ports[end].number + 1
        {
            end += 1;
        }
        for (offset, port) in ports[index..=end].iter().enumerate() {
            let key = format!(
                "{prefix}_PORT_{}_{}",
                port.number,
                port.protocol().to_uppercase()
            );
            variables.push(format!("{key}={}", url(*port)));
            variables.push(format!("{key}_ADDR={ip}"));
            variables.push(format!("{key}_PORT={}", port.number));
            variables.push(format!("{key}_PROTO={}", port.protocol()));
            if offset == 0 && end > index {
                variables.push(format!("{key}_START={}", url(*port)));
                variables.push(format!("{key}_PORT_START={}", port.number));
                variables.push(format!("{key}_END={}", url(ports[end])));
                variables.push(format!("{key}_PORT_END={}", ports[end].number));
            }
        }
        index = end + 1;
    }
    variables.push(format!("{prefix}_NAME=/{linker}/{}", link.alias));
    for pair in target.config.env.iter().flatten() {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key != "HOME" && key != "PATH" {
            variables.push(format!("{prefix}_ENV_{key}={value}"));
        }
    }
    variables
}

/// The names of a link's hosts line: the alias, the target's short id, and its name
/// when that is not the alias.
pub fn host_names(link: &Link, target: &ContainerRecord) -> Vec<String> {
    let mut names = vec![link.alias.clone(), target.id[..12].to_owned()];
    if target.name != link.alias {
        names.push(target.name.clone());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(exposed: &[&str], env: &[&str]) -> ContainerRecord {
        let mut record: ContainerRecord = crate::records::test_record(serde_json::json!({}));
        record.name = "db".into();
        record.config.exposed_ports = Some(exposed.iter().map(|p| p.to_string()).collect());
        record.config.env = Some(env.iter().map(|e| e.to_string()).collect());
        record
    }

    #[test]
    fn links_parse_as_dockerd_takes_them() {
        let link = parse("/db:dbalias").unwrap().unwrap();
        assert_eq!(link.target, "db");
        assert_eq!(link.alias, "dbalias");
        assert_eq!(link.stored("web"), "/db:/web/dbalias");
        assert_eq!(Link::from_stored("/db:/web/dbalias"), Some(link));
        assert_eq!(parse("db").unwrap().unwrap().alias, "db");
        assert_eq!(parse("db:").unwrap(), None);
        assert!(parse("db:a:b")
            .unwrap_err()
            .to_string()
            .contains("bad format"));
        assert!(parse("").is_err());
    }

    #[test]
    fn link_variables_follow_dockerd() {
        let ip: Ipv4Addr = "172.17.0.3".parse().unwrap();
        let record = target(
            &["5432/tcp", "53/udp"],
            &["B=two", "A=1", "PATH=/bin", "HOME=/h", "NOVAL", "EMPTY="],
        );
        let link = parse("db:d-2").unwrap().unwrap();
        let variables = environment(&link, "web", &record, ip);
        assert_eq!(
            variables,
            [
                "D_2_PORT=udp://172.17.0.3:53",
                "D_2_PORT_53_UDP=udp://172.17.0.3:53",
                "D_2_PORT_53_UDP_ADDR=172.17.0.3",
                "D_2_PORT_53_UDP_PORT=53",
                "D_2_PORT_53_UDP_PROTO=udp",
                "D_2_PORT_5432_TCP=tcp://172.17.0.3:5432",
                "D_2_PORT_5432_TCP_ADDR=172.17.0.3",
                "D_2_PORT_5432_TCP_PORT=5432",
                "D_2_PORT_5432_TCP_PROTO=tcp",
                "D_2_NAME=/web/d-2",
                "D_2_ENV_B=two",
                "D_2_ENV_A=1",
                "D_2_ENV_EMPTY=",
            ]
        );
        assert_eq!(host_names(&link, &record)[2], "db");
        assert_eq!(host_names(&parse("db").unwrap().unwrap(), &record).len(), 2);
    }

    #[test]
    fn a_run_of_ports_has_its_start_and_end() {
        let ip: Ipv4Addr = "10.0.0.5".parse().unwrap();
        let record = target(&["7000/tcp", "7001/tcp", "7002/tcp"], &[]);
        let variables = environment(&parse("db:d4").unwrap().unwrap(), "web", &record, ip);
        assert!(variables.contains(&"D4_PORT_7000_TCP_START=tcp://10.0.0.5:7000".to_string()));
        assert!(variables.contains(&"D4_PORT_7000_TCP_PORT_END=7002".to_string()));
        assert!(!variables
            .iter()
            .any(|v| v.starts_with("D4_PORT_7001_TCP_START")));
        assert_eq!(variables.len(), 1 + 3 * 4 + 4 + 1);
    }
}
