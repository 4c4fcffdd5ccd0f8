//! The serving shim process: the task API on its ttrpc socket until containerd shuts it
//! down (`Shutdown` once no task is left).
//!
//! It closes its standard output once it serves: `start` (its parent) waits for that.
//! VM processes are its children, reaped by the runtime that started them; nothing else
//! here waits for children (a catch-all reaper would take their exit statuses away).

use std::sync::Arc;

use containerd_shim_protos::ttrpc::Server;
use containerd_shim_protos::{create_task, Task};

use crate::events::Publisher;
use crate::flags::Flags;
use crate::service::Service;
use crate::{ShimConfig, ShimError};

pub(crate) fn serve(flags: &Flags, config: ShimConfig) -> Result<(), ShimError> {
    let Some(path) = flags.socket.strip_prefix("unix://") else {
        return Err(ShimError::Usage(format!(
            "-socket must be unix:///PATH, not {:?}",
            flags.socket
        )));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ShimError::io("starting the shim's runtime"))?;
    let (shutdown, shut_down) = std::sync::mpsc::channel();
    let events = Publisher::new(std::env::var("TTRPC_ADDRESS").ok(), flags.namespace.clone());
    let service = Service::new(
        runtime.handle().clone(),
        config,
        flags.namespace.clone(),
        events.clone(),
        shutdown,
    );
    let task: Arc<dyn Task + Send + Sync> = Arc::new(service);
    let _ = std::fs::remove_file(path);
    let mut server = Server::new()
        .bind(&flags.socket)?
        .register_service(create_task(task));
    server.start()?;
    tracing::info!(socket = %flags.socket, id = %flags.id, "shim serving");
    // Tell `start` that the socket serves: close standard output.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(ShimError::io("/dev/null"))?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1)
        .map_err(|errno| ShimError::io("closing standard output")(errno.into()))?;
    let _ = shut_down.recv();
    tracing::info!(id = %flags.id, "shim shutting down");
    // The last events (the last task's exit and delete) reach containerd first.
    if !events.flush(std::time::Duration::from_secs(5)) {
        tracing::warn!(id = %flags.id, "events still queued at the shim's exit are lost");
    }
    server.shutdown();
    let _ = std::fs::remove_file(path);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
