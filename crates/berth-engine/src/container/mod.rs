//! Containers: their records' lifecycle table, the in-memory handle, the one transition
//! function that changes a container's state, and the verbs over them (create, stop,
//! kill, pause, remove, wait, attach, logs, restart, rename, update, prune), with the
//! settings a container's guest gets (security, guest configuration, health checks).

mod agent_request;
mod cpu;
mod create;
pub(crate) mod guest_config;
mod handle;
pub mod health;
pub(crate) mod lifecycle;
pub mod links;
mod manage;
mod memory;
pub(crate) mod names;
pub(crate) mod restart;
pub(crate) mod security;
pub mod state;
mod transition;

pub use crate::records::{ContainerRecord, ContainerStatus, StateRecord, ZERO_TIME};
pub use handle::{Attachment, StdinSink};
pub(crate) use handle::{ContainerHandle, LifecycleState, Runtime, StdinEvent};
pub use state::{Refusal, Transition};
#[cfg(test)]
mod tests;
