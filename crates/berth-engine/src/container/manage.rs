//! Container verbs around the lifecycle: `restart`, `rename`, `update` and `prune`.

use std::sync::Arc;

use bollard_stubs::models::ContainerUpdateBody;

use crate::container::{names, ContainerStatus};
use crate::error::EngineError;
use crate::records::ContainerRecord;
use crate::{lock, Engine};

impl Engine {
    /// `POST /containers/{id}/restart`: stop (if running), then start.
    pub async fn restart_container(
        self: &Arc<Self>,
        reference: &str,
        timeout: Option<i64>,
    ) -> Result<(), EngineError> {
        let handle = self.lookup(reference)?;
        if handle.runtime().is_some() {
            self.stop_container(&handle.id, timeout).await?;
        }
        self.start_container(&handle.id).await?;
        self.events.container(&handle.snapshot(), "restart", &[]);
        Ok(())
    }

    /// `POST /containers/{id}/rename`.
    pub fn rename_container(&self, reference: &str, new_name: &str) -> Result<(), EngineError> {
        let handle = self.lookup(reference)?;
        let name = names::validate_name(new_name).map_err(EngineError::InvalidArgument)?;
        {
            let containers = lock(&self.containers);
            if let Some(other) = containers
                .values()
                .find(|h| h.id != handle.id && lock(&h.record).name == name)
            {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
            let mut record = lock(&handle.record);
            if record.name == name {
                return Err(EngineError::InvalidArgument(format!(
                    "Renaming a container with the same name as its current name: {name}"
                )));
            }
            let old = std::mem::replace(&mut record.name, name);
            let snapshot = record.clone();
            drop(record);
            self.events
                .container(&snapshot, "rename", &[("oldName", format!("/{old}"))]);
        }
        // A running container answers to its new name on its networks.
        if handle.runtime().is_some() {
            self.networks.restore(&handle.snapshot());
        }
        self.persist(&handle)
    }

    /// `POST /containers/{id}/update`: the restart policy and CPU controls at any time
    /// (a running VM's process gets the new limits at once; `--cpus` sizes its vCPUs at
    /// the next start); the VM's memory: a running VM's through its balloon (down, and
    /// back up to the size it started with), a stopped one's for its next start. What a
    /// VM cannot change, or Berth does not apply, is refused. Zero values mean
    /// "unchanged", as the docker CLI sends every field.
    pub async fn update_container(
        &self,
        reference: &str,
        update: ContainerUpdateBody,
    ) -> Result<Vec<String>, EngineError> {
        let handle = self.lookup(reference)?;
        let set = |value: Option<i64>| value.filter(|v| *v != 0);
        let unsupported = [
            (
                "--blkio-weight",
                update.blkio_weight.is_some_and(|w| w != 0),
            ),
            (
                "--cpuset-mems",
                update.cpuset_mems.as_deref().is_some_and(|c| !c.is_empty()),
            ),
            (
                "--pids-limit",
                set(update.pids_limit).is_some_and(|p| p != -1),
            ),
        ];
        if let Some((flag, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(EngineError::NotSupported(format!(
                "Berth cannot apply {flag}: a container's resources are its VM's vCPUs and memory (--cpus, --memory)"
            )));
        }
        // A running VM's memory changes through its balloon, checked and done first: the
        // rest of the update cannot fail on memory afterwards.
        let shape_change = set(update.memory).is_some();
        let mut memory_applied = false;
        if let (Some(memory), Some(runtime)) = (set(update.memory), handle.runtime()) {
            if handle.status() == ContainerStatus::Running {
                crate::container::memory::updated(
                    &handle.snapshot().host_config,
                    &update,
                    &handle.id,
                )?;
                let refused = |error: &dyn std::fmt::Display| {
                    EngineError::InvalidArgument(format!(
                        "Cannot update container {}: {error}",
                        handle.id
                    ))
                };
                match runtime.control.set_memory(memory as u64).await {
                    Ok(()) => {}
                    // No balloon (a clone, or the built-in VMM): a memory cgroup in the
                    // guest limits the container's processes, as Docker's -m does.
                    Err(berth_vm::VmError::NoBalloon | berth_vm::VmError::Unsupported(_)) => {
                        let limited = self
                            .agent_request(
                                &handle,
                                berth_agent_proto::HostMessage::UpdateResources {
                                    container: None,
                                    resources: berth_agent_proto::Resources {
                                        memory_bytes: Some(memory as u64),
                                        ..Default::default()
                                    },
                                },
                            )
                            .await
                            .map_err(|error| refused(&error))?;
                        if limited != berth_agent_proto::GuestMessage::ResourcesUpdated {
                            return Err(refused(&format!("the agent answered {limited:?}")));
                        }
                    }
                    Err(error) => return Err(refused(&error)),
                }
                memory_applied = true;
            }
        }
        let mut record = lock(&handle.record);
        if shape_change && !memory_applied {
            record
                .state
                .status
                .can_change_shape()
                .map_err(EngineError::refused(&handle.id))?;
        }
        let mut host = crate::container::memory::updated(&record.host_config, &update, &record.id)?;
        if let Some(nano_cpus) = set(update.nano_cpus) {
            host.nano_cpus = Some(nano_cpus);
        }
        if let Some(shares) = set(update.cpu_shares) {
            host.cpu_shares = Some(shares);
        }
        if let Some(period) = set(update.cpu_period) {
            host.cpu_period = Some(period);
        }
        if let Some(quota) = set(update.cpu_quota) {
            host.cpu_quota = Some(quota);
        }
        if let Some(cpus) = update.cpuset_cpus.clone().filter(|c| !c.is_empty()) {
            host.cpuset_cpus = Some(cpus);
        }
        crate::container::cpu::validate(&host)?;
        let limits = crate::container::cpu::limits(&host);
        let cpu_changed = limits != crate::container::cpu::limits(&record.host_config);
        let policy = update.restart_policy.filter(|p| p.name.is_some());
        if let Some(policy) = &policy {
            crate::container::restart::validate(Some(policy), record.auto_remove())?;
        }
        // Applied before the record changes: a failure leaves both as they were.
        if cpu_changed && handle.runtime().is_some() && record.state.pid != 0 {
            berth_vm::cpu_limits::apply(record.state.pid, &record.id, &limits).map_err(|e| {
                EngineError::InvalidArgument(format!(
                    "Cannot update container {}: applying CPU limits: {e}",
                    record.id
                ))
            })?;
        }
        record.host_config.memory = host.memory;
        record.host_config.memory_swap = host.memory_swap;
        record.host_config.memory_reservation = host.memory_reservation;
        record.host_config.nano_cpus = host.nano_cpus;
        record.host_config.cpu_shares = host.cpu_shares;
        record.host_config.cpu_period = host.cpu_period;
        record.host_config.cpu_quota = host.cpu_quota;
        record.host_config.cpuset_cpus = host.cpuset_cpus;
        if let Some(policy) = policy {
            record.host_config.restart_policy = Some(policy);
        }
        let snapshot = record.clone();
        drop(record);
        self.persist(&handle)?;
        self.events.container(&snapshot, "update", &[]);
        Ok(Vec::new())
    }

    /// `POST /containers/prune`: removes every stopped container that `keep` does not
    /// keep; returns their ids and the bytes their disks held.
    pub async fn prune_containers(
        self: &Arc<Self>,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> (Vec<String>, u64) {
        let mut removed = Vec::new();
        let mut reclaimed = 0;
        for record in self.list_containers() {
            if record.state.status.can_remove(false).is_err() || keep(&record) {
                continue;
            }
            let size = self.container_disk_usage(&record.id);
            if self.remove_container(&record.id, false).await.is_ok() {
                removed.push(record.id);
                reclaimed += size;
            }
        }
        (removed, reclaimed)
    }

    /// Bytes the container's own files take on the host (its copy-on-write disk and log).
    pub fn container_disk_usage(&self, id: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(self.container_dir(id))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.blocks() * 512)
            .sum()
    }
}
