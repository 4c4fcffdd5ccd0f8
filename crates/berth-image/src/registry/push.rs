//! `docker push`: upload an image's layers (gzip-compressed from the stored uncompressed
//! tars), its config, and a Docker schema 2 manifest, then record the manifest's digest
//! as a repo digest of the image.
//!
//! A layer the registry already holds is not uploaded again: Berth remembers, per diff id,
//! the compressed blob it last pulled or pushed (table `layer_digests`, `&str` diff id →
//! `&[u8]` JSON descriptor) and asks the registry whether the target repository has it.
//! That table is a cache: losing a row only costs an upload.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use futures_util::TryStreamExt;

use super::layer_digests::{known_layer, remember_layer};
use super::{
    is_denied, short_id, Credentials, Descriptor, Endpoint, RegistryOptions, TagOrDigest,
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST,
};
use crate::digest::{parse_sha256, sha256_digest, HashingWriter};
use crate::error::ImageError;
use crate::reference::Reference;
use crate::store::ImageStore;
use crate::Progress;

/// What a push uploaded.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// The tag pushed.
    pub tag: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: usize,
}

/// The repository a push uploads to, with the client that talks to its registry.
struct PushTarget {
    client: oci_client::Client,
    endpoint: Endpoint,
    /// The pushed reference (by tag) on `endpoint`.
    target: oci_client::Reference,
}

/// Pushes the local image `reference` (which has a tag) to its registry.
pub async fn push(
    store: &ImageStore,
    options: &RegistryOptions,
    reference: &Reference,
    credentials: &Credentials,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<PushOutcome, ImageError> {
    let tag = reference
        .tag
        .clone()
        .unwrap_or_else(|| crate::reference::DEFAULT_TAG.to_owned());
    let image = store.resolve(&reference.canonical()).map_err(|_| {
        ImageError::NotFound(format!(
            "An image does not exist locally with the tag: {}",
            reference.familiar_name()
        ))
    })?;
    let endpoint = options
        .endpoints(reference)
        .pop()
        .ok_or_else(|| ImageError::InvalidReference(reference.familiar()))?;
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        use_monolithic_push: true,
        ..endpoint.client_config()
    });
    let target = endpoint.reference(&reference.path, &TagOrDigest::Tag(tag.clone()));
    let push_target = PushTarget {
        client,
        endpoint,
        target,
    };
    let auth = credentials.to_registry_auth();
    push_target
        .client
        .auth(
            &push_target.target,
            &auth,
            oci_client::RegistryOperation::Push,
        )
        .await
        .map_err(|e| push_target.map_error(e))?;
    progress(Progress::status(
        None,
        format!(
            "The push refers to repository [{}]",
            reference.familiar_name()
        ),
    ));
    for diff_id in image.diff_ids.iter().rev() {
        progress(Progress::status(
            Some(short_id(diff_id)),
            "Preparing".into(),
        ));
    }

    let staging = store.staging("push")?;
    let mut layers = Vec::with_capacity(image.diff_ids.len());
    for (i, diff_id) in image.diff_ids.iter().enumerate() {
        let layer = push_target
            .push_layer(store, &staging.0, i, diff_id, progress)
            .await?;
        layers.push(layer);
    }
    let config_size = push_target.push_config(store, &image.id).await?;
    let (digest, size) = push_target
        .push_manifest(&image.id, config_size, &layers)
        .await?;
    store.add_repo_digest(
        &image.id,
        &format!("{}@{digest}", reference.familiar_name()),
    )?;
    progress(Progress::status(
        None,
        format!("{tag}: digest: {digest} size: {size}"),
    ));
    Ok(PushOutcome { tag, digest, size })
}

impl PushTarget {
    /// The error for a failed registry request: `Unauthorized` when access was denied.
    fn map_error(&self, error: oci_client::errors::OciDistributionError) -> ImageError {
        if is_denied(&error) {
            ImageError::Unauthorized("authentication required".into())
        } else {
            self.endpoint.error(error)
        }
    }

    /// Pushes layer `diff_id` (the image's `index`th), unless the registry already has the
    /// compressed blob remembered for it; returns the layer's descriptor.
    async fn push_layer(
        &self,
        store: &ImageStore,
        staging: &Path,
        index: usize,
        diff_id: &str,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Descriptor, ImageError> {
        let short = short_id(diff_id);
        if let Some(known) = known_layer(store, diff_id) {
            if self
                .client
                .blob_exists(&self.target, &known.digest)
                .await
                .map_err(|e| self.map_error(e))?
            {
                progress(Progress::status(Some(short), "Layer already exists".into()));
                return Ok(known);
            }
        }
        let hex = parse_sha256(diff_id)
            .ok_or_else(|| ImageError::InvalidArchive(format!("bad diff id {diff_id:?}")))?;
        let source = store.blobs_dir().join(hex);
        let compressed = staging.join(format!("layer-{index}.tar.gz"));
        let (digest, size) = tokio::task::block_in_place(|| gzip(&source, &compressed))?;
        let descriptor = Descriptor {
            media_type: DOCKER_LAYER_GZIP.to_owned(),
            digest,
            size: i64::try_from(size).unwrap_or(i64::MAX),
        };
        progress(Progress::bytes(&short, "Pushing", 0, Some(size)));
        let file = tokio::fs::File::open(&compressed)
            .await
            .map_err(ImageError::io(&compressed))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(oci_client::errors::OciDistributionError::from);
        self.client
            .push_blob_stream(&self.target, stream, &descriptor.digest, Some(size))
            .await
            .map_err(|e| self.map_error(e))?;
        let _ = fs::remove_file(&compressed);
        progress(Progress::bytes(&short, "Pushing", size, Some(size)));
        progress(Progress::status(Some(short), "Pushed".into()));
        remember_layer(store, diff_id, &descriptor)?;
        Ok(descriptor)
    }

    /// Pushes the stored config blob of image `id` unless the registry has it; returns its
    /// size in bytes.
    async fn push_config(&self, store: &ImageStore, id: &str) -> Result<usize, ImageError> {
        let config_hex = parse_sha256(id)
            .ok_or_else(|| ImageError::InvalidArchive(format!("bad image id {id:?}")))?;
        let config_path = store.blobs_dir().join(config_hex);
        let config_bytes = fs::read(&config_path).map_err(ImageError::io(&config_path))?;
        if !self
            .client
            .blob_exists(&self.target, id)
            .await
            .map_err(|e| self.map_error(e))?
        {
            self.client
                .push_blob(&self.target, config_bytes.clone(), id)
                .await
                .map_err(|e| self.map_error(e))?;
        }
        Ok(config_bytes.len())
    }

    /// Pushes a Docker schema 2 manifest of config `id` and `layers` under the target's
    /// tag; returns the manifest's digest and size in bytes.
    async fn push_manifest(
        &self,
        id: &str,
        config_size: usize,
        layers: &[Descriptor],
    ) -> Result<(String, usize), ImageError> {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "size": config_size,
                "digest": id,
            },
            "layers": layers,
        });
        let body = serde_json::to_vec(&manifest).map_err(|source| ImageError::Record {
            id: id.to_owned(),
            source,
        })?;
        let digest = sha256_digest(&body);
        let size = body.len();
        self.client
            .push_manifest_raw(
                &self.target,
                body,
                reqwest::header::HeaderValue::from_static(DOCKER_MANIFEST),
            )
            .await
            .map_err(|e| self.map_error(e))?;
        Ok((digest, size))
    }
}

/// Gzips `source` into `dest`; returns the compressed blob's digest and size.
fn gzip(source: &std::path::Path, dest: &std::path::Path) -> Result<(String, u64), ImageError> {
    let mut reader = BufReader::with_capacity(
        1 << 16,
        fs::File::open(source).map_err(ImageError::io(source))?,
    );
    let file = fs::File::create_new(dest).map_err(ImageError::io(dest))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    let mut encoder = flate2::write::GzEncoder::new(hashing, flate2::Compression::fast());
    std::io::copy(&mut reader, &mut encoder).map_err(ImageError::io(dest))?;
    let hashing = encoder.finish().map_err(ImageError::io(dest))?;
    let (buffered, digest, size) = hashing.finish();
    buffered
        .into_inner()
        .map_err(|e| ImageError::io(dest)(e.into_error()))?;
    Ok((digest, size))
}
