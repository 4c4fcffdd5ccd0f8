//! `docker start` as a pipeline of small steps, each in its own function:
//!
//! 1. **plan** ([`plan`]): clone or cold boot, template, shape, disks, NICs, process;
//!    takes the run's network leases;
//! 2. **boot or restore** the VM (the backend);
//! 3. **host networks** (taps, DNS names, published ports) when the process is sent
//!    behind the setup;
//! 4. **guest up** ([`guest`]): rebind or Hello, then setup (and the process);
//! 5. **serve** ([`serve`]): the task that owns the run from here to its end;
//! 6. **connect** more NICs and send the process, when it was not sent behind the setup;
//! 7. **started**: the agent reports the process started; the serve task applies the
//!    `Started` transition (before anything that ends the run, so a process that exits
//!    at once is started, then exited) and tells the start, which returns.
//!
//! A failure before step 5 is undone in one place ([`StartRollback`]): the VM killed,
//! a template that never answered discarded, the network leases given back. From step 5
//! on, the serve task owns the run and gives everything back when it ends.

mod finish;
mod guest;
mod networks;
mod plan;
mod reattach;
mod serve;
mod spare;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent_proto::HostMessage;
use berth_vm::VmControl;
use tokio::sync::oneshot;

use crate::agent::{AgentError, AgentSession, MAIN_STREAM};
use crate::container::{Refusal, Transition};
use crate::error::{error_chain, EngineError};
use crate::process::output::LogWriter;
use crate::vm::template::Template;
use crate::{lock, ContainerHandle, Engine, Runtime};

pub(crate) use guest::{rebind_spec, SETUP_TIMEOUT};

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The container was already running (Docker answers 304).
    AlreadyRunning,
}

/// The steps of a start, for errors: an engine, VM or guest failure says which step it
/// ended (a user's error, such as a volume in use, is reported as it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartStep {
    #[default]
    Plan,
    Boot,
    HostNetworks,
    GuestUp,
    Serve,
    Connect,
    Started,
}

impl std::fmt::Display for StartStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plan => "planning the start",
            Self::Boot => "booting or restoring the container's VM",
            Self::HostNetworks => "readying the container's networks on the host",
            Self::GuestUp => "bringing the container's guest up",
            Self::Serve => "serving the container",
            Self::Connect => "connecting the container's networks",
            Self::Started => "starting the container's process",
        })
    }
}

/// What a failed start must undo, gathered as the steps make it.
#[derive(Default)]
struct StartRollback {
    /// The step under way.
    step: StartStep,
    /// The run's network leases (and whatever was activated on them).
    networks: bool,
    /// The VM, once booted or restored.
    vm: Option<Arc<dyn VmControl>>,
    /// The template of a clone whose agent never answered.
    condemned_template: Option<Template>,
}

/// Where a start's time went, for the log.
struct StartTimings {
    begun: Instant,
    template_ready: Duration,
    vm_up: Duration,
    agent_answered: Duration,
    setup_done: Duration,
    networked: Duration,
    /// The guest's own timing of its setup steps.
    guest_steps: String,
}

impl Engine {
    /// Starts a created or exited container and returns once its process runs.
    pub async fn start_container(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<StartOutcome, EngineError> {
        let handle = self.lookup(reference)?;
        {
            // A user's start: the restart policy applies again from here.
            let mut record = lock(&handle.record);
            record.manually_stopped = false;
            *lock(&handle.restart_delay) = None;
        }
        self.start_run(&handle).await
    }

    /// Starts a container's next run (a user's start, a restart, or the daemon's).
    pub(crate) async fn start_run(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<StartOutcome, EngineError> {
        let _guard = handle.lifecycle.lock().await;
        match handle.status().can_start() {
            Ok(()) => {}
            Err(Refusal::AlreadyRunning) => return Ok(StartOutcome::AlreadyRunning),
            Err(refusal) => return Err(EngineError::refused(&handle.id)(refusal)),
        }
        match self.boot_and_spawn(handle).await {
            Ok(()) => Ok(StartOutcome::Started),
            Err(error) => {
                if !matches!(error, EngineError::StartFailed(_)) {
                    // The run task records spawn failures (and auto-removes) itself;
                    // everything else is recorded here.
                    let failed = Transition::StartFailed {
                        error: error_chain(&error),
                    };
                    if let Err(error) = self.transition(handle, failed) {
                        tracing::warn!(id = %handle.id, error = %error_chain(&error), "recording a failed start failed");
                    }
                    if handle.snapshot().auto_remove() {
                        // As Docker does: a `--rm` container that fails to start is removed
                        // (a client waiting for its removal would wait forever otherwise).
                        let engine = self.clone();
                        let id = handle.id.clone();
                        tokio::spawn(async move {
                            let _ = engine.remove_container_and_volumes(&id, true, true).await;
                        });
                    }
                }
                Err(error)
            }
        }
    }

    /// Runs the start pipeline; undoes what it made if a step before serving fails.
    async fn boot_and_spawn(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
    ) -> Result<(), EngineError> {
        let mut rollback = StartRollback::default();
        match self.start_steps(handle, &mut rollback).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let step = rollback.step;
                self.roll_back(handle, rollback).await;
                Err(error.in_start_step(step))
            }
        }
    }

    /// Undoes a failed start's steps, in reverse.
    async fn roll_back(&self, handle: &ContainerHandle, rollback: StartRollback) {
        if let Some(vm) = rollback.vm {
            vm.kill().await;
        }
        if let Some(template) = rollback.condemned_template {
            self.templates.discard(&template).await;
        }
        if rollback.networks {
            self.release_networks(handle);
        }
    }

    async fn start_steps(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        rollback: &mut StartRollback,
    ) -> Result<(), EngineError> {
        let begun = Instant::now();
        let guest = self.guest().await?.clone();
        self.remove_vm_dirs(&handle.snapshot());
        let run_dir = self.vm_dir(&handle.id);
        std::fs::create_dir_all(&run_dir).map_err(EngineError::io(&run_dir))?;
        // 1. plan
        let plan = self.plan_start(handle, &guest).await?;
        rollback.networks = true;
        let template_ready = begun.elapsed();
        // 2. boot or restore, or claim a VM restored ahead of demand
        rollback.step = StartStep::Boot;
        let claimed = match &plan.template {
            Some(template) if plan.volume_disks.is_empty() => {
                self.claimed_spare(&plan, template).await
            }
            _ => None,
        };
        let claimed_spare = claimed.is_some();
        lock(&handle.record).state.template = plan
            .template
            .as_ref()
            .map(|template| template.record.key.clone())
            .unwrap_or_default();
        let (vm_pid, control, channel, run_dir) = match claimed {
            Some(spare) => {
                lock(&handle.record).state.vm = spare.name;
                (spare.pid, spare.control, spare.channel, spare.run_dir)
            }
            None => {
                lock(&handle.record).state.vm.clear();
                let hotplug = self.config.backend.supports_hotplug();
                let spec = plan.vm_spec(self, &guest, hotplug);
                let vm = match self.config.backend.boot(&spec).await {
                    Ok(vm) => vm,
                    Err(error) => {
                        rollback.condemned_template = plan.template.clone();
                        return Err(error.into());
                    }
                };
                let control: Arc<dyn VmControl> = Arc::from(vm.control);
                (vm.pid, control, guest::GuestChannel::New(vm.agent), run_dir)
            }
        };
        rollback.vm = Some(control.clone());
        self.apply_cpu_limits(&plan.record, vm_pid)?;
        let vm_up = begun.elapsed();
        // 3. host networks first, when the process travels behind the setup
        rollback.step = StartStep::HostNetworks;
        if plan.pipelined() {
            self.activate_networks(handle, &plan.network).await?;
        }
        // 4. guest up (a clone's volumes are hot-plugged before it rebinds)
        rollback.step = StartStep::GuestUp;
        if plan.is_clone() {
            for disk in &plan.volume_disks {
                if let Err(error) = control.add_disk(disk).await {
                    rollback.condemned_template = plan.template.clone();
                    return Err(error.into());
                }
            }
        }
        self.start_share_servers(&run_dir, &plan.shares, vm_pid)?;
        let up = match guest::bring_up(&plan, channel, &run_dir, begun).await {
            Ok(up) => up,
            Err(failure) => {
                if !failure.agent_answered {
                    rollback.condemned_template = plan.template.clone();
                }
                return Err(failure.error);
            }
        };
        let setup_done = begun.elapsed();
        // 5. serve: from here the serve task owns the run and its networks
        rollback.step = StartStep::Serve;
        let log = self.log_writer(&plan.record)?;
        let session = up.session;
        let (started_sender, started) = oneshot::channel();
        handle.attach_runtime(Arc::new(Runtime::new(session.clone(), control.clone())));
        tokio::spawn(serve::serve(
            self.clone(),
            handle.clone(),
            serve::ServedRun {
                reader: up.reader,
                log,
                control: control.clone(),
                started: started_sender,
                starting_vm_pid: Some(vm_pid),
                already_exited: None,
            },
        ));
        rollback.networks = false;
        // 6. connect, and send the process if it did not travel with the setup
        rollback.step = StartStep::Connect;
        if !plan.pipelined() {
            self.connect_and_spawn(handle, &plan, &session).await?;
        }
        // The serve task ends the VM from here, whatever happens.
        rollback.vm = None;
        let timings = StartTimings {
            begun,
            template_ready,
            vm_up,
            agent_answered: up.answered_at,
            setup_done,
            networked: begun.elapsed(),
            guest_steps: up.guest_steps,
        };
        // 7. started
        rollback.step = StartStep::Started;
        let Ok(started) = tokio::time::timeout(guest::PROCESS_START_TIMEOUT, started).await else {
            // The serve task sees the VM end and records the run's end.
            control.kill().await;
            return Err(EngineError::StartFailed(format!(
                "the container's VM went silent: its agent did not report the process started within {} s (the VM's console log under the daemon's exec root may say why)",
                guest::PROCESS_START_TIMEOUT.as_secs()
            )));
        };
        match started {
            Ok(Ok(_guest_pid)) => {
                // The serve task has recorded the start (and maybe the end already).
                timings.log(&plan.record);
                let kind = match (&plan.template, claimed_spare) {
                    (None, _) => crate::metrics::START_COLD_BOOT,
                    (Some(_), true) => crate::metrics::START_SPARE,
                    (Some(_), false) => crate::metrics::START_CLONE,
                };
                self.metrics
                    .starts
                    .get_or_create(&crate::metrics::StartLabels { kind })
                    .observe(timings.begun.elapsed().as_secs_f64());
                self.start_health_checks(handle);
                if let Some(template) = &plan.template {
                    self.replenish_spares(template);
                }
                if let Some(input) = handle.take_stdin() {
                    tokio::spawn(serve::forward_stdin(session, input));
                }
                Ok(())
            }
            Ok(Err(message)) => Err(EngineError::StartFailed(message)),
            Err(_) => Err(AgentError::VmEnded("before the process started").into()),
        }
    }

    /// Step 6: NICs beyond the first, the host side of the networks, then the process.
    async fn connect_and_spawn(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        plan: &plan::StartPlan,
        session: &AgentSession,
    ) -> Result<(), EngineError> {
        self.connect_extra_nics(handle, &plan.network).await?;
        self.activate_networks(handle, &plan.network).await?;
        session
            .send(MAIN_STREAM, &HostMessage::Spawn(plan.process.clone()))
            .await?;
        Ok(())
    }

    /// The container's log, kept as its log options say.
    fn log_writer(&self, record: &crate::ContainerRecord) -> Result<LogWriter, EngineError> {
        let log_config = record.host_config.log_config.clone().unwrap_or_default();
        let limits = crate::process::output::LogLimits::from_config(
            log_config.typ.as_deref(),
            &log_config.config.unwrap_or_default(),
        )?;
        LogWriter::open_with(
            &self.container_dir(&record.id).join("container.log"),
            limits,
        )
    }
}

impl StartTimings {
    /// Where a start's time went: the template, the VM process and its devices, the
    /// guest's boot (or rebind) to the agent's answer, the setup, the networks, the
    /// process's start.
    fn log(&self, record: &crate::ContainerRecord) {
        tracing::info!(
            id = %&record.id[..12],
            runtime = record.runtime(),
            template_ms = self.template_ready.as_millis() as u64,
            vm_process_ms = self.vm_up.as_millis() as u64,
            agent_hello_ms = self.agent_answered.as_millis() as u64,
            setup_done_ms = self.setup_done.as_millis() as u64,
            networks_ms = self.networked.as_millis() as u64,
            process_started_ms = self.begun.elapsed().as_millis() as u64,
            guest_setup = %self.guest_steps,
            "container started"
        );
    }
}

#[cfg(test)]
mod tests;
