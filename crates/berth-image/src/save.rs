//! `docker save`: images as a `docker save` archive (`manifest.json`, each image's config
//! blob as `<hex>.json`, each layer once as `<diff hex>/layer.tar`), which `docker load`
//! (Docker's and Berth's) reads back.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;

use crate::digest::parse_sha256;
use crate::error::ImageError;
use crate::store::{ImageRecord, ImageStore};

impl ImageStore {
    /// Writes `images` (each with the tags to record for it) as one archive.
    pub fn save_docker_archive(
        &self,
        images: &[(ImageRecord, Vec<String>)],
        out: impl Write,
    ) -> Result<(), ImageError> {
        let mut archive = tar::Builder::new(out);
        let mut manifest = Vec::new();
        let mut written: HashSet<String> = HashSet::new();
        for (image, tags) in images {
            let hex = parse_sha256(&image.id)
                .ok_or_else(|| ImageError::NotFound(image.id.clone()))?
                .to_owned();
            let config_name = format!("{hex}.json");
            if written.insert(config_name.clone()) {
                let path = self.blobs_dir().join(&hex);
                append_file(&mut archive, &config_name, &path)?;
            }
            let mut layers = Vec::new();
            for diff_id in &image.diff_ids {
                let layer_hex =
                    parse_sha256(diff_id).ok_or_else(|| ImageError::NotFound(diff_id.clone()))?;
                let name = format!("{layer_hex}/layer.tar");
                if written.insert(name.clone()) {
                    append_file(&mut archive, &name, &self.blobs_dir().join(layer_hex))?;
                }
                layers.push(name);
            }
            manifest.push(serde_json::json!({
                "Config": config_name,
                "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { serde_json::json!(tags) },
                "Layers": layers,
            }));
        }
        let manifest = serde_json::to_vec(&manifest).map_err(|source| ImageError::InvalidJson {
            what: "manifest.json".into(),
            source,
        })?;
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive
            .append_data(&mut header, "manifest.json", manifest.as_slice())
            .map_err(|e| ImageError::io("manifest.json")(e))?;
        archive
            .into_inner()
            .and_then(|mut out| out.flush())
            .map_err(|e| ImageError::io("the archive")(e))?;
        Ok(())
    }
}

fn append_file(
    archive: &mut tar::Builder<impl Write>,
    name: &str,
    path: &std::path::Path,
) -> Result<(), ImageError> {
    let mut file = File::open(path).map_err(ImageError::io(path))?;
    let size = file.metadata().map_err(ImageError::io(path))?.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, name, &mut file)
        .map_err(ImageError::io(path))
}
