//! Named and anonymous volumes. As VIC mapped volumes to virtual disks, each Berth volume
//! is a disk of its own: a sparse raw file `<root>/volumes/<name>/disk.raw` holding an ext4
//! filesystem, made with `mkfs.ext4` and never mounted by the host's kernel. A container's
//! volumes are attached to its VM (at boot, or hot-plugged into a clone before its setup)
//! and mounted by the agent; the data stays in the disk file across containers.
//!
//! A volume's ext4 can be mounted by one kernel at a time, so a volume is attached to one
//! running container at a time: starting a second container that uses a volume while
//! another running container has it is refused (409), where Docker would share a
//! directory. Host directory bind mounts are refused for the same reason and because the
//! host's files would have to be mounted into an untrusted guest.
//!
//! Records: table `volumes` (name → JSON [`VolumeRecord`]); a container's volumes are in
//! its record's `mounts`.

use std::collections::HashMap;
use std::path::PathBuf;

pub use crate::records::{MountRecord, VolumeRecord};

use crate::lock;
use crate::{now_rfc3339, Engine, EngineError};

/// Virtual size of a volume disk unless `docker volume create -o size=...` says otherwise.
const DEFAULT_VOLUME_SIZE: u64 = 16 << 30;

/// Adds a mount, refusing relative and duplicate mount points.
fn add_mount(mounts: &mut Vec<MountRecord>, mount: MountRecord) -> Result<(), EngineError> {
    if !mount.target.starts_with('/') || mount.target.split('/').any(|p| p == "..") {
        return Err(EngineError::InvalidArgument(format!(
            "invalid mount config: mount path {:?} must be absolute",
            mount.target
        )));
    }
    if mounts.iter().any(|m| m.target == mount.target) {
        return Err(EngineError::InvalidArgument(format!(
            "Duplicate mount point: {}",
            mount.target
        )));
    }
    mounts.push(mount);
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() >= 2
        && name.len() <= 255
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses `docker volume create -o size=10G` (also `10g`, `512m`, bytes).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text.as_str(), ""),
    };
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    number
        .checked_mul(1 << shift)
        .filter(|&size| size >= 16 << 20)
}

impl Engine {
    fn volume_dir(&self, name: &str) -> PathBuf {
        self.config.root.join("volumes").join(name)
    }

    /// The disk file of a volume.
    pub fn volume_disk(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("disk.raw")
    }

    /// `docker volume create`. An existing name returns that volume, as Docker does.
    pub async fn create_volume(
        &self,
        name: Option<&str>,
        driver: Option<&str>,
        labels: HashMap<String, String>,
        options: HashMap<String, String>,
        anonymous: bool,
    ) -> Result<VolumeRecord, EngineError> {
        if let Some(driver) = driver.filter(|d| !d.is_empty() && *d != "local") {
            return Err(EngineError::NotSupported(format!(
                "volume driver {driver:?}: Berth's volumes are disks of the local driver"
            )));
        }
        let name = match name.filter(|n| !n.is_empty()) {
            Some(name) if valid_name(name) => name.to_owned(),
            Some(name) => {
                return Err(EngineError::InvalidArgument(format!(
                    "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
                )))
            }
            None => crate::container::names::new_id(),
        };
        let _guard = self.volume_lock.lock().await;
        if let Some(existing) = self.volume(&name) {
            return Ok(existing);
        }
        let mut size = DEFAULT_VOLUME_SIZE;
        for (key, value) in &options {
            match key.as_str() {
                "size" => {
                    size = parse_size(value).ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "invalid volume size {value:?} (at least 16m, e.g. 10G)"
                        ))
                    })?
                }
                other => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid option {other:?} for a Berth volume (known: size)"
                    )))
                }
            }
        }
        let dir = self.volume_dir(&name);
        let staging = self
            .config
            .root
            .join("volumes")
            .join(format!(".new-{name}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(EngineError::io(&staging))?;
        let disk = staging.join("disk.raw");
        let made = async {
            let file = std::fs::File::create(&disk).map_err(EngineError::io(&disk))?;
            file.set_len(size).map_err(EngineError::io(&disk))?;
            drop(file);
            let output = tokio::process::Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(&disk)
                .output()
                .await
                .map_err(EngineError::io("mkfs.ext4"))?;
            if !output.status.success() {
                return Err(EngineError::Command {
                    what: "mkfs.ext4 for a volume".into(),
                    detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
            std::fs::rename(&staging, &dir).map_err(EngineError::io(&dir))
        };
        if let Err(error) = made.await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
        let record = VolumeRecord {
            name: name.clone(),
            created_at: now_rfc3339(),
            labels,
            options,
            anonymous,
        };
        if let Err(error) = self.store.put_volume(&record) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error.into());
        }
        lock(&self.volumes).insert(name.clone(), record.clone());
        self.events.emit(
            "volume",
            "create",
            &name,
            HashMap::from([("driver".into(), "local".into())]),
        );
        Ok(record)
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<VolumeRecord> {
        lock(&self.volumes).get(name).cloned()
    }

    /// All volumes, by name.
    pub fn list_volumes(&self) -> Vec<VolumeRecord> {
        let mut all: Vec<_> = lock(&self.volumes).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Ids of the containers whose records use `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        lock(&self.containers)
            .values()
            .filter(|h| lock(&h.record).mounts.iter().any(|m| m.volume == name))
            .map(|h| h.id.clone())
            .collect()
    }

    /// Bytes a volume's disk takes on the host.
    pub fn volume_usage(&self, name: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.volume_disk(name))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }

    /// `docker volume rm`: 409 while a container uses it (even with `force`, as Docker).
    pub async fn remove_volume(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let _guard = self.volume_lock.lock().await;
        if self.volume(name).is_none() {
            if force {
                return Ok(());
            }
            return Err(EngineError::NotFound(format!("get {name}: no such volume")));
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        self.store.delete_volume(name)?;
        lock(&self.volumes).remove(name);
        let dir = self.volume_dir(name);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), %error, "could not remove a volume's disk");
        }
        self.events.emit("volume", "destroy", name, HashMap::new());
        Ok(())
    }

    /// `docker volume prune`: unused anonymous volumes, or every unused one with `all`.
    /// Returns the names removed and the bytes freed.
    pub async fn prune_volumes(
        &self,
        all: bool,
        keep: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<(Vec<String>, u64), EngineError> {
        let mut removed = Vec::new();
        let mut freed = 0;
        for volume in self.list_volumes() {
            if (!all && !volume.anonymous)
                || keep(&volume)
                || !self.volume_users(&volume.name).is_empty()
            {
                continue;
            }
            let size = self.volume_usage(&volume.name);
            if self.remove_volume(&volume.name, false).await.is_ok() {
                freed += size;
                removed.push(volume.name);
            }
        }
        Ok((removed, freed))
    }

    /// The volumes a new container asks for: `-v name:/path[:ro]`, `--mount
    /// type=volume,...`, `-v /path` and the image's VOLUMEs (anonymous volumes, made now).
    pub(crate) async fn mounts_at_create(
        &self,
        host: &bollard_stubs::models::HostConfig,
        requested: &[String],
        image_volumes: &[String],
    ) -> Result<Vec<MountRecord>, EngineError> {
        let mut mounts: Vec<MountRecord> = Vec::new();
        let bind_refused = |source: &str| {
            EngineError::NotSupported(format!(
                "bind mounts of host paths ({source}) are not supported: each container runs in its own VM and Berth never shares the host's files with it; use a named volume (-v NAME:/path) and docker cp"
            ))
        };
        let mut named = Vec::new();
        for bind in host.binds.iter().flatten() {
            let parts: Vec<&str> = bind.split(':').collect();
            let (source, target, options) = match parts.as_slice() {
                [source, target] => (*source, *target, ""),
                [source, target, options] => (*source, *target, *options),
                _ => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid volume specification: '{bind}'"
                    )))
                }
            };
            if source.starts_with('/') || source.starts_with('.') {
                return Err(bind_refused(source));
            }
            let mut read_only = false;
            let mut populate = true;
            for option in options.split(',').filter(|o| !o.is_empty()) {
                match option {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    "nocopy" => populate = false,
                    "z" | "Z" => {}
                    other => {
                        return Err(EngineError::InvalidArgument(format!(
                            "invalid mode: {other} in '{bind}'"
                        )))
                    }
                }
            }
            named.push(source.to_owned());
            add_mount(
                &mut mounts,
                MountRecord {
                    volume: source.to_owned(),
                    target: target.to_owned(),
                    read_only,
                    populate,
                },
            )?;
        }
        for mount in host.mounts.iter().flatten() {
            use bollard_stubs::models::MountType;
            let target = mount.target.clone().unwrap_or_default();
            match mount.typ {
                Some(MountType::VOLUME) => {}
                Some(MountType::BIND) => {
                    return Err(bind_refused(mount.source.as_deref().unwrap_or("")))
                }
                other => {
                    return Err(EngineError::NotSupported(format!(
                        "--mount type={} is not supported (Berth mounts volumes; use --tmpfs for tmpfs)",
                        other.map(|t| t.to_string()).unwrap_or_default()
                    )))
                }
            }
            let populate = !mount
                .volume_options
                .as_ref()
                .and_then(|o| o.no_copy)
                .unwrap_or(false);
            match mount.source.as_deref().filter(|s| !s.is_empty()) {
                Some(source) => {
                    named.push(source.to_owned());
                    add_mount(
                        &mut mounts,
                        MountRecord {
                            volume: source.to_owned(),
                            target,
                            read_only: mount.read_only.unwrap_or(false),
                            populate,
                        },
                    )?;
                }
                None => add_mount(
                    &mut mounts,
                    MountRecord {
                        volume: String::new(),
                        target,
                        read_only: mount.read_only.unwrap_or(false),
                        populate,
                    },
                )?,
            }
        }
        // `-v /path` and the image's VOLUMEs, unless something is mounted there already.
        for target in requested.iter().chain(image_volumes) {
            if mounts.iter().any(|m| &m.target == target) {
                continue;
            }
            add_mount(
                &mut mounts,
                MountRecord {
                    volume: String::new(),
                    target: target.clone(),
                    read_only: false,
                    populate: true,
                },
            )?;
        }
        if mounts.len() > berth_vm::MAX_VOLUMES {
            return Err(EngineError::InvalidArgument(format!(
                "a container's VM takes at most {} volumes",
                berth_vm::MAX_VOLUMES
            )));
        }
        // Named volumes are made on first use, as Docker does; anonymous ones now.
        for mount in &mut mounts {
            let anonymous = mount.volume.is_empty();
            let name = (!anonymous).then_some(mount.volume.as_str());
            let volume = self
                .create_volume(name, None, HashMap::new(), HashMap::new(), anonymous)
                .await?;
            mount.volume = volume.name;
        }
        Ok(mounts)
    }

    /// Refuses to start a container whose volume another running container has attached.
    pub(crate) fn check_volumes_free(
        &self,
        id: &str,
        mounts: &[MountRecord],
    ) -> Result<(), EngineError> {
        for mount in mounts {
            if self.volume(&mount.volume).is_none() {
                return Err(EngineError::NotFound(format!(
                    "get {}: no such volume",
                    mount.volume
                )));
            }
            let holder = lock(&self.containers).values().find_map(|h| {
                (h.id != id
                    && h.runtime().is_some()
                    && lock(&h.record)
                        .mounts
                        .iter()
                        .any(|m| m.volume == mount.volume))
                .then(|| h.id.clone())
            });
            if let Some(holder) = holder {
                return Err(EngineError::Conflict(format!(
                    "volume {} is attached to running container {}: a volume's disk is mounted by one container's VM at a time",
                    mount.volume,
                    &holder[..12]
                )));
            }
        }
        Ok(())
    }

    /// Removes a removed container's anonymous volumes (`docker rm -v`, `--rm`).
    pub(crate) async fn remove_anonymous_volumes(&self, mounts: &[MountRecord]) {
        for mount in mounts {
            if self.volume(&mount.volume).is_some_and(|v| v.anonymous) {
                if let Err(error) = self.remove_volume(&mount.volume, false).await {
                    tracing::warn!(volume = %mount.volume, error = %crate::error_chain(&error), "could not remove an anonymous volume");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes_are_checked_as_docker_does() {
        assert!(valid_name("data"));
        assert!(valid_name("my_vol.1-a"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("a/b"));
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1gib"), Some(1 << 30));
        assert_eq!(parse_size("1k"), None);
        assert_eq!(parse_size("lots"), None);
    }
}
