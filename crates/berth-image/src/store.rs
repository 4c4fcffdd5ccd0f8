//! The image store: content-addressed blobs on disk, image records in redb, and cached
//! ext4 root filesystems.
//!
//! # On-disk layout (under the store's root, e.g. `/var/lib/berth/images`)
//!
//! ```text
//! blobs/sha256/<hex>   image config blobs (raw bytes as in the archive; <hex> = image id)
//!                      and uncompressed layer tars (<hex> = the layer's diff_id);
//!                      layers are stored once and shared between images
//! rootfs/<hex>.ext4    cached root filesystem of image sha256:<hex> (sparse ext4 image)
//! tmp/                 staging for loads and rootfs builds (mode 0700: flattened trees
//!                      hold setuid files and device nodes); emptied by `ImageStore::open`
//! ```
//!
//! Blobs are only ever created by renaming a fully written, fsynced and digest-verified
//! file from `tmp/` into `blobs/sha256/`, so a blob's name is always its content's sha256.
//! Likewise `rootfs/<hex>.ext4` only appears by renaming a finished image from `tmp/`.
//!
//! # Database (tables owned by this crate, in the redb database shared with the engine)
//!
//! * `images`: `&str` image id (`sha256:<hex>`) → `&[u8]` JSON of [`ImageRecord`] (its
//!   `repo_tags` are stored empty: they are derived from `tags` when read);
//! * `tags`: `&str` canonical reference (`docker.io/library/busybox:latest`) → `&str` image id.
//!
//! A load records all its images and tags in one write transaction, after its blobs
//! are in place, so a failed load records nothing (at worst it leaves unreferenced blobs,
//! which are valid content). A tag moving to a new image just overwrites its `tags` row;
//! the old image stays, untagged ("dangling"), as in Docker.
//!
//! # Resolution
//!
//! [`ImageStore::resolve`] follows Docker's order: a full id (`sha256:<64 hex>` or 64 bare
//! hex digits); then a name (normalised: `busybox` = `docker.io/library/busybox:latest`;
//! `name@sha256:…` finds the image whose RepoDigests hold it);
//! then a unique id prefix of any length (bare hex, or `sha256:` + hex). Anything else,
//! and an ambiguous prefix (as Docker), is [`ImageError::NotFound`].

use std::collections::HashMap;
use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::archive;
use crate::digest::{is_lower_hex, parse_sha256};
use crate::error::ImageError;
use crate::ext4;
use crate::flatten;
use crate::reference;

/// Image id → JSON [`ImageRecord`].
pub(crate) const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Canonical reference → image id.
pub(crate) const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");

/// An image known to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<64 hex>`: the sha256 of the config blob's bytes.
    pub id: String,
    /// Tags pointing at this image, in the familiar form Docker shows (`busybox:latest`,
    /// `localhost:5000/foo:1`), sorted. Empty for a dangling image.
    pub repo_tags: Vec<String>,
    /// The parsed image configuration.
    pub config: ImageConfiguration,
    /// `sha256:<hex>` of each uncompressed layer, bottom first.
    pub diff_ids: Vec<String>,
    /// Total bytes of the uncompressed layers.
    pub size: u64,
    /// When the image was first loaded, unix seconds.
    pub loaded_at: i64,
    /// `name@sha256:<hex>` of the registry manifests this image was pulled by or pushed
    /// as (Docker's RepoDigests), sorted.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The image this one was built on by `docker build` (Docker's `Parent`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// An image a load brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// `sha256:<hex>`.
    pub id: String,
    /// The tags the archive gave it, familiar form.
    pub tags: Vec<String>,
}

/// The image store. Cheap to share behind an `Arc`; all methods take `&self` and are
/// safe to call from several threads (they block: call them off async executors).
pub struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) db: Arc<Database>,
    /// One lock per image id, held while that image's rootfs is being built.
    builds: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// A directory under `tmp/` removed (recursively, best effort) when dropped.
pub(crate) struct StagingDir(pub(crate) PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), %error, "could not remove staging directory");
            }
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

fn create_dir_all(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(ImageError::io(path))
}

impl ImageStore {
    /// Opens (creating if missing) the store rooted at `root`, using `db` for its tables.
    /// Leftovers of interrupted loads and builds in `tmp/` are removed.
    pub fn open(root: &Path, db: Arc<redb::Database>) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            root: root.to_path_buf(),
            db,
            builds: Mutex::new(HashMap::new()),
        };
        create_dir_all(&store.blobs_dir())?;
        create_dir_all(&store.root.join("rootfs"))?;
        let tmp = store.tmp_dir();
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io(&tmp)(e)),
        }
        create_dir_all(&tmp)?;
        // Flattened trees hold setuid binaries and device nodes from untrusted images:
        // keep every other user of the host out of them.
        fs::set_permissions(&tmp, Permissions::from_mode(0o700)).map_err(ImageError::io(&tmp))?;
        // Create the tables so that read transactions always find them.
        let txn = store.db.begin_write()?;
        txn.open_table(IMAGES)?;
        txn.open_table(TAGS)?;
        txn.commit()?;
        Ok(store)
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// The image's config blob as JSON, with the fields the OCI model does not carry
    /// (Docker's `Healthcheck`, for one).
    pub fn raw_config(&self, id: &str) -> Result<serde_json::Value, ImageError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::NotFound(id.to_owned()));
        }
        let path = self.blobs_dir().join(hex);
        let bytes = fs::read(&path).map_err(ImageError::io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidJson {
            what: "image config".into(),
            source: e,
        })
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, empty staging directory `tmp/<kind>-<random>`.
    pub(crate) fn staging(&self, kind: &str) -> Result<StagingDir, ImageError> {
        let path = self
            .tmp_dir()
            .join(format!("{kind}-{:016x}", rand::random::<u64>()));
        fs::create_dir(&path).map_err(ImageError::io(&path))?;
        Ok(StagingDir(path))
    }

    /// Loads a `docker save` / skopeo `docker-archive:` tarball (optionally gzipped).
    /// Returns the images in it; `progress` gets one human-readable line per step.
    /// Atomic: on error nothing is recorded.
    pub fn load_docker_archive(
        &self,
        archive: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<LoadedImage>, ImageError> {
        let staging = self.staging("load")?;
        let prepared = archive::prepare(archive, &staging.0, &self.blobs_dir(), progress)?;
        let loaded = self.commit(&prepared)?;
        for image in &loaded {
            if image.tags.is_empty() {
                progress(&format!("Loaded image ID: {}", image.id));
            }
            for tag in &image.tags {
                progress(&format!("Loaded image: {tag}"));
            }
        }
        Ok(loaded)
    }

    /// Moves staged blobs into the store and records the images, their tags and repo
    /// digests in one transaction (so a failure leaves at most unreferenced blobs).
    pub(crate) fn commit(
        &self,
        prepared: &archive::Prepared,
    ) -> Result<Vec<LoadedImage>, ImageError> {
        let blobs_dir = self.blobs_dir();
        for (hex, staged) in &prepared.blobs {
            let dest = blobs_dir.join(hex);
            fs::rename(staged, &dest).map_err(ImageError::io(&dest))?;
        }
        if !prepared.blobs.is_empty() {
            // Make the renames durable before the records that depend on them.
            fs::File::open(&blobs_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(ImageError::io(&blobs_dir))?;
        }

        let loaded_at = now_unix();
        let mut loaded = Vec::new();
        let txn = self.db.begin_write()?;
        {
            let mut images = txn.open_table(IMAGES)?;
            let mut tags = txn.open_table(TAGS)?;
            for image in &prepared.images {
                let existing = match images.get(image.id.as_str())? {
                    Some(json) => Some(decode_record(&image.id, json.value())?),
                    None => None,
                };
                let mut record = existing.unwrap_or_else(|| ImageRecord {
                    id: image.id.clone(),
                    repo_tags: Vec::new(),
                    config: image.config.clone(),
                    diff_ids: image.diff_ids.clone(),
                    size: image.size,
                    loaded_at,
                    repo_digests: Vec::new(),
                    parent: image.parent.clone(),
                });
                for digest in &image.repo_digests {
                    if !record.repo_digests.contains(digest) {
                        record.repo_digests.push(digest.clone());
                    }
                }
                record.repo_digests.sort();
                let json = serde_json::to_vec(&record).map_err(|source| ImageError::Record {
                    id: image.id.clone(),
                    source,
                })?;
                images.insert(image.id.as_str(), json.as_slice())?;
                for tag in &image.tags {
                    tags.insert(tag.canonical().as_str(), image.id.as_str())?;
                }
                loaded.push(LoadedImage {
                    id: image.id.clone(),
                    tags: image
                        .tags
                        .iter()
                        .map(reference::Reference::familiar)
                        .collect(),
                });
            }
        }
        txn.commit()?;
        Ok(loaded)
    }

    /// Adds `repo_digest` (`name@sha256:<hex>`) to the image's RepoDigests.
    pub(crate) fn add_repo_digest(&self, id: &str, repo_digest: &str) -> Result<(), ImageError> {
        let txn = self.db.begin_write()?;
        {
            let mut images = txn.open_table(IMAGES)?;
            let mut record = match images.get(id)? {
                Some(json) => decode_record(id, json.value())?,
                None => return Err(ImageError::NotFound(id.to_owned())),
            };
            if !record.repo_digests.iter().any(|d| d == repo_digest) {
                record.repo_digests.push(repo_digest.to_owned());
                record.repo_digests.sort();
            }
            let json = serde_json::to_vec(&record).map_err(|source| ImageError::Record {
                id: id.to_owned(),
                source,
            })?;
            images.insert(id, json.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether the store holds the blob `sha256:<hex>` (a config or an uncompressed layer).
    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        parse_sha256(digest).is_some_and(|hex| self.blobs_dir().join(hex).is_file())
    }

    /// All images, newest first, with their current tags.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let txn = self.db.begin_read()?;
        let images = txn.open_table(IMAGES)?;
        let tags = txn.open_table(TAGS)?;
        let mut tags_by_id: HashMap<String, Vec<String>> = HashMap::new();
        for row in tags.iter()? {
            let (reference, id) = row?;
            if let Ok(reference) = reference::normalize(reference.value()) {
                tags_by_id
                    .entry(id.value().to_owned())
                    .or_default()
                    .push(reference.familiar());
            }
        }
        let mut records = Vec::new();
        for row in images.iter()? {
            let (id, json) = row?;
            let mut record = decode_record(id.value(), json.value())?;
            record.repo_tags = tags_by_id.remove(&record.id).unwrap_or_default();
            record.repo_tags.sort();
            records.push(record);
        }
        records.sort_by(|a, b| b.loaded_at.cmp(&a.loaded_at).then_with(|| a.id.cmp(&b.id)));
        Ok(records)
    }

    /// Finds an image by name[:tag], full id, bare hex id or unique id prefix (see the
    /// module docs). `Err(ImageError::NotFound(reference))` if none matches.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let not_found = || ImageError::NotFound(reference.to_owned());
        let txn = self.db.begin_read()?;
        let images = txn.open_table(IMAGES)?;
        let tags = txn.open_table(TAGS)?;

        let hex = reference.strip_prefix("sha256:");
        let id = match hex {
            // A full id, with or without its algorithm.
            Some(hex) if hex.len() == 64 => Some(reference.to_owned()),
            None if reference.len() == 64 && is_lower_hex(reference) => {
                Some(format!("sha256:{reference}"))
            }
            // A name by digest: the image pulled (or pushed) by that manifest.
            None => match reference::normalize(reference) {
                Ok(name) if name.digest.is_some() => {
                    let wanted = format!(
                        "{}@{}",
                        name.familiar_name(),
                        name.digest.as_deref().unwrap_or_default()
                    );
                    let mut found = None;
                    for row in images.iter()? {
                        let (id, json) = row?;
                        let record = decode_record(id.value(), json.value())?;
                        if record.repo_digests.contains(&wanted) {
                            found = Some(record.id);
                            break;
                        }
                    }
                    found
                }
                // A name by tag.
                Ok(name) => tags
                    .get(name.canonical().as_str())?
                    .map(|id| id.value().to_owned()),
                Err(_) => None,
            },
            Some(_) => None,
        };
        let id = match id {
            Some(id) => id,
            None => {
                // A unique id prefix.
                let prefix = hex.unwrap_or(reference);
                if !is_lower_hex(prefix) || prefix.len() >= 64 {
                    return Err(not_found());
                }
                let start = format!("sha256:{prefix}");
                let mut matches = images.range(start.as_str()..)?.take(2).filter_map(|row| {
                    let (id, _) = row.ok()?;
                    let id = id.value().to_owned();
                    id.starts_with(&start).then_some(id)
                });
                let (Some(first), None) = (matches.next(), matches.next()) else {
                    return Err(not_found());
                };
                first
            }
        };

        let json = images.get(id.as_str())?.ok_or_else(not_found)?;
        let mut record = decode_record(&id, json.value())?;
        for row in tags.iter()? {
            let (tag, tagged) = row?;
            if tagged.value() == id {
                if let Ok(tag) = reference::normalize(tag.value()) {
                    record.repo_tags.push(tag.familiar());
                }
            }
        }
        record.repo_tags.sort();
        Ok(record)
    }

    /// The image's root filesystem as an ext4 image, built on first use and cached under
    /// `rootfs/<hex>.ext4`. Concurrent calls for one image build it once. Returns the
    /// path and the file's size in bytes.
    pub fn rootfs(&self, image: &ImageRecord) -> Result<(PathBuf, u64), ImageError> {
        let hex = parse_sha256(&image.id)
            .ok_or_else(|| ImageError::InvalidReference(format!("bad image id {:?}", image.id)))?;
        let path = self.root.join("rootfs").join(format!("{hex}.ext4"));

        let lock = {
            let mut builds = self.builds.lock().unwrap_or_else(PoisonError::into_inner);
            builds.entry(hex.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);

        if let Ok(meta) = fs::metadata(&path) {
            return Ok((path, meta.len()));
        }

        let mut layers = Vec::with_capacity(image.diff_ids.len());
        for diff_id in &image.diff_ids {
            let layer_hex = parse_sha256(diff_id).ok_or_else(|| {
                ImageError::InvalidArchive(format!("image {}: bad diff_id {diff_id:?}", image.id))
            })?;
            layers.push(self.blobs_dir().join(layer_hex));
        }

        let staging = self.staging("rootfs")?;
        let tree = staging.0.join("tree");
        fs::create_dir(&tree).map_err(ImageError::io(&tree))?;
        fs::set_permissions(&tree, Permissions::from_mode(0o755)).map_err(ImageError::io(&tree))?;
        flatten::flatten(&layers, &tree)?;
        crate::mount_points::add_mount_points(&tree)?;

        let built = staging.0.join("rootfs.ext4");
        ext4::build_ext4(&tree, &built)?;
        fs::File::open(&built)
            .and_then(|file| file.sync_all())
            .map_err(ImageError::io(&built))?;
        fs::rename(&built, &path).map_err(ImageError::io(&path))?;
        let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
        Ok((path, size))
    }
}

fn decode_record(id: &str, json: &[u8]) -> Result<ImageRecord, ImageError> {
    let mut record: ImageRecord =
        serde_json::from_slice(json).map_err(|source| ImageError::Record {
            id: id.to_owned(),
            source,
        })?;
    record.repo_tags.clear();
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;
    use crate::flatten::tests::{layer_tar, E};
    use std::io::Write;

    /// A docker-archive with one image per element of `images`: (tags, layers).
    /// `corrupt` makes the config promise a wrong diff_id for the last layer.
    fn docker_archive(
        images: &[(&[&str], Vec<Vec<u8>>)],
        corrupt: bool,
        gzip_layers: bool,
    ) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut manifest = Vec::new();
        let add = |builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, path, data)
                .expect("append");
        };
        for (n, (tags, layers)) in images.iter().enumerate() {
            let mut diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
            if corrupt {
                if let Some(last) = diff_ids.last_mut() {
                    *last = sha256_digest(b"something else");
                }
            }
            let config = serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "created": format!("2024-01-0{}T00:00:00Z", n + 1),
                "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            });
            let config_bytes = serde_json::to_vec(&config).expect("config json");
            let config_hex = sha256_digest(&config_bytes)["sha256:".len()..].to_owned();
            let config_path = format!("{config_hex}.json");
            add(&mut builder, &config_path, &config_bytes);
            let mut layer_paths = Vec::new();
            for (i, layer) in layers.iter().enumerate() {
                let dir = format!("{n}-{i}");
                let path = format!("{dir}/layer.tar");
                if gzip_layers {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(layer).expect("gzip");
                    add(&mut builder, &path, &gz.finish().expect("gzip"));
                } else {
                    add(&mut builder, &path, layer);
                }
                layer_paths.push(path);
            }
            manifest.push(serde_json::json!({
                "Config": config_path,
                "RepoTags": tags,
                "Layers": layer_paths,
            }));
        }
        // manifest.json last, as some tools write it.
        add(
            &mut builder,
            "manifest.json",
            &serde_json::to_vec(&manifest).expect("manifest"),
        );
        builder.into_inner().expect("finish")
    }

    fn open_store(dir: &Path) -> ImageStore {
        let db = Database::create(dir.join("db.redb")).expect("db");
        ImageStore::open(&dir.join("images"), Arc::new(db)).expect("open")
    }

    fn base_layer() -> Vec<u8> {
        layer_tar(&[
            E::Dir("bin/", 0o755),
            E::File("bin/sh", b"#!fake shell"),
            E::Dir("etc/", 0o755),
            E::File("etc/hostname", b"berth\n"),
            E::File("etc/old", b"old"),
        ])
    }

    fn top_layer() -> Vec<u8> {
        layer_tar(&[
            E::File("etc/.wh.old", b""),
            E::File("hello.txt", b"hello\n"),
        ])
    }

    #[test]
    fn load_and_resolve() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open_store(tmp.path());
        let archive = tmp.path().join("image.tar");
        fs::write(
            &archive,
            docker_archive(
                &[
                    (
                        &["busybox:latest", "localhost:5000/a/b:c"],
                        vec![base_layer(), top_layer()],
                    ),
                    (&[], vec![base_layer()]),
                ],
                false,
                true,
            ),
        )
        .expect("write archive");
        let mut lines = Vec::new();
        let loaded = store
            .load_docker_archive(&archive, &mut |line| lines.push(line.to_owned()))
            .expect("load");
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded[0].tags,
            vec!["busybox:latest", "localhost:5000/a/b:c"]
        );
        assert!(loaded[1].tags.is_empty());
        assert!(
            lines.contains(&"Loaded image: busybox:latest".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("Loaded image ID: {}", loaded[1].id)),
            "{lines:?}"
        );
        let id = loaded[0].id.clone();
        let hex = id.trim_start_matches("sha256:");

        for reference in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            "localhost:5000/a/b:c",
            id.as_str(),
            hex,
            &hex[..12],
            &format!("sha256:{}", &hex[..8]),
        ] {
            let record = store
                .resolve(reference)
                .unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(record.id, id, "{reference}");
            assert_eq!(
                record.repo_tags,
                vec!["busybox:latest", "localhost:5000/a/b:c"]
            );
            assert_eq!(record.diff_ids.len(), 2);
            assert_eq!(record.size, (base_layer().len() + top_layer().len()) as u64);
        }
        assert_eq!(
            store.resolve(&loaded[1].id).expect("untagged").repo_tags,
            Vec::<String>::new()
        );
        for missing in [
            "busybox:1",
            "nginx",
            "sha256:",
            "zzz",
            "Busybox",
            &"f".repeat(64),
        ] {
            assert!(
                matches!(store.resolve(missing), Err(ImageError::NotFound(_))),
                "{missing}"
            );
        }
        // Blobs are content-addressed and shared; nothing is left in tmp/.
        let blobs: Vec<_> = fs::read_dir(store.blobs_dir()).expect("blobs").collect();
        assert_eq!(blobs.len(), 4, "2 configs + 2 distinct layers");
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);
        assert_eq!(store.list().expect("list").len(), 2);

        // Re-tagging: load another image with the same tag; the old one becomes dangling.
        // This archive is itself gzip-compressed, as `docker save | gzip` makes.
        let archive2 = tmp.path().join("image2.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&docker_archive(
            &[(&["busybox"], vec![top_layer()])],
            false,
            false,
        ))
        .expect("gzip");
        fs::write(&archive2, gz.finish().expect("gzip")).expect("write archive");
        let mut lines = Vec::new();
        let loaded2 = store
            .load_docker_archive(&archive2, &mut |line| lines.push(line.to_owned()))
            .expect("load 2");
        assert!(
            lines.iter().any(|l| l.ends_with("already exists")),
            "{lines:?}"
        );
        assert_eq!(store.resolve("busybox").expect("busybox").id, loaded2[0].id);
        assert_eq!(
            store.resolve(&id).expect("old").repo_tags,
            vec!["localhost:5000/a/b:c"]
        );

        // A store reopened on the same database sees the same images.
        drop(store);
        let store = open_store(tmp.path());
        assert_eq!(store.list().expect("list").len(), 3);
    }

    #[test]
    fn corrupt_archive_records_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open_store(tmp.path());
        let archive = tmp.path().join("bad.tar");
        fs::write(
            &archive,
            docker_archive(
                &[(&["bad:1"], vec![base_layer(), top_layer()])],
                true,
                false,
            ),
        )
        .expect("write archive");
        let result = store.load_docker_archive(&archive, &mut |_| {});
        assert!(
            matches!(result, Err(ImageError::DigestMismatch { .. })),
            "{result:?}"
        );
        assert!(store.list().expect("list").is_empty());
        assert!(matches!(
            store.resolve("bad:1"),
            Err(ImageError::NotFound(_))
        ));
        assert_eq!(fs::read_dir(store.blobs_dir()).expect("blobs").count(), 0);
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);

        // A broken zstd layer is refused clearly.
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0].to_vec();
        fs::write(
            &archive,
            docker_archive(&[(&["z:1"], vec![zstd])], false, false),
        )
        .expect("write archive");
        let result = store.load_docker_archive(&archive, &mut |_| {});
        assert!(
            matches!(
                result,
                Err(ImageError::InvalidArchive(_) | ImageError::Io { .. })
            ),
            "{result:?}"
        );
        assert!(store.list().expect("list").is_empty());

        // Not an archive at all.
        let junk = tmp.path().join("junk.tar");
        fs::write(&junk, b"this is not a tar file at all").expect("write");
        assert!(store.load_docker_archive(&junk, &mut |_| {}).is_err());
        // A tar without manifest.json.
        fs::write(&junk, layer_tar(&[E::File("x", b"y")])).expect("write");
        assert!(matches!(
            store.load_docker_archive(&junk, &mut |_| {}),
            Err(ImageError::InvalidArchive(_))
        ));
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn rootfs_ext4() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open_store(tmp.path());
        let archive = tmp.path().join("image.tar");
        fs::write(
            &archive,
            docker_archive(
                &[(&["small:1"], vec![base_layer(), top_layer()])],
                false,
                false,
            ),
        )
        .expect("write archive");
        store
            .load_docker_archive(&archive, &mut |_| {})
            .expect("load");
        let image = store.resolve("small:1").expect("resolve");
        let (path, size) = store.rootfs(&image).expect("rootfs");
        assert_eq!(size, 1024 * 1024 * 1024);
        assert_eq!(fs::metadata(&path).expect("ext4").len(), size);
        assert!(path.ends_with(format!(
            "rootfs/{}.ext4",
            image.id.trim_start_matches("sha256:")
        )));
        // Cached: same file, no rebuild.
        let mtime = fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(store.rootfs(&image).expect("cached").0, path);
        assert_eq!(
            fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime"),
            mtime
        );
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);
        // Files the engine keeps beside a kept image's ext4 stay; any other goes.
        let beside = path.with_extension("ext4.blank.qcow2");
        fs::write(&beside, b"blank").expect("beside");
        let stray = path.with_file_name(format!("{}.ext4.blank.qcow2", "f".repeat(64)));
        fs::write(&stray, b"stray").expect("stray");
        store.collect_garbage().expect("clean-up");
        assert!(path.exists() && beside.exists(), "kept beside its image");
        assert!(!stray.exists(), "no image of that id");

        let debugfs = |request: &str| {
            let out = std::process::Command::new(ext4::find_program("debugfs"))
                .args(["-R", request])
                .arg(&path)
                .output()
                .expect("run debugfs");
            assert!(out.status.success(), "debugfs failed: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let root = debugfs("ls -l /");
        for name in ["bin", "etc", "hello.txt"] {
            assert!(root.contains(name), "{name} missing from:\n{root}");
        }
        assert!(!root.contains("lost+found"), "{root}");
        let etc = debugfs("ls -l /etc");
        assert!(etc.contains("hostname"), "{etc}");
        assert!(!etc.contains("old"), "whiteout not applied:\n{etc}");
        assert_eq!(debugfs("cat /hello.txt"), "hello\n");
        let root_stat = debugfs("stat /");
        assert!(root_stat.contains("Mode:  0755"), "{root_stat}");
        assert!(
            root_stat.contains("User:     0   Group:     0"),
            "{root_stat}"
        );
        // Ownership and mode survive (layer entries are uid/gid 1000).
        let stat = debugfs("stat /bin/sh");
        assert!(
            stat.contains("User:  1000") && stat.contains("Group:  1000"),
            "{stat}"
        );
        assert!(stat.contains("Mode:  0644"), "{stat}");
    }

    #[test]
    fn open_clears_tmp() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open_store(tmp.path());
        let mode = fs::metadata(store.tmp_dir())
            .expect("tmp")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let leftover = store.tmp_dir().join("load-dead/entries");
        fs::create_dir_all(&leftover).expect("mkdir");
        drop(store);
        let store = open_store(tmp.path());
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);
    }
}
