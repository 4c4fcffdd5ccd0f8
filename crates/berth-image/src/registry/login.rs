//! `docker login`: check credentials against a registry's `/v2/` endpoint, as dockerd's
//! `POST /auth` does. A registry that needs no credentials accepts any login; one that asks
//! for HTTP basic authentication is asked again with the credentials; one that hands out
//! bearer tokens is asked for a token with them (through [`oci_client`]).

use oci_client::RegistryOperation;

use super::{Credentials, Endpoint, RegistryOptions, DOCKER_HUB_REGISTRY};
use crate::error::ImageError;

/// Docker Hub's historical login address, which the CLI sends for Hub logins.
const DOCKER_HUB_INDEX: &str = "index.docker.io";

/// Checks `credentials` against the registry named by `server` (`127.0.0.1:5000`,
/// `https://index.docker.io/v1/`). `Ok(())` when the registry accepts them.
pub async fn login(
    options: &RegistryOptions,
    server: &str,
    credentials: &Credentials,
) -> Result<(), ImageError> {
    let without_scheme = server.split_once("://").map_or(server, |(_, rest)| rest);
    let mut host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if host.is_empty() || host == DOCKER_HUB_INDEX || host == "docker.io" {
        host = DOCKER_HUB_REGISTRY.to_owned();
    }
    let endpoint = Endpoint {
        plain_http: options.is_insecure(&host),
        host,
    };
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/", endpoint.host);
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| endpoint.error(e.into()))?;
    let first = http
        .get(&url)
        .send()
        .await
        .map_err(|e| endpoint.error(e.into()))?;
    if first.status().is_success() {
        return Ok(());
    }
    let challenge = first
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let refused = || {
        ImageError::Unauthorized(format!(
            "login attempt to {url} failed: incorrect username or password"
        ))
    };
    let Credentials::Basic { username, password } = credentials else {
        return Err(refused());
    };
    if challenge.starts_with("bearer") {
        // A token service: ask it for a token with the credentials.
        let client = endpoint.client();
        let probe = oci_client::Reference::with_tag(
            endpoint.host.clone(),
            "library/hello-world".into(),
            "latest".into(),
        );
        return client
            .auth(
                &probe,
                &credentials.to_registry_auth(),
                RegistryOperation::Pull,
            )
            .await
            .map(|_| ())
            .map_err(|_| refused());
    }
    let second = http
        .get(&url)
        .basic_auth(username, Some(password))
        .send()
        .await
        .map_err(|e| endpoint.error(e.into()))?;
    if second.status().is_success() {
        Ok(())
    } else {
        Err(refused())
    }
}
