//! The image store's single error type.
//!
//! Contract: every fallible function in this crate returns [`ImageError`]. Display
//! messages describe what failed in words a Docker user can read; the underlying cause
//! (an I/O error, a redb error, a JSON error) is kept in `#[source]` and is *not*
//! repeated in the message, so callers that print the whole chain (`a: b: c`) get each
//! piece once.

use std::path::PathBuf;

/// Errors from loading, resolving and materialising images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches the reference (name, id or id prefix). Holds the reference as given.
    #[error("No such image: {0}")]
    NotFound(String),
    /// The docker-archive (or a layer in it) is malformed or incomplete.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// A JSON document in an archive (manifest.json, an image config) failed to parse.
    #[error("invalid image archive: cannot parse {what}")]
    InvalidJson {
        /// Which document, e.g. `manifest.json` or `config 3a1b….json`.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A string is not a valid image reference (`name[:tag][@digest]`).
    #[error("invalid reference format: {0}")]
    InvalidReference(String),
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the archive/config promised.
        expected: String,
        /// The digest of the bytes actually read.
        actual: String,
    },
    /// An archive or layer entry tried to reach outside its tree (`..`, hostile links).
    #[error("unsafe path in image archive: {0}")]
    UnsafePath(String),
    /// Something valid that this store does not handle (e.g. zstd-compressed layers).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file-system operation failed.
    #[error("I/O error on {path}")]
    Io {
        /// The path operated on (or the program that was run).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The redb database failed (boxed: redb's error is large).
    #[error("image database error")]
    Db(#[source] Box<redb::Error>),
    /// A stored image record could not be (de)serialised.
    #[error("corrupt image record for {id}")]
    Record {
        /// The image id (or tag) whose record is bad.
        id: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The registry has no manifest (or no repository) by that name. Holds the reference.
    #[error("manifest for {0} not found: manifest unknown")]
    ManifestUnknown(String),
    /// The registry refused to serve the repository (missing or wrong credentials, or no
    /// such repository on a registry that does not say which).
    #[error("pull access denied for {0}, repository does not exist or may require 'docker login'")]
    PullAccessDenied(String),
    /// The registry refused the credentials (or their absence) for a push or a login.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Talking to a registry failed (connection, protocol, or an error it answered with).
    #[error("registry {registry}")]
    Registry {
        /// The registry host (`127.0.0.1:5000`, `docker.io`).
        registry: String,
        /// What the client library reported.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// A registry answered with something that breaks the distribution protocol (a
    /// manifest of an unknown kind, a layer count that disagrees with the config).
    #[error("registry {registry} sent an invalid {what}: {detail}")]
    BadRegistryResponse {
        /// The registry host.
        registry: String,
        /// What was invalid (`manifest`, `image config`).
        what: String,
        /// Why.
        detail: String,
    },
    /// mkfs.ext4 failed; holds its exit status and stderr.
    #[error("building the ext4 root filesystem failed: {0}")]
    Mkfs(String),
}

impl ImageError {
    /// A closure turning an `io::Error` into [`ImageError::Io`] for `path`, for `map_err`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

macro_rules! from_redb {
    ($($ty:ty),* $(,)?) => {
        $(
            impl From<$ty> for ImageError {
                fn from(error: $ty) -> Self {
                    Self::Db(Box::new(error.into()))
                }
            }
        )*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);
