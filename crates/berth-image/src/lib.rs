//! Berth's image store.
//!
//! Loads images from docker-archive tarballs (`docker save`, `skopeo copy …
//! docker-archive:`), keeps their configs and uncompressed layers as content-addressed
//! blobs, records images and tags in redb tables of the engine's database, resolves
//! references the way Docker does, and materialises an image's root filesystem as a
//! cached ext4 image file (each container's VM boots on a copy-on-write overlay of it).
//!
//! Modules, by concern:
//!
//! * [`store`]: the [`ImageStore`], its on-disk layout and the database tables;
//! * [`reference`]: the image reference parsing and Docker's normalisation;
//! * [`registry`]: pull, push and login over the OCI distribution API;
//! * `archive`: reading and verifying docker-archive tarballs;
//! * `flatten`: applying layer tars (with OCI whiteouts) onto a directory, safely;
//! * `ext4`: building the ext4 image with `mkfs.ext4 -d`;
//! * `digest`: sha256 helpers;
//! * [`error`]: the error type, [`ImageError`].
//!
//! Everything here is blocking file-system and database work: async callers should run
//! it on a blocking thread. The store expects to run as root (it recreates files with
//! their owners, and device nodes).

mod archive;
mod derive;
mod digest;
pub mod error;
mod ext4;
mod flatten;
mod import;
mod mount_points;
pub mod reference;
pub mod registry;
mod remove;
mod save;
pub mod store;

pub use archive::open_decompressed;
pub use derive::DeriveSpec;
pub use error::ImageError;
pub use flatten::extract_build_context;
pub use reference::Reference;
pub use registry::{Credentials, RegistryOptions};
pub use store::{ImageRecord, ImageStore, LoadedImage};

/// One step of a pull or push, in the terms of Docker's JSON progress messages: a status
/// (`Pulling fs layer`, `Pushed`, `Digest: sha256:…`) for a layer (`id`, the first 12 hex
/// digits of its digest) or for the whole operation (`id` `None`), with byte counts while
/// data moves (`Downloading`, `Extracting`, `Pushing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The layer (or the tag, for a pull's first line); `None` for the whole operation.
    pub id: Option<String>,
    /// What is happening.
    pub status: String,
    /// Bytes done so far, while data moves.
    pub current: Option<u64>,
    /// Bytes in all, when known.
    pub total: Option<u64>,
}

impl Progress {
    pub(crate) fn status(id: Option<String>, status: String) -> Self {
        Self {
            id,
            status,
            current: None,
            total: None,
        }
    }

    pub(crate) fn bytes(id: &str, action: &str, current: u64, total: Option<u64>) -> Self {
        Self {
            id: Some(id.to_owned()),
            status: action.to_owned(),
            current: Some(current),
            total,
        }
    }
}

/// An error with its whole chain of causes (`a: b: c`), for logs and API messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    /// The engine shares the store across threads and sends errors between them.
    #[test]
    fn thread_safety() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::ImageStore>();
        assert_send_sync::<crate::ImageError>();
        assert_send_sync::<crate::ImageRecord>();
    }
}
