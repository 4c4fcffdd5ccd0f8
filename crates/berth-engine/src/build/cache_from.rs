//! `--cache-from`: steps taken from images that did not come from this daemon's builds
//! (pulled, or loaded from an archive), as Docker's classic builder takes them.
//!
//! A source image serves a step on parent P when P's history is a prefix of the
//! source's (the same `created_by` lines, the same empty layers), P's layers are a
//! prefix of the source's, and the source's next history line is the step's. The step's
//! image is then P plus the source's next layer (or none, for a config-only line) with
//! the stage's config; when that line is the source's last and its config is the
//! stage's, the source itself is the step's image (so a rebuild from a pulled image
//! ends on that very image).

use serde_json::Value;

use super::Build;
use crate::EngineError;

/// What matters of an image for matching: its history lines and its layers.
struct Lineage {
    /// (created_by, empty_layer) per history entry.
    history: Vec<(String, bool)>,
    diff_ids: Vec<String>,
    config: Value,
}

fn lineage(raw: &Value) -> Lineage {
    let history = raw["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["created_by"].as_str().unwrap_or_default().to_owned(),
                        e["empty_layer"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let diff_ids = super::dispatch::strings(raw.pointer("/rootfs/diff_ids"));
    Lineage {
        history,
        diff_ids,
        config: raw["config"].clone(),
    }
}

impl Build<'_> {
    /// The image a `--cache-from` source gives the step on `parent` (empty: none yet)
    /// whose history line is `created_by`, leaving `config` and `author`.
    pub(super) fn step_from_cache_sources(
        &self,
        parent: &str,
        created_by: &str,
        config: &Value,
        author: &str,
    ) -> Result<Option<String>, EngineError> {
        if self.options.cache_from.is_empty() {
            return Ok(None);
        }
        let parent_lineage = if parent.is_empty() {
            Lineage {
                history: Vec::new(),
                diff_ids: Vec::new(),
                config: Value::Null,
            }
        } else {
            lineage(&self.engine.images.raw_config(parent)?)
        };
        for source in &self.options.cache_from {
            let Ok(image) = self.engine.images.resolve(source) else {
                continue;
            };
            let Ok(raw) = self.engine.images.raw_config(&image.id) else {
                continue;
            };
            let candidate = lineage(&raw);
            let depth = parent_lineage.history.len();
            let layers = parent_lineage.diff_ids.len();
            if candidate.history.len() <= depth
                || candidate.history[..depth] != parent_lineage.history[..]
                || !candidate.diff_ids.starts_with(&parent_lineage.diff_ids)
                || candidate.history[depth].0 != created_by
            {
                continue;
            }
            let empty_layer = candidate.history[depth].1;
            let layer = if empty_layer {
                None
            } else {
                match candidate.diff_ids.get(layers) {
                    Some(diff_id) => Some(diff_id.clone()),
                    None => continue,
                }
            };
            if candidate.history.len() == depth + 1
                && candidate.diff_ids.len() == layers + usize::from(layer.is_some())
                && &candidate.config == config
            {
                return Ok(Some(image.id));
            }
            let id = self.engine.images.derive_image(berth_image::DeriveSpec {
                parent: (!parent.is_empty()).then_some(parent),
                config: config.clone(),
                created_by: created_by.to_owned(),
                layer: None,
                existing_layer: layer.as_deref(),
                tag: None,
                author: Some(author),
            })?;
            return Ok(Some(id));
        }
        Ok(None)
    }
}
