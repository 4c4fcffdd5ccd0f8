//! VMs the engine makes besides a container's own run: templates (booted once and
//! snapshotted, cloned by starts) and the short-lived copy VM that reads or writes a
//! stopped container's disk.

pub(crate) mod copy_vm;
pub(crate) mod spares;
pub mod template;
pub mod template_state;
