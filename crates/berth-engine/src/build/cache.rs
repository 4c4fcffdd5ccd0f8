//! The build cache: which image a build step made from which parent.
//!
//! A step is reused when its key matches: the sha256 of the parent image's id, the
//! step's history line (for COPY and ADD it names the checksum of the files taken), the
//! config the step leaves (environment, user, working directory, shell, ...), the build
//! arguments a RUN sees, and its author; as Docker's classic builder decides by parent
//! and config. The entries live in `<root>/build/cache.json` (written whole to a
//! temporary file, synced and renamed, so a crash leaves the old or the new file), and
//! so survive restarts. An entry whose image is gone is a miss.
//!
//! The file is Berth's own and trusted no more than the disk: one that does not parse is
//! set aside as `cache.json.corrupt` and the cache starts empty.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{lock, EngineError};

/// One cached step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheEntry {
    /// The image the step made.
    pub image: String,
    /// The image it made it from (empty for `FROM scratch`).
    pub parent: String,
    /// The step's history line.
    pub created_by: String,
    /// Unix seconds.
    pub created: i64,
    pub last_used: i64,
    pub uses: u64,
}

/// The step that a key is computed from.
#[derive(Debug, Serialize)]
pub(crate) struct StepKey<'a> {
    pub parent: &'a str,
    pub created_by: &'a str,
    pub config: &'a serde_json::Value,
    pub run_env: &'a [String],
    pub author: &'a str,
}

impl StepKey<'_> {
    pub(crate) fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// The cache, loaded once per engine.
#[derive(Debug)]
pub(crate) struct BuildCache {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, CacheEntry>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl BuildCache {
    pub(crate) fn open(dir: &Path) -> Self {
        let path = dir.join("cache.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(entries) => entries,
                Err(error) => {
                    let aside = dir.join("cache.json.corrupt");
                    tracing::warn!(%error, path = %path.display(), "the build cache does not parse; set aside, starting empty");
                    let _ = std::fs::rename(&path, aside);
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Self {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// The image cached for `key`, if any (its use recorded).
    pub(crate) fn lookup(&self, key: &str) -> Option<String> {
        let mut entries = lock(&self.entries);
        let entry = entries.get_mut(key)?;
        entry.last_used = now();
        entry.uses += 1;
        Some(entry.image.clone())
    }

    /// Forgets `key` (its image is gone).
    pub(crate) fn forget(&self, key: &str) -> Result<(), EngineError> {
        let removed = lock(&self.entries).remove(key).is_some();
        if removed {
            self.save()?;
        }
        Ok(())
    }

    pub(crate) fn insert(
        &self,
        key: String,
        image: &str,
        parent: &str,
        created_by: &str,
    ) -> Result<(), EngineError> {
        let time = now();
        lock(&self.entries).insert(
            key,
            CacheEntry {
                image: image.to_owned(),
                parent: parent.to_owned(),
                created_by: created_by.to_owned(),
                created: time,
                last_used: time,
                uses: 0,
            },
        );
        self.save()
    }

    pub(crate) fn entries(&self) -> Vec<(String, CacheEntry)> {
        lock(&self.entries)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Removes every entry; returns them.
    pub(crate) fn clear(&self) -> Result<Vec<(String, CacheEntry)>, EngineError> {
        let taken = std::mem::take(&mut *lock(&self.entries));
        self.save()?;
        Ok(taken.into_iter().collect())
    }

    /// Writes the entries: a temporary file, synced, renamed over the old one.
    pub(crate) fn save(&self) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(&*lock(&self.entries)).unwrap_or_default();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(EngineError::io(dir))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(EngineError::io(dir))?;
        file.write_all(&bytes)
            .and_then(|()| file.as_file().sync_all())
            .map_err(EngineError::io(&self.path))?;
        file.persist(&self.path)
            .map_err(|e| EngineError::io(&self.path)(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_corruption_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BuildCache::open(dir.path());
        assert_eq!(cache.lookup("k"), None);
        cache
            .insert("k".into(), "sha256:1", "sha256:0", "RUN x")
            .unwrap();
        let again = BuildCache::open(dir.path());
        assert_eq!(again.lookup("k").as_deref(), Some("sha256:1"));
        again.forget("k").unwrap();
        assert_eq!(BuildCache::open(dir.path()).lookup("k"), None);

        std::fs::write(dir.path().join("cache.json"), b"{not json").unwrap();
        let fresh = BuildCache::open(dir.path());
        assert!(fresh.entries().is_empty());
        assert!(dir.path().join("cache.json.corrupt").exists());
    }

    #[test]
    fn keys_change_with_every_part() {
        let config = serde_json::json!({"Env": ["A=1"]});
        let base = StepKey {
            parent: "p",
            created_by: "RUN x",
            config: &config,
            run_env: &[],
            author: "",
        };
        let other_config = serde_json::json!({"Env": ["A=2"]});
        let args = ["B=1".to_owned()];
        let keys = [
            base.digest(),
            StepKey {
                parent: "q",
                ..base
            }
            .digest(),
            StepKey {
                created_by: "RUN y",
                ..base
            }
            .digest(),
            StepKey {
                config: &other_config,
                ..base
            }
            .digest(),
            StepKey {
                run_env: &args,
                ..base
            }
            .digest(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
