//! Tags and removal: `docker tag`, `docker rmi` (untag, delete), and the clean-up of
//! blobs no image uses any more.
//!
//! Deleting an image removes its record and tags in one transaction, then the files
//! only it used: its config blob, its cached ext4 root filesystem, and layer blobs no
//! remaining image lists. A crash in between leaves unreferenced files, never a record
//! without its files.

use std::collections::HashSet;
use std::fs;

use redb::ReadableTable;

use crate::digest::parse_sha256;
use crate::error::ImageError;
use crate::reference;
use crate::store::{ImageRecord, ImageStore, IMAGES, TAGS};

impl ImageStore {
    /// Points `target` (`name[:tag]`; `latest` if no tag) at image `id`; returns the tag
    /// as Docker shows it.
    pub fn tag(&self, id: &str, target: &str) -> Result<String, ImageError> {
        let reference = reference::normalize(target)?;
        if reference.digest.is_some() {
            return Err(ImageError::InvalidReference(format!(
                "{target:?}: refusing to create a tag with a digest reference"
            )));
        }
        let txn = self.db.begin_write()?;
        {
            let images = txn.open_table(IMAGES)?;
            if images.get(id)?.is_none() {
                return Err(ImageError::NotFound(id.to_owned()));
            }
            let mut tags = txn.open_table(TAGS)?;
            tags.insert(reference.canonical().as_str(), id)?;
        }
        txn.commit()?;
        Ok(reference.familiar())
    }

    /// Removes one tag; returns the image it pointed at, or `None` if there was no such tag.
    pub fn untag(&self, name: &str) -> Result<Option<String>, ImageError> {
        let Ok(reference) = reference::normalize(name) else {
            return Ok(None);
        };
        let txn = self.db.begin_write()?;
        let id = {
            let mut tags = txn.open_table(TAGS)?;
            let removed = tags.remove(reference.canonical().as_str())?;
            removed.map(|id| id.value().to_owned())
        };
        txn.commit()?;
        Ok(id)
    }

    /// Deletes an image's record and tags, then the files nothing else uses. Returns the
    /// tags it had, as Docker shows them.
    pub fn delete(&self, id: &str) -> Result<Vec<String>, ImageError> {
        let txn = self.db.begin_write()?;
        let untagged = {
            let mut tags = txn.open_table(TAGS)?;
            let mine: Vec<String> = tags
                .iter()?
                .filter_map(Result::ok)
                .filter(|(_, target)| target.value() == id)
                .map(|(name, _)| name.value().to_owned())
                .collect();
            for name in &mine {
                tags.remove(name.as_str())?;
            }
            let mut images = txn.open_table(IMAGES)?;
            if images.remove(id)?.is_none() {
                return Err(ImageError::NotFound(id.to_owned()));
            }
            mine
        };
        txn.commit()?;
        self.collect_garbage()?;
        Ok(untagged
            .iter()
            .filter_map(|name| reference::normalize(name).ok())
            .map(|r| r.familiar())
            .collect())
    }

    /// Bytes of a layer's uncompressed tar (0 if it is not stored).
    pub fn layer_size(&self, diff_id: &str) -> u64 {
        parse_sha256(diff_id)
            .and_then(|hex| fs::metadata(self.blobs_dir().join(hex)).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Removes blobs and cached root filesystems that no image uses.
    pub fn collect_garbage(&self) -> Result<u64, ImageError> {
        let images: Vec<ImageRecord> = self.list()?;
        let mut used: HashSet<String> = HashSet::new();
        for image in &images {
            if let Some(hex) = parse_sha256(&image.id) {
                used.insert(hex.to_owned());
            }
            for diff_id in &image.diff_ids {
                if let Some(hex) = parse_sha256(diff_id) {
                    used.insert(hex.to_owned());
                }
            }
        }
        let mut freed = 0;
        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs)
            .map_err(ImageError::io(&blobs))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !used.contains(&name) {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(entry.path());
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<hex>.ext4`, and files the engine keeps beside it (`<hex>.ext4.*`).
            let hex = name.split('.').next().unwrap_or(&name);
            if !images.iter().any(|i| parse_sha256(&i.id) == Some(hex)) {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(freed)
    }
}
