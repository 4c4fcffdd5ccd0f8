//! VM templates for instant clone.
//!
//! A template is a VM of one shape (vCPUs, memory) that booted the guest image up to the
//! agent's Hello and was then paused and snapshotted: its RAM in a file it mapped shared,
//! its CPU and device state in a small state file. A container's VM is made by restoring
//! that state in a new QEMU whose RAM maps the template's file private and copy-on-write:
//! it skips the boot and owns only the pages it writes. The agent is then told to take a
//! new identity (`Rebind`: fresh entropy and a reseeded RNG, the host's clock) before
//! anything of the container runs.
//!
//! Layout, under `<exec root>/templates/<key>/` (a key per shape, guest digest and backend):
//!
//! ```text
//! memory           guest RAM (the template's shared mapping)
//! state            CPU and device state (QEMU migration stream)
//! placeholder.qcow2 the disk the template booted with; clones put their own disk, of the
//!                  same virtual size, behind the same device
//! template.json    TemplateRecord: shape, guest digest, sizes and the state's sha256
//! run/             the template VM's sockets while it is built
//! ```
//!
//! A template is used only if `template.json` matches the wanted inputs and the state file
//! still has the recorded sha256 and the memory file its size; otherwise it is rebuilt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_guest::GuestImage;
use berth_vm::{DiskFormat, DiskSpec, MemoryBacking, VmBackend, VmSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::template_state::{sha256_hex, VerifiedState, VerifiedStates};
use crate::agent::handshake;
use crate::error::EngineError;
use crate::lock;

/// Every container disk and template placeholder has this virtual size, so that a clone's
/// disk matches the capacity its template's guest saw (qcow2 files are sparse: it costs
/// nothing).
pub const CONTAINER_DISK_SIZE: &str = "64G";

/// Bumped when the template layout or the way templates are made changes, or the
/// machine a template's guest saw at boot (4: the built-in VMM's ACPI hot-plug slots; 5:
/// QEMU's NIC without the guest-announce feature).
const TEMPLATE_FORMAT: &str = "berth-template-5";

/// A template as the console lists it.
#[derive(Debug, Clone)]
pub struct TemplateSummary {
    pub record: TemplateRecord,
    /// Its RAM file's size.
    pub memory_file_bytes: u64,
    /// Running containers cloned from it.
    pub clones: usize,
}

/// A VM shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// What `template.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub key: String,
    pub shape: Shape,
    pub guest_digest: String,
    pub backend: String,
    pub state_sha256: String,
    pub memory_bytes: u64,
    pub created: String,
}

/// How long a template VM idles after its agent's Hello before it is snapshotted.
const TEMPLATE_SETTLE: Duration = Duration::from_millis(1500);

/// A usable template.
#[derive(Debug, Clone)]
pub struct Template {
    pub record: TemplateRecord,
    pub dir: PathBuf,
    /// Its state, verified against the record (`None` for a template only listed).
    state: Option<VerifiedState>,
}

impl Template {
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join("memory")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes the verified state into `dir` (see [`super::template_state`]), so that
    /// what a clone restores is exactly what was verified, whatever happens to the
    /// template meanwhile. Returns the copy's path.
    pub fn verified_state_copy(&self, dir: &Path) -> Result<PathBuf, EngineError> {
        let copy = dir.join("state");
        let Some(state) = &self.state else {
            // A listed template: copy and check the file itself.
            std::fs::copy(self.state_file(), &copy).map_err(EngineError::io(self.state_file()))?;
            let bytes = std::fs::read(&copy).map_err(EngineError::io(&copy))?;
            let digest = sha256_hex(&bytes);
            if digest != self.record.state_sha256 {
                return Err(EngineError::TemplateChanged {
                    key: self.record.key.clone(),
                    digest,
                });
            }
            return Ok(copy);
        };
        std::fs::write(&copy, state.bytes()).map_err(EngineError::io(&copy))?;
        Ok(copy)
    }
}

/// Where a template VM gets its NIC: a tap in a network namespace, made for the build
/// and removed once the template is snapshotted (its clones' NICs are in the same slot,
/// each on a tap of its own).
pub trait TemplateNetwork: Send + Sync {
    /// Makes the tap of the template `key`'s VM.
    fn template_nic(&self, key: &str) -> Result<berth_vm::NicSpec, EngineError>;
    /// The namespace the template's VM runs in, where its tap is.
    fn namespace_path(&self) -> PathBuf;
    fn remove_tap(&self, tap: &str);
}

impl TemplateNetwork for crate::network::Networks {
    fn template_nic(&self, key: &str) -> Result<berth_vm::NicSpec, EngineError> {
        crate::network::Networks::template_nic(self, key)
    }

    fn namespace_path(&self) -> PathBuf {
        crate::network::Networks::namespace_path(self)
    }

    fn remove_tap(&self, tap: &str) {
        crate::network::Networks::remove_tap(self, tap)
    }
}

/// Builds, checks, lists and removes templates.
pub struct TemplateManager {
    root: PathBuf,
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where template VMs get their NIC (clones have one in the same slot); `None` makes
    /// templates without NICs (the key tells the two apart).
    networks: Option<Arc<dyn TemplateNetwork>>,
    /// State files verified so far.
    states: VerifiedStates,
    /// Where builds and failed builds are counted.
    metrics: crate::metrics::EngineMetrics,
}

fn template_key(shape: Shape, guest_digest: &str, backend: &str, nics: usize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{TEMPLATE_FORMAT} {} {} {guest_digest} {backend} nics={nics}",
        shape.vcpus, shape.memory_mib
    ));
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// Creates a qcow2 file of [`CONTAINER_DISK_SIZE`]: empty, or copy-on-write over a raw
/// `backing` file (a container's disk over its image's ext4).
pub fn create_container_disk(path: &Path, backing: Option<&Path>) -> Result<(), EngineError> {
    let mut command = Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2"]);
    if let Some(backing) = backing {
        command.args(["-F", "raw", "-b"]).arg(backing);
    }
    let output = command
        .arg(path)
        .arg(CONTAINER_DISK_SIZE)
        .output()
        .map_err(|e| EngineError::Command {
            what: "qemu-img create".into(),
            detail: format!("{e} (is qemu-utils installed?)"),
        })?;
    if !output.status.success() {
        return Err(EngineError::Command {
            what: "qemu-img create".into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Creates a container's disk over its image's ext4 `base` as a copy of a blank overlay
/// of that image (`<base>.blank.qcow2`, beside it, made by [`create_container_disk`]
/// once per image): a byte copy of an empty qcow2 over the same backing file is an empty
/// qcow2 over it, and copying ~200 KiB costs far less than running `qemu-img` for each
/// `docker create` (a process of its own, ~10 ms here, more in the KVM lab). The
/// image store's clean-up keeps files named after a kept image and drops the rest.
pub fn create_container_disk_over(path: &Path, base: &Path) -> Result<(), EngineError> {
    let mut blank = base.as_os_str().to_owned();
    blank.push(".blank.qcow2");
    let blank = PathBuf::from(blank);
    if !blank.exists() {
        // Made under a name of its own, then renamed: a copy never sees half a file.
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let staged = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = blank.with_extension(format!("new-{}-{staged}", std::process::id()));
        create_container_disk(&staging, Some(base))?;
        std::fs::rename(&staging, &blank).map_err(EngineError::io(&blank))?;
    }
    match std::fs::copy(&blank, path) {
        Ok(_) => Ok(()),
        // Gone since (the image store cleaned up): made the long way.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create_container_disk(path, Some(base))
        }
        Err(error) => Err(EngineError::io(path)(error)),
    }
}

/// Kills the VM processes whose run directory is under its path when dropped: a template
/// build abandoned at any point (the daemon shutting down while the template boots or is
/// snapshotted) leaves no VM behind. The normal path has stopped its VM by then, and the
/// sweep finds nothing.
struct KillUnder(PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for pid in berth_vm::process::vm_processes_under(&self.0) {
            berth_vm::process::kill_process(pid);
        }
    }
}

impl TemplateManager {
    pub fn new(root: PathBuf, networks: Option<Arc<dyn TemplateNetwork>>) -> Self {
        Self {
            root,
            building: Mutex::new(HashMap::new()),
            networks,
            states: VerifiedStates::default(),
            metrics: Default::default(),
        }
    }

    /// Counts builds in `metrics` (the engine's).
    pub(crate) fn with_metrics(mut self, metrics: crate::metrics::EngineMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// How many NICs this manager's templates (and so their clones) have.
    fn nic_count(&self) -> usize {
        usize::from(self.networks.is_some())
    }

    /// Every template on disk (valid or not), by its record.
    pub fn list(&self) -> Vec<Template> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let text = std::fs::read_to_string(entry.path().join("template.json")).ok()?;
                let record = serde_json::from_str(&text).ok()?;
                Some(Template {
                    record,
                    dir: entry.path(),
                    state: None,
                })
            })
            .collect()
    }

    /// Removes a template (by key or key prefix); returns how many were removed.
    pub fn remove(&self, key_prefix: &str) -> std::io::Result<usize> {
        let mut removed = 0;
        for template in self.list() {
            if template.record.key.starts_with(key_prefix) {
                std::fs::remove_dir_all(&template.dir)?;
                self.states.forget(&template.state_file());
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes this backend's templates made from another guest (kernel, initramfs,
    /// agent) than `guest_digest`: no start can use them again, and each holds its RAM
    /// file on disk. Clones running from one keep its memory mapped (the file lives on
    /// until they end) and restored from their own copy of its state.
    fn remove_outdated(&self, guest_digest: &str, backend: &str) {
        for template in self.list() {
            if template.record.backend == backend && template.record.guest_digest != guest_digest {
                tracing::info!(key = %template.record.key, "removing a template of an older guest");
                let _ = std::fs::remove_dir_all(&template.dir);
                self.states.forget(&template.state_file());
            }
        }
    }

    fn check(&self, dir: &Path, key: &str) -> Option<Template> {
        let record: TemplateRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.join("template.json")).ok()?).ok()?;
        if record.key != key {
            return None;
        }
        let memory = std::fs::metadata(dir.join("memory")).ok()?;
        if memory.len() != record.memory_bytes {
            tracing::warn!(key, "template memory file has the wrong size; rebuilding");
            return None;
        }
        let Some(state) = self.states.get(&dir.join("state"), &record.state_sha256) else {
            tracing::warn!(
                key,
                "template state does not match its checksum; rebuilding"
            );
            return None;
        };
        Some(Template {
            record,
            dir: dir.to_path_buf(),
            state: Some(state),
        })
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.building)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Drops a template that failed to restore, so that the next start rebuilds it. It
    /// waits for a build of the same key in progress, and leaves a template that was
    /// rebuilt meanwhile (a different state) alone.
    pub async fn discard(&self, template: &Template) {
        let gate = self.gate(&template.record.key);
        let _building = gate.lock().await;
        let current = std::fs::read_to_string(template.dir.join("template.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<TemplateRecord>(&text).ok());
        if current.is_some_and(|record| record.created == template.record.created) {
            tracing::warn!(key = %template.record.key, "discarding template");
            let _ = std::fs::remove_dir_all(&template.dir);
            self.states.forget(&template.state_file());
        }
    }

    /// The template for `shape`, built first if there is no valid one.
    pub async fn get_or_build(
        &self,
        backend: &dyn VmBackend,
        guest: &GuestImage,
        shape: Shape,
    ) -> Result<Template, EngineError> {
        let key = template_key(shape, &guest.digest, backend.name(), self.nic_count());
        let gate = self.gate(&key);
        let _building = gate.lock().await;
        let dir = self.root.join(&key);
        if let Some(template) = self.check(&dir, &key) {
            return Ok(template);
        }
        tracing::info!(%key, vcpus = shape.vcpus, memory_mib = shape.memory_mib, "building VM template (boot once, snapshot)");
        let started = std::time::Instant::now();
        let _ = std::fs::remove_dir_all(&dir);
        let result = self.build(backend, guest, shape, &key, &dir).await;
        match &result {
            Ok(_) => {
                self.metrics.template_builds.inc();
                tracing::info!(%key, ms = started.elapsed().as_millis() as u64, "VM template ready");
                self.remove_outdated(&guest.digest, backend.name());
            }
            Err(_) => {
                self.metrics.template_build_failures.inc();
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        result
    }

    async fn build(
        &self,
        backend: &dyn VmBackend,
        guest: &GuestImage,
        shape: Shape,
        key: &str,
        dir: &Path,
    ) -> Result<Template, EngineError> {
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir).map_err(EngineError::io(&run_dir))?;
        let placeholder = dir.join("placeholder.qcow2");
        create_container_disk(&placeholder, None)?;
        let spec = VmSpec {
            name: format!("template-{key}"),
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            disks: vec![DiskSpec::new(placeholder, DiskFormat::Qcow2)],
            run_dir: run_dir.clone(),
            memory: MemoryBacking::SharedFile(dir.join("memory")),
            restore_from: None,
            nics: Vec::new(),
            netns: None,
        };
        let mut spec = spec;
        if let Some(networks) = &self.networks {
            spec.nics.push(networks.template_nic(key)?);
            spec.netns = Some(networks.namespace_path());
        }
        // From here on, an abandoned build must not leave its VM running.
        let _abandoned = KillUnder(run_dir.clone());
        let booted = backend.boot(&spec).await;
        let remove_taps = || {
            if let Some(networks) = &self.networks {
                for nic in &spec.nics {
                    networks.remove_tap(&nic.tap);
                }
            }
        };
        let vm = match booted {
            Ok(vm) => vm,
            Err(error) => {
                remove_taps();
                return Err(error.into());
            }
        };
        let control = vm.control;
        let snapshot = async {
            // Keep the channel open while snapshotting: the guest must see its host connected.
            let (_session, _reader, _kernel) =
                handshake(vm.agent, Duration::from_secs(120)).await?;
            // Let the guest finish what its boot left pending (the agent settling into
            // its read of the channel, the kernel's deferred work such as the NIC's
            // link-state event, up to a second after it came up) before the snapshot:
            // whatever is still pending then, every clone would do again, and under TCG
            // translate again. Paid once per template.
            tokio::time::sleep(TEMPLATE_SETTLE).await;
            control
                .snapshot(&dir.join("state"))
                .await
                .map_err(EngineError::Vm)
        };
        let result = snapshot.await;
        control.kill().await;
        remove_taps();
        result?;
        let _ = std::fs::remove_dir_all(&run_dir);
        let state_bytes =
            std::fs::read(dir.join("state")).map_err(EngineError::io(dir.join("state")))?;
        let state_sha256 = sha256_hex(&state_bytes);
        let memory_bytes = std::fs::metadata(dir.join("memory"))
            .map_err(EngineError::io(dir.join("memory")))?
            .len();
        let record = TemplateRecord {
            key: key.to_owned(),
            shape,
            guest_digest: guest.digest.clone(),
            backend: backend.name().to_owned(),
            state_sha256,
            memory_bytes,
            created: crate::now_rfc3339(),
        };
        let staging = dir.join("template.json.tmp");
        std::fs::write(
            &staging,
            serde_json::to_vec_pretty(&record).expect("record serializes"),
        )
        .map_err(EngineError::io(&staging))?;
        std::fs::rename(&staging, dir.join("template.json"))
            .map_err(EngineError::io(dir.join("template.json")))?;
        // Read and hashed once more, so that later starts find it verified in memory.
        let state = self
            .states
            .get(&dir.join("state"), &record.state_sha256)
            .ok_or_else(|| EngineError::TemplateChanged {
                key: key.to_owned(),
                digest: "(changed while it was recorded)".into(),
            })?;
        Ok(Template {
            record,
            dir: dir.to_path_buf(),
            state: Some(state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_input() {
        let shape = Shape {
            vcpus: 1,
            memory_mib: 256,
        };
        let base = template_key(shape, "d1", "qemu", 1);
        assert_eq!(base, template_key(shape, "d1", "qemu", 1));
        assert_ne!(
            base,
            template_key(
                Shape {
                    vcpus: 2,
                    memory_mib: 256
                },
                "d1",
                "qemu",
                1
            )
        );
        assert_ne!(
            base,
            template_key(
                Shape {
                    vcpus: 1,
                    memory_mib: 512
                },
                "d1",
                "qemu",
                1
            )
        );
        assert_ne!(base, template_key(shape, "d2", "qemu", 1));
        assert_ne!(base, template_key(shape, "d1", "kvm", 1));
        assert_ne!(base, template_key(shape, "d1", "qemu", 0));
    }

    #[test]
    fn corrupt_or_foreign_templates_are_not_used() {
        let root = tempfile::tempdir().unwrap();
        let manager = TemplateManager::new(root.path().to_path_buf(), None);
        let dir = root.path().join("k1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state"), b"state bytes").unwrap();
        std::fs::write(dir.join("memory"), vec![0u8; 4096]).unwrap();
        let record = TemplateRecord {
            key: "k1".into(),
            shape: Shape {
                vcpus: 1,
                memory_mib: 256,
            },
            guest_digest: "d".into(),
            backend: "qemu".into(),
            state_sha256: sha256_hex(&std::fs::read(dir.join("state")).unwrap()),
            memory_bytes: 4096,
            created: "now".into(),
        };
        std::fs::write(
            dir.join("template.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        assert!(manager.check(&dir, "k1").is_some());
        assert!(manager.check(&dir, "other-key").is_none());
        std::fs::write(dir.join("state"), b"tampered").unwrap();
        assert!(
            manager.check(&dir, "k1").is_none(),
            "a corrupt state must not be used"
        );
        assert_eq!(manager.list().len(), 1);
        assert_eq!(manager.remove("k").unwrap(), 1);
        assert!(manager.list().is_empty());
    }

    #[test]
    fn templates_of_an_older_guest_are_removed_others_kept() {
        let root = tempfile::tempdir().unwrap();
        let manager = TemplateManager::new(root.path().to_path_buf(), None);
        for (key, digest, backend) in [
            ("old", "d-old", "qemu"),
            ("new", "d-new", "qemu"),
            ("other-backend", "d-old", "kvm"),
        ] {
            let dir = root.path().join(key);
            std::fs::create_dir_all(&dir).unwrap();
            let record = TemplateRecord {
                key: key.into(),
                shape: Shape {
                    vcpus: 1,
                    memory_mib: 256,
                },
                guest_digest: digest.into(),
                backend: backend.into(),
                state_sha256: String::new(),
                memory_bytes: 0,
                created: "now".into(),
            };
            std::fs::write(
                dir.join("template.json"),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
        }
        manager.remove_outdated("d-new", "qemu");
        let mut left: Vec<String> = manager.list().into_iter().map(|t| t.record.key).collect();
        left.sort();
        assert_eq!(left, ["new", "other-backend"]);
    }

    /// `qemu-img info`'s backing file and virtual size of a qcow2.
    fn qcow2_info(path: &Path) -> (String, u64) {
        let output = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .expect("qemu-img runs");
        assert!(output.status.success(), "{output:?}");
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            info["backing-filename"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            info["virtual-size"].as_u64().unwrap_or_default(),
        )
    }

    #[test]
    fn container_disks_are_copies_of_one_blank_overlay_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("0123abcd.ext4");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let blank = dir.path().join("0123abcd.ext4.blank.qcow2");
        let (first, second) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        create_container_disk_over(&first, &base).unwrap();
        assert!(blank.exists(), "the blank overlay is kept beside the base");
        create_container_disk_over(&second, &base).unwrap();
        for disk in [&first, &second] {
            assert_eq!(std::fs::read(disk).unwrap(), std::fs::read(&blank).unwrap());
            assert_eq!(
                qcow2_info(disk),
                (base.display().to_string(), 64 << 30),
                "a qcow2 of the containers' size over the image's ext4"
            );
        }
        // A blank that cannot be copied is an error, not an empty disk; one removed (by
        // the image store's clean-up) is made again.
        std::fs::remove_file(&blank).unwrap();
        std::fs::remove_file(&second).unwrap();
        std::fs::create_dir(&blank).unwrap();
        create_container_disk_over(&second, &base).unwrap_err();
        std::fs::remove_dir(&blank).unwrap();
        create_container_disk_over(&second, &base).unwrap();
        assert_eq!(qcow2_info(&second), (base.display().to_string(), 64 << 30));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".new-"))
            .collect();
        assert!(left.is_empty(), "no staging file left: {left:?}");
    }
}
