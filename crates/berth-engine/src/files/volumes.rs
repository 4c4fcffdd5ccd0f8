//! Named and anonymous volumes, kept one of two ways ([`VolumeStorage`]):
//!
//! - **directory** (the default): `<root>/volumes/<name>/_data`, as Docker's local driver
//!   keeps it, shared with every running container that mounts it through the host's
//!   file server (see `shares`): any number of containers use it at once;
//! - **disk** (`docker volume create --opt type=disk`, and every volume made before
//!   shared volumes): a sparse raw file `<root>/volumes/<name>/disk.raw` holding an ext4
//!   filesystem, made with `mkfs.ext4` and never mounted by the host's kernel, attached to
//!   the container's VM as a virtio-blk disk (at boot, or hot-plugged into a clone) and
//!   mounted by the guest's kernel. Block speed, but ext4 has one kernel at a time: a
//!   second running container that mounts it is refused (409).
//!
//! Host bind mounts (`-v /host/path:/path`, `--mount type=bind`) are shares too; their
//! records carry the host path.
//!
//! Records: table `volumes` (name → JSON [`VolumeRecord`]); a container's volumes and
//! binds are in its record's `mounts`.

use std::collections::HashMap;
use std::path::PathBuf;

pub use crate::records::{MountRecord, VolumeRecord, VolumeStorage};

use crate::lock;
use crate::{now_rfc3339, Engine, EngineError};

/// Virtual size of a volume disk unless `docker volume create -o size=...` says otherwise.
const DEFAULT_VOLUME_SIZE: u64 = 16 << 30;

/// Makes a volume's disk: a sparse file of `size` bytes holding a new ext4 filesystem.
async fn make_disk(disk: &std::path::Path, size: u64) -> Result<(), EngineError> {
    let file = std::fs::File::create(disk).map_err(EngineError::io(disk))?;
    file.set_len(size).map_err(EngineError::io(disk))?;
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
        .arg(disk)
        .output()
        .await
        .map_err(EngineError::io("mkfs.ext4"))?;
    if !output.status.success() {
        return Err(EngineError::Command {
            what: "mkfs.ext4 for a volume".into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Bytes the files under `path` take (allocated blocks; symlinks not followed, each
/// inode counted once).
fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut pending = vec![path.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
    }
    total
}

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

/// One `-v SOURCE:TARGET[:OPTIONS]` (HostConfig.Binds entry), as Docker reads it.
fn parse_bind(bind: &str) -> Result<MountRecord, EngineError> {
    let invalid =
        || EngineError::InvalidArgument(format!("invalid volume specification: '{bind}'"));
    let parts: Vec<&str> = bind.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => return Err(invalid()),
    };
    if source.is_empty() || target.is_empty() {
        return Err(invalid());
    }
    let is_bind = source.starts_with('/');
    let mut mount = if is_bind {
        MountRecord::bind(source.to_owned(), target.to_owned())
    } else {
        MountRecord::volume(source.to_owned(), target.to_owned())
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => mount.read_only = true,
            "rw" => mount.read_only = false,
            "nocopy" if !is_bind => mount.populate = false,
            "z" | "Z" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" if is_bind => {
                mount.propagation = Some(option.to_owned())
            }
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid mode: {other} in '{bind}'"
                )))
            }
        }
    }
    Ok(mount)
}

/// One `--mount` (HostConfig.Mounts entry) of type bind or volume.
fn parse_mount(mount: &bollard_stubs::models::Mount) -> Result<MountRecord, EngineError> {
    use bollard_stubs::models::MountType;
    let target = mount.target.clone().unwrap_or_default();
    let source = mount.source.clone().filter(|s| !s.is_empty());
    let read_only = mount.read_only.unwrap_or(false);
    match mount.typ {
        Some(MountType::BIND) => {
            let Some(source) = source else {
                return Err(EngineError::InvalidArgument(
                    "invalid mount config for type \"bind\": field Source must not be empty".into(),
                ));
            };
            if !source.starts_with('/') {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid mount config for type \"bind\": invalid mount path: '{source}' mount path must be absolute"
                )));
            }
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {source}"
                )));
            }
            let mut record = MountRecord::bind(source, target);
            record.read_only = read_only;
            record.propagation = mount
                .bind_options
                .as_ref()
                .and_then(|o| o.propagation)
                .map(|p| p.to_string())
                .filter(|p| !p.is_empty());
            Ok(record)
        }
        Some(MountType::VOLUME) => {
            let options = mount.volume_options.as_ref();
            let mut record = MountRecord::volume(source.unwrap_or_default(), target);
            record.read_only = read_only;
            record.populate = !options.and_then(|o| o.no_copy).unwrap_or(false);
            record.subpath = options
                .and_then(|o| o.subpath.clone())
                .filter(|s| !s.is_empty());
            if let Some(subpath) = &record.subpath {
                if subpath.starts_with('/') || subpath.split('/').any(|p| p == "..") {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid mount config for type \"volume\": subpath must be a relative path within the volume: {subpath}"
                    )));
                }
            }
            Ok(record)
        }
        other => Err(EngineError::NotSupported(format!(
            "--mount type={} is not supported (Berth mounts volumes and binds; use --tmpfs for tmpfs)",
            other.map(|t| t.to_string()).unwrap_or_default()
        ))),
    }
}

impl Engine {
    fn volume_dir(&self, name: &str) -> PathBuf {
        self.config.root.join("volumes").join(name)
    }

    /// The disk file of a volume.
    pub fn volume_disk(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("disk.raw")
    }

    /// The data directory of a volume kept as a directory.
    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("_data")
    }

    /// Where a volume's data is on the host (`Mountpoint` in `docker volume inspect`).
    pub fn volume_mountpoint(&self, volume: &VolumeRecord) -> PathBuf {
        match volume.storage {
            VolumeStorage::Directory => self.volume_data(&volume.name),
            VolumeStorage::Disk => self.volume_disk(&volume.name),
        }
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
            // Any driver but "local" is a plugin: dockerd answers 404 when it has none.
            return Err(EngineError::NotFound(format!(
                "error looking up volume plugin {driver}: plugin {driver:?} not found (Berth's volumes are of the local driver)"
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
        let mut storage = VolumeStorage::Directory;
        for (key, value) in &options {
            match (key.as_str(), value.as_str()) {
                ("type", "disk") => storage = VolumeStorage::Disk,
                ("type", "directory") => storage = VolumeStorage::Directory,
                ("type", other) => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid volume type {other:?}: Berth's volumes are type=directory (shared, the default) or type=disk (one container at a time, block speed)"
                    )))
                }
                ("size", value) => {
                    size = parse_size(value).ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "invalid volume size {value:?} (at least 16m, e.g. 10G)"
                        ))
                    })?
                }
                (other, _) => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid option {other:?} for a Berth volume (known: type=directory|disk, size for a disk)"
                    )))
                }
            }
        }
        if options.contains_key("size") && storage != VolumeStorage::Disk {
            return Err(EngineError::InvalidArgument(
                "the size option is for disk volumes: add --opt type=disk".into(),
            ));
        }
        let dir = self.volume_dir(&name);
        let staging = self
            .config
            .root
            .join("volumes")
            .join(format!(".new-{name}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(EngineError::io(&staging))?;
        let made = async {
            match storage {
                VolumeStorage::Disk => make_disk(&staging.join("disk.raw"), size).await?,
                VolumeStorage::Directory => {
                    let data = staging.join("_data");
                    std::fs::create_dir(&data).map_err(EngineError::io(&data))?;
                }
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
            storage,
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

    /// Bytes a volume takes on the host (its disk file, or the files in its directory).
    pub fn volume_usage(&self, name: &str) -> u64 {
        disk_usage(&self.volume_dir(name))
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

    /// The mounts a new container asks for: `-v SOURCE:/path[:OPTIONS]` (a host path
    /// when SOURCE is absolute, else a volume name), `--mount type=bind|volume,...`,
    /// `--volumes-from C[:ro|:rw]`, `-v /path` and the image's VOLUMEs (anonymous volumes,
    /// made now), in Docker's order of precedence: explicit mounts, then those from other
    /// containers, then anonymous ones where nothing is mounted yet.
    pub(crate) async fn mounts_at_create(
        &self,
        host: &bollard_stubs::models::HostConfig,
        requested: &[String],
        image_volumes: &[String],
    ) -> Result<Vec<MountRecord>, EngineError> {
        let mut mounts: Vec<MountRecord> = Vec::new();
        for bind in host.binds.iter().flatten() {
            add_mount(&mut mounts, parse_bind(bind)?)?;
        }
        for mount in host.mounts.iter().flatten() {
            add_mount(&mut mounts, parse_mount(mount)?)?;
        }
        for from in host.volumes_from.iter().flatten() {
            let (reference, mode) = match from.rsplit_once(':') {
                Some((reference, mode @ ("ro" | "rw"))) => (reference, Some(mode == "ro")),
                Some(_) => {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid mode for volumes-from: {from}"
                    )))
                }
                None => (from.as_str(), None),
            };
            let source = self.lookup(reference)?.snapshot();
            for mount in source.mounts {
                if mounts.iter().any(|m| m.target == mount.target) {
                    continue;
                }
                let read_only = mode.unwrap_or(mount.read_only);
                mounts.push(MountRecord {
                    read_only,
                    populate: false,
                    ..mount
                });
            }
        }
        // `-v /path` and the image's VOLUMEs, unless something is mounted there already.
        for target in requested.iter().chain(image_volumes) {
            if mounts.iter().any(|m| &m.target == target) {
                continue;
            }
            add_mount(
                &mut mounts,
                MountRecord::volume(String::new(), target.clone()),
            )?;
        }
        // Named volumes are made on first use, as Docker does; anonymous ones now; a
        // missing bind source of `-v` is made as a directory (`--mount` refuses it).
        for mount in &mut mounts {
            if let Some(source) = &mount.bind_source {
                if std::fs::symlink_metadata(source).is_err() {
                    std::fs::create_dir_all(source).map_err(EngineError::io(source))?;
                }
                continue;
            }
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
        for mount in mounts.iter().filter(|m| m.bind_source.is_none()) {
            match self.volume(&mount.volume) {
                None => {
                    return Err(EngineError::NotFound(format!(
                        "get {}: no such volume",
                        mount.volume
                    )))
                }
                Some(volume) if volume.storage == VolumeStorage::Directory => continue,
                Some(_) => {}
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
                    "volume {} is attached to running container {}: a disk volume (type=disk) is mounted by one container's VM at a time; volumes of type directory (the default) are shared",
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
