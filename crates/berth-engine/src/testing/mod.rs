//! Test doubles for the engine's seams, so that its logic runs in unit tests without
//! root, QEMU or a guest kernel, in milliseconds:
//!
//! - [`FakeHost`]: the host side of the networks ([`crate::network::HostNetwork`]),
//!   recording bridges, taps and rulesets instead of making them;
//! - [`FakeBackend`]: a [`berth_vm::VmBackend`] whose "VMs" are tasks running a
//!   [`agent`] that speaks berth-agent-proto over a socketpair, scripted by the
//!   container's command line;
//! - [`TestEngine`]: an engine over both, in a temporary root, with a way to add
//!   containers without the image store.

pub(crate) mod agent;
mod backend;
mod host;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use backend::FakeBackend;
pub(crate) use host::FakeHost;

use crate::records::{ContainerRecord, StateRecord};
use crate::{Engine, EngineConfig};

/// An engine over the test doubles, in a temporary root.
pub(crate) struct TestEngine {
    pub engine: Arc<Engine>,
    pub backend: Arc<FakeBackend>,
    pub host: Arc<FakeHost>,
    /// Removed with the test.
    root: tempfile::TempDir,
}

impl TestEngine {
    /// An engine whose VMs boot cold (the backend has no snapshots).
    pub async fn new() -> Self {
        Self::with_backend(FakeBackend::cold()).await
    }

    pub async fn with_backend(backend: FakeBackend) -> Self {
        let root = tempfile::tempdir().expect("a temporary root");
        let backend = Arc::new(backend);
        let host = Arc::new(FakeHost::default());
        let engine = open(root.path(), backend.clone(), host.clone()).await;
        Self {
            engine,
            backend,
            host,
            root,
        }
    }

    /// The test's temporary directory (the engine's root is `root/`, its exec root
    /// `run/`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Adds a created container running `argv`; returns its id.
    pub fn container(&self, name: &str, argv: &[&str]) -> String {
        add_container(&self.engine, name, argv)
    }

    /// [`TestEngine::container`] with changes to its record first.
    pub fn container_with(
        &self,
        name: &str,
        argv: &[&str],
        change: impl FnOnce(&mut ContainerRecord),
    ) -> String {
        add_container_with(&self.engine, name, argv, change)
    }
}

/// The parts of an engine that outlive it (the backend with its VMs, the host side of
/// the networks, the root), for tests that open one engine after another on them.
pub(crate) struct TestParts {
    pub backend: Arc<FakeBackend>,
    pub host: Arc<FakeHost>,
    root: tempfile::TempDir,
}

impl TestParts {
    pub fn new() -> Self {
        Self {
            backend: Arc::new(FakeBackend::cold()),
            host: Arc::new(FakeHost::default()),
            root: tempfile::tempdir().expect("a temporary root"),
        }
    }

    /// An engine on these parts (as a daemon start).
    pub async fn open(&self) -> Arc<Engine> {
        open(self.root.path(), self.backend.clone(), self.host.clone()).await
    }
}

/// Gives a container's record the restart policy `name` (`always`, `on-failure`...), with
/// at most `retries` retries.
pub(crate) fn restart_policy(
    name: bollard_stubs::models::RestartPolicyNameEnum,
    retries: Option<i64>,
) -> impl FnOnce(&mut ContainerRecord) {
    move |record| {
        record.host_config.restart_policy = Some(bollard_stubs::models::RestartPolicy {
            name: Some(name),
            maximum_retry_count: retries,
        })
    }
}

/// Adds a created container running `argv` (see [`agent`] for what the scripted agent
/// does with it) to `engine`; returns its id.
pub(crate) fn add_container(engine: &Engine, name: &str, argv: &[&str]) -> String {
    add_container_with(engine, name, argv, |_| {})
}

/// [`add_container`] with changes to its record first.
pub(crate) fn add_container_with(
    engine: &Engine,
    name: &str,
    argv: &[&str],
    change: impl FnOnce(&mut ContainerRecord),
) -> String {
    let id = crate::container::names::new_id();
    let mut record: ContainerRecord = serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "created": crate::now_rfc3339(),
        "image_ref": "test", "image_id": format!("sha256:{}", "0".repeat(64)),
        "config": {"Cmd": argv}, "host_config": {},
        "path": argv[0], "args": &argv[1..],
        "state": StateRecord::default(), "restart_count": 0
    }))
    .expect("a valid record");
    change(&mut record);
    engine.add_container_for_test(record);
    id
}

async fn open(root: &Path, backend: Arc<FakeBackend>, host: Arc<FakeHost>) -> Arc<Engine> {
    let config = EngineConfig {
        root: root.join("root"),
        cache: root.join("cache"),
        exec_root: root.join("run"),
        backend,
        default_memory_mib: 64,
        netns: "berth-test".into(),
        outbound_nat: None,
        dns_upstreams: vec!["127.0.0.1:53".parse().unwrap()],
        registry: Default::default(),
        guest_kernel: None,
        share_server: None,
        spare_vms: 0,
    };
    let engine = Engine::open_with(config, host).await.expect("engine opens");
    engine
        .guest
        .set(berth_guest::GuestImage {
            kernel: root.join("vmlinuz"),
            initramfs: root.join("initramfs"),
            kernel_release: "6.1.0-test".into(),
            kernel_package: "linux-image-test".into(),
            digest: "0".repeat(64),
        })
        .ok();
    engine
}

impl Engine {
    /// Records a container made by a test (the image store is not involved).
    pub(crate) fn add_container_for_test(&self, record: ContainerRecord) {
        let dir = self.container_dir(&record.id);
        std::fs::create_dir_all(&dir).expect("container dir");
        self.store.put(&record).expect("record stored");
        let handle = Arc::new(crate::ContainerHandle::new(record));
        crate::lock(&self.containers).insert(handle.id.clone(), handle);
    }
}

/// Waits (up to five seconds) until `check` holds; panics with `what` otherwise.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
