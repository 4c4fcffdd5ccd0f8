//! Berth as a containerd runtime: `containerd-shim-berth-v2`, the runtime
//! `io.containerd.berth.v2`.
//!
//! containerd starts one shim process per task (`start`), talks to it over ttrpc with
//! the task API (`containerd.task.v2.Task`: create, start, wait, kill, exec, ...), and
//! runs it once more to clean up after a shim that died (`delete`). Berth's shim runs
//! each task in a VM of its own, a clone of Berth's template ([`berth_engine::sandbox`]):
//! the root filesystem containerd prepared (its snapshotter's overlay, mounted on the
//! host by the shim at `<bundle>/rootfs`, from host directories) is served to the guest
//! as a share, the task's init and execs are processes of the guest's agent, and their
//! standard streams are relayed to containerd's FIFOs.
//!
//! Modules: [`flags`] (the command line), `launch` (the `start` and `delete` actions),
//! `serve` (the ttrpc server), `service` (the task API), `process` (a task's process
//! and its phases), `spec` (the OCI process as a guest process), `rootfs` (containerd's
//! rootfs mounts), `network` (the task's network namespace as the VM's NIC), `pod` (a
//! pod's containers in one VM), `resources` (OCI limits as the guest's cgroup's),
//! `stats` (a task's usage as containerd's metrics), `io` (the FIFOs and the writing of
//! output), `events` (events to containerd).

mod events;
pub mod flags;
mod io;
mod launch;
mod network;
mod pod;
mod process;
mod resources;
mod rootfs;
mod serve;
mod service;
mod spec;
mod stats;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use berth_engine::template::Shape;
use berth_vm::VmBackend;

/// The runtime's name, as containerd knows it.
pub const RUNTIME_NAME: &str = "io.containerd.berth.v2";
/// The binary's name: containerd looks for `containerd-shim-<name>-<version>`.
pub const BINARY_NAME: &str = "containerd-shim-berth-v2";
/// The runtime whose tasks' VMs boot cold (`io.containerd.berth-cold.v2`): for hosts
/// whose backend takes no snapshots, and to measure what cloning saves.
pub const COLD_BINARY_NAME: &str = "containerd-shim-berth-cold-v2";

/// Errors of the shim. (Task API calls answer with ttrpc statuses; these are the
/// shim's own failures: its command line, its socket, its bundle.)
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] containerd_shim_protos::ttrpc::Error),
    #[error("the bundle's config.json: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Engine(#[from] berth_engine::EngineError),
    #[error("the task's network namespace: {0}")]
    Net(#[from] berth_net::NetError),
    #[error("protobuf: {0}")]
    Protobuf(#[from] containerd_shim_protos::protobuf::Error),
}

impl ShimError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| ShimError::Io { what, source }
    }
}

/// Where the shim keeps things and how it makes VMs (the `berth` binary fills it in).
pub struct ShimConfig {
    /// The shim's own directory: templates and VM run directories (by default
    /// `/run/berth-shim`, apart from any daemon's).
    pub root: PathBuf,
    /// The guest files' cache (shared with the daemon's).
    pub cache: PathBuf,
    pub backend: Arc<dyn VmBackend>,
    /// The `berth` binary (for `share-server`).
    pub berth_binary: PathBuf,
    /// Each task VM's shape.
    pub shape: Shape,
    /// Tasks' VMs are clones of the template (`containerd-shim-berth-v2`); `false`
    /// (`containerd-shim-berth-cold-v2`): each boots cold.
    pub clone: bool,
}

/// Runs the shim with its command line `args` (without the program's name).
pub fn run(args: &[OsString], config: ShimConfig) -> Result<(), ShimError> {
    let flags = flags::parse(args)?;
    match flags.action.as_str() {
        "start" => launch::start(&flags, &config),
        "delete" => launch::delete(&flags, &config),
        "" => serve::serve(&flags, config),
        other => Err(ShimError::Usage(format!("unknown action {other:?}"))),
    }
}
