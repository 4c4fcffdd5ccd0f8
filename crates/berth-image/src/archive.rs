//! Reading docker-archive tarballs (`docker save`, `skopeo copy … docker-archive:`).
//!
//! Accepted layouts, all described by a top-level `manifest.json` — a JSON array of
//! `{"Config": <path>, "RepoTags": [<ref>…] | null, "Layers": [<path>…]}`:
//!
//! * classic `docker save`: `<id>.json` configs and `<id>/layer.tar` layers, where layer
//!   files may be symlinks (or hard links) to other entries of the archive;
//! * `docker save` from Docker 25+: an OCI layout (`blobs/sha256/<hex>`, `index.json`,
//!   `oci-layout`) plus `manifest.json` pointing into `blobs/`;
//! * skopeo: `<hex>.tar` layers, `<hex>.json` config, `manifest.json`, `repositories`.
//!
//! The archive itself and its layers may be plain tar or compressed (gzip, zstd, bzip2,
//! xz): each is read as its magic bytes say.
//!
//! Contract and safety: the archive is untrusted. Because `manifest.json` may come
//! anywhere in the stream, [`StagedArchive::unpack`] first copies every regular-file entry
//! into `staging/entries/<n>` (numbered, so the archive never names a host path) and
//! records symlinks and hard links in an in-memory index of the archive's own path space.
//! Entry names with `..` are refused ([`ImageError::UnsafePath`]); a leading `/` is
//! dropped. Paths named by `manifest.json` are resolved only against that index (links
//! followed with chroot semantics inside the archive, at most 40 hops), never on the host.
//! JSON documents are read only up to [`MAX_JSON_SIZE`].
//!
//! [`prepare`] then verifies every image: image id = sha256 of the config bytes; each
//! layer is decompressed into `staging/blobs/<diff hex>` while hashing, and the hash must
//! equal `config.rootfs.diff_ids[i]` ([`ImageError::DigestMismatch`] otherwise). Layers
//! already in the store's blob directory are not re-read. Nothing outside `staging` is
//! written; committing (renaming blobs, recording the images) is the store's job.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use tar::EntryType;

use crate::digest::{parse_sha256, sha256_digest, HashingWriter};
use crate::error::ImageError;
use crate::reference::{self, Reference};

/// Largest `manifest.json` or image config accepted.
pub(crate) const MAX_JSON_SIZE: u64 = 16 * 1024 * 1024;
/// Most links followed while resolving one archive path.
const MAX_LINK_HOPS: usize = 40;

/// One entry of the archive's path space.
#[derive(Debug)]
enum Node {
    File { staged: PathBuf, size: u64 },
    Dir,
    Symlink(String),
    HardLink(String),
}

/// An archive whose entries have been copied into a staging directory.
#[derive(Debug)]
pub(crate) struct StagedArchive {
    /// Normalised archive path (`a/b/c`, no leading `/`) → entry.
    nodes: HashMap<String, Node>,
}

/// A stream's compression, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

fn detect_compression(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(b"BZh") {
        Compression::Bzip2
    } else if magic.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// Opens `path` and returns a reader of its decompressed content (plain, gzip, zstd,
/// bzip2 or xz).
pub fn open_decompressed(path: &Path, what: &str) -> Result<Box<dyn Read>, ImageError> {
    let mut file = File::open(path).map_err(ImageError::io(path))?;
    let mut magic = Vec::with_capacity(6);
    (&mut file)
        .take(6)
        .read_to_end(&mut magic)
        .map_err(ImageError::io(path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(ImageError::io(path))?;
    let reader = BufReader::with_capacity(1 << 16, file);
    match detect_compression(&magic) {
        Compression::None => Ok(Box::new(reader)),
        Compression::Gzip => Ok(Box::new(MultiGzDecoder::new(reader))),
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| {
                ImageError::InvalidArchive(format!("{what}: bad zstd frame header: {e}"))
            })?;
            Ok(Box::new(decoder))
        }
        Compression::Bzip2 => Ok(Box::new(bzip2::read::MultiBzDecoder::new(reader))),
        Compression::Xz => {
            // lzma-rs decodes xz into a writer, not as a reader: spool it beside the file.
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut spool = tempfile::tempfile_in(dir).map_err(ImageError::io(dir))?;
            let mut input = reader;
            lzma_rs::xz_decompress(&mut input, &mut spool)
                .map_err(|e| ImageError::InvalidArchive(format!("{what}: bad xz data: {e}")))?;
            spool
                .seek(SeekFrom::Start(0))
                .map_err(ImageError::io(dir))?;
            Ok(Box::new(BufReader::with_capacity(1 << 16, spool)))
        }
    }
}

/// Normalises a tar entry name into archive path space, refusing `..`.
fn entry_key(path: &Path) -> Result<String, ImageError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::UnsafePath(path.display().to_string()));
            }
        }
    }
    Ok(parts.join("/"))
}

impl StagedArchive {
    /// Copies every regular file of the archive at `archive` into `staging/entries/`.
    pub(crate) fn unpack(archive: &Path, staging: &Path) -> Result<Self, ImageError> {
        let entries_dir = staging.join("entries");
        fs::create_dir_all(&entries_dir).map_err(ImageError::io(&entries_dir))?;
        let reader = open_decompressed(archive, "the archive")?;
        let mut tar = tar::Archive::new(reader);
        let mut nodes = HashMap::new();
        let mut count = 0u64;
        // The tar reader's own errors quote the bytes of a damaged header, which mean
        // nothing to a user: those are reported as what they are.
        let invalid = |e: io::Error| match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::Other | io::ErrorKind::UnexpectedEof => {
                ImageError::InvalidArchive(
                    "invalid tar header: the input is not a tar archive, or it is damaged".into(),
                )
            }
            _ => ImageError::Io {
                path: archive.to_path_buf(),
                source: e,
            },
        };
        for entry in tar.entries().map_err(invalid)? {
            let mut entry = entry.map_err(invalid)?;
            let path = entry.path().map_err(invalid)?.into_owned();
            let key = entry_key(&path)?;
            if key.is_empty() {
                continue;
            }
            let link_target = || -> Result<String, ImageError> {
                Ok(entry
                    .link_name()
                    .map_err(invalid)?
                    .ok_or_else(|| ImageError::InvalidArchive(format!("link {key} has no target")))?
                    .to_string_lossy()
                    .into_owned())
            };
            let node = match entry.header().entry_type() {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    count += 1;
                    let staged = entries_dir.join(count.to_string());
                    let mut out = File::create_new(&staged).map_err(ImageError::io(&staged))?;
                    let size = copy_stream(&mut entry, archive, &mut out, &staged)?;
                    Node::File { staged, size }
                }
                EntryType::Directory => Node::Dir,
                EntryType::Symlink => Node::Symlink(link_target()?),
                EntryType::Link => Node::HardLink(link_target()?),
                _ => continue,
            };
            nodes.insert(key, node);
        }
        Ok(Self { nodes })
    }

    /// The staged file and size for the archive path `path`, following links inside
    /// the archive.
    pub(crate) fn file(&self, path: &str) -> Result<(&Path, u64), ImageError> {
        let not_found = || ImageError::InvalidArchive(format!("{path} not found in the archive"));
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0usize;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => resolved.push(component),
            }
            let target = match self.nodes.get(&resolved.join("/")) {
                Some(Node::Symlink(target)) => {
                    resolved.pop();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    target
                }
                Some(Node::HardLink(target)) => {
                    // Hard-link names are relative to the archive root.
                    resolved.clear();
                    target
                }
                _ => continue,
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(ImageError::InvalidArchive(format!(
                    "too many levels of links resolving {path}"
                )));
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
        }
        match self.nodes.get(&resolved.join("/")) {
            Some(Node::File { staged, size }) => Ok((staged, *size)),
            _ => Err(not_found()),
        }
    }

    /// The content of the archive path `path`, refused above [`MAX_JSON_SIZE`].
    pub(crate) fn read_small(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let (staged, size) = self.file(path)?;
        if size > MAX_JSON_SIZE {
            return Err(ImageError::InvalidArchive(format!(
                "{path} is {size} bytes, more than the {MAX_JSON_SIZE} allowed"
            )));
        }
        let mut bytes = Vec::new();
        File::open(staged)
            .map_err(ImageError::io(staged))?
            .take(MAX_JSON_SIZE)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(staged))?;
        Ok(bytes)
    }
}

/// Copies `reader` (named `from` in errors) into `out` (named `to`); returns the count.
pub(crate) fn copy_stream(
    reader: &mut dyn Read,
    from: &Path,
    out: &mut dyn Write,
    to: &Path,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io(from)(e)),
        };
        let chunk = buf.get(..n).ok_or_else(|| {
            ImageError::io(from)(io::Error::other("reader returned more than asked"))
        })?;
        out.write_all(chunk).map_err(ImageError::io(to))?;
        total += n as u64;
    }
    Ok(total)
}

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// An image verified and staged, ready to be recorded.
#[derive(Debug)]
pub(crate) struct PreparedImage {
    /// `sha256:<hex>` of the config bytes.
    pub(crate) id: String,
    pub(crate) config: ImageConfiguration,
    pub(crate) diff_ids: Vec<String>,
    /// Total uncompressed layer bytes.
    pub(crate) size: u64,
    /// Normalised RepoTags (each with a tag, none with a digest).
    pub(crate) tags: Vec<Reference>,
    /// `name@sha256:<manifest digest>` of the registry manifests it was pulled by.
    pub(crate) repo_digests: Vec<String>,
    /// The image a build step made this one from.
    pub(crate) parent: Option<String>,
}

/// The result of [`prepare`]: images plus blobs staged for the store.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) images: Vec<PreparedImage>,
    /// (hex digest, staged file) of blobs not yet in the store.
    pub(crate) blobs: Vec<(String, PathBuf)>,
}

/// Unpacks and verifies the archive at `archive` into `staging` (an empty directory);
/// `blobs_dir` is the store's `blobs/sha256`, consulted only to skip known blobs.
pub(crate) fn prepare(
    archive: &Path,
    staging: &Path,
    blobs_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Prepared, ImageError> {
    let staged = StagedArchive::unpack(archive, staging)?;
    if staged.file("manifest.json").is_err() {
        return Err(ImageError::InvalidArchive(
            "no manifest.json: not a docker-archive (docker save) tarball".to_owned(),
        ));
    }
    let manifest_bytes = staged.read_small("manifest.json")?;
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&manifest_bytes).map_err(|source| ImageError::InvalidJson {
            what: "manifest.json".to_owned(),
            source,
        })?;
    if manifest.is_empty() {
        return Err(ImageError::InvalidArchive(
            "manifest.json lists no images".to_owned(),
        ));
    }

    let staged_blobs = staging.join("blobs");
    fs::create_dir_all(&staged_blobs).map_err(ImageError::io(&staged_blobs))?;
    let mut prepared = Prepared::default();
    // Blobs seen during this load: hex -> uncompressed size.
    let mut seen: HashMap<String, u64> = HashMap::new();

    for entry in &manifest {
        let config_bytes = staged.read_small(&entry.config)?;
        let id = sha256_digest(&config_bytes);
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::InvalidJson {
                what: format!("image config {}", entry.config),
                source,
            })?;
        let id_hex = parse_sha256(&id)
            .ok_or_else(|| ImageError::InvalidArchive(format!("bad image id {id}")))?
            .to_owned();
        if !seen.contains_key(&id_hex) && !blobs_dir.join(&id_hex).exists() {
            let path = staged_blobs.join(&id_hex);
            write_synced(&path, &config_bytes)?;
            prepared.blobs.push((id_hex.clone(), path));
        }
        seen.insert(id_hex.clone(), config_bytes.len() as u64);

        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != entry.layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "image {id}: manifest lists {} layers but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut size = 0u64;
        for (layer, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let hex = parse_sha256(diff_id).ok_or_else(|| {
                ImageError::InvalidArchive(format!(
                    "image {id}: diff_id {diff_id:?} is not a sha256 digest"
                ))
            })?;
            let short = hex.get(..12).unwrap_or(hex);
            if let Some(known) = seen.get(hex) {
                size += known;
                continue;
            }
            let existing = blobs_dir.join(hex);
            let layer_size = match fs::metadata(&existing) {
                Ok(meta) => {
                    progress(&format!("Layer {short} already exists"));
                    meta.len()
                }
                Err(_) => {
                    progress(&format!("Loading layer {short}"));
                    let (source, _) = staged.file(layer)?;
                    let dest = staged_blobs.join(hex);
                    let layer_size = import_layer(source, &dest, diff_id, layer)?;
                    prepared.blobs.push((hex.to_owned(), dest));
                    layer_size
                }
            };
            seen.insert(hex.to_owned(), layer_size);
            size += layer_size;
        }

        let mut tags = Vec::new();
        for repo_tag in entry.repo_tags.iter().flatten() {
            let reference = reference::normalize(repo_tag)?;
            if reference.digest.is_some() {
                return Err(ImageError::InvalidArchive(format!(
                    "RepoTags entry {repo_tag:?} has a digest; only name:tag is allowed"
                )));
            }
            tags.push(reference);
        }
        prepared.images.push(PreparedImage {
            id,
            config,
            diff_ids,
            size,
            tags,
            repo_digests: Vec::new(),
            parent: None,
        });
    }
    Ok(prepared)
}

/// Decompresses the layer at `source` into `dest` while hashing it; the hash must be
/// `expected`. Returns the uncompressed size. `name` is the layer's archive path.
pub(crate) fn import_layer(
    source: &Path,
    dest: &Path,
    expected: &str,
    name: &str,
) -> Result<u64, ImageError> {
    let mut reader = open_decompressed(source, &format!("layer {name}"))?;
    let file = File::create_new(dest).map_err(ImageError::io(dest))?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    copy_stream(&mut reader, source, &mut writer, dest)?;
    let (buffered, actual, size) = writer.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| ImageError::io(dest)(e.into_error()))?;
    file.sync_all().map_err(ImageError::io(dest))?;
    if actual != expected {
        // Best effort: the staging directory is removed as a whole anyway.
        let _ = fs::remove_file(dest);
        return Err(ImageError::DigestMismatch {
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(size)
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut file = File::create_new(path).map_err(ImageError::io(path))?;
    file.write_all(bytes).map_err(ImageError::io(path))?;
    file.sync_all().map_err(ImageError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            match link {
                Some(link) => builder.append_link(&mut header, path, link),
                None => builder.append_data(&mut header, path, *data),
            }
            .expect("append");
        }
        builder.into_inner().expect("finish")
    }

    #[test]
    fn resolves_links_inside_the_archive_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let archive = tmp.path().join("a.tar");
        fs::write(
            &archive,
            tar_of(&[
                ("x/layer.tar", EntryType::Regular, b"layer", None),
                (
                    "y/layer.tar",
                    EntryType::Symlink,
                    b"",
                    Some("../x/layer.tar"),
                ),
                ("z/layer.tar", EntryType::Link, b"", Some("x/layer.tar")),
                ("abs", EntryType::Symlink, b"", Some("/x")),
                (
                    "escape",
                    EntryType::Symlink,
                    b"",
                    Some("../../../../etc/passwd"),
                ),
                ("loop", EntryType::Symlink, b"", Some("loop")),
            ]),
        )
        .expect("write");
        let staging = tmp.path().join("staging");
        let staged = StagedArchive::unpack(&archive, &staging).expect("unpack");
        for path in [
            "x/layer.tar",
            "y/layer.tar",
            "z/layer.tar",
            "abs/layer.tar",
            "./y/../x/layer.tar",
        ] {
            let (file, size) = staged.file(path).expect(path);
            assert_eq!(size, 5);
            assert_eq!(fs::read(file).expect("read"), b"layer");
        }
        assert!(staged.file("escape").is_err());
        assert!(staged.file("loop").is_err());
        assert!(staged.file("/etc/passwd").is_err());
    }

    #[test]
    fn refuses_dotdot_entries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let archive = tmp.path().join("a.tar");
        let mut bytes = tar_of(&[("placeholder", EntryType::Regular, b"x", None)]);
        // Rewrite the name to "../evil" (tar::Builder refuses to write it).
        let name = b"../evil\0\0\0\0";
        bytes[..name.len()].copy_from_slice(name);
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&bytes[..512]);
        header.set_cksum();
        bytes[..512].copy_from_slice(header.as_bytes());
        fs::write(&archive, bytes).expect("write");
        let result = StagedArchive::unpack(&archive, &tmp.path().join("staging"));
        assert!(
            matches!(result, Err(ImageError::UnsafePath(_))),
            "{result:?}"
        );
    }

    #[test]
    fn every_compression_reads_back_the_same_bytes() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let plain = b"a tar's bytes, or anything".repeat(100);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&plain).unwrap();
        let mut bzip = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bzip.write_all(&plain).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut plain.as_slice(), &mut xz).unwrap();
        for (name, bytes) in [
            ("plain", plain.clone()),
            ("gzip", gzip.finish().unwrap()),
            ("bzip2", bzip.finish().unwrap()),
            ("xz", xz),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, &bytes).unwrap();
            let mut read = Vec::new();
            open_decompressed(&path, name)
                .unwrap()
                .read_to_end(&mut read)
                .unwrap();
            assert_eq!(read, plain, "{name}");
        }
        // Broken xz data is an error, not a panic.
        let broken = dir.path().join("broken");
        fs::write(&broken, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2, 3]).unwrap();
        assert!(open_decompressed(&broken, "broken").is_err());
    }
}
