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
mod digest;
pub mod error;
mod ext4;
mod flatten;
pub mod reference;
mod remove;
mod save;
pub mod store;

pub use error::ImageError;
pub use reference::Reference;
pub use store::{ImageRecord, ImageStore, LoadedImage};

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
