//! A task's run: exits, images, slots, terminate, the wall clock, refusals.

use super::*;

#[tokio::test]
async fn runs_to_completion_and_logs_every_transition() {
    let e = env(1).await;
    let info = e.sup.run_task(spec("t1"), None).await.unwrap();
    assert_eq!(info.state, TaskState::Active);
    let key = info.key().clone();
    let cid = key.container_id();
    until_state(&e.sup, &key, TaskState::Running).await;
    e.fake.exit(&cid, 0);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.result, Some(crate::model::TaskResult::Success));
    assert!(done.failure.is_none());
    let states: Vec<TaskState> =
        e.store.events_after(0, 100).await.unwrap().into_iter().map(|ev| ev.task.state).collect();
    assert_eq!(states, [TaskState::Active, TaskState::Preparing, TaskState::Running, TaskState::Completed]);
    // Container removed after the exit was recorded.
    for _ in 0..100 {
        if e.fake.st().removed.contains(&cid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(e.fake.st().removed.contains(&cid));
    assert_eq!(e.fake.st().started, [cid]);
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let e = env(2).await;
    let a = e.sup.run_task(spec("a"), None).await.unwrap().key().clone();
    let b = e.sup.run_task(spec("b"), None).await.unwrap().key().clone();
    until_state(&e.sup, &a, TaskState::Running).await;
    until_state(&e.sup, &b, TaskState::Running).await;
    e.fake.exit(&a.container_id(), 3);
    e.fake.exit(&b.container_id(), 137);
    let a = until_state(&e.sup, &a, TaskState::Completed).await;
    let b = until_state(&e.sup, &b, TaskState::Completed).await;
    assert_eq!((a.exit_code, a.failure.unwrap().code.as_str()), (Some(3), "FailureExitCode"));
    assert_eq!((b.exit_code, b.failure.unwrap().code.as_str()), (Some(137), "TaskKilledBySignal"));
}

#[tokio::test]
async fn missing_image_completes_with_image_not_found() {
    let e = env(1).await;
    // Pull policy NEVER: not on the node → ImageNotFound, no pull.
    let mut s = spec("never");
    s.container.as_mut().unwrap().image = "nothere:1".into();
    s.container.as_mut().unwrap().pull_policy = PullPolicy::Never;
    let key = e.sup.run_task(s, None).await.unwrap().key().clone();
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!(done.failure.unwrap().code, "ImageNotFound");
    assert_eq!(done.exit_code, None);
    assert!(e.puller.pulled.lock().unwrap().is_empty());
    // MISSING (default): pulled, and the registry's answer becomes ImagePullFailed.
    let mut s = spec("missing");
    s.container.as_mut().unwrap().image = "nothere:1".into();
    let key = e.sup.run_task(s, None).await.unwrap().key().clone();
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    let failure = done.failure.unwrap();
    assert_eq!(failure.code, "ImagePullFailed");
    assert!(failure.message.contains("not found"), "{}", failure.message);
    assert_eq!(*e.puller.pulled.lock().unwrap(), ["docker.io/library/nothere:1"]);
    assert!(e.fake.st().created.is_empty());
}

#[tokio::test]
async fn pull_policy_always_pulls_an_image_the_node_has() {
    let e = env(1).await;
    let mut s = spec("always");
    s.container.as_mut().unwrap().pull_policy = PullPolicy::Always;
    let key = e.sup.run_task(s, None).await.unwrap().key().clone();
    until_state(&e.sup, &key, TaskState::Running).await;
    assert_eq!(*e.puller.pulled.lock().unwrap(), ["docker.io/library/busybox:latest"]);
    // MISSING with the image present: no pull.
    let key2 = e.sup.run_task(spec("present"), None).await.unwrap().key().clone();
    e.fake.exit(&key.container_id(), 0);
    until_state(&e.sup, &key2, TaskState::Running).await;
    assert_eq!(e.puller.pulled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn slots_run_tasks_one_at_a_time_in_order() {
    let e = env(1).await;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(e.sup.run_task(spec(&format!("t{i}")), None).await.unwrap().key().clone());
    }
    for (i, k) in keys.iter().enumerate() {
        until_state(&e.sup, k, TaskState::Running).await;
        for later in &keys[i + 1..] {
            assert_eq!(e.sup.get_task(later).await.unwrap().state, TaskState::Active);
        }
        assert_eq!(e.sup.node_status().await.slots_free, 0);
        e.fake.exit(&k.container_id(), 0);
        until_state(&e.sup, k, TaskState::Completed).await;
    }
}

#[tokio::test]
async fn terminate_queued_and_running() {
    let e = env(1).await;
    let a = e.sup.run_task(spec("a"), None).await.unwrap().key().clone();
    let b = e.sup.run_task(spec("b"), None).await.unwrap().key().clone();
    until_state(&e.sup, &a, TaskState::Running).await;
    // b waits for a slot: terminated at once, never created.
    let tb = e.sup.terminate(&b, None).await.unwrap();
    assert_eq!(tb.state, TaskState::Completed);
    assert_eq!(tb.failure.unwrap().code, "TaskTerminated");
    e.sup.terminate(&a, Some(Duration::from_secs(5))).await.unwrap();
    let ta = until_state(&e.sup, &a, TaskState::Completed).await;
    assert_eq!(ta.exit_code, Some(143));
    assert_eq!(ta.failure.unwrap().code, "TaskTerminated");
    assert_eq!(e.fake.st().signals, [(a.container_id(), 15)]);
    assert!(!e.fake.st().created.contains(&b.container_id()));
    // Terminating a completed task changes nothing.
    assert_eq!(e.sup.terminate(&a, None).await.unwrap().sequence, ta.sequence);
}

#[tokio::test]
async fn sigkill_after_grace_and_wall_clock() {
    let fake = Fake::new(false);
    let e = env_with(1, fake, Store::in_memory().unwrap()).await;
    let mut s = spec("slow");
    s.constraints.max_wall_clock_time = Some(Duration::from_millis(50));
    let key = e.sup.run_task(s, None).await.unwrap().key().clone();
    let cid = key.container_id();
    // The fake ignores SIGTERM; wait for the SIGKILL that follows the grace period.
    for _ in 0..200 {
        if e.fake.st().signals.iter().any(|(_, s)| *s == 9) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(e.fake.st().signals, [(cid.clone(), 15), (cid.clone(), 9)]);
    e.fake.exit(&cid, 137);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!(done.failure.unwrap().code, "MaxWallClockTimeExpiry");
    assert_eq!(done.exit_code, Some(137));
}

#[tokio::test]
async fn refusals_leave_nothing_behind() {
    let e = env(2).await;
    let mut cases: Vec<(TaskSpec, &str)> = Vec::new();
    let mut s = spec("a");
    s.container.as_mut().unwrap().image = "  ".into();
    cases.push((s, "image reference is empty"));
    let mut s = spec("b");
    s.environment.insert("AZ_BATCH_NODE_ID".into(), "x".into());
    cases.push((s, "AZ_BATCH_"));
    let mut s = spec("c");
    s.required_slots = 3;
    cases.push((s, "required_slots"));
    let mut s = spec("d");
    s.container.as_mut().unwrap().run_options = "--bogus".into();
    cases.push((s, "--bogus"));
    let mut s = spec("e");
    s.container = None;
    cases.push((s, "container"));
    for (s, want) in cases {
        let err = e.sup.run_task(s, None).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    assert!(e.store.list(None, None).await.unwrap().is_empty());
    assert!(e.store.events_after(0, 10).await.unwrap().is_empty());

    let key = e.sup.run_task(spec("dup"), None).await.unwrap().key().clone();
    assert!(matches!(e.sup.run_task(spec("dup"), None).await, Err(Error::AlreadyExists { .. })));
    assert!(matches!(e.sup.delete(&key).await, Err(Error::WrongState { .. })));
}

#[tokio::test]
async fn recovery_never_runs_a_task_twice() {
    let store = Store::in_memory().unwrap();
    let fake = Fake::new(true);
    let now = SystemTime::now();
    // exited: recorded RUNNING, containerd has it stopped with 3.
    let mut exited = TaskInfo::new(spec("exited"), now);
    exited.state = TaskState::Running;
    exited.ever_started = true;
    store.insert(exited.clone()).await.unwrap();
    fake.exit(&exited.key().container_id(), 3);
    // lost: recorded RUNNING, containerd has nothing.
    let mut lost = TaskInfo::new(spec("lost"), now);
    lost.state = TaskState::Running;
    store.insert(lost.clone()).await.unwrap();
    // created: recorded PREPARING, containerd has it created (never started).
    let mut created = TaskInfo::new(spec("created"), now);
    created.state = TaskState::Preparing;
    store.insert(created.clone()).await.unwrap();
    fake.st().tasks.insert(created.key().container_id(), TaskStatus::Created);
    // queued: recorded ACTIVE, nothing in containerd.
    let queued = TaskInfo::new(spec("queued"), now);
    store.insert(queued.clone()).await.unwrap();

    let e = env_unrecovered(4, fake, store);
    e.sup.recover(false).await.unwrap();
    let t = until_state(&e.sup, exited.key(), TaskState::Completed).await;
    assert_eq!(t.exit_code, Some(3));
    let t = until_state(&e.sup, lost.key(), TaskState::Completed).await;
    assert_eq!(t.failure.unwrap().code, "ContainerLost");
    until_state(&e.sup, created.key(), TaskState::Running).await;
    until_state(&e.sup, queued.key(), TaskState::Running).await;
    let started = e.fake.st().started.clone();
    assert!(!started.contains(&exited.key().container_id()), "a stopped task must not start again");
    assert_eq!(started.iter().filter(|c| **c == created.key().container_id()).count(), 1);
}

#[tokio::test]
async fn watch_replays_then_follows() {
    let e = env(1).await;
    let key = e.sup.run_task(spec("w"), None).await.unwrap().key().clone();
    until_state(&e.sup, &key, TaskState::Running).await;
    let mut rx = e.sup.watch(1);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(rx.recv().await.unwrap().unwrap().sequence);
    }
    e.fake.exit(&key.container_id(), 0);
    seen.push(rx.recv().await.unwrap().unwrap().sequence);
    assert_eq!(seen, [2, 3, 4]);
}

#[tokio::test]
async fn retention_sweep_removes_old_task_dirs() {
    let e = env(1).await;
    let mut s = spec("r");
    s.constraints.retention_time = Some(Duration::from_secs(60));
    let key = run_to_exit(&e, s).await;
    let dir = e.sup.shared.layout.task(&key).task_dir;
    assert!(dir.exists());
    assert_eq!(e.sup.sweep_retention(SystemTime::now()).await.unwrap(), 0);
    assert_eq!(e.sup.sweep_retention(SystemTime::now() + Duration::from_secs(61)).await.unwrap(), 1);
    assert!(!dir.exists());
    assert!(e.sup.get_task(&key).await.is_ok(), "the record stays");
}

#[tokio::test]
async fn exit_is_collected_from_events_when_wait_never_returns() {
    let e = env_with(1, Fake::with(true, true), Store::in_memory().unwrap()).await;
    let key = e.sup.run_task(spec("ev"), None).await.unwrap().key().clone();
    until_state(&e.sup, &key, TaskState::Running).await;
    // Give follow_exits time to subscribe (the fake's feed has no replay).
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.fake.exit(&key.container_id(), 5);
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!(done.exit_code, Some(5));
}

/// `shim_group = "job"`: the container carries the runc shim's group label
/// (what containerd groups by, and what the create's retry looks for), with
/// the same value as the spec's annotation.
#[tokio::test]
async fn a_job_shim_group_labels_the_container() {
    assert_eq!(crate::containerd::SHIM_GROUP_LABEL, crate::spec::SHIM_GROUP_ANNOTATION);
    let e = env_custom(1, Fake::new(true), Store::in_memory().unwrap(), |s| {
        s.shim_group = crate::containerd::ShimGroup::Job;
    })
    .await;
    run_to_exit(&e, spec("grouped")).await;
    let labels = e.fake.st().created_labels.clone();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].get(crate::containerd::SHIM_GROUP_LABEL).map(String::as_str), Some("berth-job-job"));
    // Without a group, no label: one shim per container.
    let e = env(1).await;
    run_to_exit(&e, spec("alone")).await;
    assert!(!e.fake.st().created_labels[0].contains_key(crate::containerd::SHIM_GROUP_LABEL));
}

#[tokio::test]
async fn a_137_from_containerds_clean_up_after_a_dead_shim_is_a_lost_container() {
    // The exit event arrives and Wait never answers: only the task being gone
    // tells the shim's death from a SIGKILL the task got.
    let e = env_with(2, Fake::with(true, true), Store::in_memory().unwrap()).await;
    let lost = e.sup.run_task(spec("lost"), None).await.unwrap().key().clone();
    let killed = e.sup.run_task(spec("killed"), None).await.unwrap().key().clone();
    until_state(&e.sup, &lost, TaskState::Running).await;
    until_state(&e.sup, &killed, TaskState::Running).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.fake.shim_died(&lost.container_id());
    e.fake.exit(&killed.container_id(), 137);
    let done = until_state(&e.sup, &lost, TaskState::Completed).await;
    assert_eq!(done.exit_code, None, "{done:?}");
    assert_eq!(done.failure.as_ref().map(|f| f.code), Some(FailureCode::ContainerLost), "{done:?}");
    assert_eq!(done.retry_count, 0);
    let done = until_state(&e.sup, &killed, TaskState::Completed).await;
    assert_eq!(done.exit_code, Some(137), "a real SIGKILL stays the task's exit: {done:?}");
}

#[tokio::test]
async fn a_bridge_tasks_network_lives_as_long_as_its_container() {
    let e = env(2).await;
    let nets = e.sup.shared.settings.network.clone();
    let key = e.sup.run_task(spec("net"), None).await.unwrap().key().clone();
    let cid = key.container_id();
    let running = until_state(&e.sup, &key, TaskState::Running).await;
    assert_eq!(running.container.unwrap().ip_address, "10.88.0.2", "the address is in TaskInfo");
    assert_eq!(nets.attachments(), std::slice::from_ref(&cid));
    let hosts = std::fs::read_to_string(nets.paths(&cid).hosts).unwrap();
    assert!(hosts.contains("10.88.0.2\th\n"), "its name and address: {hosts}");

    // On the node's network: nothing attached, no address, the node's files.
    let mut s = spec("host");
    s.container.as_mut().unwrap().run_options = "--network host".into();
    let host = e.sup.run_task(s, None).await.unwrap().key().clone();
    let h = until_state(&e.sup, &host, TaskState::Running).await;
    assert!(h.container.unwrap().ip_address.is_empty());
    assert_eq!(nets.attachments(), std::slice::from_ref(&cid));

    e.fake.exit(&cid, 0);
    until_state(&e.sup, &key, TaskState::Completed).await;
    for _ in 0..200 {
        if nets.attachments().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(nets.attachments().is_empty(), "detached once the container is gone");
    assert!(!nets.paths(&cid).hosts.exists());
}
