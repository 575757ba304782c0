//! Supervisor tests against a recording fake runtime: lifecycle, slots,
//! terminate, wall clock, refusals, recovery. The real containerd path is
//! covered by the integration tests in `tests/`.

use super::*;
use crate::containerd::{
    CreateRequest, ExitEvent, ExitStatus, ExitStream, LabelledContainer, ResolvedImage, RuntimeError, TaskStatus,
};
use crate::images::ImageConfig;
use crate::model::{Credentials, FailureCode, PullPolicy};
use async_trait::async_trait;
use tokio::sync::Notify;

#[derive(Default)]
struct FakeState {
    /// Container id → status.
    tasks: HashMap<String, TaskStatus>,
    created: Vec<String>,
    /// The labels of each container created, in order.
    created_labels: Vec<HashMap<String, String>>,
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
    /// What containerd does when a task's shim dies: it removes the task and
    /// publishes the exit status of its own clean-up (SIGKILL, 137).
    fn shim_died(&self, cid: &str) {
        self.st().tasks.remove(cid);
        let status = ExitStatus { code: 137, exited_at: None };
        let _ = self.events.send(ExitEvent { container_id: cid.into(), status });
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
        st.created_labels.push(req.labels.clone());
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
/// Task networks without namespaces or plugins: attachments are a set.
#[derive(Debug, Default)]
pub(super) struct FakeNetworks {
    dir: std::path::PathBuf,
    pub(super) attached: Mutex<std::collections::BTreeSet<String>>,
}

#[async_trait::async_trait]
impl crate::network::TaskNetworks for FakeNetworks {
    fn paths(&self, cid: &str) -> crate::network::Paths {
        crate::network::Paths {
            netns: self.dir.join("netns").join(cid),
            resolv_conf: self.dir.join(cid).join("resolv.conf"),
            hosts: self.dir.join(cid).join("hosts"),
        }
    }
    fn attachments(&self) -> Vec<String> {
        self.attached.lock().unwrap().iter().cloned().collect()
    }
    async fn attach(
        &self,
        cid: &str,
        _ports: &[crate::model::PortMapping],
    ) -> Result<std::net::Ipv4Addr, crate::network::NetworkError> {
        self.attached.lock().unwrap().insert(cid.to_owned());
        Ok(std::net::Ipv4Addr::new(10, 88, 0, 2))
    }
    async fn detach(&self, cid: &str) -> Result<(), crate::network::NetworkError> {
        self.attached.lock().unwrap().remove(cid);
        let _ = std::fs::remove_dir_all(self.dir.join(cid));
        Ok(())
    }
    fn write_files(&self, cid: &str, resolv_conf: &str, hosts: &str) -> Result<(), crate::network::NetworkError> {
        let p = self.paths(cid);
        std::fs::create_dir_all(self.dir.join(cid)).unwrap();
        std::fs::write(p.resolv_conf, resolv_conf).unwrap();
        std::fs::write(p.hosts, hosts).unwrap();
        Ok(())
    }
}

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
        account_url: None,
        reserved_disk_bytes: 0,
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
        requeue_after_reboot: true,
        shim_group: crate::containerd::ShimGroup::None,
        boot_id: "boot".into(),
        metrics: crate::metrics::Metrics::new(),
        staging: Arc::new(
            crate::staging::Transfers::new(Default::default(), tmp.path().join("secrets"), &[]).expect("transfers"),
        ),
        app_packages: vec![],
        network: Arc::new(FakeNetworks { dir: tmp.path().join("network"), ..Default::default() }),
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
    let mut s = super::admission::tests::spec(Some("busybox"), "");
    s.key = TaskKey::new("job", task).unwrap();
    s
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

mod lifecycle;
mod recovery;
mod retries;
mod tasks;
