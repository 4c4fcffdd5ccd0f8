//! The build cache as `docker system df` shows it and `docker builder prune` frees it.
//!
//! Each cache entry is a step's image; its size is what that image adds to its parent
//! (the step's layer). Pruning forgets every entry and removes the entries' images that
//! nothing else keeps: not tagged, used by no container, and not under a kept image.

use std::collections::HashMap;

use crate::{Engine, EngineError};

/// One entry of the cache, as `GET /system/df` lists it (`BuildCache`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheUsage {
    #[serde(rename = "ID")]
    pub id: String,
    pub parent: String,
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub description: String,
    pub in_use: bool,
    pub shared: bool,
    pub size: u64,
    pub created_at: String,
    pub last_used_at: String,
    pub usage_count: u64,
}

fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Engine {
    /// The cache's entries whose images still exist.
    pub fn build_cache_usage(&self) -> Result<Vec<CacheUsage>, EngineError> {
        let images: HashMap<String, berth_image::ImageRecord> = self
            .images
            .list()?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let usage = self.image_usage();
        let mut rows = Vec::new();
        for (key, entry) in self.build_cache.entries() {
            let Some(image) = images.get(&entry.image) else {
                continue;
            };
            let parent_size = images.get(&entry.parent).map_or(0, |p| p.size);
            rows.push(CacheUsage {
                id: key[..12].to_owned(),
                parent: entry.parent.clone(),
                kind: "regular",
                description: entry.created_by.clone(),
                in_use: usage.contains_key(&entry.image),
                shared: !image.repo_tags.is_empty(),
                size: image.size.saturating_sub(parent_size),
                created_at: rfc3339(entry.created),
                last_used_at: rfc3339(entry.last_used),
                usage_count: entry.uses,
            });
        }
        Ok(rows)
    }

    /// `POST /build/prune`: forgets the cache; removes its images that nothing keeps.
    /// Returns the entries removed and the bytes freed.
    pub fn prune_build_cache(&self) -> Result<(Vec<String>, u64), EngineError> {
        let rows = self.build_cache_usage()?;
        let entries = self.build_cache.clear()?;
        let images = self.images.list()?;
        let usage = self.image_usage();
        let cached: std::collections::HashSet<&str> =
            entries.iter().map(|(_, e)| e.image.as_str()).collect();
        let needed = crate::images::ancestors_of(&images, |image| {
            usage.contains_key(&image.id)
                || !image.repo_tags.is_empty()
                || !cached.contains(image.id.as_str())
        });
        let sizes: HashMap<&str, u64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
        let mut freed = 0;
        for image in &images {
            if !cached.contains(image.id.as_str())
                || needed.contains(&image.id)
                || usage.contains_key(&image.id)
                || !image.repo_tags.is_empty()
            {
                continue;
            }
            self.images.delete(&image.id)?;
            let parent_size = image
                .parent
                .as_deref()
                .and_then(|p| sizes.get(p).copied())
                .unwrap_or(0);
            freed += image.size.saturating_sub(parent_size);
            self.events
                .emit("image", "delete", &image.id, HashMap::new());
        }
        Ok((rows.into_iter().map(|r| r.id).collect(), freed))
    }
}
