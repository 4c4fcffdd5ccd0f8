//! Berth's own record types: what the state database keeps ([`crate::state`]) and
//! what `docker inspect`, `ps` and the engine's verbs read. They depend on no other
//! module of the engine, so that containers, networks, volumes and the store can all
//! use them without depending on each other.
//!
//! One part is Docker's own: a container's `config` and `host_config` are the Engine
//! API's `ContainerConfig` and `HostConfig` (swagger: `ContainerConfig`, `HostConfig`), as
//! the client sent them merged with the image's defaults, because `docker inspect` must
//! give them back field for field. They are stored in the API's documented JSON, which is
//! versioned by the API itself; if a newer Berth ever reads them differently, that is a
//! schema migration (`state/migrate.rs`), and a record that still does not parse is
//! quarantined, never dropped.

mod container;
mod health;
mod network;
mod volume;

#[cfg(test)]
pub(crate) use container::test_record;
pub use container::{ContainerRecord, ContainerStatus, StateRecord, ZERO_TIME};
pub use health::{HealthResult, HealthState};
pub use network::{EndpointRecord, NetworkRecord, PortRecord, DEFAULT_NETWORK, NONE_NETWORK};
pub use volume::{MountRecord, VolumeRecord, VolumeStorage};
