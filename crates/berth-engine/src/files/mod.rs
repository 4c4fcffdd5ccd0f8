//! A container's files: copying in and out (the archive API, export), its changes
//! against its image (`diff`, `commit`), volumes, and the shares that serve bind mounts
//! and directory volumes to a VM.

mod archive;
pub mod changes;
pub mod shares;
pub mod volumes;
