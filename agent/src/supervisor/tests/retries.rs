//! Retries (`max_task_retry_count`) and requeue after a reboot, on the fake runtime.

use super::*;
use crate::model::TaskResult;

fn retried(task: &str, max: i32) -> TaskSpec {
    let mut s = spec(task);
    s.constraints.max_task_retry_count = max;
    s
}

/// Waits until attempt `n` of `key` runs (its container started).
async fn until_attempt_runs(e: &Env, key: &TaskKey, n: u32) -> TaskInfo {
    let cid = key.container_id_for(n);
    for _ in 0..500 {
        if e.fake.st().started.contains(&cid) {
            return until_state(&e.sup, key, TaskState::Running).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("attempt {n} of {key} never started: {:?}", e.fake.st().started);
}

#[tokio::test]
async fn a_failed_attempt_runs_again_in_a_new_container_up_to_the_limit() {
    let e = env(1).await;
    let key = e.sup.run_task(retried("r", 2), None).await.unwrap().key().clone();
    let first = until_attempt_runs(&e, &key, 1).await;
    assert_eq!(first.retry_count, 0);
    e.fake.exit(&key.container_id_for(1), 3);
    let second = until_attempt_runs(&e, &key, 2).await;
    assert_eq!(second.retry_count, 1);
    let prev = second.previous_attempt.clone().unwrap();
    assert_eq!((prev.exit_code, prev.failure.unwrap().code.as_str()), (Some(3), "FailureExitCode"));
    assert!(second.last_retry_at.is_some());
    assert!(e.fake.st().removed.contains(&key.container_id_for(1)), "the first attempt's container is gone");
    e.fake.exit(&key.container_id_for(2), 137);
    until_attempt_runs(&e, &key, 3).await;
    e.fake.exit(&key.container_id_for(3), 5);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.exit_code, done.retry_count), (Some(5), 2), "{done:?}");
    assert_eq!(done.failure.unwrap().code.as_str(), "FailureExitCode");
    assert_eq!(done.previous_attempt.unwrap().exit_code, Some(137));
    let started = e.fake.st().started.clone();
    assert_eq!(started, [1, 2, 3].map(|n| key.container_id_for(n)), "three attempts, three containers");
    // The slot was held throughout and is free now.
    run_to_exit(&e, spec("after")).await;
}

#[tokio::test]
async fn a_retry_that_succeeds_completes_the_task_and_no_limit_means_no_limit() {
    let e = env(1).await;
    let key = e.sup.run_task(retried("unlimited", -1), None).await.unwrap().key().clone();
    for n in 1..=5 {
        until_attempt_runs(&e, &key, n).await;
        e.fake.exit(&key.container_id_for(n), 1);
    }
    until_attempt_runs(&e, &key, 6).await;
    e.fake.exit(&key.container_id_for(6), 0);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.exit_code, done.result, done.retry_count), (Some(0), Some(TaskResult::Success), 5));
    assert!(done.failure.is_none());
}

#[tokio::test]
async fn no_retries_by_default_and_none_after_a_terminate() {
    let e = env(2).await;
    let key = e.sup.run_task(spec("once"), None).await.unwrap().key().clone();
    until_attempt_runs(&e, &key, 1).await;
    e.fake.exit(&key.container_id(), 1);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.exit_code, done.retry_count), (Some(1), 0));

    let key = e.sup.run_task(retried("stopped", 5), None).await.unwrap().key().clone();
    until_attempt_runs(&e, &key, 1).await;
    e.sup.terminate(&key, Some(Duration::from_millis(50))).await.unwrap();
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.failure.unwrap().code.as_str(), done.retry_count), ("TaskTerminated", 0));
}

/// A retry recorded, then the agent died before the attempt's container
/// went: the stopped container is a leftover, not an exit to collect again.
#[tokio::test]
async fn a_retry_interrupted_by_a_crash_is_queued_again_once() {
    let fake = Fake::new(true);
    let store = Store::in_memory().unwrap();
    let mut info = TaskInfo::new(retried("crashed", 3), SystemTime::now());
    info.attempt = 1;
    info.retry_count = 1;
    info.state = TaskState::Preparing;
    let key = store.insert(info).await.unwrap().key().clone();
    fake.st().tasks.insert(key.container_id(), TaskStatus::Stopped(ExitStatus { code: 3, exited_at: None }));
    let e = env_unrecovered(1, fake, store);
    let report = e.sup.recover(false).await.unwrap();
    assert_eq!((report.requeued, report.reattached, report.lost), (1, 0, 0), "{report:?}");
    let again = until_attempt_runs(&e, &key, 2).await;
    assert_eq!(again.retry_count, 1, "not counted twice");
    assert!(e.fake.st().removed.contains(&key.container_id()));
}

/// A task that was RUNNING in the previous boot.
async fn ran_before_reboot(store: &Store, task: &str) -> TaskKey {
    let mut info = TaskInfo::new(spec(task), SystemTime::now());
    info.attempt = 1;
    info.state = TaskState::Running;
    info.ever_started = true;
    info.started_at = Some(SystemTime::now());
    store.insert(info).await.unwrap().key().clone()
}

#[tokio::test]
async fn tasks_running_when_the_node_rebooted_are_requeued() {
    let store = Store::in_memory().unwrap();
    // The first agent records the boot it ran in.
    drop(env_with(1, Fake::new(true), store.clone()).await);
    let key = ran_before_reboot(&store, "rebooted").await;
    let done = run_to_exit(&env_with(1, Fake::new(true), store.clone()).await, spec("same-boot")).await;
    let _ = done;
    // Same boot: the container is gone for another reason, and so is the result.
    let lost = store.get(&key).await.unwrap().unwrap();
    assert_eq!(lost.failure.map(|f| f.code.as_str()), Some("ContainerLost"));

    let key = ran_before_reboot(&store, "rebooted2").await;
    let e = env_custom(1, Fake::new(true), store.clone(), |s| s.boot_id = "boot-2".into()).await;
    let again = until_attempt_runs(&e, &key, 2).await;
    assert_eq!((again.requeue_count, again.retry_count), (1, 0), "{again:?}");
    assert!(again.last_requeue_at.is_some());
    e.fake.exit(&key.container_id_for(2), 0);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.exit_code, done.requeue_count), (Some(0), 1));

    // Completed tasks are never run again, whatever the boot.
    let e3 = env_custom(1, Fake::new(true), store.clone(), |s| s.boot_id = "boot-3".into()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(e3.fake.st().created.is_empty());
}

#[tokio::test]
async fn requeue_after_reboot_can_be_turned_off() {
    let store = Store::in_memory().unwrap();
    drop(env_with(1, Fake::new(true), store.clone()).await);
    let key = ran_before_reboot(&store, "off").await;
    let e = env_custom(1, Fake::new(true), store.clone(), |s| {
        s.boot_id = "boot-2".into();
        s.requeue_after_reboot = false;
    })
    .await;
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!((done.failure.map(|f| f.code.as_str()), done.requeue_count), (Some("ContainerLost"), 0));
    assert!(e.fake.st().created.is_empty());
}
