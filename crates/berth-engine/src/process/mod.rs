//! What runs in a running container's VM, seen from the host: exec instances, the
//! process table (`top`), the output hub and json-file log (logs, attach), and I/O
//! counters (`stats`).

pub mod exec;
pub mod io_stats;
pub(crate) mod output;
mod top;
