//! `docker create`: the request merged with the image's defaults, a name, and a
//! copy-on-write disk over the image's root filesystem.

use std::sync::Arc;

use std::collections::BTreeMap;

use bollard_stubs::models::{ContainerConfig, ContainerCreateBody, EndpointSettings, HostConfig};

use crate::container::{links, names};
use crate::error::EngineError;
use crate::network::{ConnectRequest, EndpointRecord};
use crate::records::{ContainerRecord, StateRecord};
use crate::{lock, now_rfc3339, ContainerHandle, Engine};

/// Docker's default PATH for containers whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The result of a create.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub warnings: Vec<String>,
}

/// Refuses what Berth cannot honour, instead of ignoring it.
fn check_supported(host: &HostConfig) -> Result<(), EngineError> {
    if let Some(runtime) = host.runtime.as_deref() {
        if !matches!(runtime, "" | crate::RUNTIME_CLONE | crate::RUNTIME_COLDBOOT) {
            return Err(EngineError::InvalidArgument(format!(
                "unknown or invalid runtime name: {runtime} (Berth's runtimes: {}, {})",
                crate::RUNTIME_CLONE,
                crate::RUNTIME_COLDBOOT
            )));
        }
    }
    let publishes = host.port_bindings.as_ref().is_some_and(|p| !p.is_empty())
        || host.publish_all_ports == Some(true);
    if publishes && host.network_mode.as_deref() == Some(crate::network::NONE_NETWORK) {
        return Err(EngineError::InvalidArgument(
            "conflicting options: port publishing and the container type network mode".into(),
        ));
    }
    // `host` means the container's VM, its own "host" (docs/architecture.md, "Namespaces
    // in the VM"); another container's namespaces are in another kernel.
    let own_kernel = |option: &str, mode: Option<&str>, known: &[&str]| match mode {
        Some(mode) if mode.starts_with("container:") => Err(EngineError::InvalidArgument(format!(
            "{option} {mode:?} cannot work in Berth: every container has its own kernel, \
                 so it cannot join another container's namespaces"
        ))),
        Some(mode) if !mode.is_empty() && !known.contains(&mode) => Err(
            EngineError::InvalidArgument(format!("invalid {} mode: {mode}", &option[2..])),
        ),
        _ => Ok(()),
    };
    own_kernel("--pid", host.pid_mode.as_deref(), &["host"])?;
    own_kernel(
        "--ipc",
        host.ipc_mode.as_deref(),
        &["host", "private", "shareable", "none"],
    )?;
    own_kernel("--uts", host.uts_mode.as_deref(), &["host"])?;
    let refused = |what: &str, why: &str| {
        Err(EngineError::NotSupported(format!(
            "Berth does not support {what}: {why}"
        )))
    };
    if host.devices.as_ref().is_some_and(|d| !d.is_empty()) {
        return refused(
            "--device",
            "host devices are not passed into a container's VM",
        );
    }
    crate::container::cpu::validate(host)?;
    crate::container::memory::validate(host)?;
    if host.oom_kill_disable == Some(true) {
        return refused(
            "--oom-kill-disable",
            "the VM's kernel kills on out-of-memory",
        );
    }
    if host.pids_limit.is_some_and(|p| p > 0) {
        return refused("--pids-limit", "not implemented yet");
    }
    for option in host.security_opt.iter().flatten() {
        let accepted = option == "no-new-privileges"
            || option == "no-new-privileges:true"
            || option == "no-new-privileges=true"
            || option.ends_with("=unconfined")
            || option.ends_with(":unconfined")
            || option == "label=disable"
            || option == "label:disable";
        if !accepted {
            return refused(
                &format!("--security-opt {option}"),
                "Berth applies no seccomp, AppArmor or SELinux profile inside a container's VM (the VM is the boundary)",
            );
        }
    }
    crate::container::security::capabilities(host)?;
    crate::container::security::rlimits(host)?;
    if let Some(mode) = host.network_mode.as_deref() {
        if host.dns.as_ref().is_some_and(|d| !d.is_empty())
            && !matches!(mode, "" | "default" | "bridge" | "none")
        {
            return Err(EngineError::InvalidArgument(
                "--dns on a user-defined network: its containers use Berth's DNS server for names; set its upstream resolvers with `berth daemon --dns`".into(),
            ));
        }
        if mode == "host" || mode.starts_with("container:") {
            return Err(EngineError::InvalidArgument(format!(
                "network mode {mode:?} cannot work in Berth: every container has its own kernel and network stack"
            )));
        }
    }
    Ok(())
}

fn env_key(pair: &str) -> &str {
    pair.split_once('=').map(|(key, _)| key).unwrap_or(pair)
}

/// Merges the request with the image's config as Docker does.
pub fn merge_config(
    body: &ContainerCreateBody,
    image: &oci_config::Config,
    id: &str,
) -> Result<(ContainerConfig, String, Vec<String>), EngineError> {
    let mut env: Vec<String> = image.env.clone();
    for pair in body.env.iter().flatten() {
        env.retain(|existing| env_key(existing) != env_key(pair));
        env.push(pair.clone());
    }
    if !env.iter().any(|pair| env_key(pair) == "PATH") {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let (entrypoint, cmd) = match &body.entrypoint {
        // `--entrypoint ""` clears the image's entrypoint.
        Some(entrypoint) if entrypoint.len() == 1 && entrypoint[0].is_empty() => {
            (Vec::new(), body.cmd.clone().unwrap_or_default())
        }
        Some(entrypoint) if !entrypoint.is_empty() => {
            (entrypoint.clone(), body.cmd.clone().unwrap_or_default())
        }
        _ => (
            image.entrypoint.clone(),
            body.cmd
                .clone()
                .filter(|cmd| !cmd.is_empty())
                .unwrap_or_else(|| image.cmd.clone()),
        ),
    };
    let argv: Vec<String> = entrypoint.iter().chain(cmd.iter()).cloned().collect();
    let Some((path, args)) = argv.split_first() else {
        return Err(EngineError::InvalidArgument("no command specified".into()));
    };
    let mut labels = image.labels.clone();
    labels.extend(body.labels.clone().unwrap_or_default());
    let config = ContainerConfig {
        hostname: Some(
            body.hostname
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| id[..12].to_owned()),
        ),
        domainname: body.domainname.clone(),
        user: Some(
            body.user
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| image.user.clone()),
        ),
        attach_stdin: body.attach_stdin,
        attach_stdout: body.attach_stdout,
        attach_stderr: body.attach_stderr,
        tty: body.tty,
        open_stdin: body.open_stdin,
        stdin_once: body.stdin_once,
        env: Some(env),
        cmd: Some(cmd),
        entrypoint: (!entrypoint.is_empty()).then_some(entrypoint),
        image: body.image.clone(),
        labels: Some(labels),
        working_dir: Some(
            body.working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| image.working_dir.clone()),
        ),
        stop_signal: body
            .stop_signal
            .clone()
            .or_else(|| image.stop_signal.clone()),
        stop_timeout: body.stop_timeout,
        exposed_ports: {
            let mut ports: Vec<String> = image.exposed_ports.clone();
            for port in body.exposed_ports.iter().flatten() {
                if !ports.contains(port) {
                    ports.push(port.clone());
                }
            }
            (!ports.is_empty()).then_some(ports)
        },
        ..Default::default()
    };
    Ok((config, path.clone(), args.to_vec()))
}

/// The parts of an image's config that `create` uses, with Docker's defaults filled in.
pub mod oci_config {
    use std::collections::HashMap;

    #[derive(Debug, Clone, Default)]
    pub struct Config {
        pub env: Vec<String>,
        pub entrypoint: Vec<String>,
        pub cmd: Vec<String>,
        pub working_dir: String,
        pub user: String,
        pub labels: HashMap<String, String>,
        pub stop_signal: Option<String>,
        pub exposed_ports: Vec<String>,
    }

    impl Config {
        pub fn from_image(image: &berth_image::ImageRecord) -> Self {
            let Some(config) = image.config.config() else {
                return Self::default();
            };
            Self {
                env: config.env().clone().unwrap_or_default(),
                entrypoint: config.entrypoint().clone().unwrap_or_default(),
                cmd: config.cmd().clone().unwrap_or_default(),
                working_dir: config.working_dir().clone().unwrap_or_default(),
                user: config.user().clone().unwrap_or_default(),
                labels: config
                    .labels()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                stop_signal: config.stop_signal().clone(),
                exposed_ports: config.exposed_ports().clone().unwrap_or_default(),
            }
        }
    }
}

impl Engine {
    /// Creates a container (`POST /containers/create`).
    pub async fn create_container(
        self: &Arc<Self>,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<Created, EngineError> {
        let image_ref = body
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| EngineError::InvalidArgument("config.Image is required".into()))?;
        let mut host_config = body.host_config.clone().unwrap_or_default();
        // Defaults Docker fills in and clients read back (docker-py reads LogConfig.Type).
        if host_config
            .log_config
            .as_ref()
            .and_then(|l| l.typ.as_deref())
            .is_none_or(str::is_empty)
        {
            let options = host_config
                .log_config
                .as_ref()
                .and_then(|l| l.config.clone())
                .unwrap_or_default();
            host_config.log_config = Some(bollard_stubs::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(options),
            });
        }
        // dockerd's defaults for the IPC mode and /dev/shm's size (64 MiB).
        if host_config.ipc_mode.as_deref().is_none_or(str::is_empty) {
            host_config.ipc_mode = Some("private".into());
        }
        if host_config.shm_size.is_none_or(|size| size <= 0) {
            host_config.shm_size = Some(64 << 20);
        }
        check_supported(&host_config)?;
        crate::container::memory::fill_defaults(&mut host_config);
        {
            let log_config = host_config.log_config.clone().unwrap_or_default();
            crate::process::output::LogLimits::from_config(
                log_config.typ.as_deref(),
                &log_config.config.unwrap_or_default(),
            )?;
        }
        crate::container::restart::validate(
            host_config.restart_policy.as_ref(),
            host_config.auto_remove.unwrap_or(false),
        )?;
        let mut networks = self.endpoints_at_create(&body, &mut host_config)?;
        let links = self.links_at_create(&mut host_config, &mut networks)?;
        let image = self.resolve_image(&image_ref)?;
        let id = names::new_id();
        let image_config = oci_config::Config::from_image(&image);
        let (mut config, path, args) = merge_config(&body, &image_config, &id)?;
        let requested_volumes: Vec<String> = body
            .volumes
            .iter()
            .flat_map(|v| v.iter().cloned())
            .collect();
        let image_volumes: Vec<String> = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.volumes().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mounts = self
            .mounts_at_create(&host_config, &requested_volumes, &image_volumes)
            .await?;
        let image_check = self
            .images
            .raw_config(&image.id)
            .ok()
            .and_then(|raw| raw.pointer("/config/Healthcheck").cloned())
            .and_then(|check| serde_json::from_value(check).ok());
        config.healthcheck = crate::container::health::merge(image_check, body.healthcheck.clone());

        // Reserve the name and id before the slow disk work.
        let record = {
            let mut containers = lock(&self.containers);
            let name = match name.filter(|n| !n.is_empty()) {
                Some(requested) => {
                    let name =
                        names::validate_name(requested).map_err(EngineError::InvalidArgument)?;
                    if let Some(other) = containers.values().find(|h| lock(&h.record).name == name)
                    {
                        return Err(EngineError::Conflict(format!(
                            "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                            other.id
                        )));
                    }
                    name
                }
                None => loop {
                    let candidate = names::random_name();
                    if !containers
                        .values()
                        .any(|h| lock(&h.record).name == candidate)
                    {
                        break candidate;
                    }
                },
            };
            if !links.is_empty() {
                host_config.links = Some(links.iter().map(|l| l.stored(&name)).collect());
            }
            let record = ContainerRecord {
                id: id.clone(),
                name,
                created: now_rfc3339(),
                image_ref,
                image_id: image.id.clone(),
                config,
                host_config,
                path,
                args,
                state: StateRecord::default(),
                restart_count: 0,
                networks,
                ports: Vec::new(),
                manually_stopped: false,
                health: None,
                mounts,
                build_step: false,
            };
            containers.insert(id.clone(), Arc::new(ContainerHandle::new(record.clone())));
            record
        };

        let result = self
            .prepare_disk(&record, &image)
            .await
            .and_then(|()| Ok(self.store.put(&record)?));
        if let Err(error) = result {
            lock(&self.containers).remove(&id);
            let _ = std::fs::remove_dir_all(self.container_dir(&id));
            return Err(error);
        }
        self.events.container(&record, "create", &[]);
        Ok(Created {
            id,
            warnings: Vec::new(),
        })
    }

    /// `--link`s: checked and returned for `HostConfig.Links` on the default bridge
    /// (their targets by name), kept as given in the endpoint on a user-defined network
    /// (see `links`).
    fn links_at_create(
        &self,
        host: &mut HostConfig,
        networks: &mut BTreeMap<String, EndpointRecord>,
    ) -> Result<Vec<links::Link>, EngineError> {
        let given = host.links.take().unwrap_or_default();
        let mut parsed = Vec::new();
        for spec in &given {
            parsed.extend(links::parse(spec)?);
        }
        if parsed.is_empty() {
            return Ok(parsed);
        }
        let mode = host.network_mode.clone().unwrap_or_default();
        if mode == crate::network::DEFAULT_NETWORK {
            for link in &mut parsed {
                let target = self.lookup(&link.target).map_err(|_| {
                    EngineError::InvalidArgument(format!(
                        "could not get container for {0}: No such container: {0}",
                        link.target
                    ))
                })?;
                link.target = target.snapshot().name;
            }
            return Ok(parsed);
        }
        if mode != crate::network::NONE_NETWORK {
            if let Some(endpoint) = networks.get_mut(&mode) {
                endpoint.links = given.into_iter().filter(|s| !s.ends_with(':')).collect();
            }
        }
        Ok(Vec::new())
    }

    /// The container's endpoints from its network mode and `NetworkingConfig`; the
    /// network mode is recorded by network name (`default` is `bridge`).
    fn endpoints_at_create(
        &self,
        body: &ContainerCreateBody,
        host: &mut HostConfig,
    ) -> Result<BTreeMap<String, EndpointRecord>, EngineError> {
        let mode = match host.network_mode.as_deref() {
            None | Some("") | Some("default") => crate::network::DEFAULT_NETWORK.to_owned(),
            Some(mode) => mode.to_owned(),
        };
        let primary = self.networks.lookup(&mode)?;
        host.network_mode = Some(primary.name.clone());
        let requested = body
            .networking_config
            .as_ref()
            .and_then(|n| n.endpoints_config.clone())
            .unwrap_or_default();
        let mut endpoints = BTreeMap::new();
        let settings_for = |network: &crate::network::NetworkRecord| {
            requested
                .iter()
                .find(|(key, _)| {
                    *key == &network.name
                        || *key == &network.id
                        || (*key == "default" && network.name == crate::network::DEFAULT_NETWORK)
                })
                .map(|(_, settings)| settings.clone())
        };
        let connect = |network: &crate::network::NetworkRecord,
                       settings: Option<EndpointSettings>| {
            let settings = settings.unwrap_or_default();
            let ipam = settings.ipam_config.unwrap_or_default();
            ConnectRequest {
                aliases: settings.aliases.unwrap_or_default(),
                ip: ipam.ipv4_address,
                ip6: ipam.ipv6_address,
                mac: settings.mac_address.filter(|m| !m.is_empty()),
                link_local_ips: ipam.link_local_ips.unwrap_or_default(),
            }
            .endpoint(network)
        };
        endpoints.insert(
            primary.name.clone(),
            connect(&primary, settings_for(&primary))?,
        );
        for (key, settings) in &requested {
            let key = if key == "default" {
                crate::network::DEFAULT_NETWORK
            } else {
                key.as_str()
            };
            let network = self.networks.lookup(key)?;
            if network.id == primary.id {
                continue;
            }
            if primary.name == crate::network::NONE_NETWORK
                || network.name == crate::network::NONE_NETWORK
            {
                return Err(EngineError::InvalidArgument(
                    "container cannot be connected to none and to other networks".into(),
                ));
            }
            endpoints.insert(
                network.name.clone(),
                connect(&network, Some(settings.clone()))?,
            );
        }
        Ok(endpoints)
    }

    async fn prepare_disk(
        self: &Arc<Self>,
        record: &ContainerRecord,
        image: &berth_image::ImageRecord,
    ) -> Result<(), EngineError> {
        let dir = self.container_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(EngineError::io(&dir))?;
        let engine = self.clone();
        let image = image.clone();
        let (base, _size) = tokio::task::spawn_blocking(move || engine.images.rootfs(&image))
            .await
            .map_err(EngineError::panicked("rootfs build"))??;
        // Every container disk has one virtual size, the size its VM's template saw.
        crate::vm::template::create_container_disk_over(&dir.join("rootfs.qcow2"), &base)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> oci_config::Config {
        oci_config::Config {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cmd: vec!["sh".into()],
            working_dir: "/srv".into(),
            ..Default::default()
        }
    }

    #[test]
    fn request_overrides_image_defaults() {
        let id = "0123456789abcdef".repeat(4);
        let body = ContainerCreateBody {
            image: Some("busybox".into()),
            cmd: Some(vec!["echo".into(), "hi".into()]),
            env: Some(vec!["A=2".into(), "B=3".into()]),
            ..Default::default()
        };
        let (config, path, args) = merge_config(&body, &image(), &id).unwrap();
        assert_eq!(path, "echo");
        assert_eq!(args, vec!["hi"]);
        assert_eq!(config.env.unwrap(), vec!["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(config.working_dir.unwrap(), "/srv");
        assert_eq!(config.hostname.unwrap(), &id[..12]);
    }

    #[test]
    fn image_cmd_used_and_default_path_added() {
        let body = ContainerCreateBody {
            image: Some("x".into()),
            ..Default::default()
        };
        let mut image = image();
        image.env.clear();
        let (config, path, _) = merge_config(&body, &image, &"a".repeat(64)).unwrap();
        assert_eq!(path, "sh");
        assert_eq!(config.env.unwrap()[0], DEFAULT_PATH);
    }

    #[test]
    fn entrypoint_override_drops_image_cmd_and_empty_command_is_refused() {
        let body = ContainerCreateBody {
            entrypoint: Some(vec!["ls".into()]),
            ..Default::default()
        };
        let (_, path, args) = merge_config(&body, &image(), &"a".repeat(64)).unwrap();
        assert_eq!((path.as_str(), args.len()), ("ls", 0));
        let mut bare = image();
        bare.cmd.clear();
        let error =
            merge_config(&ContainerCreateBody::default(), &bare, &"a".repeat(64)).unwrap_err();
        assert!(error.to_string().contains("no command specified"));
    }

    #[test]
    fn unsupported_options_are_refused() {
        let host = HostConfig {
            devices: Some(vec![Default::default()]),
            ..Default::default()
        };
        assert!(matches!(
            check_supported(&host),
            Err(EngineError::NotSupported(_))
        ));
        let host = HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        };
        assert!(matches!(
            check_supported(&host),
            Err(EngineError::InvalidArgument(_))
        ));
        assert!(check_supported(&HostConfig {
            network_mode: Some("bridge".into()),
            ..Default::default()
        })
        .is_ok());
    }
}
