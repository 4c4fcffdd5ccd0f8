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
}

/// A container's use of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub volume: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
    /// Copy the image's content at `target` into the volume when it is empty.
    #[serde(default = "yes")]
    pub populate: bool,
}

fn yes() -> bool {
    true
}
