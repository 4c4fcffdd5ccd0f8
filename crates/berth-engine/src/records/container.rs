//! A container's record and its status.
//!
//! The record is what `docker inspect` and `docker ps` read; it is stored in the state
//! database (see [`crate::state`]) after every change. Only the transition function
//! ([`crate::Engine::transition`]) changes its `state`.

use bollard_stubs::models::{ContainerConfig, HostConfig};
use serde::{Deserialize, Serialize};

use super::{EndpointRecord, HealthState, MountRecord, PortRecord};

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }

    /// Docker counts a restarting container as running (`State.Running`), and so do
    /// `ps` and `info`: this status belongs to a run, begun or pending.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Restarting)
    }

    /// The container's VM exists (it runs, or its vCPUs are stopped).
    pub fn has_vm(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// The `State` part of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub status: ContainerStatus,
    /// The VM process's pid while running (Docker shows the container's init pid).
    pub pid: u32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub oom_killed: bool,
    /// The name of the VM of the last run when it is not the container's id: a VM
    /// restored ahead of demand (`spare…`, see `vm::spares`) keeps its own process name
    /// and run directory. Empty: the VM is named after the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm: String,
    /// The key of the template the last run's VM was cloned from (empty: a cold boot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
}

/// Docker's zero time, used for "never".
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Default for StateRecord {
    fn default() -> Self {
        Self {
            status: ContainerStatus::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            oom_killed: false,
            vm: String::new(),
            template: String::new(),
        }
    }
}

/// Everything Berth keeps about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// The image as the user named it.
    pub image_ref: String,
    /// `sha256:<hex>`.
    pub image_id: String,
    /// The effective configuration (request merged with the image's defaults).
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// The program and its arguments (entrypoint + cmd).
    pub path: String,
    pub args: Vec<String>,
    pub state: StateRecord,
    pub restart_count: i64,
    /// The networks the container is connected to, by network name, with its endpoint
    /// on each (addresses are filled in while it runs).
    #[serde(default)]
    pub networks: std::collections::BTreeMap<String, EndpointRecord>,
    /// Ports published while it runs.
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    /// A user stopped or killed it (restart policies then leave it stopped).
    #[serde(default)]
    pub manually_stopped: bool,
    /// Its health check's state, if it has a check and has run.
    #[serde(default)]
    pub health: Option<HealthState>,
    /// Volumes, in the order their disks are attached.
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    /// A `docker build` step's container: its first process is the agent's hold helper,
    /// and the step's command runs as an exec beside it (so that its changes can be read
    /// in the same VM once it exits).
    #[serde(default)]
    pub build_step: bool,
}

impl ContainerRecord {
    /// The VM shape: vCPUs from `--cpus` (rounded up), memory from `-m` (MiB).
    pub fn vm_shape(&self, default_memory_mib: u32) -> (u32, u32) {
        let vcpus = self
            .host_config
            .nano_cpus
            .filter(|nano| *nano > 0)
            .map(|nano| ((nano + 999_999_999) / 1_000_000_000) as u32)
            .unwrap_or(1);
        let memory = self
            .host_config
            .memory
            .filter(|bytes| *bytes > 0)
            .map(|bytes| (bytes as u64).div_ceil(1 << 20) as u32)
            .unwrap_or(default_memory_mib);
        (vcpus.max(1), memory)
    }

    /// The name of the VM of the container's last run: its process name (`berth-NAME`)
    /// and its run directory's.
    pub fn vm_name(&self) -> &str {
        match self.state.vm.as_str() {
            "" => &self.id,
            spare => spare,
        }
    }

    pub fn tty(&self) -> bool {
        self.config.tty.unwrap_or(false)
    }

    /// `berth` (clone from a template) unless the container asked for another runtime.
    pub fn runtime(&self) -> &str {
        match self.host_config.runtime.as_deref() {
            None | Some("") => crate::RUNTIME_CLONE,
            Some(runtime) => runtime,
        }
    }

    pub fn auto_remove(&self) -> bool {
        self.host_config.auto_remove.unwrap_or(false)
    }
}

/// A record as an old daemon stored it (no network fields), for unit tests elsewhere.
#[cfg(test)]
pub(crate) fn test_record(config: serde_json::Value) -> ContainerRecord {
    serde_json::from_value(serde_json::json!({
        "id": "a".repeat(64), "name": "x", "created": "", "image_ref": "", "image_id": "",
        "config": config, "host_config": {}, "path": "sh", "args": [],
        "state": {"status": "created", "pid": 0, "exit_code": 0, "error": "",
                  "started_at": "", "finished_at": "", "oom_killed": false},
        "restart_count": 0
    }))
    .expect("a valid record")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_shape_rounds_up() {
        let mut record = ContainerRecord {
            id: "a".repeat(64),
            name: "x".into(),
            created: ZERO_TIME.into(),
            image_ref: "busybox".into(),
            image_id: "sha256:0".into(),
            config: ContainerConfig::default(),
            host_config: HostConfig::default(),
            path: "sh".into(),
            args: vec![],
            state: StateRecord::default(),
            restart_count: 0,
            networks: Default::default(),
            ports: Vec::new(),
            manually_stopped: false,
            health: None,
            mounts: Vec::new(),
            build_step: false,
        };
        assert_eq!(record.vm_shape(256), (1, 256));
        record.host_config.nano_cpus = Some(1_500_000_000);
        record.host_config.memory = Some(512 * 1024 * 1024 + 1);
        assert_eq!(record.vm_shape(256), (2, 513));
    }
}
