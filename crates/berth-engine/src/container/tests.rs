//! Every verb against the lifecycle table, through the engine, over the test doubles:
//! what Docker allows in each state works, what it refuses is refused with its words,
//! and verbs that race end in one consistent state.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bollard_stubs::models::{ContainerUpdateBody, ExecConfig};

use super::{ContainerStatus, Refusal};
use bollard_stubs::models::RestartPolicyNameEnum;

use crate::testing::{eventually, restart_policy, TestEngine};
use crate::{AttachOptions, EngineError, ErrorKind, StartOutcome, WaitCondition};

fn status(test: &TestEngine, id: &str) -> ContainerStatus {
    test.engine.inspect_container(id).unwrap().state.status
}

fn refusal(error: EngineError) -> Refusal {
    assert_eq!(error.kind(), ErrorKind::Conflict, "{error:?}");
    match error {
        EngineError::Refused { refusal, .. } => refusal,
        other => panic!("not a refusal: {other:?}"),
    }
}

async fn running(test: &TestEngine, argv: &[&str]) -> String {
    let id = test.container("c", argv);
    test.engine.start_container(&id).await.unwrap();
    id
}

async fn exit_code(test: &TestEngine, id: &str) -> i64 {
    eventually("the run ends", || {
        status(test, id) == ContainerStatus::Exited
    })
    .await;
    test.engine.inspect_container(id).unwrap().state.exit_code
}

#[tokio::test]
async fn stop_sends_the_stop_signal_and_waits_for_the_exit() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    assert!(test.engine.stop_container(&id, Some(5)).await.unwrap());
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Exited);
    assert_eq!(record.state.exit_code, 128 + libc::SIGTERM as i64);
    assert!(record.manually_stopped);
}

#[tokio::test]
async fn stop_of_a_container_that_is_not_running_changes_nothing() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    assert!(!test.engine.stop_container(&id, Some(1)).await.unwrap());
    assert_eq!(status(&test, &id), ContainerStatus::Created);
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_the_stop_signal() {
    let test = TestEngine::new().await;
    let id = running(&test, &["ignore-term"]).await;
    assert!(test.engine.stop_container(&id, Some(1)).await.unwrap());
    assert_eq!(exit_code(&test, &id).await, 137);
}

#[tokio::test]
async fn kill_sends_sigkill_by_default_and_returns_once_the_run_ended() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.kill_container(&id, "").await.unwrap();
    // Right after the kill, as Docker: exited, 137.
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.state.status, ContainerStatus::Exited);
    assert_eq!(record.state.exit_code, 137);
    assert!(test.engine.inspect_container(&id).unwrap().manually_stopped);
}

#[tokio::test]
async fn kill_sends_the_signal_named() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.kill_container(&id, "SIGUSR1").await.unwrap();
    assert_eq!(exit_code(&test, &id).await, 128 + libc::SIGUSR1 as i64);
}

#[tokio::test]
async fn kill_of_a_stopped_container_is_refused() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let error = test.engine.kill_container(&id, "").await.unwrap_err();
    assert_eq!(error.to_string(), format!("Container {id} is not running"));
    assert_eq!(refusal(error), Refusal::NotRunning);
}

#[tokio::test]
async fn an_unknown_signal_is_a_bad_request() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let error = test
        .engine
        .kill_container(&id, "SIGNOPE")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(status(&test, &id), ContainerStatus::Running);
}

#[tokio::test]
async fn pause_stops_the_vm_and_unpause_runs_it_again() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let vm = test.backend.last_vm();
    test.engine.pause_container(&id).await.unwrap();
    assert_eq!(status(&test, &id), ContainerStatus::Paused);
    assert!(vm.paused.load(Ordering::SeqCst));
    test.engine.unpause_container(&id).await.unwrap();
    assert_eq!(status(&test, &id), ContainerStatus::Running);
    assert!(!vm.paused.load(Ordering::SeqCst));
    let (events, _) = test.engine.events().subscribe();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.ends_with(&["pause", "unpause"]), "{actions:?}");
}

#[tokio::test]
async fn pause_twice_is_refused() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.pause_container(&id).await.unwrap();
    let error = test.engine.pause_container(&id).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::AlreadyPaused);
    let error = test.engine.remove_container(&id, false).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::PausedRemove);
}

#[tokio::test]
async fn unpause_of_a_running_container_is_refused() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let error = test.engine.unpause_container(&id).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::NotPaused);
}

#[tokio::test]
async fn pause_of_a_stopped_container_is_refused() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let error = test.engine.pause_container(&id).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::NotRunning);
}

#[tokio::test]
async fn exec_into_a_paused_container_is_refused() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.pause_container(&id).await.unwrap();
    let config = ExecConfig {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let error = test.engine.create_exec(&id, config).unwrap_err();
    assert_eq!(refusal(error), Refusal::PausedExec);
}

#[tokio::test]
async fn exec_into_a_stopped_container_is_refused() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let config = ExecConfig {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let error = test.engine.create_exec(&id, config).unwrap_err();
    assert_eq!(refusal(error), Refusal::NotRunning);
}

#[tokio::test]
async fn kill_of_a_paused_container_resumes_it_to_take_the_signal() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let vm = test.backend.last_vm();
    test.engine.pause_container(&id).await.unwrap();
    test.engine.kill_container(&id, "").await.unwrap();
    assert_eq!(exit_code(&test, &id).await, 137);
    assert!(!vm.paused.load(Ordering::SeqCst));
}

#[tokio::test]
async fn stop_of_a_paused_container_ends_its_run() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.pause_container(&id).await.unwrap();
    assert!(test.engine.stop_container(&id, Some(5)).await.unwrap());
    assert_eq!(status(&test, &id), ContainerStatus::Exited);
}

#[tokio::test]
async fn removing_a_running_container_needs_force() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let error = test.engine.remove_container(&id, false).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot remove container \"/c\": container is running: stop the container before removing or force remove"
    );
    assert_eq!(refusal(error), Refusal::RunningRemove);
    assert_eq!(status(&test, &id), ContainerStatus::Running);
    test.engine.remove_container(&id, true).await.unwrap();
    assert!(test.engine.inspect_container(&id).is_err());
    assert!(test.backend.last_vm().has_ended());
    assert!(test.host.taps().is_empty(), "{:?}", test.host.taps());
}

#[tokio::test]
async fn removal_deletes_the_record_and_wakes_removal_waiters() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["exit", "0"]);
    let removed = test
        .engine
        .wait_container(&id, WaitCondition::Removed)
        .unwrap();
    test.engine.remove_container(&id, false).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), removed)
        .await
        .unwrap();
    assert!(matches!(
        test.engine.inspect_container(&id),
        Err(EngineError::NoSuchContainer(_))
    ));
    assert!(test.engine.store.all().unwrap().iter().all(|r| r.id != id));
    let (events, _) = test.engine.events().subscribe();
    assert_eq!(events.last().unwrap().action, "destroy");
}

#[tokio::test]
async fn removing_a_container_between_restarts_needs_force() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "c",
        &["exit", "1"],
        restart_policy(RestartPolicyNameEnum::ALWAYS, None),
    );
    test.engine.start_container(&id).await.unwrap();
    eventually("restarting", || {
        status(&test, &id) == ContainerStatus::Restarting
    })
    .await;
    let error = test.engine.remove_container(&id, false).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::RestartingRemove);
    test.engine.remove_container(&id, true).await.unwrap();
    assert!(test.engine.inspect_container(&id).is_err());
}

#[tokio::test]
async fn a_container_can_be_removed_as_soon_as_a_wait_returns() {
    let test = TestEngine::new().await;
    for round in 0..5 {
        let id = test.container(&format!("c{round}"), &["sleep"]);
        test.engine.start_container(&id).await.unwrap();
        let waiting = test
            .engine
            .wait_container(&id, WaitCondition::NotRunning)
            .unwrap();
        test.engine.kill_container(&id, "SIGTERM").await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap();
        assert_eq!(outcome.status_code, 128 + libc::SIGTERM as i64);
        test.engine.remove_container(&id, false).await.unwrap();
    }
}

#[tokio::test]
async fn waiting_for_a_container_that_is_not_running_returns_at_once() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let waiting = test
        .engine
        .wait_container(&id, WaitCondition::NotRunning)
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_millis(500), waiting)
        .await
        .expect("no wait for a created container");
    assert_eq!(outcome.status_code, 0);
}

#[tokio::test]
async fn next_exit_waits_for_the_next_run() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["exit", "4"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(exit_code(&test, &id).await, 4);
    let next = test
        .engine
        .wait_container(&id, WaitCondition::NextExit)
        .unwrap();
    let mut next = Box::pin(next);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut next)
            .await
            .is_err(),
        "next-exit must not count the run that ended already"
    );
    test.engine.start_container(&id).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .unwrap();
    assert_eq!(outcome.status_code, 4);
}

#[tokio::test]
async fn two_starts_at_once_make_one_vm() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let (a, b) = tokio::join!(
        test.engine.start_container(&id),
        test.engine.start_container(&id)
    );
    let mut outcomes = vec![a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| *o == StartOutcome::AlreadyRunning);
    assert_eq!(
        outcomes,
        vec![StartOutcome::Started, StartOutcome::AlreadyRunning]
    );
    assert_eq!(test.backend.container_vms().len(), 1);
}

#[tokio::test]
async fn stop_and_kill_at_once_end_in_one_exit() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let (stopped, killed) = tokio::join!(
        test.engine.stop_container(&id, Some(5)),
        test.engine.kill_container(&id, "")
    );
    stopped.unwrap();
    // The kill may find the run already ended by the stop: then it is refused.
    if let Err(error) = killed {
        assert_eq!(refusal(error), Refusal::NotRunning);
    }
    assert_eq!(status(&test, &id), ContainerStatus::Exited);
    eventually("the VM is off", || test.backend.last_vm().has_ended()).await;
    assert_eq!(test.backend.container_vms().len(), 1);
}

#[tokio::test]
async fn a_forced_remove_during_a_start_removes_the_container_and_its_vm() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let (started, removed) = tokio::join!(
        test.engine.start_container(&id),
        test.engine.remove_container(&id, true)
    );
    removed.unwrap();
    let _ = started;
    assert!(test.engine.inspect_container(&id).is_err());
    for vm in test.backend.container_vms() {
        eventually("every VM is off", || vm.has_ended()).await;
    }
    eventually("no tap is left", || test.host.taps().is_empty()).await;
}

#[tokio::test]
async fn restart_runs_the_container_in_a_new_vm() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let first = test.backend.last_vm();
    test.engine.restart_container(&id, Some(1)).await.unwrap();
    assert_eq!(status(&test, &id), ContainerStatus::Running);
    assert!(first.has_ended());
    assert_eq!(test.backend.container_vms().len(), 2);
    let (events, _) = test.engine.events().subscribe();
    assert_eq!(events.last().unwrap().action, "restart");
}

#[tokio::test]
async fn a_running_vm_without_a_balloon_gets_a_memory_limit_from_its_agent() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    let update = ContainerUpdateBody {
        memory: Some(128 << 20),
        ..Default::default()
    };
    test.engine.update_container(&id, update).await.unwrap();
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.host_config.memory, Some(128 << 20));
    // dockerd's rules hold for a running container too.
    let too_small = ContainerUpdateBody {
        memory: Some(1 << 20),
        ..Default::default()
    };
    assert!(test.engine.update_container(&id, too_small).await.is_err());
}

#[tokio::test]
async fn a_stopped_container_takes_a_new_shape() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let update = ContainerUpdateBody {
        memory: Some(512 << 20),
        ..Default::default()
    };
    test.engine.update_container(&id, update).await.unwrap();
    let record = test.engine.inspect_container(&id).unwrap();
    assert_eq!(record.vm_shape(64), (1, 512));
}

#[tokio::test]
async fn a_paused_container_cannot_be_started() {
    let test = TestEngine::new().await;
    let id = running(&test, &["sleep"]).await;
    test.engine.pause_container(&id).await.unwrap();
    let error = test.engine.start_container(&id).await.unwrap_err();
    assert_eq!(refusal(error), Refusal::PausedStart);
}

#[tokio::test]
async fn an_attach_to_an_exited_container_streams_its_next_run() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["exit", "0"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(exit_code(&test, &id).await, 0);
    // `docker start -a`: attach, then start.
    let stream = AttachOptions {
        stream: true,
        ..Default::default()
    };
    let mut attachment = test.engine.attach_container(&id, stream).unwrap();
    test.engine.start_container(&id).await.unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), attachment.output.recv())
        .await
        .unwrap()
        .expect("the new run's output");
    assert_eq!(&chunk.data[..], b"bye\n");
    // The stream ends with the run.
    let end = tokio::time::timeout(Duration::from_secs(5), attachment.output.recv())
        .await
        .unwrap();
    assert!(end.is_none());
}

#[tokio::test]
async fn an_attach_for_the_logs_alone_returns_them_and_ends() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["exit", "0"]);
    test.engine.start_container(&id).await.unwrap();
    assert_eq!(exit_code(&test, &id).await, 0);
    let logs_only = AttachOptions {
        logs: true,
        ..Default::default()
    };
    let mut attachment = test.engine.attach_container(&id, logs_only).unwrap();
    let chunk = attachment.output.recv().await.expect("the log");
    assert_eq!(&chunk.data[..], b"bye\n");
    assert!(attachment.output.recv().await.is_none());
}

#[tokio::test]
async fn an_attach_to_a_container_being_removed_is_refused() {
    let test = TestEngine::new().await;
    let id = test.container("c", &["sleep"]);
    let handle = test.engine.lookup(&id).unwrap();
    test.engine
        .transition(&handle, super::Transition::Removing)
        .unwrap();
    let error = test
        .engine
        .attach_container(&id, AttachOptions::default())
        .err()
        .unwrap();
    assert_eq!(refusal(error), Refusal::BeingRemoved);
}

#[tokio::test]
async fn kill_between_restarts_cancels_the_restart() {
    let test = TestEngine::new().await;
    let id = test.container_with(
        "c",
        &["exit", "1"],
        restart_policy(RestartPolicyNameEnum::ALWAYS, None),
    );
    test.engine.start_container(&id).await.unwrap();
    eventually("restarting", || {
        status(&test, &id) == ContainerStatus::Restarting
    })
    .await;
    test.engine.kill_container(&id, "").await.unwrap();
    eventually("exited", || status(&test, &id) == ContainerStatus::Exited).await;
    assert!(test.engine.inspect_container(&id).unwrap().manually_stopped);
    // No restart follows.
    let vms = test.backend.container_vms().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(test.backend.container_vms().len(), vms);
    assert_eq!(status(&test, &id), ContainerStatus::Exited);
}
