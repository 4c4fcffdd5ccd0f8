//! `docker pull`: resolve the manifest (picking linux/amd64 from a manifest list or OCI
//! index), fetch the config and the layers not already stored, verify each, and record the
//! image with its tag and repo digest in one transaction.
//!
//! Progress is reported as Docker reports it (`Pulling fs layer`, `Downloading`, `Verifying
//! Checksum`, `Download complete`, `Extracting`, `Pull complete`, `Already exists`, keyed by
//! the first 12 hex digits of the layer's digest), through a callback; the API layer turns
//! it into Docker's JSON progress messages. The first report is sent only once the
//! manifest is resolved, so that a caller can still answer an unknown image with an HTTP
//! error instead of a stream.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde::Deserialize;

use super::layer_digests::remember_layer;
use super::{
    is_denied, is_not_found, short_id, Credentials, Descriptor, Endpoint, RegistryOptions,
    TagOrDigest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST,
};
use crate::archive::{self, write_synced, MAX_JSON_SIZE};
use crate::digest::{parse_sha256, sha256_digest};
use crate::error::ImageError;
use crate::reference::Reference;
use crate::store::ImageStore;
use crate::Progress;

/// What a pull brought.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// `sha256:<hex>` image id.
    pub id: String,
    /// Digest of the manifest (or manifest list) the reference named.
    pub digest: String,
    /// The image and all its layers were already in the store.
    pub up_to_date: bool,
}

/// A manifest, an image index or a Docker manifest list: the fields Berth reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(super) struct IndexEntry {
    digest: String,
    #[serde(default)]
    pub platform: Option<super::distribution::PlatformInfo>,
}

/// A resolved image manifest.
struct Resolved {
    endpoint: Endpoint,
    /// The digest of what the reference names (the list's, for a manifest list).
    digest: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

const ACCEPTED: [&str; 4] = [
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
];

/// Pulls `reference` into `store`. `progress` gets Docker's progress steps; none is sent
/// before the manifest is found. Runs blocking store work with `block_in_place`, so it
/// must run on a multi-threaded tokio runtime.
pub async fn pull(
    store: &ImageStore,
    options: &RegistryOptions,
    reference: &Reference,
    credentials: &Credentials,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<PullOutcome, ImageError> {
    let tag_or_digest = TagOrDigest::of(reference);
    let endpoints = options.endpoints(reference);
    let mut last_error = None;
    let mut resolved = None;
    for endpoint in endpoints {
        let client = endpoint.client();
        match resolve(&client, &endpoint, reference, &tag_or_digest, credentials).await {
            Ok(found) => {
                resolved = Some((client, found));
                break;
            }
            Err(error) => {
                tracing::warn!(registry = %endpoint.host, error = %crate::error_chain(&error), "pull: endpoint failed, trying the next");
                last_error = Some(error);
            }
        }
    }
    let Some((client, resolved)) = resolved else {
        return Err(last_error.unwrap_or_else(|| ImageError::ManifestUnknown(reference.familiar())));
    };
    fetch(
        store,
        &client,
        reference,
        &tag_or_digest,
        resolved,
        progress,
    )
    .await
}

/// The manifest (or manifest list) the reference names on `endpoint`: its bytes, checked
/// against the digest asked for, and what Berth reads of it.
pub(super) async fn fetch_manifest(
    client: &oci_client::Client,
    endpoint: &Endpoint,
    reference: &Reference,
    tag_or_digest: &TagOrDigest,
    credentials: &Credentials,
) -> Result<(Vec<u8>, RawManifest), ImageError> {
    let auth = credentials.to_registry_auth();
    let top_ref = endpoint.reference(&reference.path, tag_or_digest);
    let bytes = pull_manifest_bounded(client, endpoint, &top_ref, &auth, &ACCEPTED)
        .await
        .map_err(|error| manifest_error(endpoint, reference, error))?;
    checked_manifest_digest(endpoint, &bytes, tag_or_digest)?;
    let manifest = parse_manifest(endpoint, &bytes)?;
    Ok((bytes.to_vec(), manifest))
}

/// GETs the manifest `oci_ref` names, reading at most [`MAX_MANIFEST_SIZE`] bytes of it.
///
/// Written here rather than with oci-client's `pull_manifest_raw`, which reads a body of
/// any length into memory: a registry that sent a manifest without end would exhaust the
/// daemon's memory. The client still authenticates (and keeps the token for the blob
/// requests that follow); errors take oci-client's shapes, which
/// [`manifest_error`] reads.
async fn pull_manifest_bounded(
    client: &oci_client::Client,
    endpoint: &Endpoint,
    oci_ref: &oci_client::Reference,
    auth: &oci_client::secrets::RegistryAuth,
    accepted: &[&str],
) -> Result<Vec<u8>, oci_client::errors::OciDistributionError> {
    use oci_client::errors::OciDistributionError;
    use oci_client::secrets::RegistryAuth;
    let token = client
        .auth(oci_ref, auth, oci_client::RegistryOperation::Pull)
        .await?;
    let url = format!(
        "{scheme}://{host}/v2/{repository}/manifests/{reference}",
        scheme = if endpoint.plain_http { "http" } else { "https" },
        host = endpoint.host,
        repository = oci_ref.repository(),
        reference = oci_ref
            .digest()
            .or_else(|| oci_ref.tag())
            .unwrap_or("latest"),
    );
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .read_timeout(std::time::Duration::from_secs(120))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut request = http
        .get(&url)
        .header(reqwest::header::ACCEPT, accepted.join(", "));
    request = match (token, auth) {
        (Some(token), _) => request.bearer_auth(token),
        (None, RegistryAuth::Basic(username, password)) => {
            request.basic_auth(username, Some(password))
        }
        (None, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
        (None, RegistryAuth::Anonymous) => request,
    };
    let mut response = request.send().await?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(OciDistributionError::ManifestParsingError(format!(
                "the manifest at {url} is larger than 4 MiB"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    match status.as_u16() {
        200..=299 => Ok(bytes),
        401 | 403 => Err(OciDistributionError::UnauthorizedError { url }),
        404 => Err(OciDistributionError::ImageManifestNotFoundError(url)),
        code => Err(OciDistributionError::ServerError {
            code,
            url,
            message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        }),
    }
}

/// A registry's refusal of a manifest, as Docker words it.
fn manifest_error(
    endpoint: &Endpoint,
    reference: &Reference,
    error: oci_client::errors::OciDistributionError,
) -> ImageError {
    if is_not_found(&error) {
        ImageError::ManifestUnknown(reference.familiar())
    } else if is_denied(&error) {
        ImageError::PullAccessDenied(reference.familiar_name())
    } else {
        endpoint.error(error)
    }
}

/// An image config of the repository `blob_ref` names, checked against its descriptor
/// (size, digest). The client must have fetched the repository's manifest (it holds the
/// token).
pub(super) async fn fetch_config_blob(
    client: &oci_client::Client,
    endpoint: &Endpoint,
    blob_ref: &oci_client::Reference,
    descriptor: &Descriptor,
) -> Result<Vec<u8>, ImageError> {
    if descriptor.size as u64 > MAX_JSON_SIZE {
        return Err(bad(endpoint, "image config", "it is larger than 16 MiB"));
    }
    // Streamed, and cut off past the descriptor's size: a registry that sends more (or
    // without end) must not grow the daemon's memory with it.
    let mut stream = client
        .pull_blob_stream(blob_ref, &descriptor.to_oci())
        .await
        .map_err(|e| endpoint.error(e))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| endpoint.error(e.into()))?;
        if (bytes.len() + chunk.len()) as u64 > descriptor.size as u64 {
            return Err(bad(
                endpoint,
                "image config",
                &format!("{} is longer than its descriptor says", descriptor.digest),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let digest = sha256_digest(&bytes);
    if digest != descriptor.digest {
        return Err(ImageError::DigestMismatch {
            expected: descriptor.digest.clone(),
            actual: digest,
        });
    }
    Ok(bytes)
}

/// Fetches the manifest the reference names on `endpoint`, following a manifest list.
async fn resolve(
    client: &oci_client::Client,
    endpoint: &Endpoint,
    reference: &Reference,
    tag_or_digest: &TagOrDigest,
    credentials: &Credentials,
) -> Result<Resolved, ImageError> {
    let auth = credentials.to_registry_auth();
    let map_error = |error| manifest_error(endpoint, reference, error);
    let (bytes, mut manifest) =
        fetch_manifest(client, endpoint, reference, tag_or_digest, credentials).await?;
    let digest = sha256_digest(&bytes);

    if let Some(entries) = manifest.manifests.take() {
        let entry = entries
            .iter()
            .find(|entry| {
                entry
                    .platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| {
                ImageError::Unsupported(format!(
                    "no matching manifest for linux/amd64 in the manifest list entries of {}",
                    reference.familiar()
                ))
            })?;
        let by_digest = TagOrDigest::Digest(entry.digest.clone());
        let child_ref = endpoint.reference(&reference.path, &by_digest);
        let bytes = pull_manifest_bounded(
            client,
            endpoint,
            &child_ref,
            &auth,
            &[DOCKER_MANIFEST, OCI_MANIFEST],
        )
        .await
        .map_err(map_error)?;
        checked_manifest_digest(endpoint, &bytes, &by_digest)?;
        manifest = parse_manifest(endpoint, &bytes)?;
        if manifest.manifests.is_some() {
            return Err(bad(
                endpoint,
                "manifest",
                "a manifest list inside a manifest list",
            ));
        }
    }
    let config = manifest
        .config
        .ok_or_else(|| bad(endpoint, "manifest", "it has no config descriptor"))?;
    for descriptor in std::iter::once(&config).chain(&manifest.layers) {
        if parse_sha256(&descriptor.digest).is_none() || descriptor.size < 0 {
            return Err(bad(
                endpoint,
                "manifest",
                &format!("bad descriptor {:?}", descriptor.digest),
            ));
        }
    }
    Ok(Resolved {
        endpoint: endpoint.clone(),
        digest,
        config,
        layers: manifest.layers,
    })
}

fn bad(endpoint: &Endpoint, what: &str, detail: &str) -> ImageError {
    ImageError::BadRegistryResponse {
        registry: endpoint.host.clone(),
        what: what.to_owned(),
        detail: detail.to_owned(),
    }
}

/// The sha256 of a manifest's bytes, which must equal the digest it was asked for by.
fn checked_manifest_digest(
    endpoint: &Endpoint,
    bytes: &[u8],
    asked: &TagOrDigest,
) -> Result<String, ImageError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(bad(endpoint, "manifest", "it is larger than 4 MiB"));
    }
    let digest = sha256_digest(bytes);
    if let TagOrDigest::Digest(expected) = asked {
        if *expected != digest {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    Ok(digest)
}

fn parse_manifest(endpoint: &Endpoint, bytes: &[u8]) -> Result<RawManifest, ImageError> {
    let manifest: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(endpoint, "manifest", &e.to_string()))?;
    if manifest.schema_version == Some(1) {
        return Err(ImageError::Unsupported(
            "Docker image manifest schema 1 (pushed by Docker before 1.10): push the image again with a newer client".into(),
        ));
    }
    if let Some(kind) = &manifest.media_type {
        if !ACCEPTED.contains(&kind.as_str()) {
            return Err(bad(
                endpoint,
                "manifest",
                &format!("unknown media type {kind}"),
            ));
        }
    }
    Ok(manifest)
}

/// Where one pull fetches its blobs from, and where it reports their progress.
struct BlobSource<'a> {
    client: &'a oci_client::Client,
    endpoint: &'a Endpoint,
    /// The pulled reference on `endpoint`, which blob requests go through.
    blob_ref: oci_client::Reference,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
}

/// An image config fetched from the registry and checked against its manifest.
struct FetchedConfig {
    /// The config blob as the registry sent it.
    bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`: the image id.
    id: String,
    config: oci_spec::image::ImageConfiguration,
    /// The config's diff ids: one per manifest layer, each a sha256 digest.
    diff_ids: Vec<String>,
}

/// Fetches the config and the missing layers of `resolved`, records the image, reports
/// Docker's `Status:` line and builds the outcome.
async fn fetch(
    store: &ImageStore,
    client: &oci_client::Client,
    reference: &Reference,
    tag_or_digest: &TagOrDigest,
    resolved: Resolved,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<PullOutcome, ImageError> {
    let source = BlobSource {
        client,
        endpoint: &resolved.endpoint,
        blob_ref: resolved.endpoint.reference(&reference.path, tag_or_digest),
        progress,
    };
    let shown_tag = match tag_or_digest {
        TagOrDigest::Tag(tag) => tag.clone(),
        TagOrDigest::Digest(digest) => digest.clone(),
    };
    progress(Progress::status(
        Some(shown_tag),
        format!("Pulling from {}", reference.path),
    ));
    let FetchedConfig {
        bytes: config_bytes,
        id,
        config,
        diff_ids,
    } = source
        .fetch_config(&resolved.config, resolved.layers.len())
        .await?;

    let staging = store.staging("pull")?;
    let mut prepared = archive::Prepared::default();
    let already_had_image = store.resolve(&id).is_ok();
    let missing = missing_layers(store, &diff_ids);
    report_layer_presence(&resolved.layers, &missing, progress);
    source
        .fetch_missing_layers(
            &resolved.layers,
            &diff_ids,
            &missing,
            &staging.0,
            &mut prepared.blobs,
        )
        .await?;

    let size = image_size(store, &diff_ids, &prepared.blobs)?;
    stage_config(store, &staging.0, &id, &config_bytes, &mut prepared.blobs)?;
    prepared.images.push(archive::PreparedImage {
        id: id.clone(),
        config,
        diff_ids,
        size,
        tags: pulled_tags(reference, tag_or_digest),
        repo_digests: vec![format!("{}@{}", reference.familiar_name(), resolved.digest)],
        parent: None,
    });
    let up_to_date = already_had_image && missing.is_empty();
    tokio::task::block_in_place(|| store.commit(&prepared))?;
    remember_pulled_layers(
        store,
        &prepared.images[0].diff_ids,
        &resolved.layers,
        &missing,
    );
    progress(Progress::status(
        None,
        format!("Digest: {}", resolved.digest),
    ));
    Ok(PullOutcome {
        id,
        digest: resolved.digest,
        up_to_date,
    })
}

impl BlobSource<'_> {
    /// Fetches the image config `descriptor` names, checking its size, digest and diff ids.
    async fn fetch_config(
        &self,
        descriptor: &Descriptor,
        layer_count: usize,
    ) -> Result<FetchedConfig, ImageError> {
        let endpoint = self.endpoint;
        let bytes = fetch_config_blob(self.client, endpoint, &self.blob_ref, descriptor).await?;
        let id = descriptor.digest.clone();
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
                what: format!("image config {id}"),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids().clone();
        check_diff_ids(endpoint, &diff_ids, layer_count)?;
        Ok(FetchedConfig {
            bytes,
            id,
            config,
            diff_ids,
        })
    }

    /// Fetches each layer in `missing` (a layer listed twice only once) into `staging`
    /// and adds it to `blobs`.
    async fn fetch_missing_layers(
        &self,
        layers: &[Descriptor],
        diff_ids: &[String],
        missing: &[usize],
        staging: &Path,
        blobs: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), ImageError> {
        for &i in missing {
            let layer = &layers[i];
            let diff_id = &diff_ids[i];
            let Some(diff_hex) = parse_sha256(diff_id) else {
                continue;
            };
            if blobs.iter().any(|(hex, _)| hex == diff_hex) {
                // The same layer twice in one image: fetched once.
                continue;
            }
            let compressed = staging.join(format!("layer-{i}"));
            let dest = staging.join(diff_hex);
            self.fetch_layer(layer, diff_id, &compressed, &dest).await?;
            blobs.push((diff_hex.to_owned(), dest));
        }
        Ok(())
    }

    /// Downloads `layer` to `compressed`, then verifies it against `diff_id` and unpacks it
    /// into `dest`, reporting Docker's steps from `Downloading` to `Pull complete`.
    async fn fetch_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        compressed: &Path,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let progress = self.progress;
        let short = short_id(&layer.digest);
        download(
            self.client,
            &self.blob_ref,
            self.endpoint,
            layer,
            compressed,
            &short,
            progress,
        )
        .await?;
        progress(Progress::status(
            Some(short.clone()),
            "Verifying Checksum".into(),
        ));
        progress(Progress::status(
            Some(short.clone()),
            "Download complete".into(),
        ));
        progress(Progress::bytes(
            &short,
            "Extracting",
            0,
            Some(layer.size as u64),
        ));
        tokio::task::block_in_place(|| {
            archive::import_layer(
                compressed,
                dest,
                diff_id,
                &format!("layer {}", layer.digest),
            )
        })?;
        let _ = fs::remove_file(compressed);
        progress(Progress::status(Some(short), "Pull complete".into()));
        Ok(())
    }
}

/// Checks that a config's diff ids match the manifest's `layer_count` layers one for one
/// and are all sha256 digests.
fn check_diff_ids(
    endpoint: &Endpoint,
    diff_ids: &[String],
    layer_count: usize,
) -> Result<(), ImageError> {
    if diff_ids.len() != layer_count {
        return Err(bad(
            endpoint,
            "image",
            &format!(
                "its manifest lists {} layers but its config {}",
                layer_count,
                diff_ids.len()
            ),
        ));
    }
    for diff_id in diff_ids {
        if parse_sha256(diff_id).is_none() {
            return Err(bad(
                endpoint,
                "image config",
                &format!("bad diff id {diff_id:?}"),
            ));
        }
    }
    Ok(())
}

/// The indices of the layers whose diff id the store does not hold yet.
fn missing_layers(store: &ImageStore, diff_ids: &[String]) -> Vec<usize> {
    (0..diff_ids.len())
        .filter(|&i| !store.has_blob(&diff_ids[i]))
        .collect()
}

/// Reports each layer as `Pulling fs layer` if it is in `missing`, else `Already exists`.
fn report_layer_presence(
    layers: &[Descriptor],
    missing: &[usize],
    progress: &(dyn Fn(Progress) + Send + Sync),
) {
    for (i, layer) in layers.iter().enumerate() {
        let status = if missing.contains(&i) {
            "Pulling fs layer"
        } else {
            "Already exists"
        };
        progress(Progress::status(
            Some(short_id(&layer.digest)),
            status.into(),
        ));
    }
}

/// The image's uncompressed size: its layers' sizes, each where it is staged or stored.
fn image_size(
    store: &ImageStore,
    diff_ids: &[String],
    staged: &[(String, PathBuf)],
) -> Result<u64, ImageError> {
    let mut size = 0u64;
    for diff_id in diff_ids {
        let hex = parse_sha256(diff_id).unwrap_or_default();
        let path = match staged.iter().find(|(h, _)| h == hex) {
            Some((_, staged)) => staged.clone(),
            None => store.blobs_dir().join(hex),
        };
        size += fs::metadata(&path).map_err(ImageError::io(&path))?.len();
    }
    Ok(size)
}

/// Stages the config blob `id` into `staging` and `blobs`, unless the store holds it.
fn stage_config(
    store: &ImageStore,
    staging: &Path,
    id: &str,
    config_bytes: &[u8],
    blobs: &mut Vec<(String, PathBuf)>,
) -> Result<(), ImageError> {
    if !store.has_blob(id) {
        let path = staging.join("config");
        write_synced(&path, config_bytes)?;
        blobs.push((parse_sha256(id).unwrap_or_default().to_owned(), path));
    }
    Ok(())
}

/// The tags a pull records: the reference when it names a tag, none for a digest.
fn pulled_tags(reference: &Reference, tag_or_digest: &TagOrDigest) -> Vec<Reference> {
    match tag_or_digest {
        TagOrDigest::Tag(_) => vec![reference.clone()],
        TagOrDigest::Digest(_) => Vec::new(),
    }
}

/// Remembers the compressed digest of each layer in `missing`; failures are only logged.
fn remember_pulled_layers(
    store: &ImageStore,
    diff_ids: &[String],
    layers: &[Descriptor],
    missing: &[usize],
) {
    for &i in missing {
        // A cache for later pushes: failing to write it costs an upload, nothing more.
        if let Err(error) = remember_layer(store, &diff_ids[i], &layers[i]) {
            tracing::warn!(error = %crate::error_chain(&error), "could not remember a layer's compressed digest");
        }
    }
}

/// Streams one blob into `dest`, reporting `Downloading` progress about every 256 KiB.
/// The client verifies the digest as the stream ends.
async fn download(
    client: &oci_client::Client,
    blob_ref: &oci_client::Reference,
    endpoint: &Endpoint,
    layer: &Descriptor,
    dest: &Path,
    short: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), ImageError> {
    let total = u64::try_from(layer.size).ok();
    let mut stream = client
        .pull_blob_stream(blob_ref, &layer.to_oci())
        .await
        .map_err(|e| endpoint.error(e))?;
    let mut file =
        std::io::BufWriter::new(fs::File::create_new(dest).map_err(ImageError::io(dest))?);
    let mut current = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| endpoint.error(e.into()))?;
        current += chunk.len() as u64;
        if total.is_some_and(|total| current > total) {
            return Err(bad(
                endpoint,
                "layer",
                &format!("{} is longer than its descriptor says", layer.digest),
            ));
        }
        file.write_all(&chunk).map_err(ImageError::io(dest))?;
        if current - reported >= 256 * 1024 || Some(current) == total {
            progress(Progress::bytes(short, "Downloading", current, total));
            reported = current;
        }
    }
    file.flush().map_err(ImageError::io(dest))?;
    Ok(())
}
