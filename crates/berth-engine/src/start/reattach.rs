//! Live restore: taking over the VMs of containers that ran on while no daemon did.

use std::sync::Arc;

use berth_vm::VmControl;
use tokio::sync::oneshot;

use super::guest::SETUP_TIMEOUT;
use super::serve::{serve, ServedRun};
use crate::agent::{AgentError, MAIN_STREAM};
use crate::container::Transition;
use crate::error::{error_chain, EngineError};
use crate::files::shares::ShareRelay;
use crate::{lock, ContainerHandle, Engine, Runtime};

impl Engine {
    /// Takes over the VMs of containers that ran on while the daemon was away (it was
    /// killed, not stopped): each VM's agent channel reconnects (QEMU retries it), the
    /// agent reports its processes, and the container is served again, with its
    /// addresses, names and published ports. A VM that cannot be taken over is killed and
    /// its container recorded as exited.
    pub(crate) async fn take_over(self: &Arc<Self>, ids: Vec<String>) {
        let mut tasks = Vec::new();
        for id in ids {
            let Ok(handle) = self.lookup(&id) else {
                continue;
            };
            let engine = self.clone();
            tasks.push(tokio::spawn(async move {
                match engine.reattach_container(&handle).await {
                    Ok(()) => {
                        tracing::info!(id = %&handle.id[..12], "took over the running container's VM");
                    }
                    Err(error) => {
                        tracing::warn!(id = %handle.id, error = %error_chain(&error), "could not take over the container's VM; stopping it");
                        handle.detach_runtime();
                        let mut record = handle.snapshot();
                        engine
                            .config
                            .backend
                            .kill_stale_vm(record.state.pid, record.vm_name());
                        engine.networks.release(&mut record);
                        {
                            let mut current = lock(&handle.record);
                            current.networks = record.networks;
                            current.ports = record.ports;
                        }
                        let lost = Transition::Exited {
                            code: 255,
                            error: format!(
                                "the daemon restarted and could not take over the VM: {}",
                                error_chain(&error)
                            ),
                            oom_killed: false,
                        };
                        if let Err(error) = engine.transition(&handle, lost) {
                            tracing::warn!(id = %handle.id, error = %error_chain(&error), "recording the lost container failed");
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn reattach_container(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<(), EngineError> {
        let record = handle.snapshot();
        let vm = self
            .config
            .backend
            .reattach(record.state.pid, &self.vm_dir(record.vm_name()))
            .await?;
        let control: Arc<dyn VmControl> = Arc::from(vm.control);
        let taken = crate::agent::reattach(vm.agent, SETUP_TIMEOUT).await;
        let (session, mut reader, processes) = match taken {
            Ok(parts) => parts,
            Err(error) => {
                control.kill().await;
                return Err(error.into());
            }
        };
        let already_exited = match processes.iter().find(|p| p.stream == MAIN_STREAM) {
            Some(process) => process.exit.map(|(code, _)| code),
            None => {
                control.kill().await;
                return Err(AgentError::Invalid {
                    what: "process list",
                    value: "no container process".into(),
                }
                .into());
            }
        };
        let session = Arc::new(session);
        // The shares' servers outlived the daemon before this one (see files::shares).
        let run_dir = self.vm_dir(record.vm_name());
        match ShareRelay::reconnect(&run_dir, session.clone()).await {
            Ok(Some(relay)) => reader.attach_shares(relay),
            Ok(None) => {}
            Err(error) => {
                control.kill().await;
                return Err(error);
            }
        }
        let mut runtime = Runtime::new(session, control.clone());
        runtime.reattached = true;
        handle.attach_runtime(Arc::new(runtime));
        self.transition(handle, Transition::Reattached)?;
        let mut updated = handle.snapshot();
        self.networks.restore(&updated);
        self.networks.republish(&mut updated).await;
        lock(&handle.record).ports = updated.ports;
        self.persist(handle)?;
        let log = self.log_writer(&record)?;
        let (started, _nobody_waits) = oneshot::channel();
        tokio::spawn(serve(
            self.clone(),
            handle.clone(),
            ServedRun {
                reader,
                log,
                control,
                started,
                starting_vm_pid: None,
                already_exited,
            },
        ));
        if already_exited.is_none() {
            self.start_health_checks(handle);
        }
        Ok(())
    }
}
