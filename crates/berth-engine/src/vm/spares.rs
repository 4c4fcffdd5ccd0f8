//! VMs restored ahead of demand ("spares").
//!
//! Before a clone's container can be set up, its VM process has to be spawned and
//! restored from the template, and its agent given a new identity (`Rebind`: fresh
//! entropy, a reseeded RNG, the host's clock). With `spare_vms` = N the engine does that
//! ahead of time, for up to N VMs per template: a spare is a restored, rebound clone that
//! belongs to no container. A start of that template's shape claims one:
//!
//! 1. its first disk (the template's placeholder) is replaced by the container's disk,
//!    which the guest has not read yet ([`berth_vm::VmControl::replace_root_disk`]);
//! 2. its tap takes the name of the container's first tap (the VM holds the tap open);
//! 3. the start goes on with the container's setup, as for any clone.
//!
//! Once rebound, a spare rehearses (`HostMessage::Rehearse`): its agent mounts the
//! placeholder disk read-only and unmounts it, and starts and reaps a process in a PID
//! namespace of its own, so that the guest code of the container's setup and first
//! process has run once in this VM (QEMU under TCG translates code the first time a VM
//! runs it). The placeholder is a copy-on-write disk over a small ext4 file system the
//! daemon makes once, `<exec root>/spare-rehearsal.ext4`.
//!
//! Each spare is used once and is made like any clone: its entropy, MAC address and
//! hostname are its own (the rebind and the container's setup give them), so spares
//! never share RNG state with each other or with other clones. A claimed spare keeps its
//! own name (`spare…`: its process title `berth-spare…` and its run directory under
//! `<exec root>/vms/`), recorded in the container's state (`StateRecord::vm`), so that a
//! daemon that restarts takes the VM over as it does any container's. Once a claimed
//! start is done, a task restores a replacement. Spares of a template that has been
//! rebuilt are not used; they are killed when found. Spares end with the daemon: its
//! shutdown kills them, and a daemon that starts kills any a killed daemon left (their
//! VM processes belong to no record, their taps to no container).
//!
//! Only backends whose clones can take another root disk
//! ([`berth_vm::VmBackend::supports_root_replacement`]) get spares.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_vm::{DiskFormat, DiskSpec, MemoryBacking, VmControl, VmSpec};
use rand::RngCore;

use berth_agent_proto::{GuestMessage, HostMessage, AGENT_STREAM};

use crate::agent::{rebind, AgentReader, AgentSession};
use crate::error::{error_chain, EngineError};
use crate::lock;
use crate::vm::template::{create_container_disk, Template};
use crate::Engine;

/// A clone restored and rebound ahead of demand.
pub(crate) struct Spare {
    /// Its VM's name: process title `berth-NAME`, run directory `vms/NAME`.
    pub name: String,
    /// The template it was restored from (its `created` tells a rebuilt template apart).
    pub template: Template,
    pub pid: u32,
    pub control: Arc<dyn VmControl>,
    pub session: AgentSession,
    pub reader: AgentReader,
    /// Its tap, which a claim renames to the container's.
    pub tap: String,
    pub run_dir: PathBuf,
}

/// The spares, by template key.
#[derive(Default)]
pub(crate) struct SparePool {
    /// How many spares to keep per template (0: none).
    wanted: usize,
    ready: Mutex<HashMap<String, Vec<Spare>>>,
    /// Templates whose spares are being made now (one task per template).
    filling: Mutex<HashSet<String>>,
    /// The ext4 file system under every spare's placeholder disk, once made.
    rehearsal_disk: tokio::sync::OnceCell<PathBuf>,
}

impl SparePool {
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted,
            ..Default::default()
        }
    }

    /// Takes a spare restored from `template` (this very build of it). Spares of an
    /// earlier build of the same key are returned in `stale`, for the caller to kill.
    fn take(&self, template: &Template, stale: &mut Vec<Spare>) -> Option<Spare> {
        let mut ready = lock(&self.ready);
        let spares = ready.get_mut(&template.record.key)?;
        let (current, old): (Vec<_>, Vec<_>) = std::mem::take(spares)
            .into_iter()
            .partition(|spare| spare.template.record.created == template.record.created);
        *spares = current;
        stale.extend(old);
        spares.pop()
    }

    fn count(&self, key: &str) -> usize {
        lock(&self.ready).get(key).map_or(0, Vec::len)
    }

    fn put(&self, spare: Spare) {
        lock(&self.ready)
            .entry(spare.template.record.key.clone())
            .or_default()
            .push(spare);
    }

    fn drain(&self) -> Vec<Spare> {
        lock(&self.ready)
            .drain()
            .flat_map(|(_, spares)| spares)
            .collect()
    }
}

/// Ends `filling`'s entry for a key when the filling task ends, however it ends.
struct Filling<'a>(&'a SparePool, String);

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        lock(&self.0.filling).remove(&self.1);
    }
}

impl Engine {
    /// Spares ready now (all templates), and how many are wanted per template (0 where
    /// this backend cannot have spares).
    pub(crate) fn spare_counts(&self) -> (usize, usize) {
        if !self.spares_enabled() {
            return (0, 0);
        }
        let ready = lock(&self.spares.ready).values().map(Vec::len).sum();
        (ready, self.spares.wanted)
    }

    /// Whether starts may claim spares on this daemon.
    fn spares_enabled(&self) -> bool {
        self.spares.wanted > 0 && self.config.backend.supports_root_replacement()
    }

    /// A spare of `template` for a start, if one is ready (spares of an older build of
    /// the template are killed on the way).
    pub(crate) async fn claim_spare(&self, template: &Template) -> Option<Spare> {
        if !self.spares_enabled() {
            return None;
        }
        let mut stale = Vec::new();
        let spare = self.spares.take(template, &mut stale);
        for old in stale {
            tracing::info!(vm = %old.name, "discarding a spare VM of an older template");
            self.discard_spare(old).await;
        }
        spare
    }

    /// Restores spares of `template` in the background until there are as many as
    /// wanted (at most one task per template at a time).
    pub fn replenish_spares(self: &Arc<Self>, template: &Template) {
        if !self.spares_enabled() || self.is_shutting_down() {
            return;
        }
        let key = template.record.key.clone();
        if self.spares.count(&key) >= self.spares.wanted
            || !lock(&self.spares.filling).insert(key.clone())
        {
            return;
        }
        let engine = self.clone();
        let template = template.clone();
        tokio::spawn(async move {
            let _filling = Filling(&engine.spares, key.clone());
            while engine.spares.count(&key) < engine.spares.wanted && !engine.is_shutting_down() {
                match engine.restore_spare(&template).await {
                    Ok(spare) if engine.is_shutting_down() => engine.discard_spare(spare).await,
                    Ok(spare) => {
                        tracing::debug!(vm = %spare.name, pid = spare.pid, "spare VM ready");
                        engine.spares.put(spare);
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "could not restore a spare VM; starts clone as they come");
                        break;
                    }
                }
            }
        });
    }

    /// Restores one spare of `template` and gives it its identity.
    async fn restore_spare(&self, template: &Template) -> Result<Spare, EngineError> {
        let guest = self.guest().await?.clone();
        let name = spare_name();
        let run_dir = self.vm_dir(&name);
        std::fs::create_dir_all(&run_dir).map_err(EngineError::io(&run_dir))?;
        let nic = match self.networks.spare_nic(&name, spare_mac()) {
            Ok(nic) => nic,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(error);
            }
        };
        let made = async {
            let state = template.verified_state_copy(&run_dir)?;
            let placeholder = run_dir.join("placeholder.qcow2");
            let rehearsal_disk = self
                .spares
                .rehearsal_disk
                .get_or_try_init(|| make_rehearsal_disk(&self.config.exec_root))
                .await?;
            create_container_disk(&placeholder, Some(rehearsal_disk))?;
            let spec = VmSpec {
                name: name.clone(),
                vcpus: template.record.shape.vcpus,
                memory_mib: template.record.shape.memory_mib,
                kernel: guest.kernel.clone(),
                initramfs: guest.initramfs.clone(),
                disks: vec![DiskSpec::new(placeholder, DiskFormat::Qcow2)],
                run_dir: run_dir.clone(),
                memory: MemoryBacking::PrivateFile(template.memory_file()),
                restore_from: Some(state),
                nics: vec![nic.clone()],
                netns: Some(self.networks.namespace_path()),
            };
            let vm = self.config.backend.boot(&spec).await?;
            let control: Arc<dyn VmControl> = Arc::from(vm.control);
            let rebound = rebind(
                vm.agent,
                crate::start::rebind_spec(),
                Vec::new(),
                crate::start::SETUP_TIMEOUT,
            )
            .await;
            let rehearsed = match rebound {
                Ok((session, mut reader, _steps)) => rehearse(&session, &mut reader)
                    .await
                    .map(|()| (session, reader)),
                Err(error) => Err(EngineError::from(error)),
            };
            match rehearsed {
                Ok((session, reader)) => Ok(Spare {
                    name: name.clone(),
                    template: template.clone(),
                    pid: vm.pid,
                    control,
                    session,
                    reader,
                    tap: nic.tap.clone(),
                    run_dir: run_dir.clone(),
                }),
                Err(error) => {
                    control.kill().await;
                    Err(error)
                }
            }
        };
        let made: Result<Spare, EngineError> = made.await;
        if made.is_err() {
            self.networks.remove_tap(&nic.tap);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        made
    }

    /// Kills a spare and removes its tap and files.
    pub(crate) async fn discard_spare(&self, spare: Spare) {
        spare.control.kill().await;
        self.networks.remove_tap(&spare.tap);
        let _ = std::fs::remove_dir_all(&spare.run_dir);
    }

    /// Kills every spare (the daemon is shutting down): first waits for the spares
    /// being restored now, whose tasks discard them once restored (a VM process being
    /// restored when the daemon exits would outlive it).
    pub(crate) async fn discard_spares(&self) {
        let deadline = std::time::Instant::now() + crate::start::SETUP_TIMEOUT;
        while !lock(&self.spares.filling).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for spare in self.spares.drain() {
            self.discard_spare(spare).await;
        }
    }
}

/// Size of the rehearsal's file system.
const REHEARSAL_DISK_BYTES: u64 = 16 << 20;

/// Makes (or keeps) `<exec root>/spare-rehearsal.ext4`: an empty ext4 file system.
async fn make_rehearsal_disk(exec_root: &Path) -> Result<PathBuf, EngineError> {
    let path = exec_root.join("spare-rehearsal.ext4");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == REHEARSAL_DISK_BYTES) {
        return Ok(path);
    }
    let staging = exec_root.join("spare-rehearsal.ext4.new");
    std::fs::File::create(&staging)
        .and_then(|file| file.set_len(REHEARSAL_DISK_BYTES))
        .map_err(EngineError::io(&staging))?;
    let output = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&staging)
        .output()
        .await
        .map_err(|e| EngineError::Command {
            what: "mkfs.ext4".into(),
            detail: format!("{e} (is e2fsprogs installed?)"),
        })?;
    if !output.status.success() {
        return Err(EngineError::Command {
            what: "mkfs.ext4".into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&staging, &path).map_err(EngineError::io(&path))?;
    Ok(path)
}

/// Has a rebound spare rehearse a container's start (see the module's docs).
async fn rehearse(session: &AgentSession, reader: &mut AgentReader) -> Result<(), EngineError> {
    session.send(AGENT_STREAM, &HostMessage::Rehearse).await?;
    const REHEARSING: &str = "rehearsing a container's start";
    match reader
        .expect_message(AGENT_STREAM, crate::start::SETUP_TIMEOUT, REHEARSING)
        .await?
    {
        GuestMessage::Rehearsed { steps_us } => {
            tracing::debug!(?steps_us, "spare VM rehearsed");
            Ok(())
        }
        GuestMessage::Error { message } => Err(crate::agent::AgentError::GuestFailed {
            during: REHEARSING.into(),
            message,
        }
        .into()),
        other => Err(crate::agent::AgentError::unexpected(REHEARSING, &other).into()),
    }
}

/// Removes the run directories of spares under `vms_dir` that no container's run took
/// (`claimed`): a daemon killed while it had spares left them; their processes are
/// killed with every other VM process no record owns.
pub(crate) fn remove_left_spare_dirs(vms_dir: &Path, claimed: impl Iterator<Item = String>) {
    let claimed: HashSet<String> = claimed.filter(|name| !name.is_empty()).collect();
    let Ok(entries) = std::fs::read_dir(vms_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(SPARE_PREFIX) && !claimed.contains(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What every spare's name starts with.
const SPARE_PREFIX: &str = "spare";

/// A spare's name: `spare` and 19 random hex digits (24 characters, as much of a
/// container id as names its run directory; the first 12 name its tap).
fn spare_name() -> String {
    let mut bytes = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SPARE_PREFIX}{}", &hex[..19])
}

/// A locally administered unicast MAC address of a spare's own, until the container
/// that claims it gives it the container's.
fn spare_mac() -> String {
    let mut bytes = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_names_fit_run_directories_and_taps_and_differ() {
        let a = spare_name();
        let b = spare_name();
        assert_eq!(a.len(), 24);
        assert!(a.starts_with("spare"));
        assert_ne!(a, b);
        let tap = berth_net::links::tap_name(&a, 0);
        assert!(tap.len() <= 15, "{tap}");
        assert_ne!(tap, berth_net::links::tap_name(&b, 0));
        let mac = spare_mac();
        assert!(mac.starts_with("02:42:") && mac.len() == 17);
    }

    #[test]
    fn only_unclaimed_spares_run_directories_are_removed() {
        let vms = tempfile::tempdir().unwrap();
        let claimed = spare_name();
        let left = spare_name();
        let container = "0123456789abcdef01234567".to_owned();
        for name in [&claimed, &left, &container] {
            std::fs::create_dir_all(vms.path().join(name).join("x")).unwrap();
        }
        remove_left_spare_dirs(vms.path(), [claimed.clone(), String::new()].into_iter());
        assert!(vms.path().join(&claimed).exists());
        assert!(vms.path().join(&container).exists());
        assert!(!vms.path().join(&left).exists());
    }
}
