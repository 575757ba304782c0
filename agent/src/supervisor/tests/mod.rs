//! Supervisor tests against a recording fake runtime: lifecycle, slots,
//! terminate, wall clock, refusals, recovery. The real containerd path is
//! covered by the integration tests in `tests/`.

use super::*;
use crate::containerd::{
    CreateRequest, ExitEvent, ExitStatus, ExitStream, LabelledContainer, ResolvedImage, RuntimeError, TaskStatus,
};
use crate::images::ImageConfig;
use crate::model::{ContainerSettings, Credentials, PullPolicy, TaskConstraints, UserIdentity, WorkingDirMode};
use async_trait::async_trait;
use std::collections::BTreeMap;
use tokio::sync::Notify;

#[derive(Default)]
struct FakeState {
    /// Container id → status.
    tasks: HashMap<String, TaskStatus>,
    created: Vec<String>,
    started: Vec<String>,
    removed: Vec<String>,
    signals: Vec<(String, u32)>,
    labelled: Vec<LabelledContainer>,
}

/// A runtime whose processes exit when the test says so, or on SIGTERM/SIGKILL
/// (with 128+signal) when `obey_signals` is set.
struct Fake {
    state: Mutex<FakeState>,
    changed: Notify,
    images: Vec<String>,
    obey_signals: bool,
    /// `Wait` never returns: exits arrive only as events.
    wait_hangs: bool,
    events: tokio::sync::broadcast::Sender<ExitEvent>,
}

impl Fake {
    fn new(obey_signals: bool) -> Arc<Self> {
        Self::with(obey_signals, false)
    }
    fn with(obey_signals: bool, wait_hangs: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            changed: Notify::new(),
            images: vec!["docker.io/library/busybox:latest".into()],
            obey_signals,
            wait_hangs,
            events: tokio::sync::broadcast::channel(64).0,
        })
    }
    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
    fn exit(&self, cid: &str, code: u32) {
        let status = ExitStatus { code, exited_at: None };
        self.st().tasks.insert(cid.into(), TaskStatus::Stopped(status));
        self.changed.notify_waiters();
        let _ = self.events.send(ExitEvent { container_id: cid.into(), status });
    }
}

#[async_trait]
impl Runtime for Fake {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake".into())
    }
    async fn resolve_image(&self, name: &str, _: &Platform) -> Result<ResolvedImage, RuntimeError> {
        if !self.images.iter().any(|i| i == name) {
            return Err(RuntimeError::NotFound { what: format!("image {name}") });
        }
        let config = ImageConfig { cmd: vec!["sh".into()], ..Default::default() };
        Ok(ResolvedImage { name: name.into(), config, chain_id: "sha256:x".into() })
    }
    async fn image_files(&self, _: &str, _: &str, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        Ok(vec![None; paths.len()])
    }
    async fn create(&self, req: CreateRequest) -> Result<(), RuntimeError> {
        let mut st = self.st();
        st.created.push(req.id.clone());
        st.tasks.insert(req.id, TaskStatus::Created);
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut st = self.st();
        st.started.push(id.into());
        st.tasks.insert(id.into(), TaskStatus::Running);
        Ok(42)
    }
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        if self.wait_hangs {
            return std::future::pending().await;
        }
        loop {
            let notified = self.changed.notified();
            match self.st().tasks.get(id) {
                Some(TaskStatus::Stopped(e)) => return Ok(*e),
                None => return Err(RuntimeError::NotFound { what: id.into() }),
                _ => {}
            }
            notified.await;
        }
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        self.st().signals.push((id.into(), signal));
        if self.obey_signals {
            self.exit(id, 128 + signal);
        }
        Ok(())
    }
    async fn status(&self, id: &str) -> Result<TaskStatus, RuntimeError> {
        self.st().tasks.get(id).copied().ok_or_else(|| RuntimeError::NotFound { what: id.into() })
    }
    async fn list_labelled(&self, _node_id: &str) -> Result<Vec<LabelledContainer>, RuntimeError> {
        Ok(self.st().labelled.clone())
    }
    async fn remove_leftovers(&self, _node_id: &str, _keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        Ok(vec![])
    }
    async fn list_images(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        Ok(self.images.iter().map(|i| (i.clone(), "sha256:0".to_string())).collect())
    }
    async fn delete_image(&self, _name: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn exit_events(&self) -> Result<ExitStream, RuntimeError> {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        Ok(Box::pin(rx.filter_map(|r| r.ok().map(Ok))))
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.st();
        if st.tasks.remove(id).is_some() {
            st.removed.push(id.into());
        }
        Ok(())
    }
}

/// A puller that "pulls" the images it lists and fails the others.
struct FakePuller {
    pulled: Mutex<Vec<String>>,
    available: Vec<String>,
    /// Progress of a pull "under way", by image.
    under_way: Mutex<HashMap<String, tokio::sync::watch::Sender<crate::images::Progress>>>,
}

#[async_trait]
impl Pull for FakePuller {
    async fn pull(&self, name: &str, _creds: Option<&Credentials>) -> Result<PullReport, crate::images::PullError> {
        self.pulled.lock().unwrap().push(name.into());
        if self.available.iter().any(|a| a == name) {
            Ok(PullReport::default())
        } else {
            Err(crate::images::PullError::NotFound(format!("manifest {name} not found in registry")))
        }
    }
    fn configured_credentials(&self, _name: &str) -> Option<Credentials> {
        None
    }
    fn set_credentials(&self, _creds: Vec<(String, Credentials)>) {}
    fn progress(&self, name: &str) -> Option<tokio::sync::watch::Receiver<crate::images::Progress>> {
        self.under_way.lock().unwrap().get(name).map(|tx| tx.subscribe())
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    puller: Arc<FakePuller>,
    sup: Supervisor,
    fake: Arc<Fake>,
    store: Store,
}

/// An environment whose supervisor has not recovered yet (nothing is dispatched
/// before `recover`).
fn env_unrecovered(slots: u32, fake: Arc<Fake>, store: Store) -> Env {
    build_env(slots, fake, store, |_| {})
}

async fn env_with(slots: u32, fake: Arc<Fake>, store: Store) -> Env {
    env_custom(slots, fake, store, |_| {}).await
}

async fn env_custom(slots: u32, fake: Arc<Fake>, store: Store, adjust: impl FnOnce(&mut Settings)) -> Env {
    let e = build_env(slots, fake, store, adjust);
    e.sup.recover(false).await.unwrap();
    e
}

fn build_env(slots: u32, fake: Arc<Fake>, store: Store, adjust: impl FnOnce(&mut Settings)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("node"));
    layout.create_node_dirs().unwrap();
    std::fs::create_dir(tmp.path().join("state")).unwrap();
    let node = NodeFacts {
        node_id: "n".into(),
        pool_id: "p".into(),
        account_name: "a".into(),
        is_dedicated: true,
        root_dir: layout.root().into(),
        hostname: "h".into(),
        os: "linux".into(),
        arch: "amd64".into(),
        cpus: 1,
        memory_bytes: 0,
        network_files: vec![],
    };
    let settings = Settings {
        namespace: "berth".into(),
        task_slots: slots,
        terminate_grace: Duration::from_millis(200),
        platform: Platform::host(),
        min_free_bytes: 0,
        history_limit: 100,
        event_log_keep: 1000,
        identities: Default::default(),
        image_filesystem: None,
        devices: None,
        policy: Default::default(),
        host: crate::host::HostRuntime::new(&tmp.path().join("state"), "berth-test", "/nonexistent".into()),
        rerun_start_task_after_reboot: true,
        boot_id: "boot".into(),
    };
    let mut settings = settings;
    adjust(&mut settings);
    let puller = Arc::new(FakePuller {
        pulled: Mutex::default(),
        available: vec!["docker.io/library/busybox:latest".into()],
        under_way: Mutex::default(),
    });
    let sup = Supervisor::new(settings, node, layout, store.clone(), fake.clone(), puller.clone());
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.follow_exits().await }
    });
    Env { _tmp: tmp, sup, fake, store, puller }
}

async fn env(slots: u32) -> Env {
    env_with(slots, Fake::new(true), Store::in_memory().unwrap()).await
}

fn spec(task: &str) -> TaskSpec {
    TaskSpec {
        key: TaskKey::new("job", task).unwrap(),
        command_line: "/bin/true".into(),
        container: Some(ContainerSettings {
            image: "busybox".into(),
            run_options: String::new(),
            working_directory: WorkingDirMode::TaskWorkingDir,
            pull_policy: PullPolicy::Missing,
            credentials: None,
            devices: vec![],
        }),
        environment: BTreeMap::new(),
        user: UserIdentity::default(),
        constraints: TaskConstraints::default(),
        required_slots: 1,
    }
}

/// Runs a task on the fake runtime until it exits 0 and is recorded COMPLETED.
async fn run_to_exit(e: &Env, s: TaskSpec) -> TaskKey {
    let key = e.sup.run_task(s, None).await.unwrap().key().clone();
    until_state(&e.sup, &key, TaskState::Running).await;
    e.fake.exit(&key.container_id(), 0);
    until_state(&e.sup, &key, TaskState::Completed).await;
    key
}

async fn until_state(sup: &Supervisor, key: &TaskKey, state: TaskState) -> TaskInfo {
    for _ in 0..500 {
        let t = sup.get_task(key).await.unwrap();
        if t.state == state {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never reached {state:?}: {:?}", sup.get_task(key).await.unwrap());
}

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
    assert_eq!(t.failure.map(|f| f.code).as_deref(), Some("StartTaskFailed"));
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
    assert_eq!(t.failure.map(|f| f.code).as_deref(), Some("TaskTerminated"));
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
    assert_eq!(t.failure.map(|f| f.code).as_deref(), Some("StartTaskFailed"));
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
            lost.complete(None, Some(FailureInfo::server("HostProcessLost", "its shim is gone")), SystemTime::now());
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
    assert_eq!(t.failure.map(|f| f.code).as_deref(), Some("JobPreparationFailed"));
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
