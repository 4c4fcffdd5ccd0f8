//! Engine records as the Docker API's models.

use std::collections::HashMap;

use berth_engine::network::{EndpointRecord, NetworkRecord};
use berth_engine::{ContainerRecord, ContainerStatus, ImageRecord};
use bollard_stubs::models::{
    ContainerInspectResponse, ContainerState, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryHostConfig, ContainerSummaryNetworkSettings, ContainerSummaryStateEnum,
    EndpointIpamConfig, EndpointSettings, ImageConfig, ImageInspect, ImageInspectRootFs,
    ImageSummary, NetworkSettings, PortBinding, PortMap, PortSummary, PortSummaryTypeEnum,
};
use chrono::{DateTime, Utc};

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Docker's `HumanDuration` (go-units), as `docker ps` shows it.
pub fn human_duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    match () {
        _ if seconds < 1 => "Less than a second".into(),
        _ if seconds == 1 => "1 second".into(),
        _ if seconds < 60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

fn since(text: &str) -> i64 {
    parse_time(text)
        .map(|t| (Utc::now() - t).num_seconds())
        .unwrap_or(0)
}

/// The `Status` column of `docker ps`.
pub fn status_text(record: &ContainerRecord) -> String {
    let state = &record.state;
    match state.status {
        ContainerStatus::Created => "Created".into(),
        ContainerStatus::Running => format!(
            "Up {}{}",
            human_duration(since(&state.started_at)),
            match record.health.as_ref().map(|h| h.status.as_str()) {
                Some("starting") => " (health: starting)",
                Some("healthy") => " (healthy)",
                Some("unhealthy") => " (unhealthy)",
                _ => "",
            }
        ),
        ContainerStatus::Paused => {
            format!("Up {} (Paused)", human_duration(since(&state.started_at)))
        }
        ContainerStatus::Restarting => format!(
            "Restarting ({}) {} ago",
            state.exit_code,
            human_duration(since(&state.finished_at))
        ),
        ContainerStatus::Removing => "Removal In Progress".into(),
        ContainerStatus::Exited => format!(
            "Exited ({}) {} ago",
            state.exit_code,
            human_duration(since(&state.finished_at))
        ),
        ContainerStatus::Dead => "Dead".into(),
    }
}

fn summary_state(status: ContainerStatus) -> ContainerSummaryStateEnum {
    match status {
        ContainerStatus::Created => ContainerSummaryStateEnum::CREATED,
        ContainerStatus::Running => ContainerSummaryStateEnum::RUNNING,
        ContainerStatus::Paused => ContainerSummaryStateEnum::PAUSED,
        ContainerStatus::Restarting => ContainerSummaryStateEnum::RESTARTING,
        ContainerStatus::Removing => ContainerSummaryStateEnum::REMOVING,
        ContainerStatus::Exited => ContainerSummaryStateEnum::EXITED,
        ContainerStatus::Dead => ContainerSummaryStateEnum::DEAD,
    }
}

fn state_status(status: ContainerStatus) -> ContainerStateStatusEnum {
    match status {
        ContainerStatus::Created => ContainerStateStatusEnum::CREATED,
        ContainerStatus::Running => ContainerStateStatusEnum::RUNNING,
        ContainerStatus::Paused => ContainerStateStatusEnum::PAUSED,
        ContainerStatus::Restarting => ContainerStateStatusEnum::RESTARTING,
        ContainerStatus::Removing => ContainerStateStatusEnum::REMOVING,
        ContainerStatus::Exited => ContainerStateStatusEnum::EXITED,
        ContainerStatus::Dead => ContainerStateStatusEnum::DEAD,
    }
}

fn command_line(record: &ContainerRecord) -> String {
    std::iter::once(record.path.as_str())
        .chain(record.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A container's endpoint on a network, as inspect and `ps` show it.
fn endpoint_settings(
    record: &ContainerRecord,
    endpoint: &EndpointRecord,
    network: Option<&NetworkRecord>,
) -> EndpointSettings {
    let running = endpoint.ip.is_some();
    let mut dns_names = vec![record.name.clone(), record.id[..12].to_owned()];
    dns_names.extend(endpoint.aliases.iter().cloned());
    EndpointSettings {
        ipam_config: (endpoint.requested_ip.is_some()
            || endpoint.requested_ip6.is_some()
            || !endpoint.link_local_ips.is_empty())
        .then(|| EndpointIpamConfig {
            ipv4_address: endpoint.requested_ip.map(|ip| ip.to_string()),
            ipv6_address: endpoint.requested_ip6.map(|ip| ip.to_string()),
            link_local_ips: (!endpoint.link_local_ips.is_empty()).then(|| {
                endpoint
                    .link_local_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect()
            }),
        }),
        links: (!endpoint.links.is_empty()).then(|| endpoint.links.clone()),
        mac_address: Some(if running {
            endpoint.mac.clone()
        } else {
            endpoint.requested_mac.clone().unwrap_or_default()
        }),
        aliases: (!endpoint.aliases.is_empty()).then(|| endpoint.aliases.clone()),
        network_id: Some(endpoint.network_id.clone()),
        endpoint_id: Some(endpoint.endpoint_id.clone()),
        gateway: Some(
            network
                .filter(|_| running)
                .and_then(|n| n.gateway)
                .map(|g| g.to_string())
                .unwrap_or_default(),
        ),
        ip_address: Some(endpoint.ip.map(|ip| ip.to_string()).unwrap_or_default()),
        ip_prefix_len: Some(
            network
                .filter(|_| running)
                .and_then(|n| n.subnet)
                .map(|s| i64::from(s.prefix()))
                .unwrap_or(0),
        ),
        ipv6_gateway: Some(
            network
                .filter(|_| endpoint.ip6.is_some())
                .and_then(|n| n.gateway6)
                .map(|g| g.to_string())
                .unwrap_or_default(),
        ),
        global_ipv6_address: Some(endpoint.ip6.map(|ip| ip.to_string()).unwrap_or_default()),
        global_ipv6_prefix_len: Some(
            network
                .filter(|_| endpoint.ip6.is_some())
                .and_then(|n| n.subnet6)
                .map(|s| i64::from(s.prefix_len()))
                .unwrap_or(0),
        ),
        dns_names: network
            .filter(|n| n.has_connectivity() && n.name != "bridge")
            .map(|_| dns_names),
        ..Default::default()
    }
}

/// The container's endpoints by network name.
fn endpoints(
    record: &ContainerRecord,
    networks: &[NetworkRecord],
) -> HashMap<String, EndpointSettings> {
    record
        .networks
        .iter()
        .map(|(name, endpoint)| {
            let network = networks.iter().find(|n| n.id == endpoint.network_id);
            (name.clone(), endpoint_settings(record, endpoint, network))
        })
        .collect()
}

/// `NetworkSettings.Ports`: every exposed or published port, with its host bindings
/// while the container runs.
fn port_map(record: &ContainerRecord) -> PortMap {
    let mut map: PortMap = HashMap::new();
    for key in record.config.exposed_ports.iter().flatten() {
        map.entry(key.clone()).or_insert(None);
    }
    for key in record
        .host_config
        .port_bindings
        .iter()
        .flat_map(|p| p.keys())
    {
        map.entry(key.clone()).or_insert(None);
    }
    for port in &record.ports {
        map.entry(port.key())
            .or_insert(None)
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(port.host_ip.clone()),
                host_port: Some(port.host_port.to_string()),
            });
    }
    map
}

/// `Ports` of a `ps` row.
fn port_summaries(record: &ContainerRecord) -> Vec<PortSummary> {
    let mut summaries: Vec<PortSummary> = record
        .ports
        .iter()
        .map(|port| PortSummary {
            ip: Some(port.host_ip.clone()),
            private_port: port.container_port,
            public_port: Some(port.host_port),
            typ: Some(match port.protocol {
                berth_engine::network::Protocol::Tcp => PortSummaryTypeEnum::TCP,
                berth_engine::network::Protocol::Udp => PortSummaryTypeEnum::UDP,
            }),
        })
        .collect();
    if record.state.status.is_running() {
        for key in record.config.exposed_ports.iter().flatten() {
            let Some((port, protocol)) = key.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if summaries.iter().any(|s| s.private_port == port) {
                continue;
            }
            summaries.push(PortSummary {
                ip: None,
                private_port: port,
                public_port: None,
                typ: Some(if protocol == "udp" {
                    PortSummaryTypeEnum::UDP
                } else {
                    PortSummaryTypeEnum::TCP
                }),
            });
        }
    }
    summaries
}

/// One row of `GET /containers/json`.
pub fn container_summary(record: &ContainerRecord, networks: &[NetworkRecord]) -> ContainerSummary {
    let network_mode = record
        .host_config
        .network_mode
        .clone()
        .unwrap_or_else(|| "default".into());
    ContainerSummary {
        id: Some(record.id.clone()),
        names: Some(vec![format!("/{}", record.name)]),
        image: Some(record.image_ref.clone()),
        image_id: Some(record.image_id.clone()),
        command: Some(command_line(record)),
        created: Some(
            parse_time(&record.created)
                .map(|t| t.timestamp())
                .unwrap_or(0),
        ),
        ports: Some(port_summaries(record)),
        labels: Some(record.config.labels.clone().unwrap_or_default()),
        state: Some(summary_state(record.state.status)),
        status: Some(status_text(record)),
        host_config: Some(ContainerSummaryHostConfig {
            network_mode: Some(network_mode),
            annotations: None,
        }),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(endpoints(record, networks)),
        }),
        mounts: Some(mount_points(record, |_| String::new())),
        ..Default::default()
    }
}

/// `GET /containers/{id}/json`.
pub fn container_inspect(
    record: &ContainerRecord,
    log_path: String,
    networks: &[NetworkRecord],
) -> ContainerInspectResponse {
    let state = &record.state;
    ContainerInspectResponse {
        id: Some(record.id.clone()),
        created: Some(record.created.clone()),
        path: Some(record.path.clone()),
        args: Some(record.args.clone()),
        state: Some(ContainerState {
            status: Some(state_status(state.status)),
            running: Some(
                state.status == ContainerStatus::Running || state.status == ContainerStatus::Paused,
            ),
            paused: Some(state.status == ContainerStatus::Paused),
            restarting: Some(state.status == ContainerStatus::Restarting),
            oom_killed: Some(state.oom_killed),
            dead: Some(state.status == ContainerStatus::Dead),
            pid: Some(i64::from(state.pid)),
            exit_code: Some(state.exit_code),
            error: Some(state.error.clone()),
            started_at: Some(state.started_at.clone()),
            finished_at: Some(state.finished_at.clone()),
            health: None,
        }),
        image: Some(record.image_id.clone()),
        resolv_conf_path: Some(String::new()),
        hostname_path: Some(String::new()),
        hosts_path: Some(String::new()),
        log_path: Some(log_path),
        name: Some(format!("/{}", record.name)),
        restart_count: Some(record.restart_count),
        driver: Some("berth-ext4-qcow2".into()),
        platform: Some("linux".into()),
        mount_label: Some(String::new()),
        process_label: Some(String::new()),
        app_armor_profile: Some(String::new()),
        host_config: Some(bollard_stubs::models::HostConfig {
            // The runtime the container runs with, named even when the client named
            // none (Docker shows its default runtime there too).
            runtime: Some(record.runtime().to_owned()),
            ..record.host_config.clone()
        }),
        mounts: Some(mount_points(record, |_| String::new())),
        config: Some(record.config.clone()),
        network_settings: Some(NetworkSettings {
            networks: Some(endpoints(record, networks)),
            ports: Some(port_map(record)),
            sandbox_id: Some(String::new()),
            sandbox_key: Some(String::new()),
        }),
        ..Default::default()
    }
}

fn image_created(image: &ImageRecord) -> Option<String> {
    image.config.created().clone()
}

/// An image's labels (from its config).
pub fn image_labels(image: &ImageRecord) -> HashMap<String, String> {
    image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// One row of `GET /images/json`.
pub fn image_summary(image: &ImageRecord, containers: usize) -> ImageSummary {
    let labels = image_labels(image);
    ImageSummary {
        id: image.id.clone(),
        parent_id: String::new(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        created: image_created(image)
            .and_then(|t| parse_time(&t))
            .map(|t| t.timestamp())
            .unwrap_or(image.loaded_at),
        size: image.size as i64,
        shared_size: -1,
        labels,
        containers: containers as i64,
        manifests: None,
        descriptor: None,
    }
}

/// `GET /images/{name}/json`.
pub fn image_inspect(image: &ImageRecord) -> ImageInspect {
    let config = image.config.config().as_ref().map(|c| ImageConfig {
        user: c.user().clone(),
        exposed_ports: c.exposed_ports().clone(),
        env: c.env().clone(),
        cmd: c.cmd().clone(),
        volumes: c.volumes().clone(),
        working_dir: c.working_dir().clone(),
        entrypoint: c.entrypoint().clone(),
        labels: c.labels().clone().map(|l| l.into_iter().collect()),
        stop_signal: c.stop_signal().clone(),
        ..Default::default()
    });
    ImageInspect {
        id: Some(image.id.clone()),
        repo_tags: Some(image.repo_tags.clone()),
        repo_digests: Some(image.repo_digests.clone()),
        comment: Some(String::new()),
        created: image_created(image),
        author: Some(image.config.author().clone().unwrap_or_default()),
        config,
        architecture: Some(image.config.architecture().to_string()),
        os: Some(image.config.os().to_string()),
        size: Some(image.size as i64),
        root_fs: Some(ImageInspectRootFs {
            typ: "layers".into(),
            layers: Some(image.diff_ids.clone()),
        }),
        ..Default::default()
    }
}

/// A container's volumes and bind mounts as Docker's `Mounts`; `source` gives a
/// volume's place on the host.
pub fn mount_points(
    record: &ContainerRecord,
    source: impl Fn(&str) -> String,
) -> Vec<bollard_stubs::models::MountPoint> {
    record
        .mounts
        .iter()
        .map(|mount| {
            let mode = Some(if mount.read_only { "ro" } else { "" }.into());
            match &mount.bind_source {
                Some(host_path) => bollard_stubs::models::MountPoint {
                    typ: Some("bind".into()),
                    source: Some(host_path.clone()),
                    destination: Some(mount.target.clone()),
                    mode,
                    rw: Some(!mount.read_only),
                    propagation: Some(
                        mount
                            .propagation
                            .clone()
                            .unwrap_or_else(|| "rprivate".into()),
                    ),
                    ..Default::default()
                },
                None => bollard_stubs::models::MountPoint {
                    typ: Some("volume".into()),
                    name: Some(mount.volume.clone()),
                    source: Some(source(&mount.volume)),
                    destination: Some(mount.target.clone()),
                    driver: Some("local".into()),
                    mode,
                    rw: Some(!mount.read_only),
                    propagation: Some(String::new()),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }
}
