//! The node's lifecycle and jobs: the start task, the scheduling switch,
//! preparation and release tasks.

use super::*;

fn start_spec() -> TaskSpec {
    TaskSpec { key: TaskKey::start_task(), required_slots: 0, ..spec("unused") }
}

async fn until_started(fake: &Fake, n: usize) {
    for _ in 0..500 {
        if fake.st().started.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} starts expected, saw {:?}", fake.st().started);
}

#[tokio::test]
async fn start_task_runs_again_after_a_reboot_only() {
    let store = Store::in_memory().unwrap();
    let fake = Fake::new(true);
    let key = TaskKey::start_task();
    let e = env_with(1, fake.clone(), store.clone()).await;
    e.sup.configure_start_task(start_spec(), true).await.unwrap();
    until_state(&e.sup, &key, TaskState::Running).await;
    fake.exit(&key.container_id(), 0);
    until_state(&e.sup, &key, TaskState::Completed).await;
    e.sup.check_containerd().await;
    assert_eq!(e.sup.refresh_state().await.state, crate::model::NodeState::Idle);

    // An agent restart in the same boot does not run it again; a new boot
    // does, unless the config says not to.
    let _same_boot = env_with(1, fake.clone(), store.clone()).await;
    let _rerun_off = env_custom(1, fake.clone(), store.clone(), |s| {
        s.boot_id = "boot-2".into();
        s.rerun_start_task_after_reboot = false;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.st().started.len(), 1);
    // A task the previous agent had accepted but not started, requeued after the reboot.
    let queued = store.insert(TaskInfo::new(spec("queued"), SystemTime::now())).await.unwrap().key().clone();
    let rebooted = env_custom(1, fake.clone(), store.clone(), |s| s.boot_id = "boot-2".into()).await;
    until_started(&fake, 2).await;
    rebooted.sup.check_containerd().await;
    // Until it succeeds again, the node waits for it.
    assert_eq!(rebooted.sup.refresh_state().await.state, crate::model::NodeState::WaitingForStartTask);
    fake.exit(&key.container_id(), 1);
    until_state(&rebooted.sup, &key, TaskState::Completed).await;
    let view = rebooted.sup.refresh_state().await;
    assert_eq!(view.state, crate::model::NodeState::StartTaskFailed);
    assert!(view.reason.contains("FailureExitCode"), "{}", view.reason);
    let err = rebooted.sup.run_task(spec("refused"), None).await.unwrap_err();
    assert!(matches!(err, Error::NotAccepting { .. }), "{err}");
    // The requeued task waited for the rerun and does not run on the node it failed to prepare.
    let t = until_state(&rebooted.sup, &queued, TaskState::Completed).await;
    assert_eq!(t.failure.map(|f| f.code.as_str()), Some("StartTaskFailed"));
    assert!(!fake.st().created.contains(&queued.container_id()));
    // Its record stays while a start task is configured.
    let err = rebooted.sup.delete(&key).await.unwrap_err();
    assert!(matches!(err, Error::Precondition { .. }), "{err}");
    // Recorded in the new boot: a further restart in it leaves it alone.
    let _again = env_custom(1, fake.clone(), store.clone(), |s| s.boot_id = "boot-2".into()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.st().started.len(), 2);
}

#[tokio::test]
async fn a_released_job_takes_no_task_and_forgets_nothing_it_ran() {
    let e = env(2).await;
    e.sup.run_task(spec("before"), None).await.unwrap();
    until_state(&e.sup, &TaskKey::new("job", "before").unwrap(), TaskState::Running).await;
    let job = crate::model::JobId::new("job").unwrap();
    let status = e.sup.release_job(&job, true).await.unwrap();
    assert!(status.config.released);
    let err = e.sup.run_task(spec("after"), None).await.unwrap_err();
    assert!(matches!(err, Error::Precondition { .. }), "{err}");
    // terminate_tasks: the job's task is stopped, not waited for.
    let t = until_state(&e.sup, &TaskKey::new("job", "before").unwrap(), TaskState::Completed).await;
    assert_eq!(t.failure.map(|f| f.code.as_str()), Some("TaskTerminated"));
    assert!(e.sup.get_task(&TaskKey::new("job", "after").unwrap()).await.is_err());
}

#[tokio::test]
async fn the_switch_and_the_start_task_apply_while_the_agent_is_starting() {
    let store = Store::in_memory().unwrap();
    store.put_setting("scheduling_enabled", Some(&false)).await.unwrap();
    let e = env_unrecovered(1, Fake::new(true), store.clone());
    e.sup.load_lifecycle().await.unwrap();
    e.sup.check_containerd().await;
    assert_eq!(e.sup.refresh_state().await.state, crate::model::NodeState::Starting);
    // STARTING (recovery has not run), yet the persisted switch refuses tasks.
    let err = e.sup.run_task(spec("early"), None).await.unwrap_err();
    assert!(matches!(err, Error::NotAccepting { state: crate::model::NodeState::Offline, .. }), "{err}");

    // A configured wait_for_success start task without a record (the agent
    // stopped between configuring and accepting it) has not succeeded: it is run.
    let store = Store::in_memory().unwrap();
    let config = crate::model::StartTaskConfig { spec: start_spec(), wait_for_success: true, boot_id: "boot".into() };
    store.put_setting("start_task", Some(&config)).await.unwrap();
    let e = env_with(1, Fake::new(true), store).await;
    e.sup.check_containerd().await;
    assert_eq!(e.sup.refresh_state().await.state, crate::model::NodeState::WaitingForStartTask);
    let err = e.sup.run_task(spec("t"), None).await.unwrap_err();
    assert!(matches!(err, Error::NotAccepting { .. }), "{err}");
    let start = TaskKey::start_task();
    until_record(&e.sup, &start, TaskState::Running).await;
    e.fake.exit(&start.container_id(), 0);
    until_state(&e.sup, &start, TaskState::Completed).await;
    assert_eq!(e.sup.refresh_state().await.state, crate::model::NodeState::Idle);

    // One that can no longer be accepted (it names a device this node lacks)
    // leaves a failed record: START_TASK_FAILED with the reason, not a wait forever.
    let store = Store::in_memory().unwrap();
    let mut bad = start_spec();
    bad.container.as_mut().unwrap().devices = vec!["vendor.example/gpu=0".into()];
    let config = crate::model::StartTaskConfig { spec: bad, wait_for_success: true, boot_id: "boot".into() };
    store.put_setting("start_task", Some(&config)).await.unwrap();
    let e = env_with(1, Fake::new(true), store).await;
    let t = until_record(&e.sup, &start, TaskState::Completed).await;
    assert_eq!(t.failure.map(|f| f.code.as_str()), Some("StartTaskFailed"));
    e.sup.check_containerd().await;
    let view = e.sup.refresh_state().await;
    assert_eq!(view.state, crate::model::NodeState::StartTaskFailed, "{}", view.reason);
    assert!(view.reason.contains("CDI"), "{}", view.reason);
}

#[tokio::test]
async fn a_start_task_accepted_but_not_started_before_a_reboot_runs_once() {
    let store = Store::in_memory().unwrap();
    let config = crate::model::StartTaskConfig { spec: start_spec(), wait_for_success: true, boot_id: "boot".into() };
    store.put_setting("start_task", Some(&config)).await.unwrap();
    let mut queued = TaskInfo::new(start_spec(), SystemTime::now());
    queued.state = TaskState::Active;
    store.insert(queued).await.unwrap();
    let fake = Fake::new(true);
    let e = env_custom(1, fake.clone(), store, |s| s.boot_id = "boot-2".into()).await;
    let start = TaskKey::start_task();
    until_state(&e.sup, &start, TaskState::Running).await;
    fake.exit(&start.container_id(), 0);
    until_state(&e.sup, &start, TaskState::Completed).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = fake.st().started.clone();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(e.sup.start_task().await.unwrap().0.boot_id, "boot-2");
}

#[tokio::test]
async fn tasks_queued_before_a_wait_for_success_start_task_wait_for_it() {
    let e = env(1).await;
    let first = e.sup.run_task(spec("first"), None).await.unwrap().key().clone();
    until_state(&e.sup, &first, TaskState::Running).await;
    let queued = e.sup.run_task(spec("queued"), None).await.unwrap().key().clone();
    let start = TaskKey::start_task();
    e.sup.configure_start_task(start_spec(), true).await.unwrap();
    until_state(&e.sup, &start, TaskState::Running).await;
    // The slot frees up, but the queued task waits (ACTIVE, nothing created) for the start task.
    e.fake.exit(&first.container_id(), 0);
    until_state(&e.sup, &first, TaskState::Completed).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(e.sup.get_task(&queued).await.unwrap().state, TaskState::Active);
    assert!(!e.fake.st().created.contains(&queued.container_id()));
    e.fake.exit(&start.container_id(), 0);
    until_state(&e.sup, &queued, TaskState::Running).await;
}

#[tokio::test]
async fn an_open_jobs_preparation_outlives_the_history_limit_and_runs_once() {
    let e = env_custom(1, Fake::new(true), Store::in_memory().unwrap(), |s| s.history_limit = 1).await;
    let job = crate::model::JobId::new("job").unwrap();
    let prep = TaskSpec { key: TaskKey::job_preparation(&job), required_slots: 0, ..spec("unused") };
    e.sup.configure_job(&job, Some(prep), None).await.unwrap();
    let prep_key = TaskKey::job_preparation(&job);
    for i in 0..3 {
        let key = e.sup.run_task(spec(&format!("p{i}")), None).await.unwrap().key().clone();
        if i == 0 {
            // Its record is made when the job's first task reaches it.
            for _ in 0..500 {
                if e.sup.get_task(&prep_key).await.is_ok_and(|t| t.state == TaskState::Running) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            e.fake.exit(&prep_key.container_id(), 0);
        }
        until_state(&e.sup, &key, TaskState::Running).await;
        e.fake.exit(&key.container_id(), 0);
        until_state(&e.sup, &key, TaskState::Completed).await;
        e.sup.sweep_retention(SystemTime::now() + Duration::from_secs(30 * 86400)).await.unwrap();
    }
    // Kept, with its directory, past the limit and the retention time; it ran once.
    assert_eq!(e.sup.get_task(&prep_key).await.unwrap().exit_code, Some(0));
    assert!(e.sup.shared.layout.task(&prep_key).task_dir.exists());
    assert_eq!(e.fake.st().created.iter().filter(|c| **c == prep_key.container_id()).count(), 1);
    // Once the job is released, the limit applies to it too.
    e.sup.release_job(&job, false).await.unwrap();
    e.sup.sweep_retention(SystemTime::now()).await.unwrap();
    assert!(matches!(e.sup.get_task(&prep_key).await, Err(Error::NotFound { .. })));
}

/// Polls until `key` has a record in `state` (it may not exist yet).
async fn until_record(sup: &Supervisor, key: &TaskKey, state: TaskState) -> TaskInfo {
    for _ in 0..500 {
        if let Ok(t) = sup.get_task(key).await {
            if t.state == state {
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never reached {state:?}");
}

#[tokio::test]
async fn a_lost_preparation_run_is_run_again_once() {
    let job = crate::model::JobId::new("job").unwrap();
    let prep_key = TaskKey::job_preparation(&job);
    let prep = TaskSpec { key: prep_key.clone(), required_slots: 0, ..spec("unused") };
    let setup = |reruns: u32| {
        let (prep, job) = (prep.clone(), job.clone());
        async move {
            let store = Store::in_memory().unwrap();
            let config = crate::model::JobConfig {
                preparation: Some(prep.clone()),
                preparation_reruns: reruns,
                ..Default::default()
            };
            store.put_setting(&format!("job:{job}"), Some(&config)).await.unwrap();
            let mut lost = TaskInfo::new(prep, SystemTime::now());
            lost.complete(
                None,
                Some(FailureInfo::new(FailureCode::HostProcessLost, "its shim is gone")),
                SystemTime::now(),
            );
            store.insert(lost).await.unwrap();
            env_with(1, Fake::new(true), store).await
        }
    };
    // Lost (the machine went away while it ran): it runs again, then the task.
    let e = setup(0).await;
    let key = e.sup.run_task(spec("t"), None).await.unwrap().key().clone();
    until_record(&e.sup, &prep_key, TaskState::Running).await;
    e.fake.exit(&prep_key.container_id(), 0);
    until_state(&e.sup, &key, TaskState::Running).await;
    assert_eq!(e.sup.job_status(&job).await.unwrap().config.preparation_reruns, 1);

    // Lost again after its one rerun: the job's tasks fail.
    let e = setup(1).await;
    let key = e.sup.run_task(spec("t"), None).await.unwrap().key().clone();
    let t = until_state(&e.sup, &key, TaskState::Completed).await;
    assert_eq!(t.failure.map(|f| f.code.as_str()), Some("JobPreparationFailed"));
    assert!(e.fake.st().created.is_empty());
}

#[tokio::test]
async fn a_released_jobs_directories_follow_retention_and_then_it_is_forgotten() {
    let e = env(1).await;
    let job = crate::model::JobId::new("job").unwrap();
    let mut short = spec("short");
    short.constraints.retention_time = Some(Duration::from_secs(1));
    let key = run_to_exit(&e, short).await;
    e.sup.release_job(&job, false).await.unwrap();
    let job_dir = e.sup.shared.layout.job_dir(&job);
    // Before the retention time, the task's directory (and so the job's) stays.
    e.sup.sweep_retention(SystemTime::now()).await.unwrap();
    assert!(e.sup.shared.layout.task(&key).task_dir.exists());
    assert!(job_dir.exists());
    // After it: the task directory goes, then the empty job directory; the
    // job is forgotten once its records are deleted too.
    e.sup.sweep_retention(SystemTime::now() + Duration::from_secs(2)).await.unwrap();
    assert!(!e.sup.shared.layout.task(&key).task_dir.exists());
    assert!(!job_dir.exists(), "{}", job_dir.display());
    assert!(e.sup.job_status(&job).await.is_ok(), "a record of the job is left");
    e.sup.delete(&key).await.unwrap();
    e.sup.sweep_retention(SystemTime::now()).await.unwrap();
    assert!(matches!(e.sup.job_status(&job).await, Err(Error::JobNotFound { .. })));
}
