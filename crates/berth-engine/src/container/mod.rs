//! Containers: the persistent record, the lifecycle table, the in-memory handle, and the
//! one transition function that changes a container's state.

mod handle;
mod record;
pub mod state;
mod transition;

pub use handle::{Attachment, StdinSink};
pub(crate) use handle::{ContainerHandle, LifecycleState, Runtime, StdinEvent};
#[cfg(test)]
pub(crate) use record::test_record;
pub use record::{ContainerRecord, StateRecord, ZERO_TIME};
pub use state::{ContainerStatus, Refusal, Transition};

#[cfg(test)]
mod tests;
