//! The daemon's configuration file, in the format of Docker's `daemon.json`.
//!
//! Berth reads the keys that apply to it: `registry-mirrors`, `insecure-registries` and
//! `dns` (the resolvers Berth's DNS servers forward to). Other keys dockerd knows are
//! accepted and logged as ignored, so one file can serve both daemons; a key neither
//! knows, a value of the wrong type, or malformed JSON is an error that names the file,
//! as dockerd refuses such a file. A flag given on the command line wins over the file.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The keys Berth applies.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonJson {
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

/// dockerd's other keys: accepted, not applied.
const DOCKERD_KEYS: &[&str] = &[
    "allow-nondistributable-artifacts",
    "api-cors-header",
    "authorization-plugins",
    "bip",
    "bridge",
    "builder",
    "cgroup-parent",
    "containerd",
    "data-root",
    "debug",
    "default-address-pools",
    "default-cgroupns-mode",
    "default-gateway",
    "default-ipc-mode",
    "default-runtime",
    "default-shm-size",
    "default-ulimits",
    "dns-opts",
    "dns-search",
    "exec-opts",
    "experimental",
    "features",
    "fixed-cidr",
    "group",
    "hosts",
    "icc",
    "init",
    "ip",
    "ip-forward",
    "ip-masq",
    "iptables",
    "ip6tables",
    "ipv6",
    "labels",
    "live-restore",
    "log-driver",
    "log-level",
    "log-opts",
    "max-concurrent-downloads",
    "max-concurrent-uploads",
    "max-download-attempts",
    "mtu",
    "no-new-privileges",
    "oom-score-adjust",
    "pidfile",
    "runtimes",
    "seccomp-profile",
    "selinux-enabled",
    "shutdown-timeout",
    "storage-driver",
    "storage-opts",
    "tls",
    "tlscacert",
    "tlscert",
    "tlskey",
    "tlsverify",
    "userland-proxy",
    "userns-remap",
];
const BERTH_KEYS: &[&str] = &["registry-mirrors", "insecure-registries", "dns"];

/// Reads and checks `path`.
pub fn read(path: &Path) -> anyhow::Result<DaemonJson> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the daemon configuration {}", path.display()))?;
    parse(&text).with_context(|| format!("in the daemon configuration {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<DaemonJson> {
    let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
    let Some(object) = value.as_object() else {
        bail!("the configuration must be a JSON object");
    };
    let mut unknown = Vec::new();
    for key in object.keys() {
        if BERTH_KEYS.contains(&key.as_str()) {
            continue;
        }
        if DOCKERD_KEYS.contains(&key.as_str()) {
            tracing::warn!(key = %key, "daemon configuration: Berth does not apply this dockerd option; ignored");
        } else {
            unknown.push(key.clone());
        }
    }
    if !unknown.is_empty() {
        bail!(
            "the following directives don't match any configuration option: {}",
            unknown.join(", ")
        );
    }
    let config: DaemonJson = serde_json::from_value(value).context("a value has the wrong type")?;
    for mirror in &config.registry_mirrors {
        let Some((scheme, rest)) = mirror.split_once("://") else {
            bail!("registry mirror {mirror:?} must be an http:// or https:// URL");
        };
        if !matches!(scheme, "http" | "https") || rest.trim_matches('/').is_empty() {
            bail!("registry mirror {mirror:?} must be an http:// or https:// URL");
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_registry_keys_and_ignores_other_dockerd_keys() {
        let config = parse(
            r#"{"registry-mirrors": ["http://127.0.0.1:5001"], "insecure-registries": ["reg:5000", "10.0.0.0/8"], "log-level": "debug"}"#,
        )
        .expect("valid");
        assert_eq!(config.registry_mirrors, ["http://127.0.0.1:5001"]);
        assert_eq!(config.insecure_registries, ["reg:5000", "10.0.0.0/8"]);
    }

    #[test]
    fn refuses_unknown_keys_bad_types_and_bad_mirrors() {
        assert!(parse(r#"{"no-such-option": 1}"#).is_err());
        assert!(parse(r#"{"registry-mirrors": "http://x"}"#).is_err());
        assert!(parse(r#"{"registry-mirrors": ["mirror.example"]}"#).is_err());
        assert!(parse("{not json").is_err());
        assert!(parse("[]").is_err());
    }
}
