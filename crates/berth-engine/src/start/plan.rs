//! The first step of a start: what the run will be, decided before anything is made
//! but the network leases: clone or cold boot (and from which template), the VM's
//! shape, disks and NICs, and the container's process.

use std::path::PathBuf;
use std::sync::Arc;

use berth_agent_proto::{ProcessSpec, SetupSpec, VolumeMount};
use berth_guest::GuestImage;
use berth_vm::{DiskFormat, DiskSpec, MemoryBacking, VmSpec};

use crate::container::{ContainerHandle, ContainerRecord};
use crate::error::{error_chain, EngineError};
use crate::files::shares::PlannedShare;
use crate::network::NetworkPlan;
use crate::records::VolumeStorage;
use crate::vm::template::{Shape, Template};
use crate::{lock, Engine, RUNTIME_CLONE};

/// What a start will make.
pub(super) struct StartPlan {
    /// The record as the start began.
    pub record: ContainerRecord,
    /// The template a clone restores (`None`: a cold boot).
    pub template: Option<Template>,
    /// A verified private copy of the template's state (clones only).
    pub restore_from: Option<PathBuf>,
    pub network: NetworkPlan,
    /// The container's disk volumes: in the VM from boot, or hot-plugged into a clone.
    pub volume_disks: Vec<DiskSpec>,
    /// Where they are mounted, in the same order.
    pub volume_mounts: Vec<VolumeMount>,
    /// Its bind mounts and directory volumes, served by the host's file servers.
    pub shares: Vec<PlannedShare>,
    pub process: ProcessSpec,
    /// Hosts lines of its `--link`s (before its `--add-host`s, as dockerd writes them).
    pub link_hosts: Vec<(String, Vec<String>)>,
}

impl StartPlan {
    pub fn is_clone(&self) -> bool {
        self.template.is_some()
    }

    /// Whether the process travels right behind the setup (no networks to connect
    /// after setup): spares a round trip to the guest.
    pub fn pipelined(&self) -> bool {
        self.network.extra.is_empty()
    }

    /// The VM to boot or restore.
    pub fn vm_spec(&self, engine: &Engine, guest: &GuestImage, hotplug: bool) -> VmSpec {
        let record = &self.record;
        let (vcpus, memory_mib) = record.vm_shape(engine.config.default_memory_mib);
        let mut disks = vec![DiskSpec::new(
            engine.container_dir(&record.id).join("rootfs.qcow2"),
            DiskFormat::Qcow2,
        )];
        if !self.is_clone() {
            disks.extend(self.volume_disks.iter().cloned());
        }
        let extra_nics = self
            .network
            .extra
            .iter()
            .filter(|_| !hotplug)
            .map(|(nic, _)| nic.clone());
        VmSpec {
            name: record.id.clone(),
            vcpus,
            memory_mib,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            disks,
            run_dir: engine.vm_dir(&record.id),
            memory: match &self.template {
                Some(template) => MemoryBacking::PrivateFile(template.memory_file()),
                None => MemoryBacking::Anonymous,
            },
            restore_from: self.restore_from.clone(),
            nics: std::iter::once(self.network.boot_nic.clone())
                .chain(extra_nics)
                .collect(),
            netns: Some(engine.networks.namespace_path()),
        }
    }

    /// The guest's setup: hostname, root disk, first interface, DNS, volumes and the
    /// container's own settings.
    pub fn setup_spec(&self) -> Result<SetupSpec, EngineError> {
        let record = &self.record;
        let mut setup = SetupSpec {
            hostname: record
                .config
                .hostname
                .clone()
                .unwrap_or_else(|| record.id[..12].to_owned()),
            root_device: "/dev/vda".into(),
            interfaces: self.network.boot_interface.iter().cloned().collect(),
            nameservers: self.network.nameservers.clone(),
            ..Default::default()
        };
        crate::container::guest_config::apply(record, &self.network, &mut setup)?;
        setup
            .extra_hosts
            .splice(0..0, self.link_hosts.iter().cloned());
        setup.volumes = self.volume_mounts.clone();
        setup.shares = self.shares.iter().map(PlannedShare::to_mount).collect();
        Ok(setup)
    }
}

impl Engine {
    /// Plans a start. Takes the run's network leases last: a failure before them leaves
    /// nothing to undo; after them, the caller gives them back.
    pub(super) async fn plan_start(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        guest: &GuestImage,
    ) -> Result<StartPlan, EngineError> {
        let record = handle.snapshot();
        let mut process = process_spec(&record)?;
        let linked = self.link_targets(&record)?;
        process.env = crate::container::links::with_link_environment(
            &linked,
            &record.name,
            std::mem::take(&mut process.env),
        );
        let link_hosts = linked.iter().map(|t| t.host_line()).collect();
        self.check_volumes_free(&record.id, &record.mounts)?;
        let (volume_disks, volume_mounts) = self.volume_disks(&record)?;
        let shares = self.planned_shares(&record)?;
        let (template, restore_from) = match self.wants_clone(&record, volume_disks.len()) {
            true => {
                let (template, state) = self.usable_template(&record, guest).await?;
                (Some(template), Some(state))
            }
            false => (None, None),
        };
        let network = {
            let mut planned = handle.snapshot();
            let plan = self.networks.plan_start(&mut planned)?;
            lock(&handle.record).networks = planned.networks;
            plan
        };
        Ok(StartPlan {
            record,
            template,
            restore_from,
            network,
            volume_disks,
            volume_mounts,
            shares,
            process,
            link_hosts,
        })
    }

    /// Whether the container's VM is cloned: the default runtime, on a backend with
    /// snapshots. A backend without hot-plug cold-boots containers with disk volumes or
    /// several networks, whose disks and NICs it then has from boot (shares need no
    /// device: they travel on the agent's channel).
    fn wants_clone(&self, record: &ContainerRecord, disks: usize) -> bool {
        let backend = &self.config.backend;
        record.runtime() == RUNTIME_CLONE
            && backend.supports_snapshot()
            && (backend.supports_hotplug() || (disks == 0 && record.networks.len() <= 1))
    }

    /// The template of the container's shape and a verified private copy of its state;
    /// a template found damaged is discarded and built again, once.
    async fn usable_template(
        &self,
        record: &ContainerRecord,
        guest: &GuestImage,
    ) -> Result<(Template, PathBuf), EngineError> {
        let (vcpus, memory_mib) = record.vm_shape(self.config.default_memory_mib);
        let shape = Shape { vcpus, memory_mib };
        let run_dir = self.vm_dir(&record.id);
        let mut attempt = 0;
        loop {
            let candidate = self
                .templates
                .get_or_build(&*self.config.backend, guest, shape)
                .await?;
            match candidate.verified_state_copy(&run_dir) {
                Ok(state) => return Ok((candidate, state)),
                Err(error) if attempt == 0 => {
                    tracing::warn!(error = %error_chain(&error), "template unusable; rebuilding it");
                    self.templates.discard(&candidate).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The container's mounts of disk volumes (each a disk of its VM), in mount order.
    pub(crate) fn disk_volume_mounts<'a>(
        &self,
        record: &'a ContainerRecord,
    ) -> impl Iterator<Item = &'a crate::records::MountRecord> + use<'a, '_> {
        record
            .mounts
            .iter()
            .filter(|m| m.bind_source.is_none() && m.subpath.is_none())
            .filter(|m| {
                self.volume(&m.volume)
                    .is_some_and(|v| v.storage == VolumeStorage::Disk)
            })
    }

    /// The container's disk volumes, in the PCI slots their order gives them, and where
    /// the guest mounts each.
    fn volume_disks(
        &self,
        record: &ContainerRecord,
    ) -> Result<(Vec<DiskSpec>, Vec<VolumeMount>), EngineError> {
        let disk_mounts: Vec<_> = self.disk_volume_mounts(record).collect();
        if disk_mounts.len() > berth_vm::MAX_VOLUMES {
            return Err(EngineError::InvalidArgument(format!(
                "a container's VM takes at most {} disk volumes",
                berth_vm::MAX_VOLUMES
            )));
        }
        Ok(disk_mounts
            .iter()
            .enumerate()
            .map(|(index, mount)| {
                let disk = DiskSpec {
                    path: self.volume_disk(&mount.volume),
                    format: DiskFormat::Raw,
                    read_only: mount.read_only,
                    serial: Some(volume_serial(index)),
                    pci_slot: Some(berth_vm::FIRST_VOLUME_SLOT + index as u8),
                };
                let guest = VolumeMount {
                    serial: volume_serial(index),
                    target: mount.target.clone(),
                    read_only: mount.read_only,
                    populate: mount.populate,
                };
                (disk, guest)
            })
            .unzip())
    }
}

/// The container's process, checked before any VM is booted.
fn process_spec(record: &ContainerRecord) -> Result<ProcessSpec, EngineError> {
    if record.build_step {
        // The hold helper as root in `/`; the step's command runs as an exec with the
        // container's user and working directory.
        return Ok(ProcessSpec {
            argv: vec![berth_agent_proto::HOLD_HELPER.to_owned()],
            env: record.config.env.clone().unwrap_or_default(),
            cwd: "/".into(),
            user: String::new(),
            tty: false,
            stdin: false,
            tty_size: None,
            rlimits: crate::container::security::rlimits(&record.host_config)?,
            capabilities: crate::container::security::capabilities(&record.host_config)?,
            no_new_privileges: false,
            agent_helper: true,
            extra_groups: Vec::new(),
            own_pid_namespace: true,
            container: None,
        });
    }
    // `--init`: the agent's init helper is PID 1 and runs the command as its child.
    let init = record.host_config.init == Some(true);
    let init_helper = init.then(|| berth_agent_proto::INIT_HELPER.to_owned());
    Ok(ProcessSpec {
        argv: init_helper
            .into_iter()
            .chain(std::iter::once(record.path.clone()))
            .chain(record.args.iter().cloned())
            .collect(),
        env: record.config.env.clone().unwrap_or_default(),
        cwd: record
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: record.config.user.clone().unwrap_or_default(),
        tty: record.tty(),
        stdin: record.config.open_stdin.unwrap_or(false),
        tty_size: None,
        rlimits: crate::container::security::rlimits(&record.host_config)?,
        capabilities: crate::container::security::capabilities(&record.host_config)?,
        no_new_privileges: crate::container::security::no_new_privileges(&record.host_config),
        agent_helper: init,
        extra_groups: record.host_config.group_add.clone().unwrap_or_default(),
        // `--pid host`: the VM's namespace (see docs/architecture.md).
        own_pid_namespace: record.host_config.pid_mode.as_deref() != Some("host"),
        container: None,
    })
}

/// The disk serial of a container's `index`th volume, which the agent looks for.
fn volume_serial(index: usize) -> String {
    format!("berth-vol-{index}")
}
