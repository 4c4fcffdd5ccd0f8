//! A container's files: copying in and out (the archive API, export), its changes
//! against its image (`diff`, `commit`), and volumes.

mod archive;
pub mod changes;
pub mod volumes;
