//! Restarts and the node's housekeeping: recovery, rebuilds, retention,
//! history, watches, prefetch.

use super::*;

fn labelled(key: &TaskKey) -> LabelledContainer {
    LabelledContainer {
        id: key.container_id(),
        job: key.job.to_string(),
        task: key.task.to_string(),
        image: "docker.io/library/busybox:latest".into(),
        created_at: None,
        args: vec!["/bin/sh".into(), "-c".into(), "sleep 1; exit 4".into()],
        uid: 0,
        gid: 0,
    }
}

#[tokio::test]
async fn orphan_containers_are_removed_when_the_database_is_intact() {
    let fake = Fake::new(true);
    let key = TaskKey::new("job", "orphan").unwrap();
    fake.st().labelled.push(labelled(&key));
    fake.st().tasks.insert(key.container_id(), TaskStatus::Running);
    let e = env_unrecovered(1, fake, Store::in_memory().unwrap());
    let report = e.sup.recover(false).await.unwrap();
    assert_eq!(report.removed_containers, 1);
    assert!(e.fake.st().removed.contains(&key.container_id()));
    assert_eq!(e.fake.st().signals, [(key.container_id(), 9)]);
    assert!(e.sup.get_task(&key).await.is_err(), "no record is made up");
}

#[tokio::test]
async fn networks_of_containers_that_are_gone_are_removed_and_running_ones_kept() {
    let fake = Fake::new(true);
    let running = TaskKey::new("job", "running").unwrap();
    let store = Store::in_memory().unwrap();
    let mut info = TaskInfo::new(spec("running"), std::time::SystemTime::now());
    info.state = TaskState::Running;
    info.ever_started = true;
    info.attempt = 1;
    store.insert(info).await.unwrap();
    fake.st().labelled.push(labelled(&running));
    fake.st().tasks.insert(running.container_id(), TaskStatus::Running);
    let nets = Arc::new(FakeNetworks::default());
    for cid in [running.container_id(), "berth-gone".to_string()] {
        nets.attached.lock().unwrap().insert(cid);
    }
    let n = nets.clone();
    let e = build_env(1, fake, store, move |s| s.network = n);
    let report = e.sup.recover(false).await.unwrap();
    assert_eq!(report.networks_removed, 1);
    assert_eq!(
        crate::network::TaskNetworks::attachments(&*nets),
        [running.container_id()],
        "the re-attached task keeps its network"
    );
}

#[tokio::test]
async fn rebuild_adopts_containers_and_records_lost_task_dirs() {
    let fake = Fake::new(true);
    let running = TaskKey::new("job", "running").unwrap();
    let exited = TaskKey::new("job", "exited").unwrap();
    for k in [&running, &exited] {
        fake.st().labelled.push(labelled(k));
    }
    fake.st().tasks.insert(running.container_id(), TaskStatus::Running);
    fake.exit(&exited.container_id(), 6);
    let e = env_unrecovered(2, fake, Store::in_memory().unwrap());
    // A finished task whose directory survived but whose record is gone.
    let gone = TaskKey::new("job", "gone").unwrap();
    e.sup.shared.layout.create_task_dirs(&gone, None).unwrap();

    let report = e.sup.recover(true).await.unwrap();
    assert_eq!((report.adopted, report.records_lost), (2, 1));
    let t = until_state(&e.sup, &exited, TaskState::Completed).await;
    assert_eq!(t.exit_code, Some(6));
    assert_eq!(t.spec.command_line, "/bin/sh -c 'sleep 1; exit 4'");
    until_state(&e.sup, &running, TaskState::Running).await;
    e.fake.exit(&running.container_id(), 0);
    assert_eq!(until_state(&e.sup, &running, TaskState::Completed).await.exit_code, Some(0));
    let t = e.sup.get_task(&gone).await.unwrap();
    assert_eq!((t.state, t.failure.unwrap().code.as_str()), (TaskState::Completed, "TaskRecordLost"));
    assert!(e.sup.node_status().await.notes[0].contains("rebuilt"));
    assert!(e.fake.st().started.is_empty(), "nothing is started again");
}

#[tokio::test]
async fn disk_full_fails_the_task_before_anything_is_created() {
    let fake = Fake::new(true);
    let e = env_custom(1, fake, Store::in_memory().unwrap(), |s| s.min_free_bytes = u64::MAX).await;
    let key = e.sup.run_task(spec("full"), None).await.unwrap().key().clone();
    let done = until_state(&e.sup, &key, TaskState::Completed).await;
    let failure = done.failure.unwrap();
    assert_eq!((failure.code.as_str(), failure.category), ("DiskFull", crate::model::FailureCategory::ServerError));
    assert!(e.fake.st().created.is_empty());
    assert!(!e.sup.shared.layout.task(&key).task_dir.exists());
}

#[tokio::test]
async fn watch_from_a_compacted_point_is_refused() {
    let e = env(1).await;
    run_to_exit(&e, spec("c")).await;
    e.store.compact_events(1).await.unwrap();
    let mut rx = e.sup.watch(1);
    assert!(matches!(rx.recv().await.unwrap(), Err(Error::Compacted { from: 1, oldest: 4 })));
    // From zero: what the log still has.
    let mut rx = e.sup.watch(0);
    assert_eq!(rx.recv().await.unwrap().unwrap().sequence, 4);
    // Past the newest event: the log was reset, the client must resync.
    let mut rx = e.sup.watch(100);
    assert!(matches!(rx.recv().await.unwrap(), Err(Error::AheadOfLog { from: 100, newest: 4 })));
    let mut rx = e.sup.watch(u64::MAX);
    assert!(matches!(rx.recv().await.unwrap(), Err(Error::AheadOfLog { .. })));
}

#[tokio::test]
async fn history_limit_removes_the_oldest_completed_tasks() {
    let fake = Fake::new(true);
    let e = env_custom(1, fake, Store::in_memory().unwrap(), |s| s.history_limit = 1).await;
    let mut keys = Vec::new();
    for i in 0..2 {
        let key = run_to_exit(&e, spec(&format!("h{i}"))).await;
        keys.push(key);
    }
    e.sup.sweep_retention(SystemTime::now()).await.unwrap();
    assert!(matches!(e.sup.get_task(&keys[0]).await, Err(Error::NotFound { .. })));
    assert!(!e.sup.shared.layout.task(&keys[0]).task_dir.exists());
    assert!(e.sup.get_task(&keys[1]).await.is_ok());
}

#[tokio::test]
async fn nothing_is_dispatched_before_recovery() {
    let e = env_unrecovered(1, Fake::new(true), Store::in_memory().unwrap());
    // Until the lifecycle is read (the agent does it before serving), no task is taken.
    let err = e.sup.run_task(spec("early"), None).await.unwrap_err();
    assert!(matches!(err, Error::Recovering), "{err}");
    e.sup.load_lifecycle().await.unwrap();
    let key = e.sup.run_task(spec("early"), None).await.unwrap().key().clone();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(e.sup.get_task(&key).await.unwrap().state, TaskState::Active);
    e.sup.recover(false).await.unwrap();
    until_state(&e.sup, &key, TaskState::Running).await;
}

#[tokio::test]
async fn a_task_that_may_have_started_is_never_prepared_again() {
    let store = Store::in_memory().unwrap();
    let mut info = TaskInfo::new(spec("maybe"), SystemTime::now());
    info.state = TaskState::Preparing;
    info.ever_started = true;
    info.attempt = 1;
    store.insert(info.clone()).await.unwrap();
    let e = env_unrecovered(1, Fake::new(true), store);
    e.sup.recover(false).await.unwrap();
    let t = until_state(&e.sup, info.key(), TaskState::Completed).await;
    assert_eq!(t.failure.unwrap().code, "ContainerLost");
    assert!(e.fake.st().created.is_empty());
}

#[tokio::test]
async fn an_exit_while_away_is_not_a_wall_clock_failure() {
    let store = Store::in_memory().unwrap();
    let mut s = spec("away");
    s.constraints.max_wall_clock_time = Some(Duration::from_secs(1));
    let mut info = TaskInfo::new(s, SystemTime::now());
    info.state = TaskState::Running;
    info.ever_started = true;
    info.started_at = Some(SystemTime::now() - Duration::from_secs(60));
    store.insert(info.clone()).await.unwrap();
    let fake = Fake::new(true);
    fake.exit(&info.container_id(), 0);
    let e = env_unrecovered(1, fake, store);
    e.sup.recover(false).await.unwrap();
    let t = until_state(&e.sup, info.key(), TaskState::Completed).await;
    assert_eq!((t.exit_code, t.failure), (Some(0), None));
    assert!(e.fake.st().signals.is_empty());
}

#[tokio::test]
async fn prefetch_reports_ready_and_failed_images_and_in_use_images_stay() {
    let e = env(1).await;
    e.sup.configure_containers(vec!["busybox".into(), "nothere:1".into()], vec![]).await.unwrap();
    for _ in 0..200 {
        if e.sup.prefetch_status().iter().all(|(_, s)| *s != PrefetchState::Pending) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = e.sup.prefetch_status();
    assert_eq!(status[0], ("docker.io/library/busybox:latest".to_string(), PrefetchState::Ready));
    assert!(matches!(&status[1].1, PrefetchState::Failed(m) if m.contains("not found")), "{status:?}");
    assert!(e.sup.configure_containers(vec!["Bad Ref".into()], vec![]).await.is_err());

    let key = e.sup.run_task(spec("user"), None).await.unwrap().key().clone();
    until_state(&e.sup, &key, TaskState::Running).await;
    let images = e.sup.list_images().await.unwrap();
    assert!(images[0].in_use && images[0].prefetched, "{images:?}");
    assert!(matches!(e.sup.remove_image("busybox").await, Err(Error::ImageInUse { .. })));
    e.fake.exit(&key.container_id(), 0);
    until_state(&e.sup, &key, TaskState::Completed).await;
    e.sup.remove_image("busybox").await.unwrap();
}

#[tokio::test]
async fn pull_progress_is_reported_by_image() {
    let e = env(1).await;
    assert!(e.sup.pull_progress("busybox").is_none());
    let progress = crate::images::Progress { layers: vec![("sha256:a".into(), 5, 10), ("sha256:b".into(), 0, 30)] };
    let tx = tokio::sync::watch::channel(progress.clone()).0;
    e.puller.under_way.lock().unwrap().insert("docker.io/library/busybox:latest".into(), tx);
    let (name, got) = e.sup.pull_progress("busybox").unwrap();
    assert_eq!(name, "docker.io/library/busybox:latest");
    assert_eq!((got.done(), got.total()), (5, 40));
    assert_eq!(got, progress);
}
