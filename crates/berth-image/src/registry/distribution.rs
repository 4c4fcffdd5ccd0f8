//! `GET /distribution/{name}/json`: what a registry holds under a name, without pulling
//! it: the descriptor of the manifest (or manifest list) the reference names, and the
//! platforms it offers (a list's entries, or a single manifest's config).

use serde::Deserialize;

use super::pull::fetch_manifest;
use super::{Credentials, RegistryOptions, TagOrDigest, OCI_INDEX, OCI_MANIFEST};
use crate::digest::sha256_digest;
use crate::error::ImageError;
use crate::reference::Reference;

/// The answer, in Docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionInfo {
    pub media_type: String,
    /// `sha256:<hex>` of the manifest's bytes.
    pub digest: String,
    pub size: u64,
    pub platforms: Vec<PlatformInfo>,
}

/// One platform an image is offered for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlatformInfo {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Looks `reference` up on its registry (mirrors first, as a pull does).
pub async fn inspect(
    options: &RegistryOptions,
    reference: &Reference,
    credentials: &Credentials,
) -> Result<DistributionInfo, ImageError> {
    let tag_or_digest = TagOrDigest::of(reference);
    let mut last_error = None;
    for endpoint in options.endpoints(reference) {
        let client = endpoint.client();
        match fetch_manifest(&client, &endpoint, reference, &tag_or_digest, credentials).await {
            Ok((bytes, manifest)) => {
                let media_type = manifest.media_type.clone().unwrap_or_else(|| {
                    if manifest.manifests.is_some() {
                        OCI_INDEX
                    } else {
                        OCI_MANIFEST
                    }
                    .into()
                });
                let platforms = match &manifest.manifests {
                    Some(entries) => entries.iter().filter_map(|e| e.platform.clone()).collect(),
                    None => {
                        let config = manifest.config.as_ref().ok_or_else(|| {
                            ImageError::BadRegistryResponse {
                                registry: endpoint.host.clone(),
                                what: "manifest".into(),
                                detail: "it has no config descriptor".into(),
                            }
                        })?;
                        let blob_ref = endpoint.reference(&reference.path, &tag_or_digest);
                        let bytes =
                            super::pull::fetch_config_blob(&client, &endpoint, &blob_ref, config)
                                .await?;
                        let platform: PlatformInfo =
                            serde_json::from_slice(&bytes).map_err(|source| {
                                ImageError::InvalidJson {
                                    what: format!("image config {}", config.digest),
                                    source,
                                }
                            })?;
                        vec![platform]
                    }
                };
                return Ok(DistributionInfo {
                    media_type,
                    digest: sha256_digest(&bytes),
                    size: bytes.len() as u64,
                    platforms,
                });
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| ImageError::ManifestUnknown(reference.familiar())))
}
