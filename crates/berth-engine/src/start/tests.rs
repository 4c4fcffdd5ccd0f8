//! The start pipeline and the end of runs, over the test doubles: no root, no VM.

use std::time::Duration;

use crate::container::ContainerStatus;
use bollard_stubs::models::RestartPolicyNameEnum;

use crate::testing::{eventually, restart_policy, TestEngine};
use crate::{EngineError, ErrorKind, LogFilter, StartOutcome, WaitCondition};

async fn wait_exit(test: &TestEngine, id: &str) -> i64 {
    let waiting = test
        .engine
        .wait_container(id, WaitCondition::NotRunning)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the run ends")
        .status_code
}

/// The error says the start failed at `step`.
fn assert_failed_at(error: &EngineError, step: crate::StartStep) {
    assert!(
        matches!(error, EngineError::Start { step: failed, .. } if *failed == step),
        "{error:?}"
    );
}

fn status(test: &TestEngine, id: &str) -> ContainerStatus {
    test.engine.inspect_container(id).unwrap().state.status
}

#[tokio::test]
async fn a_container_starts_runs_and_exits_with_its_code() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["exit", "3"]);
    let waiting = test
        .engine
        .wait_container(&id, WaitCondition::NextExit)
        .unwrap();
    assert_eq!(
        test.engine.start_container(&id).await.unwrap(),
        StartOutcome::Started
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap();
    assert_eq!(outcome.status_code, 3);
    eventually("the exit is recorded", || {
        status(&test, &id) == ContainerStatus::Exited
    })
    .await;
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.exit_code, 3);
    assert_ne!(record.state.started_at, crate::ZERO_TIME);
    let filter = LogFilter {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let logs = test.engine.container_logs(&id, &filter, false).unwrap();
    assert_eq!(logs.entries.len(), 1);
    assert_eq!(logs.entries[0].data, b"bye\n");
}

#[tokio::test]
async fn a_run_announces_start_and_die() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["exit", "0"]);
    test.engine.start_container(&id).await.unwrap();
    wait_exit(&test, &id).await;
    eventually("die is announced", || {
        let (events, _) = test.engine.events().subscribe();
        events.iter().any(|e| e.action == "die")
    })
    .await;
    let (events, _) = test.engine.events().subscribe();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    let start = actions.iter().position(|a| *a == "start").unwrap();
    let die = actions.iter().position(|a| *a == "die").unwrap();
    assert!(start < die, "{actions:?}");
}

#[tokio::test]
async fn starting_a_running_container_changes_nothing() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["sleep"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(
        test.engine.start_container(&id).await.unwrap(),
        StartOutcome::AlreadyRunning
    );
    assert_eq!(test.backend.container_vms().len(), 1);
    assert_eq!(status(&test, &id), ContainerStatus::Running);
}

#[tokio::test]
async fn a_missing_program_is_a_failed_start_with_127() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["missing"]);
    let error = test.engine.start_container(&id).await.unwrap_err();
    assert!(matches!(error, EngineError::StartFailed(_)), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    eventually("the failure is recorded", || {
        test.engine.inspect_container(&id).unwrap().state.exit_code == 127
    })
    .await;
    assert_eq!(status(&test, &id), ContainerStatus::Exited);
    assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
}

#[tokio::test]
async fn a_failed_boot_leaves_no_tap_and_no_address() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["sleep"]);
    test.backend
        .fail_next_boot
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = test.engine.start_container(&id).await.unwrap_err();
    match &error {
        EngineError::Start { step, source } => {
            assert_eq!(*step, crate::StartStep::Boot);
            assert!(matches!(**source, EngineError::Vm(_)), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        crate::error_chain(&error).starts_with("booting or restoring the container's VM failed")
    );
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Created);
    assert_eq!(record.state.exit_code, 128);
    assert!(!record.state.error.is_empty());
    assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
    assert!(record.networks.values().all(|e| e.ip.is_none()));
    // Nothing was left held: the next start works, with an address.
    test.engine.start_container(&id).await.unwrap();
    let record = test.engine.inspect_container(&id).unwrap();
    assert!(record.networks.values().any(|e| e.ip.is_some()));
}

#[tokio::test]
async fn a_failed_setup_kills_the_vm_and_gives_the_network_back() {
    let test = TestEngine::new().await;
    let id = test.container_with("web", &["sleep"], |record| {
        record.config.hostname = Some("bad-setup".into());
    });
    let error = test.engine.start_container(&id).await.unwrap_err();
    assert_failed_at(&error, crate::StartStep::GuestUp);
    assert!(
        crate::error_chain(&error).contains("mounting the root filesystem failed"),
        "{}",
        crate::error_chain(&error)
    );
    assert!(test.backend.last_vm().has_ended());
    assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
    assert_eq!(status(&test, &id), ContainerStatus::Created);
}

#[tokio::test]
async fn a_vm_that_dies_ends_its_run_with_255() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["crash-vm"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(wait_exit(&test, &id).await, 255);
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Exited);
    assert!(
        record.state.error.contains("stopped unexpectedly"),
        "{}",
        record.state.error
    );
    eventually("the tap is gone", || test.host.taps().is_empty()).await;
}

#[tokio::test]
async fn garbage_from_a_guest_ends_its_run_not_the_engine() {
    let test = TestEngine::new().await;
    let bad = test.container("bad", &["garbage"]);
    test.engine.start_container(&bad).await.unwrap();
    assert_eq!(wait_exit(&test, &bad).await, 255);
    assert!(test.backend.last_vm().has_ended());
    let good = test.container("good", &["exit", "0"]);
    test.engine.start_container(&good).await.unwrap();
    assert_eq!(wait_exit(&test, &good).await, 0);
}

#[tokio::test]
async fn a_hostile_agent_ends_its_own_run_only() {
    use crate::testing::agent::HOSTILE_KINDS;
    let test = TestEngine::new().await;
    // A neighbour that runs through all of it.
    let neighbour = test.container("neighbour", &["sleep"]);
    test.engine.start_container(&neighbour).await.unwrap();
    for kind in HOSTILE_KINDS {
        let id = test.container(&format!("hostile-{kind}"), &["hostile", kind]);
        // The start itself may see the breach (then it fails) or not (then the run ends).
        let started = test.engine.start_container(&id).await;
        let code = wait_exit(&test, &id).await;
        let record = test.engine.inspect_container(&id).unwrap();
        assert_ne!(record.state.status, ContainerStatus::Running, "{kind}");
        if started.is_ok() {
            assert_eq!(code, 255, "{kind}: {record:?}");
            assert!(!record.state.error.is_empty(), "{kind}: no error recorded");
        }
        // What the guest sent is quoted, never whole.
        assert!(
            record.state.error.len() < 1024,
            "{kind}: an error of {} bytes",
            record.state.error.len()
        );
        let vm = test.backend.last_vm();
        eventually(&format!("{kind}: the VM is off"), || vm.has_ended()).await;
        assert_eq!(
            status(&test, &neighbour),
            ContainerStatus::Running,
            "{kind}"
        );
    }
    eventually("only the neighbour's tap is left", || {
        test.host.taps().len() == 1
    })
    .await;
    // The engine serves on: a new container runs, and the neighbour stops as asked.
    let good = test.container("good", &["exit", "0"]);
    test.engine.start_container(&good).await.unwrap();
    assert_eq!(wait_exit(&test, &good).await, 0);
    test.engine
        .stop_container(&neighbour, Some(1))
        .await
        .unwrap();
    assert_eq!(status(&test, &neighbour), ContainerStatus::Exited);
}

#[tokio::test]
async fn a_flood_of_output_is_logged_whole() {
    use crate::testing::agent::FLOOD_FRAMES;
    let test = TestEngine::new().await;
    let id = test.container("flood", &["hostile", "flood"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(wait_exit(&test, &id).await, 0);
    let filter = LogFilter {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let logs = test.engine.container_logs(&id, &filter, false).unwrap();
    let bytes: usize = logs.entries.iter().map(|entry| entry.data.len()).sum();
    assert_eq!(bytes, FLOOD_FRAMES);
}

#[tokio::test]
async fn a_run_powers_its_vm_off_at_the_end() {
    let test = TestEngine::new().await;
    let id = test.container("web", &["exit", "0"]);
    test.engine.start_container(&id).await.unwrap();
    wait_exit(&test, &id).await;
    let vm = test.backend.last_vm();
    eventually("the VM is off", || vm.has_ended()).await;
    eventually("the runtime is gone", || {
        test.engine.lookup(&id).unwrap().runtime().is_none()
    })
    .await;
}

#[tokio::test]
async fn always_restarts_after_every_exit() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "web",
        &["exit", "1"],
        restart_policy(RestartPolicyNameEnum::ALWAYS, None),
    );
    test.engine.start_container(&id).await.unwrap();
    eventually("it restarted twice", || {
        test.engine.inspect_container(&id).unwrap().restart_count >= 2
    })
    .await;
    assert!(test.backend.container_vms().len() >= 3);
    test.engine.stop_container(&id, Some(0)).await.unwrap();
}

#[tokio::test]
async fn on_failure_gives_up_after_its_retries() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "web",
        &["exit", "1"],
        restart_policy(RestartPolicyNameEnum::ON_FAILURE, Some(2)),
    );
    test.engine.start_container(&id).await.unwrap();
    eventually("two retries, then exited for good", || {
        let record = test.engine.inspect_container(&id).unwrap();
        record.restart_count == 2 && record.state.status == ContainerStatus::Exited
    })
    .await;
    assert_eq!(test.backend.container_vms().len(), 3);
}

#[tokio::test]
async fn on_failure_leaves_a_clean_exit_alone() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "web",
        &["exit", "0"],
        restart_policy(RestartPolicyNameEnum::ON_FAILURE, None),
    );
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(wait_exit(&test, &id).await, 0);
    eventually("exited", || status(&test, &id) == ContainerStatus::Exited).await;
    assert_eq!(test.engine.inspect_container(&id).unwrap().restart_count, 0);
}

#[tokio::test]
async fn a_stop_cancels_a_pending_restart() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "web",
        &["exit", "1"],
        restart_policy(RestartPolicyNameEnum::ALWAYS, None),
    );
    test.engine.start_container(&id).await.unwrap();
    eventually("waiting to restart", || {
        status(&test, &id) == ContainerStatus::Restarting
    })
    .await;
    assert!(test.engine.stop_container(&id, Some(0)).await.unwrap());
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Exited);
    assert!(record.manually_stopped);
}

#[tokio::test]
async fn an_auto_removed_container_is_gone_after_its_run() {
    let test = TestEngine::new().await;
    let id = test.container_with("web", &["exit", "0"], |record| {
        record.host_config.auto_remove = Some(true);
    });
    let removed = test
        .engine
        .wait_container(&id, WaitCondition::Removed)
        .unwrap();
    test.engine.start_container(&id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), removed)
        .await
        .unwrap();
    assert!(test.engine.inspect_container(&id).is_err());
    assert!(!test.engine.container_dir(&id).exists());
}

#[tokio::test]
async fn an_auto_removed_container_that_fails_to_start_is_removed() {
    let test = TestEngine::new().await;
    let id = test.container_with("web", &["sleep"], |record| {
        record.host_config.auto_remove = Some(true);
    });
    test.backend
        .fail_next_boot
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(test.engine.start_container(&id).await.is_err());
    eventually("it is removed", || {
        test.engine.inspect_container(&id).is_err()
    })
    .await;
}

#[tokio::test]
async fn the_process_is_sent_behind_the_setup() {
    // One network: the process travels with the setup, so a failed setup refuses it
    // and a good one starts it without another round trip. Either way the engine
    // sees the answers in order; here the start must simply succeed.
    let test = TestEngine::new().await;
    let id = test.container("web", &["sleep"]);
    test.engine.start_container(&id).await.unwrap();
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Running);
    assert_eq!(test.host.taps().len(), 1);
    test.engine.kill_container(&id, "").await.unwrap();
    assert_eq!(wait_exit(&test, &id).await, 137);
}

// Clones: these build a template, whose placeholder disk qemu-img makes (no root, no VM).

fn template_state_files(test: &TestEngine) -> Vec<std::path::PathBuf> {
    let templates = test.root().join("run/templates");
    std::fs::read_dir(templates)
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|dir| dir.path().join("state"))
                .filter(|state| state.exists())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn clones_of_one_shape_share_one_template() {
    let test = TestEngine::with_backend(crate::testing::FakeBackend::cloning()).await;
    let a = test.container("a", &["sleep"]);
    let b = test.container("b", &["sleep"]);
    test.engine.start_container(&a).await.unwrap();
    test.engine.start_container(&b).await.unwrap();
    assert_eq!(*crate::lock(&test.backend.snapshots_taken), 1);
    let vms = test.backend.container_vms();
    assert_eq!(vms.len(), 2);
    assert!(vms.iter().all(|vm| vm.restored));
    assert_eq!(template_state_files(&test).len(), 1);
}

#[tokio::test]
async fn a_damaged_template_is_discarded_and_built_again() {
    let test = TestEngine::with_backend(crate::testing::FakeBackend::cloning()).await;
    let a = test.container("a", &["exit", "0"]);
    test.engine.start_container(&a).await.unwrap();
    assert_eq!(wait_exit(&test, &a).await, 0);
    let states = template_state_files(&test);
    assert_eq!(states.len(), 1);
    std::fs::write(&states[0], b"tampered").unwrap();
    let b = test.container("b", &["sleep"]);
    test.engine.start_container(&b).await.unwrap();
    assert_eq!(*crate::lock(&test.backend.snapshots_taken), 2);
    assert_eq!(status(&test, &b), ContainerStatus::Running);
}

#[tokio::test]
async fn a_clone_that_never_answers_condemns_its_template() {
    let test = TestEngine::with_backend(crate::testing::FakeBackend::cloning()).await;
    let a = test.container("a", &["sleep"]);
    test.backend
        .break_next_clone
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = test.engine.start_container(&a).await.unwrap_err();
    assert_failed_at(&error, crate::StartStep::GuestUp);
    assert!(
        template_state_files(&test).is_empty(),
        "the template is gone"
    );
    assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
    // The next start builds a new template and runs.
    test.engine.start_container(&a).await.unwrap();
    assert_eq!(*crate::lock(&test.backend.snapshots_taken), 2);
    assert_eq!(status(&test, &a), ContainerStatus::Running);
}

// Live restore: a daemon killed (its runtime dropped: its tasks vanish, its VMs run on)
// and a new one opened on the same state.

/// Runs `work` with an engine on its own runtime, then drops the runtime as a killed
/// daemon's tasks vanish.
fn with_killed_daemon<T>(
    test: &crate::testing::TestParts,
    work: impl AsyncFnOnce(std::sync::Arc<crate::Engine>) -> T,
) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let engine = test.open().await;
        work(engine).await
    });
    drop(runtime);
    result
}

#[test]
fn a_new_daemon_takes_over_a_running_vm() {
    let test = crate::testing::TestParts::new();
    let (id, vm_pid) = with_killed_daemon(&test, async |engine| {
        let id = crate::testing::add_container(&engine, "web", &["sleep"]);
        engine.start_container(&id).await.unwrap();
        let record = engine.inspect_container(&id).unwrap();
        (id, record.state.pid)
    });
    let vm = test.backend.last_vm();
    assert!(!vm.has_ended(), "the VM outlives its daemon");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = test.open().await;
        let record = engine.inspect_container(&id).unwrap();
        assert_eq!(record.state.status, ContainerStatus::Running);
        assert_eq!(record.state.pid, vm_pid);
        assert!(record.networks.values().any(|e| e.ip.is_some()));
        assert!(engine.lookup(&id).unwrap().runtime().is_some());
        // The new daemon serves it: a kill reaches the process, its exit is recorded.
        engine.kill_container(&id, "").await.unwrap();
        eventually("the exit is recorded", || {
            engine.inspect_container(&id).unwrap().state.status == ContainerStatus::Exited
        })
        .await;
        assert_eq!(engine.inspect_container(&id).unwrap().state.exit_code, 137);
        eventually("the VM is off", || vm.has_ended()).await;
    });
}

#[test]
fn a_taken_over_container_is_stopped_as_before() {
    let test = crate::testing::TestParts::new();
    let id = with_killed_daemon(&test, async |engine| {
        let id = crate::testing::add_container(&engine, "web", &["ignore-term"]);
        engine.start_container(&id).await.unwrap();
        id
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = test.open().await;
        assert_eq!(
            engine.inspect_container(&id).unwrap().state.status,
            ContainerStatus::Running
        );
        engine.stop_container(&id, Some(1)).await.unwrap();
        assert_eq!(engine.inspect_container(&id).unwrap().state.exit_code, 137);
    });
}

#[test]
fn a_vm_that_died_with_its_daemon_is_recorded_as_exited() {
    let test = crate::testing::TestParts::new();
    let id = with_killed_daemon(&test, async |engine| {
        let id = crate::testing::add_container(&engine, "web", &["sleep"]);
        engine.start_container(&id).await.unwrap();
        id
    });
    test.backend.last_vm().end();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = test.open().await;
        let record = engine.inspect_container(&id).unwrap();
        assert_eq!(record.state.status, ContainerStatus::Exited);
        assert_eq!(record.state.exit_code, 255);
        assert!(
            record.state.error.contains("daemon stopped"),
            "{}",
            record.state.error
        );
        assert!(record.networks.values().all(|e| e.ip.is_none()));
        assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
        // And it starts again.
        engine.start_container(&id).await.unwrap();
    });
}
