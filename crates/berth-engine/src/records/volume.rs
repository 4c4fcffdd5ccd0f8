//! A volume's record, and a container's use of a volume.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub created_at: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub options: HashMap<String, String>,
    /// Made for a container (`-v /path`, an image's VOLUME) rather than by name.
    #[serde(default)]
    pub anonymous: bool,
    /// Where its data lives. Records from before shared volumes have none: disks.
    #[serde(default)]
    pub storage: VolumeStorage,
}

/// Where a volume's data lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeStorage {
    /// An ext4 disk image (`disk.raw`) attached to one running VM at a time, mounted by
    /// the guest's kernel: block speed for a single writer (`docker volume create
    /// --opt type=disk`).
    #[default]
    Disk,
    /// A host directory (`_data`, as Docker keeps it) that the host's file server shares
    /// with every running container that mounts the volume.
    Directory,
}

/// A container's use of a volume, or of a host path (a bind mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// The volume's name; empty for a bind mount.
    pub volume: String,
    /// A bind mount's host path (absolute, as given); `None` for a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_source: Option<String>,
    /// A bind mount's `bind-propagation` (accepted and shown; a share has no mounts of
    /// its own to propagate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
    /// Copy the image's content at `target` into the volume when it is empty.
    #[serde(default = "yes")]
    pub populate: bool,
    /// `--mount type=volume,volume-subpath=...`: mount this directory of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

impl MountRecord {
    /// A volume (named, or anonymous while `name` is empty) at `target`.
    pub fn volume(name: String, target: String) -> Self {
        Self {
            volume: name,
            bind_source: None,
            propagation: None,
            target,
            read_only: false,
            populate: true,
            subpath: None,
        }
    }

    /// A bind mount of the host path `source` at `target`.
    pub fn bind(source: String, target: String) -> Self {
        Self {
            bind_source: Some(source),
            populate: false,
            ..Self::volume(String::new(), target)
        }
    }
}

fn yes() -> bool {
    true
}
