//! Berth's own record types: what the state database keeps ([`crate::state`]) and
//! what `docker inspect`, `ps` and the engine's verbs read. They depend on no other
//! module of the engine, so that containers, networks, volumes and the store can all
//! use them without depending on each other.

mod container;
mod health;
mod network;
mod volume;

#[cfg(test)]
pub(crate) use container::test_record;
pub use container::{ContainerRecord, ContainerStatus, StateRecord, ZERO_TIME};
pub use health::{HealthResult, HealthState};
pub use network::{EndpointRecord, NetworkRecord, PortRecord, DEFAULT_NETWORK, NONE_NETWORK};
pub use volume::{MountRecord, VolumeRecord};
