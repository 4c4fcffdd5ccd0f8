//! Image verbs over the image store: `tag`, `rmi`, `image prune` and `history`, with
//! Docker's rules for images that containers use.

pub mod registry;

use std::collections::HashMap;

use crate::error::EngineError;
use crate::Engine;

/// One step of a removal, as `docker rmi` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Untagged(String),
    Deleted(String),
}

/// One entry of `docker history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub comment: String,
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..12.min(hex.len())]
}

impl Engine {
    /// `POST /images/{name}/tag?repo=&tag=`.
    pub fn tag_image(
        &self,
        source: &str,
        repo: &str,
        tag: Option<&str>,
    ) -> Result<String, EngineError> {
        let image = self.images.resolve(source)?;
        let target = match tag.filter(|t| !t.is_empty()) {
            Some(tag) => format!("{repo}:{tag}"),
            None => repo.to_owned(),
        };
        let shown = self.images.tag(&image.id, &target)?;
        self.events.emit(
            "image",
            "tag",
            &image.id,
            HashMap::from([("name".to_owned(), shown.clone())]),
        );
        Ok(shown)
    }

    /// `DELETE /images/{name}`: untags, and deletes the image once nothing names or
    /// uses it, as Docker does.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<Vec<Removal>, EngineError> {
        let image = self.images.resolve(reference)?;
        let users: Vec<_> = self
            .list_containers()
            .into_iter()
            .filter(|c| c.image_id == image.id)
            .collect();
        let running = users.iter().find(|c| c.state.status.is_running());
        let named = berth_image::reference::normalize(reference)
            .ok()
            .map(|r| r.familiar())
            .filter(|name| image.repo_tags.contains(name));
        let mut steps = Vec::new();
        let untag = |name: &str, steps: &mut Vec<Removal>| -> Result<(), EngineError> {
            self.images.untag(name)?;
            self.events.emit(
                "image",
                "untag",
                &image.id,
                HashMap::from([("name".to_owned(), name.to_owned())]),
            );
            steps.push(Removal::Untagged(name.to_owned()));
            Ok(())
        };
        if let Some(name) = named {
            if image.repo_tags.len() > 1 {
                untag(&name, &mut steps)?;
                return Ok(steps);
            }
            if let Some(user) = users.first() {
                if !force {
                    return Err(EngineError::Conflict(format!(
                        "conflict: unable to remove repository reference \"{reference}\" (must force) - container {} is using its referenced image {}",
                        &user.id[..12],
                        short(&image.id)
                    )));
                }
                // The container keeps its image, untagged.
                untag(&name, &mut steps)?;
                return Ok(steps);
            }
        } else {
            if let Some(user) = running {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                    short(&image.id),
                    &user.id[..12]
                )));
            }
            if let Some(user) = users.first() {
                if !force {
                    return Err(EngineError::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                        short(&image.id),
                        &user.id[..12]
                    )));
                }
                for name in &image.repo_tags {
                    untag(name, &mut steps)?;
                }
                return Ok(steps);
            }
            if image.repo_tags.len() > 1 && !force {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    short(&image.id)
                )));
            }
        }
        for name in self.images.delete(&image.id)? {
            steps.push(Removal::Untagged(name));
        }
        self.events
            .emit("image", "delete", &image.id, HashMap::new());
        steps.push(Removal::Deleted(image.id));
        Ok(steps)
    }

    /// `POST /images/prune`: deletes images no container uses — only untagged ones
    /// unless `all`. Returns what was done and the bytes freed.
    pub fn prune_images(&self, all: bool) -> Result<(Vec<Removal>, u64), EngineError> {
        let usage = self.image_usage();
        let mut steps = Vec::new();
        let before = self.images_disk_usage();
        let images = self.images.list()?;
        // A build's intermediate images stay while an image kept is built on them.
        let needed = ancestors_of(&images, |image| {
            usage.contains_key(&image.id) || (!all && !image.repo_tags.is_empty())
        });
        for image in images {
            if usage.contains_key(&image.id)
                || (!all && !image.repo_tags.is_empty())
                || needed.contains(&image.id)
            {
                continue;
            }
            for name in self.images.delete(&image.id)? {
                steps.push(Removal::Untagged(name));
            }
            self.events
                .emit("image", "delete", &image.id, HashMap::new());
            steps.push(Removal::Deleted(image.id));
        }
        let after = self.images_disk_usage();
        Ok((steps, before.saturating_sub(after)))
    }

    /// The raw config of an image (what `inspect` reads beyond the OCI fields:
    /// Healthcheck, OnBuild, Shell).
    pub fn image_raw_config(&self, id: &str) -> Result<serde_json::Value, EngineError> {
        Ok(self.images.raw_config(id)?)
    }

    fn images_disk_usage(&self) -> u64 {
        fn walk(path: &std::path::Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| match entry.file_type() {
                    Ok(kind) if kind.is_dir() => walk(&entry.path()),
                    _ => entry.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.config.root.join("images"))
    }

    /// `docker save`: writes the named images as one archive at `out`.
    pub async fn save_images(
        self: &std::sync::Arc<Self>,
        names: Vec<String>,
        out: std::path::PathBuf,
    ) -> Result<(), EngineError> {
        let mut images = Vec::new();
        for name in &names {
            let image = self.images.resolve(name)?;
            let tag = berth_image::reference::normalize(name)
                .ok()
                .map(|r| r.familiar())
                .filter(|tag| image.repo_tags.contains(tag));
            images.push((image, tag.into_iter().collect::<Vec<_>>()));
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&out).map_err(EngineError::io(&out))?;
            engine
                .images
                .save_docker_archive(&images, std::io::BufWriter::new(file))
                .map_err(EngineError::from)
        })
        .await
        .map_err(EngineError::panicked("saving images"))?
    }

    /// `GET /images/{name}/history`.
    pub fn image_history(&self, reference: &str) -> Result<Vec<HistoryEntry>, EngineError> {
        let image = self.images.resolve(reference)?;
        let raw = self.images.raw_config(&image.id)?;
        let history = raw["history"].as_array().cloned().unwrap_or_default();
        let layer_sizes: Vec<u64> = image
            .diff_ids
            .iter()
            .map(|d| self.images.layer_size(d))
            .collect();
        let mut layers = layer_sizes.into_iter();
        let mut entries: Vec<HistoryEntry> = history
            .iter()
            .map(|entry| {
                let empty = entry["empty_layer"].as_bool().unwrap_or(false);
                HistoryEntry {
                    id: "<missing>".into(),
                    created: entry["created"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.timestamp())
                        .unwrap_or(0),
                    created_by: entry["created_by"].as_str().unwrap_or("").to_owned(),
                    tags: Vec::new(),
                    size: if empty { 0 } else { layers.next().unwrap_or(0) },
                    comment: entry["comment"].as_str().unwrap_or("").to_owned(),
                }
            })
            .collect();
        if entries.is_empty() {
            // An image without history: one entry per layer.
            entries = layers
                .map(|size| HistoryEntry {
                    id: "<missing>".into(),
                    created: 0,
                    created_by: String::new(),
                    tags: Vec::new(),
                    size,
                    comment: String::new(),
                })
                .collect();
        }
        entries.reverse();
        if let Some(top) = entries.first_mut() {
            top.id = image.id.clone();
            top.tags = image.repo_tags.clone();
        }
        Ok(entries)
    }
}

/// The ids of every image that an image `keep` selects is built on (its `Parent`, the
/// parent's parent, ...).
pub fn ancestors_of(
    images: &[berth_image::ImageRecord],
    keep: impl Fn(&berth_image::ImageRecord) -> bool,
) -> std::collections::HashSet<String> {
    let parents: HashMap<&str, &str> = images
        .iter()
        .filter_map(|i| i.parent.as_deref().map(|p| (i.id.as_str(), p)))
        .collect();
    let mut needed = std::collections::HashSet::new();
    for image in images.iter().filter(|i| keep(i)) {
        let mut at = image.id.as_str();
        while let Some(parent) = parents.get(at) {
            if !needed.insert((*parent).to_owned()) {
                break;
            }
            at = parent;
        }
    }
    needed
}
