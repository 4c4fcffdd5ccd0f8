//! The parts of a container's configuration that the guest applies at Setup, besides its
//! disk and NICs: `/etc/resolv.conf` (`--dns`, `--dns-search`, `--dns-option`),
//! `/etc/hosts` (`--add-host`), `--read-only`, `--tmpfs`, `--shm-size` and `--sysctl`.

use berth_agent_proto::{SetupSpec, TmpfsSpec};

use crate::error::EngineError;
use crate::network::NetworkPlan;
use crate::records::ContainerRecord;

/// Fills `setup` from the container's host configuration.
pub fn apply(
    record: &ContainerRecord,
    plan: &NetworkPlan,
    setup: &mut SetupSpec,
) -> Result<(), EngineError> {
    let host = &record.host_config;
    setup.sys_writable = host.privileged == Some(true);
    if let Some(servers) = host.dns.as_ref().filter(|d| !d.is_empty()) {
        setup.nameservers = servers.clone();
    }
    setup.dns_search = host.dns_search.clone().unwrap_or_default();
    setup.dns_options = host.dns_options.clone().unwrap_or_default();
    let gateway = plan.nameservers.first().cloned();
    for entry in host.extra_hosts.iter().flatten() {
        let (name, address) = entry
            .split_once(':')
            .or_else(|| entry.split_once('='))
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!("invalid extra host {entry:?}: use NAME:IP"))
            })?;
        let address = if address == "host-gateway" {
            gateway.clone().ok_or_else(|| {
                EngineError::InvalidArgument(
                    "host-gateway needs the container to be on a network".into(),
                )
            })?
        } else {
            address
                .parse::<std::net::IpAddr>()
                .map_err(|_| {
                    EngineError::InvalidArgument(format!(
                        "invalid IP address in extra host {entry:?}"
                    ))
                })?
                .to_string()
        };
        setup.extra_hosts.push((address, vec![name.to_owned()]));
    }
    setup.read_only = host.readonly_rootfs.unwrap_or(false);
    let mut tmpfs: Vec<(&String, &String)> = host.tmpfs.iter().flatten().collect();
    tmpfs.sort();
    for (path, options) in tmpfs {
        if !path.starts_with('/') {
            return Err(EngineError::InvalidArgument(format!(
                "invalid tmpfs mount point {path:?}: it must be an absolute path"
            )));
        }
        // Docker's defaults, which the options given may override.
        let mut words: Vec<String> = vec!["noexec".into(), "nosuid".into(), "nodev".into()];
        words.extend(
            options
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        );
        setup.tmpfs.push(TmpfsSpec {
            path: path.clone(),
            options: words,
        });
    }
    setup.shm_size = host.shm_size.filter(|s| *s > 0).unwrap_or(0) as u64;
    let mut sysctls: Vec<(String, String)> = host
        .sysctls
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctls.sort();
    setup.sysctls = sysctls;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::HostConfig;

    fn record(host: HostConfig) -> ContainerRecord {
        let mut record: ContainerRecord = crate::records::test_record(serde_json::json!({}));
        record.host_config = host;
        record
    }

    fn plan() -> NetworkPlan {
        NetworkPlan {
            boot_nic: berth_vm::NicSpec {
                tap: "t".into(),
                mac: "02:42:ac:11:00:02".into(),
                pci_slot: 8,
            },
            boot_interface: None,
            extra: vec![],
            attach: vec![],
            nameservers: vec!["172.17.0.1".into()],
        }
    }

    fn setup() -> SetupSpec {
        serde_json::from_value(serde_json::json!({"hostname": "h", "root_device": "/dev/vda"}))
            .unwrap()
    }

    #[test]
    fn options_reach_the_setup() {
        let host = HostConfig {
            extra_hosts: Some(vec!["db:10.0.0.5".into(), "gw:host-gateway".into()]),
            tmpfs: Some(
                [("/run".to_owned(), "size=1m".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            readonly_rootfs: Some(true),
            sysctls: Some(
                [("net.core.somaxconn".to_owned(), "512".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            dns_search: Some(vec!["example.org".into()]),
            ..Default::default()
        };
        let mut spec = setup();
        apply(&record(host), &plan(), &mut spec).unwrap();
        assert_eq!(
            spec.extra_hosts,
            vec![
                ("10.0.0.5".to_owned(), vec!["db".to_owned()]),
                ("172.17.0.1".to_owned(), vec!["gw".to_owned()])
            ]
        );
        assert_eq!(
            spec.tmpfs[0].options,
            ["noexec", "nosuid", "nodev", "size=1m"]
        );
        assert!(spec.read_only);
        assert_eq!(
            spec.sysctls,
            vec![("net.core.somaxconn".to_owned(), "512".to_owned())]
        );
        assert_eq!(spec.dns_search, ["example.org"]);
        for bad in ["nocolon", "x:not-an-ip"] {
            let host = HostConfig {
                extra_hosts: Some(vec![bad.into()]),
                ..Default::default()
            };
            assert!(
                apply(&record(host), &plan(), &mut setup()).is_err(),
                "{bad}"
            );
        }
    }
}
