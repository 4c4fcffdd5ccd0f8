//! A container's lifecycle as one table: Docker's states, which verb each state allows,
//! and which transitions are legal.
//!
//! ```text
//!                 Started                   Paused
//!   created ─────────────▶ running ◀─────────────────▶ paused
//!      │                    │    ▲      Unpaused          │
//!      │             Exited │    │ Started                │ Exited
//!      │                    ▼    │                        │
//!      │                   exited ◀───────────────────────┘
//!      │          RestartScheduled │ ▲ RestartEnded
//!      │                           ▼ │
//!      │                        restarting
//!      │  Removing (from created, exited, restarting, dead)
//!      └────────────────────▶ removing ──RemovalFailed──▶ dead
//!                                 │
//!                                 └──Removed──▶ (record deleted)
//! ```
//!
//! Verbs ask the status first (`can_start`, `can_pause`, ...): a refusal is a
//! [`Refusal`], which the engine reports with Docker's wording. The status itself only
//! changes through [`ContainerStatus::after`], which the engine's one transition
//! function ([`crate::Engine::transition`]) applies, persists and announces.

pub use crate::records::ContainerStatus;

/// Every status, for tables and tests.
#[cfg(test)]
pub const ALL_STATUSES: [ContainerStatus; 7] = [
    ContainerStatus::Created,
    ContainerStatus::Running,
    ContainerStatus::Paused,
    ContainerStatus::Restarting,
    ContainerStatus::Removing,
    ContainerStatus::Exited,
    ContainerStatus::Dead,
];

/// A change in a container's life: the only way its status changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Its VM (process `pid`) is up and its process has started.
    Started { pid: u32 },
    /// A start failed before the process ran: the error is recorded, the status stays.
    StartFailed { error: String },
    /// Its VM's vCPUs stopped.
    Paused,
    /// Its VM runs again; `announced` for a user's unpause (an event), not for the
    /// engine's own resume before delivering a signal.
    Unpaused { announced: bool },
    /// Its run ended before its process started (not found, not executable, or the
    /// VM gone during the start): recorded as an exit, as Docker does.
    RunFailed { code: i64, error: String },
    /// Its run ended (or was found ended when the daemon started).
    Exited {
        code: i64,
        error: String,
        oom_killed: bool,
    },
    /// A restart policy scheduled its next run.
    RestartScheduled,
    /// A pending restart is due (the start follows) or was cancelled by a stop.
    RestartEnded,
    /// Its VM outlived the daemon before this one, which took it over.
    Reattached,
    /// Its removal began.
    Removing,
    /// Its removal failed half-way.
    RemovalFailed { error: String },
    /// It is gone: its record is deleted, its waiters are told.
    Removed,
}

impl Transition {
    /// The transition's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::StartFailed { .. } => "start-failed",
            Self::RunFailed { .. } => "run-failed",
            Self::Paused => "paused",
            Self::Unpaused { .. } => "unpaused",
            Self::Exited { .. } => "exited",
            Self::RestartScheduled => "restart-scheduled",
            Self::RestartEnded => "restart-ended",
            Self::Reattached => "reattached",
            Self::Removing => "removing",
            Self::RemovalFailed { .. } => "removal-failed",
            Self::Removed => "removed",
        }
    }
}

/// A transition the table does not allow: a bug in the engine, never a user's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} container cannot become {transition}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub transition: &'static str,
}

/// Why a verb is refused in a state. [`Refusal::message`] words it as Docker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Start of a running container (Docker answers 304).
    AlreadyRunning,
    /// A verb that needs a running container (stop answers 304 instead).
    NotRunning,
    AlreadyPaused,
    NotPaused,
    /// Start of a paused container.
    PausedStart,
    /// Exec into a paused container.
    PausedExec,
    /// A verb that waits for a restarting container to run.
    Restarting,
    /// Remove without force of a running container.
    RunningRemove,
    /// Remove without force of a paused container.
    PausedRemove,
    /// Remove without force of a container between restarts.
    RestartingRemove,
    /// A verb on a container that is being removed.
    BeingRemoved,
    /// Start of a container whose removal failed.
    Dead,
    /// Attach to a dead container (its removal failed).
    AttachStopped,
    /// A change of the VM's shape while it runs.
    ShapeWhileRunning,
}

impl Refusal {
    /// Docker's wording, for the container `id` (for removals: `/name`, as Docker).
    pub fn message(self, id: &str) -> String {
        match self {
            Self::AlreadyRunning => format!("Container {id} is already running"),
            Self::NotRunning => format!("Container {id} is not running"),
            Self::AlreadyPaused => format!("Container {id} is already paused"),
            Self::NotPaused => format!("Container {id} is not paused"),
            Self::PausedStart => "cannot start a paused container, try unpause instead".into(),
            Self::PausedExec => {
                format!("Container {id} is paused, unpause the container before exec")
            }
            Self::Restarting => {
                format!("Container {id} is restarting, wait until the container is running")
            }
            Self::RunningRemove => removal_refused(id, "running"),
            Self::PausedRemove => removal_refused(id, "paused"),
            Self::RestartingRemove => removal_refused(id, "restarting"),
            Self::BeingRemoved => format!("removal of container {id} is already in progress"),
            Self::Dead => format!("Container {id} is dead and cannot be started"),
            Self::AttachStopped => format!("Container {id} is dead: remove it"),
            Self::ShapeWhileRunning => "the memory and vCPUs of a running container's VM cannot change: stop the container, update it, and start it again".into(),
        }
    }
}

/// Docker's refusal to remove a container that is `state`.
fn removal_refused(name: &str, state: &str) -> String {
    format!(
        "cannot remove container \"{name}\": container is {state}: stop the container before removing or force remove"
    )
}

/// What a stop does in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Signal the process and wait for the run to end.
    EndRun,
    /// Between runs: cancel the pending restart.
    CancelRestart,
}

/// What a removal does in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveAction {
    /// Nothing runs: remove.
    Remove,
    /// Forced: stop the run (or cancel the pending restart) first.
    StopFirst,
}

impl ContainerStatus {
    /// `docker start`.
    pub fn can_start(self) -> Result<(), Refusal> {
        match self {
            Self::Created | Self::Exited => Ok(()),
            Self::Running | Self::Restarting => Err(Refusal::AlreadyRunning),
            Self::Paused => Err(Refusal::PausedStart),
            Self::Removing => Err(Refusal::BeingRemoved),
            Self::Dead => Err(Refusal::Dead),
        }
    }

    /// `docker stop` (a refusal means "not running": Docker answers 304).
    pub fn can_stop(self) -> Result<StopAction, Refusal> {
        match self {
            Self::Running | Self::Paused => Ok(StopAction::EndRun),
            Self::Restarting => Ok(StopAction::CancelRestart),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// `docker kill` (a paused VM is resumed to take the signal; between runs, as
    /// Docker, the pending restart is cancelled).
    pub fn can_kill(self) -> Result<StopAction, Refusal> {
        match self {
            Self::Running | Self::Paused => Ok(StopAction::EndRun),
            Self::Restarting => Ok(StopAction::CancelRestart),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// `docker pause`.
    pub fn can_pause(self) -> Result<(), Refusal> {
        match self {
            Self::Running => Ok(()),
            Self::Paused => Err(Refusal::AlreadyPaused),
            Self::Restarting => Err(Refusal::Restarting),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// `docker unpause`.
    pub fn can_unpause(self) -> Result<(), Refusal> {
        match self {
            Self::Paused => Ok(()),
            Self::Running => Err(Refusal::NotPaused),
            Self::Restarting => Err(Refusal::Restarting),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// `docker exec`, `top`, `resize` and other verbs that need the process running.
    pub fn can_exec(self) -> Result<(), Refusal> {
        match self {
            Self::Running => Ok(()),
            Self::Paused => Err(Refusal::PausedExec),
            Self::Restarting => Err(Refusal::Restarting),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// Verbs that need the VM, running or paused (`stats`, `port`, `cp` into it).
    pub fn can_use_vm(self) -> Result<(), Refusal> {
        match self {
            Self::Running | Self::Paused => Ok(()),
            Self::Restarting => Err(Refusal::Restarting),
            Self::Created | Self::Exited | Self::Dead | Self::Removing => Err(Refusal::NotRunning),
        }
    }

    /// `docker rm [-f]`.
    pub fn can_remove(self, force: bool) -> Result<RemoveAction, Refusal> {
        match (self, force) {
            (Self::Created | Self::Exited | Self::Dead, _) => Ok(RemoveAction::Remove),
            (Self::Running | Self::Paused | Self::Restarting, true) => Ok(RemoveAction::StopFirst),
            (Self::Running, false) => Err(Refusal::RunningRemove),
            (Self::Paused, false) => Err(Refusal::PausedRemove),
            (Self::Restarting, false) => Err(Refusal::RestartingRemove),
            (Self::Removing, _) => Err(Refusal::BeingRemoved),
        }
    }

    /// `docker attach` (and `start -a`, which attaches before starting). As the Engine
    /// API, any container but one being removed or dead: a stream waits for the next
    /// run. (The docker CLI refuses `docker attach` to a stopped or paused container
    /// itself, before asking.)
    pub fn can_attach(self) -> Result<(), Refusal> {
        match self {
            Self::Created | Self::Running | Self::Paused | Self::Restarting | Self::Exited => {
                Ok(())
            }
            Self::Removing => Err(Refusal::BeingRemoved),
            Self::Dead => Err(Refusal::AttachStopped),
        }
    }

    /// `docker update` of memory or vCPUs: the VM's shape is fixed while it exists.
    pub fn can_change_shape(self) -> Result<(), Refusal> {
        match self {
            Self::Running | Self::Paused | Self::Restarting => Err(Refusal::ShapeWhileRunning),
            Self::Removing => Err(Refusal::BeingRemoved),
            Self::Created | Self::Exited | Self::Dead => Ok(()),
        }
    }

    /// The status after `transition`, or why the table does not allow it.
    pub fn after(self, transition: &Transition) -> Result<ContainerStatus, IllegalTransition> {
        use ContainerStatus::*;
        let next = match (self, transition) {
            (Created | Exited, Transition::Started { .. }) => Some(Running),
            (Created | Exited | Restarting, Transition::StartFailed { .. }) => Some(self),
            (Created | Exited, Transition::RunFailed { .. }) => Some(Exited),
            (Running, Transition::Paused) => Some(Paused),
            (Paused, Transition::Unpaused { .. }) => Some(Running),
            (Running | Paused | Restarting, Transition::Exited { .. }) => Some(Exited),
            (Exited, Transition::RestartScheduled) => Some(Restarting),
            (Restarting, Transition::RestartEnded) => Some(Exited),
            (Running | Paused, Transition::Reattached) => Some(self),
            (Created | Exited | Restarting | Dead, Transition::Removing) => Some(Removing),
            (Removing, Transition::RemovalFailed { .. }) => Some(Dead),
            (Removing, Transition::Removed) => Some(Removing),
            _ => None,
        };
        next.ok_or(IllegalTransition {
            from: self.as_str(),
            transition: transition.name(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerStatus::*;
    use super::*;

    fn exited() -> Transition {
        Transition::Exited {
            code: 0,
            error: String::new(),
            oom_killed: false,
        }
    }

    fn all_transitions() -> Vec<Transition> {
        vec![
            Transition::Started { pid: 1 },
            Transition::StartFailed {
                error: "boom".into(),
            },
            Transition::RunFailed {
                code: 127,
                error: "not found".into(),
            },
            Transition::Paused,
            Transition::Unpaused { announced: true },
            exited(),
            Transition::RestartScheduled,
            Transition::RestartEnded,
            Transition::Reattached,
            Transition::Removing,
            Transition::RemovalFailed {
                error: "busy".into(),
            },
            Transition::Removed,
        ]
    }

    #[test]
    fn created_starts_and_runs() {
        assert_eq!(Created.after(&Transition::Started { pid: 1 }), Ok(Running));
    }

    #[test]
    fn exited_starts_again() {
        assert_eq!(Exited.after(&Transition::Started { pid: 1 }), Ok(Running));
    }

    #[test]
    fn running_cannot_start_twice() {
        assert!(Running.after(&Transition::Started { pid: 1 }).is_err());
        assert_eq!(Running.can_start(), Err(Refusal::AlreadyRunning));
    }

    #[test]
    fn a_failed_start_keeps_the_status() {
        let failed = Transition::StartFailed { error: "x".into() };
        assert_eq!(Created.after(&failed), Ok(Created));
        assert_eq!(Exited.after(&failed), Ok(Exited));
        assert_eq!(Restarting.after(&failed), Ok(Restarting));
        assert!(Running.after(&failed).is_err());
    }

    #[test]
    fn a_run_that_never_started_is_exited() {
        let failed = Transition::RunFailed {
            code: 126,
            error: "permission denied".into(),
        };
        assert_eq!(Created.after(&failed), Ok(Exited));
        assert_eq!(Exited.after(&failed), Ok(Exited));
        for status in [Running, Paused, Restarting, Removing, Dead] {
            assert!(status.after(&failed).is_err(), "{status:?}");
        }
    }

    #[test]
    fn running_pauses_and_unpauses() {
        assert_eq!(Running.after(&Transition::Paused), Ok(Paused));
        assert_eq!(
            Paused.after(&Transition::Unpaused { announced: false }),
            Ok(Running)
        );
    }

    #[test]
    fn only_running_pauses() {
        for status in ALL_STATUSES {
            assert_eq!(
                status.after(&Transition::Paused).is_ok(),
                status == Running,
                "{status:?}"
            );
        }
    }

    #[test]
    fn only_paused_unpauses() {
        for status in ALL_STATUSES {
            assert_eq!(
                status
                    .after(&Transition::Unpaused { announced: true })
                    .is_ok(),
                status == Paused,
                "{status:?}"
            );
        }
    }

    #[test]
    fn runs_end_in_exited() {
        assert_eq!(Running.after(&exited()), Ok(Exited));
        assert_eq!(Paused.after(&exited()), Ok(Exited));
        // Found after a daemon restart: a pending restart that never happened.
        assert_eq!(Restarting.after(&exited()), Ok(Exited));
    }

    #[test]
    fn nothing_exits_without_a_run() {
        for status in [Created, Exited, Removing, Dead] {
            assert!(status.after(&exited()).is_err(), "{status:?}");
        }
    }

    #[test]
    fn restart_policies_wait_in_restarting() {
        assert_eq!(Exited.after(&Transition::RestartScheduled), Ok(Restarting));
        assert_eq!(Restarting.after(&Transition::RestartEnded), Ok(Exited));
        assert!(Running.after(&Transition::RestartScheduled).is_err());
        assert!(Created.after(&Transition::RestartScheduled).is_err());
        assert!(Exited.after(&Transition::RestartEnded).is_err());
    }

    #[test]
    fn reattach_keeps_running_and_paused() {
        assert_eq!(Running.after(&Transition::Reattached), Ok(Running));
        assert_eq!(Paused.after(&Transition::Reattached), Ok(Paused));
        for status in [Created, Exited, Restarting, Removing, Dead] {
            assert!(status.after(&Transition::Reattached).is_err());
        }
    }

    #[test]
    fn removal_starts_from_stopped_states() {
        for status in [Created, Exited, Restarting, Dead] {
            assert_eq!(status.after(&Transition::Removing), Ok(Removing));
        }
        for status in [Running, Paused, Removing] {
            assert!(status.after(&Transition::Removing).is_err(), "{status:?}");
        }
    }

    #[test]
    fn a_failed_removal_is_dead() {
        let failed = Transition::RemovalFailed { error: "x".into() };
        assert_eq!(Removing.after(&failed), Ok(Dead));
        assert!(Exited.after(&failed).is_err());
    }

    #[test]
    fn removing_ends_removed_or_dead() {
        for transition in all_transitions() {
            let allowed = Removing.after(&transition).is_ok();
            assert_eq!(
                allowed,
                matches!(
                    transition,
                    Transition::RemovalFailed { .. } | Transition::Removed
                ),
                "{transition:?}"
            );
        }
        assert_eq!(Removing.after(&Transition::Removed), Ok(Removing));
    }

    #[test]
    fn only_a_removal_under_way_ends_removed() {
        for status in ALL_STATUSES {
            assert_eq!(
                status.after(&Transition::Removed).is_ok(),
                status == Removing,
                "{status:?}"
            );
        }
    }

    #[test]
    fn dead_can_only_be_removed() {
        for transition in all_transitions() {
            assert_eq!(
                Dead.after(&transition).is_ok(),
                transition == Transition::Removing,
                "{transition:?}"
            );
        }
    }

    #[test]
    fn illegal_transitions_name_both_sides() {
        let error = Dead.after(&Transition::Started { pid: 1 }).unwrap_err();
        assert_eq!(error.to_string(), "a dead container cannot become started");
    }

    #[test]
    fn every_pair_is_decided_by_the_table() {
        // 7 statuses x 12 transitions: count the legal ones, so that a change to the
        // table is a deliberate change to this number too.
        let legal = ALL_STATUSES
            .iter()
            .flat_map(|s| all_transitions().into_iter().map(move |t| (*s, t)))
            .filter(|(s, t)| s.after(t).is_ok())
            .count();
        assert_eq!(legal, 22);
    }

    #[test]
    fn start_is_refused_as_docker_refuses_it() {
        assert_eq!(Created.can_start(), Ok(()));
        assert_eq!(Exited.can_start(), Ok(()));
        assert_eq!(Restarting.can_start(), Err(Refusal::AlreadyRunning));
        assert_eq!(Paused.can_start(), Err(Refusal::PausedStart));
        assert_eq!(Removing.can_start(), Err(Refusal::BeingRemoved));
        assert_eq!(Dead.can_start(), Err(Refusal::Dead));
    }

    #[test]
    fn stop_ends_a_run_or_cancels_a_restart() {
        assert_eq!(Running.can_stop(), Ok(StopAction::EndRun));
        assert_eq!(Paused.can_stop(), Ok(StopAction::EndRun));
        assert_eq!(Restarting.can_stop(), Ok(StopAction::CancelRestart));
        for status in [Created, Exited, Dead, Removing] {
            assert_eq!(status.can_stop(), Err(Refusal::NotRunning));
        }
    }

    #[test]
    fn kill_needs_a_vm_or_cancels_a_restart() {
        assert_eq!(Running.can_kill(), Ok(StopAction::EndRun));
        assert_eq!(Paused.can_kill(), Ok(StopAction::EndRun));
        assert_eq!(Restarting.can_kill(), Ok(StopAction::CancelRestart));
        for status in [Created, Exited, Dead, Removing] {
            assert_eq!(status.can_kill(), Err(Refusal::NotRunning));
        }
    }

    #[test]
    fn pause_needs_a_running_vm() {
        assert_eq!(Running.can_pause(), Ok(()));
        assert_eq!(Paused.can_pause(), Err(Refusal::AlreadyPaused));
        assert_eq!(Restarting.can_pause(), Err(Refusal::Restarting));
        assert_eq!(Exited.can_pause(), Err(Refusal::NotRunning));
        assert_eq!(Created.can_pause(), Err(Refusal::NotRunning));
    }

    #[test]
    fn unpause_needs_a_paused_vm() {
        assert_eq!(Paused.can_unpause(), Ok(()));
        assert_eq!(Running.can_unpause(), Err(Refusal::NotPaused));
        assert_eq!(Exited.can_unpause(), Err(Refusal::NotRunning));
        assert_eq!(Restarting.can_unpause(), Err(Refusal::Restarting));
    }

    #[test]
    fn exec_needs_a_running_process() {
        assert_eq!(Running.can_exec(), Ok(()));
        assert_eq!(Paused.can_exec(), Err(Refusal::PausedExec));
        assert_eq!(Restarting.can_exec(), Err(Refusal::Restarting));
        assert_eq!(Created.can_exec(), Err(Refusal::NotRunning));
        assert_eq!(Exited.can_exec(), Err(Refusal::NotRunning));
    }

    #[test]
    fn vm_verbs_accept_a_paused_vm() {
        assert_eq!(Running.can_use_vm(), Ok(()));
        assert_eq!(Paused.can_use_vm(), Ok(()));
        assert_eq!(Exited.can_use_vm(), Err(Refusal::NotRunning));
    }

    #[test]
    fn remove_without_force_needs_a_stopped_container() {
        for status in [Created, Exited, Dead] {
            assert_eq!(status.can_remove(false), Ok(RemoveAction::Remove));
            assert_eq!(status.can_remove(true), Ok(RemoveAction::Remove));
        }
        assert_eq!(Running.can_remove(false), Err(Refusal::RunningRemove));
        assert_eq!(Paused.can_remove(false), Err(Refusal::PausedRemove));
        assert_eq!(Restarting.can_remove(false), Err(Refusal::RestartingRemove));
    }

    #[test]
    fn forced_remove_stops_first() {
        for status in [Running, Paused, Restarting] {
            assert_eq!(status.can_remove(true), Ok(RemoveAction::StopFirst));
        }
        assert_eq!(Removing.can_remove(true), Err(Refusal::BeingRemoved));
    }

    #[test]
    fn attach_to_anything_but_a_container_on_its_way_out() {
        for status in [Created, Running, Paused, Restarting, Exited] {
            assert_eq!(status.can_attach(), Ok(()), "{status:?}");
        }
        assert_eq!(Removing.can_attach(), Err(Refusal::BeingRemoved));
        assert_eq!(Dead.can_attach(), Err(Refusal::AttachStopped));
    }

    #[test]
    fn the_shape_changes_only_without_a_vm() {
        assert_eq!(Exited.can_change_shape(), Ok(()));
        assert_eq!(Created.can_change_shape(), Ok(()));
        assert_eq!(Running.can_change_shape(), Err(Refusal::ShapeWhileRunning));
        assert_eq!(Paused.can_change_shape(), Err(Refusal::ShapeWhileRunning));
    }

    #[test]
    fn running_and_vm_are_distinct() {
        assert!(Restarting.is_running());
        assert!(!Restarting.has_vm());
        assert!(Paused.has_vm());
        assert!(!Exited.is_running());
    }

    #[test]
    fn refusals_use_dockers_words() {
        let id = "abc";
        assert_eq!(
            Refusal::NotRunning.message(id),
            "Container abc is not running"
        );
        assert_eq!(
            Refusal::RunningRemove.message("/web"),
            "cannot remove container \"/web\": container is running: stop the container before removing or force remove"
        );
        assert!(Refusal::PausedExec.message(id).contains("unpause"));
    }

    #[test]
    fn statuses_serialize_as_docker_names() {
        for status in ALL_STATUSES {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
    }
}
