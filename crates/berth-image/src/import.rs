//! `docker import` and `docker commit`: a root filesystem tarball (plain, gzip or zstd) becomes an image of
//! one layer, with a config made from Dockerfile-style `changes` (`CMD`, `ENTRYPOINT`,
//! `ENV`, `EXPOSE`, `LABEL`, `USER`, `WORKDIR`, `VOLUME`, `STOPSIGNAL`), as dockerd does.
//!
//! The tarball is untrusted: it is decompressed into staging while hashed (its sha256 is
//! the layer's diff id), every header is read once to refuse what is not a tar, and its
//! entries are applied only later, by the same safe flattening as any other layer.
//! Recording is the store's one transaction, as for a load.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::archive::{self, copy_stream, open_decompressed, write_synced};
use crate::digest::{parse_sha256, sha256_digest, HashingWriter};
use crate::error::ImageError;
use crate::reference::Reference;
use crate::store::ImageStore;

/// Applies one `changes` instruction to an image config (`config` object).
fn apply_change(config: &mut Map<String, Value>, change: &str) -> Result<(), ImageError> {
    let change = change.trim();
    let (instruction, rest) = change
        .split_once(char::is_whitespace)
        .map(|(i, r)| (i, r.trim()))
        .unwrap_or((change, ""));
    let invalid = || ImageError::InvalidReference(format!("invalid change: {change:?}"));
    // `["a", "b"]` or the shell form, as a Dockerfile reads them.
    let command = |text: &str| -> Value {
        match serde_json::from_str::<Vec<String>>(text) {
            Ok(argv) => json!(argv),
            Err(_) => json!(["/bin/sh", "-c", text]),
        }
    };
    match instruction.to_ascii_uppercase().as_str() {
        "CMD" => {
            config.insert("Cmd".into(), command(rest));
        }
        "ENTRYPOINT" => {
            config.insert("Entrypoint".into(), command(rest));
        }
        "ENV" => {
            let pair = match rest.split_once('=') {
                Some((key, value)) if !key.contains(char::is_whitespace) => {
                    format!("{key}={}", value.trim_matches('"'))
                }
                _ => match rest.split_once(char::is_whitespace) {
                    Some((key, value)) => format!("{key}={}", value.trim()),
                    None => return Err(invalid()),
                },
            };
            let key = pair.split('=').next().unwrap_or_default().to_owned();
            let env = config.entry("Env").or_insert_with(|| json!([]));
            if let Some(list) = env.as_array_mut() {
                list.retain(|e| e.as_str().and_then(|e| e.split('=').next()) != Some(&key));
                list.push(json!(pair));
            }
        }
        "EXPOSE" => {
            let ports = config.entry("ExposedPorts").or_insert_with(|| json!({}));
            for port in rest.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_owned()
                } else {
                    format!("{port}/tcp")
                };
                ports[port] = json!({});
            }
        }
        "LABEL" => {
            let (key, value) = rest.split_once('=').ok_or_else(invalid)?;
            let labels = config.entry("Labels").or_insert_with(|| json!({}));
            labels[key.trim()] = json!(value.trim().trim_matches('"'));
        }
        "USER" => {
            config.insert("User".into(), json!(rest));
        }
        "WORKDIR" => {
            config.insert("WorkingDir".into(), json!(rest));
        }
        "STOPSIGNAL" => {
            config.insert("StopSignal".into(), json!(rest));
        }
        "VOLUME" => {
            let paths = serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_owned).collect());
            let volumes = config.entry("Volumes").or_insert_with(|| json!({}));
            for path in paths {
                volumes[path] = json!({});
            }
        }
        _ => {
            return Err(ImageError::Unsupported(format!(
                "{instruction} is not a change `docker import` can apply (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL)"
            )))
        }
    }
    Ok(())
}

/// Decompresses (plain, gzip or zstd) the layer at `source` into `staging/layer.tar`
/// while hashing it, and reads every header once to refuse what is not a tar. Returns
/// the staged file, its diff id and size.
pub(crate) fn stage_layer(
    source: &Path,
    staging: &Path,
    what: &str,
    may_be_empty: bool,
) -> Result<(PathBuf, String, u64), ImageError> {
    let layer = staging.join("layer.tar");
    let mut reader = open_decompressed(source, what)?;
    let file = File::create_new(&layer).map_err(ImageError::io(&layer))?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    copy_stream(&mut reader, source, &mut writer, &layer)?;
    let (buffered, diff_id, size) = writer.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| ImageError::io(&layer)(e.into_error()))?;
    file.sync_all().map_err(ImageError::io(&layer))?;
    drop(file);
    let not_tar =
        |e: std::io::Error| ImageError::InvalidArchive(format!("{what} is not a tar archive: {e}"));
    let mut check = tar::Archive::new(File::open(&layer).map_err(ImageError::io(&layer))?);
    let mut entries = 0usize;
    for entry in check.entries().map_err(not_tar)? {
        entry.map_err(not_tar)?;
        entries += 1;
    }
    if entries == 0 && !may_be_empty {
        return Err(ImageError::InvalidArchive(format!("{what} has no entries")));
    }
    Ok((layer, diff_id, size))
}

impl ImageStore {
    /// Imports the root filesystem tarball at `source` as a one-layer image, tagged `tag`.
    /// Returns the image id.
    pub fn import_rootfs(
        &self,
        source: &Path,
        changes: &[String],
        message: &str,
        tag: Option<&Reference>,
    ) -> Result<String, ImageError> {
        let mut config = Map::new();
        config.insert(
            "Env".into(),
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        );
        for change in changes {
            apply_change(&mut config, change)?;
        }
        let staging = self.staging("import")?;
        let (layer, diff_id, size) =
            stage_layer(source, &staging.0, "the imported tarball", false)?;
        let now = chrono_now();
        let image_config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": now,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{
                "created": now,
                "comment": if message.is_empty() { "Imported from -" } else { message },
            }],
        });
        self.record_new_image(
            &staging.0,
            &image_config,
            Some((layer, &diff_id)),
            size,
            tag,
            None,
        )
    }

    /// `docker commit`: a new image made of `parent`'s layers and the layer at `layer`
    /// (an uncompressed tar of the container's changes), with `container_config` (the
    /// container's Docker config) and `changes` applied as its config; its history entry
    /// says `created_by` (dockerd: the container's command).
    #[allow(clippy::too_many_arguments)]
    pub fn commit_layer(
        &self,
        parent: &str,
        layer: &Path,
        container_config: Value,
        changes: &[String],
        comment: &str,
        author: &str,
        created_by: &str,
        tag: Option<&Reference>,
    ) -> Result<String, ImageError> {
        let parent = self.resolve(parent)?;
        let mut image_config = self.raw_config(&parent.id)?;
        let mut config = match container_config {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        for change in changes {
            apply_change(&mut config, change)?;
        }
        let staging = self.staging("commit")?;
        let (layer, diff_id, size) =
            stage_layer(layer, &staging.0, "the container's changes", true)?;
        let now = chrono_now();
        image_config["config"] = Value::Object(config);
        image_config["created"] = json!(now);
        image_config["author"] = json!(author);
        image_config["rootfs"]["type"] = json!("layers");
        match image_config["rootfs"]["diff_ids"].as_array_mut() {
            Some(ids) => ids.push(json!(diff_id)),
            None => image_config["rootfs"]["diff_ids"] = json!([diff_id]),
        }
        let history = json!({
            "created": now, "author": author, "comment": comment, "created_by": created_by,
        });
        match image_config["history"].as_array_mut() {
            Some(entries) => entries.push(history),
            None => image_config["history"] = json!([history]),
        }
        let size = parent.size + size;
        self.record_new_image(
            &staging.0,
            &image_config,
            Some((layer, &diff_id)),
            size,
            tag,
            None,
        )
    }

    /// Stages the config of a new image whose new top layer (if it has one) is staged at
    /// `layer.0` with diff id `layer.1`, and records the image (one transaction). Returns
    /// the image id.
    pub(crate) fn record_new_image(
        &self,
        staging: &Path,
        image_config: &Value,
        layer: Option<(PathBuf, &str)>,
        size: u64,
        tag: Option<&Reference>,
        parent: Option<String>,
    ) -> Result<String, ImageError> {
        let invalid = |source| ImageError::InvalidJson {
            what: "the new image's config".into(),
            source,
        };
        let config_bytes = serde_json::to_vec(image_config).map_err(invalid)?;
        let id = sha256_digest(&config_bytes);
        let parsed = serde_json::from_slice(&config_bytes).map_err(invalid)?;
        let config_path = staging.join("config.json");
        write_synced(&config_path, &config_bytes)?;
        let mut prepared = archive::Prepared::default();
        if let Some((layer, diff_id)) = layer {
            if !self.has_blob(diff_id) {
                let diff_hex = parse_sha256(diff_id).unwrap_or_default().to_owned();
                prepared.blobs.push((diff_hex, layer));
            }
        }
        prepared.blobs.push((
            parse_sha256(&id).unwrap_or_default().to_owned(),
            config_path,
        ));
        let diff_ids = image_config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        prepared.images.push(archive::PreparedImage {
            id: id.clone(),
            config: parsed,
            diff_ids,
            size,
            tags: tag.cloned().into_iter().collect(),
            repo_digests: Vec::new(),
            parent,
        });
        self.commit(&prepared)?;
        Ok(id)
    }
}

/// Now in RFC 3339, as image configs write times.
pub(crate) fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_become_config_as_a_dockerfile_would_make_it() {
        let mut config = Map::new();
        for change in [
            r#"CMD ["sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /bin/run me",
            "ENV A=1",
            "ENV B two words",
            "ENV A=3",
            "EXPOSE 80 53/udp",
            "LABEL team=\"blue\"",
            "WORKDIR /srv",
            "USER 1000:1000",
            "VOLUME /data",
        ] {
            apply_change(&mut config, change).expect(change);
        }
        assert_eq!(config["Cmd"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(
            config["Entrypoint"],
            json!(["/bin/sh", "-c", "/bin/run me"])
        );
        assert_eq!(config["Env"], json!(["B=two words", "A=3"]));
        assert_eq!(config["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(config["Labels"], json!({"team": "blue"}));
        assert_eq!(config["WorkingDir"], json!("/srv"));
        assert_eq!(config["Volumes"], json!({"/data": {}}));
        assert!(apply_change(&mut config, "RUN rm -rf /").is_err());
        assert_eq!(chrono_now().len(), 20);
    }
}
