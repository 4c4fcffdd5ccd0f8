//! The state database: one redb file, `berth.redb`, in the daemon's root.
//!
//! ```text
//! table        key                          value
//! meta         "schema"                     the schema version, decimal (absent: 1)
//! containers   container id (64 hex)        a ContainerRecord, JSON
//! networks     network id (64 hex)          a NetworkRecord, JSON
//! volumes      volume name                  a VolumeRecord, JSON
//! quarantine   "<table>/<key>"              the bytes of a record that did not parse
//! ```
//!
//! The image store keeps its own tables (`images`, `tags`, `layer_digests`) in the same
//! file. Each write is one redb transaction, so a crash leaves either the old or the new
//! record, never half of one.
//!
//! Versions: 1 is the format before the schema was recorded (the same records, without
//! `meta`); 2 records the version and completes every record with its defaults. Opening
//! a database migrates it forward in one transaction ([`migrate`]); a database of a
//! newer schema than this berth knows is refused, not rewritten. A record that does not
//! parse is never dropped: it moves to `quarantine`, is logged, and `docker info` lists
//! it among its warnings.

mod migrate;
mod store;

pub use store::{Store, StoreError};

/// The schema this berth writes.
pub const SCHEMA_VERSION: u32 = 2;
