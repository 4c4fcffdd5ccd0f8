//! Step 2 of a clone's start when a VM restored ahead of demand is ready (see
//! `vm::spares`): the spare takes the container's disk and tap, and the start goes on
//! from its agent, which has its identity already.

use std::path::PathBuf;
use std::sync::Arc;

use berth_vm::{DiskFormat, DiskSpec, VmControl};

use super::guest::GuestChannel;
use super::plan::StartPlan;
use crate::error::{error_chain, EngineError};
use crate::vm::spares::Spare;
use crate::vm::template::Template;
use crate::Engine;

/// A spare that now carries the container's disk and tap.
pub(super) struct ClaimedSpare {
    pub name: String,
    pub pid: u32,
    pub control: Arc<dyn VmControl>,
    pub channel: GuestChannel,
    pub run_dir: PathBuf,
}

impl Engine {
    /// A spare of `template` made the container's, if one is ready. A spare that cannot
    /// take the container's disk or tap is discarded, and the start restores a VM of its
    /// own as usual.
    pub(super) async fn claimed_spare(
        &self,
        plan: &StartPlan,
        template: &Template,
    ) -> Option<ClaimedSpare> {
        let spare = self.claim_spare(template).await?;
        match self.give_container_to(plan, &spare).await {
            Ok(()) => {
                tracing::debug!(id = %&plan.record.id[..12], vm = %spare.name, "a spare VM takes the container");
                Some(ClaimedSpare {
                    name: spare.name,
                    pid: spare.pid,
                    control: spare.control,
                    channel: GuestChannel::Rebound(spare.session, spare.reader),
                    run_dir: spare.run_dir,
                })
            }
            Err(error) => {
                tracing::warn!(vm = %spare.name, error = %error_chain(&error), "a spare VM could not take the container; restoring one");
                self.discard_spare(spare).await;
                None
            }
        }
    }

    /// Puts the container's disk behind the spare's first disk, and gives the spare's
    /// tap the name the plan made for the container's first NIC.
    async fn give_container_to(&self, plan: &StartPlan, spare: &Spare) -> Result<(), EngineError> {
        let disk = DiskSpec::new(
            self.container_dir(&plan.record.id).join("rootfs.qcow2"),
            DiskFormat::Qcow2,
        );
        spare.control.replace_root_disk(&disk).await?;
        self.networks
            .adopt_tap(&spare.tap, &plan.network.boot_nic.tap)
    }
}
