//! Registries: `docker pull`, `docker push` and `docker login` over the OCI distribution
//! API, with [`oci_client`] speaking the protocol (token and basic authentication,
//! chunked uploads, redirects).
//!
//! # Where a pull goes
//!
//! [`RegistryOptions`] holds what the daemon's configuration says (Docker's `daemon.json`
//! keys `registry-mirrors` and `insecure-registries`). A pull of a Docker Hub name
//! (`busybox`, `docker.io/library/busybox:1`) tries each mirror first, in order, then Docker
//! Hub itself, as dockerd does; other registries are asked directly. A registry is spoken to
//! over HTTPS unless it is insecure: a host in 127.0.0.0/8 or `::1`, `localhost`, a mirror
//! given with an `http://` URL, or a registry listed in `insecure-registries` (by
//! `host[:port]`, or by a CIDR that contains its address). Berth speaks plain HTTP to
//! insecure registries; it does not first try HTTPS with an unverified certificate.
//!
//! # Trust
//!
//! Everything a registry sends is checked before it is kept: the manifest's bytes must hash
//! to the digest asked for (a pull by digest) and its size is bounded, every blob must hash
//! to its descriptor's digest, and each layer, once decompressed, must hash to the diff id
//! the image config names. Nothing is recorded until every blob of the image is verified
//! and in place (see [`crate::store`]).

mod distribution;
mod layer_digests;
mod login;
mod pull;
mod push;

use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::{Deserialize, Serialize};

use crate::digest::parse_sha256;
use crate::error::ImageError;
use crate::reference::{Reference, DEFAULT_DOMAIN};

pub use distribution::{inspect as inspect_distribution, DistributionInfo, PlatformInfo};
pub use login::login;
pub use pull::{pull, PullOutcome};
pub use push::{push, PushOutcome};

/// Docker's manifest list (multi-platform) media type.
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's schema 2 image manifest media type.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The OCI image index media type.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI image manifest media type.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image config media type (what Berth pushes).
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's gzip layer media type (what Berth pushes).
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Largest manifest Berth reads (Docker's own limit is 4 MiB).
const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Where Docker Hub's API really lives.
const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// The daemon's registry settings (from `daemon.json`).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Mirrors of Docker Hub, as URLs (`http://127.0.0.1:5001`, `https://mirror.example`),
    /// tried in order before Docker Hub for Docker Hub names.
    pub mirrors: Vec<String>,
    /// Registries spoken to over plain HTTP: `host[:port]` or a CIDR (`10.0.0.0/8`).
    pub insecure: Vec<String>,
}

/// Credentials for one registry, as `docker login` stored them and the CLI sent them.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: anonymous access (a registry may still hand out a token).
    #[default]
    Anonymous,
    /// User name and password (or access token used as a password).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token for the registry (Docker's `registrytoken`).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// One registry endpoint to ask: a mirror or the reference's own registry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host[:port]` as the client addresses it.
    host: String,
    /// Plain HTTP instead of HTTPS.
    plain_http: bool,
}

impl RegistryOptions {
    /// Whether `host` (`host[:port]`) is spoken to over plain HTTP.
    fn is_insecure(&self, host: &str) -> bool {
        let hostname = host_without_port(host);
        let address = hostname
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if hostname == "localhost" || address.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.insecure.iter().any(|entry| {
            if entry == host || entry == hostname {
                return true;
            }
            match (address, parse_cidr(entry)) {
                (Some(ip), Some((network, prefix))) => cidr_contains(network, prefix, ip),
                _ => false,
            }
        })
    }

    /// The endpoints to try for `reference`, in order.
    fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        if reference.domain == DEFAULT_DOMAIN {
            for mirror in &self.mirrors {
                let (plain_http, rest) = match mirror.split_once("://") {
                    Some(("http", rest)) => (true, rest),
                    Some((_, rest)) => (false, rest),
                    None => (false, mirror.as_str()),
                };
                let host = rest.split('/').next().unwrap_or_default().to_owned();
                if host.is_empty() {
                    continue;
                }
                let plain_http = plain_http || self.is_insecure(&host);
                endpoints.push(Endpoint { host, plain_http });
            }
            endpoints.push(Endpoint {
                host: DOCKER_HUB_REGISTRY.to_owned(),
                plain_http: false,
            });
        } else {
            endpoints.push(Endpoint {
                plain_http: self.is_insecure(&reference.domain),
                host: reference.domain.clone(),
            });
        }
        endpoints
    }
}

impl Endpoint {
    fn client(&self) -> Client {
        Client::new(self.client_config())
    }

    fn client_config(&self) -> ClientConfig {
        let protocol = if self.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        ClientConfig {
            protocol,
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            // Berth picks the platform itself from the raw index.
            platform_resolver: None,
            ..ClientConfig::default()
        }
    }

    /// The reference on this endpoint: `path` by `tag` or `digest`.
    fn reference(&self, path: &str, tag_or_digest: &TagOrDigest) -> oci_client::Reference {
        match tag_or_digest {
            TagOrDigest::Tag(tag) => {
                oci_client::Reference::with_tag(self.host.clone(), path.to_owned(), tag.clone())
            }
            TagOrDigest::Digest(digest) => oci_client::Reference::with_digest(
                self.host.clone(),
                path.to_owned(),
                digest.clone(),
            ),
        }
    }

    fn error(&self, source: OciDistributionError) -> ImageError {
        ImageError::Registry {
            registry: self.host.clone(),
            source: Box::new(source),
        }
    }
}

#[derive(Debug, Clone)]
enum TagOrDigest {
    Tag(String),
    Digest(String),
}

impl TagOrDigest {
    /// What `reference` names: its digest, else its tag, else `latest`.
    fn of(reference: &Reference) -> Self {
        match (&reference.digest, &reference.tag) {
            (Some(digest), _) => TagOrDigest::Digest(digest.clone()),
            (None, Some(tag)) => TagOrDigest::Tag(tag.clone()),
            (None, None) => TagOrDigest::Tag(crate::reference::DEFAULT_TAG.to_owned()),
        }
    }
}

/// A descriptor in a manifest (config or layer), as far as Berth reads it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
}

impl Descriptor {
    fn to_oci(&self) -> oci_client::manifest::OciDescriptor {
        oci_client::manifest::OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            ..Default::default()
        }
    }
}

/// The short id Docker's progress shows for a blob.
fn short_id(digest: &str) -> String {
    let hex = parse_sha256(digest).unwrap_or(digest);
    hex.get(..12).unwrap_or(hex).to_owned()
}

/// Whether a registry error means "no such manifest or repository".
fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

/// Whether a registry error means "not allowed" (no or wrong credentials).
fn is_denied(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    }
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((address, prefix))
}

fn cidr_contains(network: IpAddr, prefix: u8, address: IpAddr) -> bool {
    match (network, address) {
        (IpAddr::V4(network), IpAddr::V4(address)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(network) & mask == u32::from(address) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(address)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(network) & mask == u128::from(address) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::normalize;

    #[test]
    fn loopback_and_listed_registries_are_insecure() {
        let options = RegistryOptions {
            mirrors: Vec::new(),
            insecure: vec!["reg.internal:5000".into(), "10.1.0.0/16".into()],
        };
        assert!(options.is_insecure("127.0.0.1:5000"));
        assert!(options.is_insecure("127.8.9.1"));
        assert!(options.is_insecure("localhost:5000"));
        assert!(options.is_insecure("[::1]:5000"));
        assert!(options.is_insecure("reg.internal:5000"));
        assert!(options.is_insecure("10.1.200.3:443"));
        assert!(!options.is_insecure("10.2.0.1:443"));
        assert!(!options.is_insecure("reg.internal:5001"));
        assert!(!options.is_insecure("registry-1.docker.io"));
    }

    #[test]
    fn hub_names_try_mirrors_first() {
        let options = RegistryOptions {
            mirrors: vec![
                "http://127.0.0.1:5001/".into(),
                "https://mirror.example".into(),
            ],
            insecure: Vec::new(),
        };
        let hub = options.endpoints(&normalize("busybox").expect("reference"));
        assert_eq!(
            hub,
            vec![
                Endpoint {
                    host: "127.0.0.1:5001".into(),
                    plain_http: true
                },
                Endpoint {
                    host: "mirror.example".into(),
                    plain_http: false
                },
                Endpoint {
                    host: DOCKER_HUB_REGISTRY.into(),
                    plain_http: false
                },
            ]
        );
        let other = options.endpoints(&normalize("127.0.0.1:5000/a/b:1").expect("reference"));
        assert_eq!(
            other,
            vec![Endpoint {
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }]
        );
    }

    #[test]
    fn credentials_are_not_printed() {
        let credentials = Credentials::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}
