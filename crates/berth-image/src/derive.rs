//! Images made by a build step: a parent image (or none, `FROM scratch`), a new Docker
//! config, one history entry, and at most one new layer.
//!
//! The new image's config is the parent's image config with `config` replaced, `created`
//! set to now, the history entry appended (`empty_layer: true` when the step adds no
//! layer, as Docker writes metadata-only steps) and the layer's diff id appended to
//! `rootfs.diff_ids`. The image records its parent (Docker's `Parent`), which is how
//! `docker images` tells a build's intermediate images from dangling ones.

use std::path::Path;

use serde_json::{json, Value};

use crate::import::{chrono_now, stage_layer};
use crate::{ImageError, ImageStore, Reference};

/// What a build step makes.
#[derive(Debug, Clone)]
pub struct DeriveSpec<'a> {
    /// The image the step ran on; `None` for `FROM scratch`.
    pub parent: Option<&'a str>,
    /// The new image's Docker config (`Env`, `Cmd`, `WorkingDir`, ...).
    pub config: Value,
    /// The history entry's `created_by` (`docker history` shows it).
    pub created_by: String,
    /// An uncompressed tar of the step's changes; `None` for a step without a layer.
    pub layer: Option<&'a Path>,
    /// Instead of `layer`: a layer the store already has, by diff id (a step taken from
    /// another image's history, `--cache-from`).
    pub existing_layer: Option<&'a str>,
    /// A tag for the new image.
    pub tag: Option<&'a Reference>,
    /// The image's author (MAINTAINER); `None` or empty: none.
    pub author: Option<&'a str>,
}

impl ImageStore {
    /// Records the image a build step made. Returns its id.
    pub fn derive_image(&self, spec: DeriveSpec<'_>) -> Result<String, ImageError> {
        let (mut image_config, parent_size, parent_id) = match spec.parent {
            Some(parent) => {
                let parent = self.resolve(parent)?;
                (self.raw_config(&parent.id)?, parent.size, Some(parent.id))
            }
            None => (
                json!({
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": [] },
                    "history": [],
                }),
                0,
                None,
            ),
        };
        if let Some(diff_id) = spec.existing_layer {
            if !self.has_blob(diff_id) {
                return Err(ImageError::InvalidArchive(format!(
                    "the layer {diff_id} is not in the store"
                )));
            }
        }
        let staging = self.staging("build")?;
        let layer = match spec.layer {
            Some(path) => Some(stage_layer(path, &staging.0, "the step's changes", true)?),
            None => None,
        };
        let now = chrono_now();
        image_config["config"] = spec.config;
        image_config["created"] = json!(now);
        if let Some(object) = image_config.as_object_mut() {
            // A built image's container and author are not its parent's.
            object.remove("container");
            object.remove("container_config");
            object.remove("author");
            if let Some(author) = spec.author.filter(|a| !a.is_empty()) {
                object.insert("author".into(), json!(author));
            }
        }
        image_config["rootfs"]["type"] = json!("layers");
        let mut history = json!({ "created": now, "created_by": spec.created_by });
        if let Some(author) = spec.author.filter(|a| !a.is_empty()) {
            history["author"] = json!(author);
        }
        let new_diff_id = layer
            .as_ref()
            .map(|(_, diff_id, _)| diff_id.as_str())
            .or(spec.existing_layer);
        match new_diff_id {
            Some(diff_id) => match image_config["rootfs"]["diff_ids"].as_array_mut() {
                Some(ids) => ids.push(json!(diff_id)),
                None => image_config["rootfs"]["diff_ids"] = json!([diff_id]),
            },
            None => history["empty_layer"] = json!(true),
        }
        // The empty image a stage of only `FROM scratch` makes has no history.
        let record_history = new_diff_id.is_some() || !spec.created_by.is_empty();
        if record_history {
            match image_config["history"].as_array_mut() {
                Some(entries) => entries.push(history),
                None => image_config["history"] = json!([history]),
            }
        }
        let size = parent_size
            + match (&layer, spec.existing_layer) {
                (Some((_, _, size)), _) => *size,
                (None, Some(diff_id)) => self.layer_size(diff_id),
                (None, None) => 0,
            };
        self.record_new_image(
            &staging.0,
            &image_config,
            layer
                .as_ref()
                .map(|(path, diff_id, _)| (path.clone(), diff_id.as_str())),
            size,
            spec.tag,
            parent_id,
        )
    }
}
