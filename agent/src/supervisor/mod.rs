//! The supervisor: accepts tasks, keeps their records, hands out task slots, and
//! runs one async job per task (`runner`) that drives it through containerd.
//! Everything the API does is one call here.

mod admission;
mod cgroup;
mod error;
mod explain;
mod failure;
mod gpus;
mod host_task;
mod image_store;
mod jobs;
mod lifecycle;
mod lookups;
mod node_usage;
mod outcome;
mod outputs;
mod packages;
mod phases;
mod prepare;
mod record;
mod recovery;
mod retry;
mod runner;
mod slots;
mod stop;
mod watch;

pub use admission::{CheckedTask, DeviceRequest};
pub use error::Error;
pub use explain::Explanation;
pub use gpus::Want;
pub use image_store::{ImageEntry, ImageGc, PrefetchState};
pub use jobs::JobStatus;
pub use lifecycle::{boot_id, NodeStateView};
pub use node_usage::NodeUsage;
pub use outcome::StopReason;
pub use packages::PackageStatus;
pub use recovery::Report as RecoveryReport;
pub use stop::StopSettings;

use crate::containerd::{ExitEvent, Runtime};
use crate::images::{self, Platform, Pull, PullReport};
use crate::layout::{Layout, TaskFiles};
use crate::model::{
    AutoUserScope, Credentials, FailureInfo, NodeFacts, TaskInfo, TaskKey, TaskKind, TaskSpec, TaskState, UserIdentity,
};
use crate::store::{Store, TaskEvent};
use slots::Slots;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc, watch as tokio_watch};
use tokio_stream::StreamExt;

/// Free (for unprivileged users) and total bytes of the file system holding `path`.
fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some((st.blocks_available() as u64 * frag, st.blocks() as u64 * frag))
}

/// Largest chunk `ReadTaskFile` returns.
pub const MAX_READ: u64 = 4 << 20;

/// Settings of the supervisor.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub task_slots: u32,
    /// Between SIGTERM and SIGKILL when a task is stopped without a grace period of its own.
    pub terminate_grace: Duration,
    pub platform: Platform,
    /// A task is not started while the node root has less free space (`DiskFull`).
    pub min_free_bytes: u64,
    /// Completed records kept (oldest deleted first, with their directories).
    pub history_limit: usize,
    /// Events kept in the log.
    pub event_log_keep: u64,
    /// Pool user accounts and auto-users.
    pub identities: crate::model::Identities,
    /// A path on containerd's image store file system (disk space in `GetNode`).
    pub image_filesystem: Option<std::path::PathBuf>,
    /// The node's CDI devices; None: no device is injected.
    pub devices: Option<std::sync::Arc<crate::devices::Registry>>,
    /// What run options may ask for.
    pub policy: crate::spec::Policy,
    /// Starts and follows host tasks.
    pub host: crate::host::HostRuntime,
    /// Run the start task again when the agent starts in a new boot.
    pub rerun_start_task_after_reboot: bool,
    /// Queue again the tasks that ran when the machine rebooted (else they end `ContainerLost`).
    pub requeue_after_reboot: bool,
    /// This boot of the machine (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Where task starts, completions and reconnects are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Resource and output file transfers, and their URLs' secrets.
    pub staging: Arc<crate::staging::Transfers>,
    /// The node's application packages from the config file.
    pub app_packages: Vec<crate::model::AppPackage>,
    /// Bridge networks of tasks (CNI).
    pub network: Arc<dyn crate::network::TaskNetworks>,
    /// Which containers share a containerd shim (`[containerd] shim_group`).
    pub shim_group: crate::containerd::ShimGroup,
}

/// A request to stop a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub reason: StopReason,
    pub grace: Duration,
}

type StopSender = tokio_watch::Sender<Option<Stop>>;

struct Sched {
    slots: Slots,
    /// One per task that was accepted and whose runner has not finished yet;
    /// the channel is made when the runner starts (a queued task, which a
    /// terminate takes out of the queue, needs none: it would cost a few
    /// hundred bytes per queued task).
    stops: HashMap<TaskKey, Option<StopSender>>,
    /// No task is dispatched before recovery has re-attached (and counted the
    /// slots of) what the previous agent left running.
    recovered: bool,
}

/// Per task, from `RunTask` until its runner ends.
#[derive(Default)]
struct InFlight {
    checked: HashMap<TaskKey, Arc<CheckedTask>>,
    credentials: HashMap<TaskKey, Credentials>,
}

impl InFlight {
    fn forget(&mut self, key: &TaskKey) {
        self.checked.remove(key);
        self.credentials.remove(key);
    }
}

/// Frees a runner's slots when it ends, also if it panics.
struct Release {
    sup: Supervisor,
    key: TaskKey,
    slots: u32,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.sup.in_flight().forget(&self.key);
        self.sup.shared.gpu_holds.release(&self.key);
        let mut sched = self.sup.sched();
        sched.slots.release(self.slots);
        sched.stops.remove(&self.key);
        self.sup.dispatch(&mut sched);
    }
}

/// The supervisor's state. The first six fields never change after start; each
/// part after them owns one concern and has its own lock (or none).
///
/// Lock order: `admission` (async, held across awaits while a task is
/// accepted) is taken before any of the others; of the std mutexes only
/// `sched` → `in_flight` are ever held together (a queued task terminated).
/// No std mutex is held across an await.
struct Shared {
    settings: Settings,
    node: NodeFacts,
    layout: Layout,
    store: Store,
    runtime: Arc<dyn Runtime>,
    puller: Arc<dyn Pull>,
    /// Slots, the queue and the stop channels of running tasks.
    sched: Mutex<Sched>,
    /// What admission decided about the tasks in flight, and their own
    /// registry credentials: in memory only (never in the database).
    in_flight: Mutex<InFlight>,
    /// The image catalog: last use, the prefetch list and its progress.
    images: Mutex<image_store::ImagesState>,
    /// GPUs held by tasks that asked for specific ones (its own lock).
    gpu_holds: gpus::GpuHolds,
    /// The scheduling switch, the start task and the jobs.
    life: Mutex<lifecycle::Life>,
    /// Serialises accepting tasks with what decides whether they are
    /// accepted (the scheduling switch, the start task, job releases).
    admission: tokio::sync::Mutex<()>,
    /// The link to containerd.
    link: Link,
    /// The node's state as published, and what it is computed from.
    status: StatusParts,
    /// Application packages: installed, the node's set (its own locks).
    packages: packages::NodePackages,
}

/// containerd as the supervisor sees it.
struct Link {
    /// containerd's `/tasks/exit` events, fanned out to the runners.
    exits: broadcast::Sender<ExitEvent>,
    /// containerd's version while it answers; None while it does not.
    version: tokio_watch::Sender<Option<String>>,
    /// containerd answered at least once (so answering again is a reconnect).
    ever_up: std::sync::atomic::AtomicBool,
}

/// The node's state for `GetNode` and `WatchNode`.
struct StatusParts {
    view: tokio_watch::Sender<NodeStateView>,
    /// Wakes `follow_node_state` (the switch or the start task changed).
    kick: tokio::sync::Notify,
    /// `follow_node_state` was started.
    following: std::sync::atomic::AtomicBool,
    /// When the node root and state directory were last checked, and why
    /// the node was unusable then (see `lifecycle`).
    disk_probe: Mutex<Option<(std::time::Instant, Option<String>)>>,
    /// The node's CPU counters (total, idle jiffies) at the last `GetNode`.
    cpu_sample: Mutex<Option<(u64, u64)>>,
    /// What recovery found worth telling an operator (a rebuilt database, ...).
    notes: Mutex<Vec<String>>,
}

/// Node-level counters for `GetNode`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub node: NodeFacts,
    pub slots_total: u32,
    pub slots_free: u32,
    /// None when containerd could not be reached.
    pub containerd_version: Option<String>,
    pub notes: Vec<String>,
    pub prefetch: Vec<(String, PrefetchState)>,
    /// (path, free bytes, total bytes) of the node root's and the image store's file systems.
    pub disks: Vec<(std::path::PathBuf, u64, u64)>,
    pub gpus: Vec<String>,
    pub rdma: Vec<crate::devices::rdma::Hca>,
    pub cdi_devices: Vec<String>,
    pub cdi_specs: Vec<crate::devices::SpecStatus>,
    pub state: NodeStateView,
    pub usage: NodeUsage,
    pub packages: Vec<PackageStatus>,
}

#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        node: NodeFacts,
        layout: Layout,
        store: Store,
        runtime: Arc<dyn Runtime>,
        puller: Arc<dyn Pull>,
    ) -> Self {
        let sched = Sched { slots: Slots::new(settings.task_slots), stops: HashMap::new(), recovered: false };
        let (layout_applications, app_packages) = (layout.applications(), settings.app_packages.clone());
        let exits = broadcast::channel(1024).0;
        let containerd = tokio_watch::channel(None).0;
        let shared = Shared {
            settings,
            node,
            layout,
            store,
            runtime,
            puller,
            sched: Mutex::new(sched),
            in_flight: Mutex::default(),
            images: Mutex::default(),
            gpu_holds: Default::default(),
            life: Mutex::default(),
            admission: Default::default(),
            link: Link { exits, version: containerd, ever_up: Default::default() },
            packages: packages::NodePackages::new(layout_applications, app_packages),
            status: StatusParts {
                view: tokio_watch::channel(NodeStateView {
                    state: crate::model::NodeState::Starting,
                    reason: String::new(),
                    scheduling_enabled: true,
                })
                .0,
                kick: Default::default(),
                following: Default::default(),
                disk_probe: Default::default(),
                cpu_sample: Default::default(),
                notes: Default::default(),
            },
        };
        Self { shared: Arc::new(shared) }
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.shared.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.shared.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the GPUs `want` asks for and holds them for `key`.
    pub(crate) async fn hold_gpus(&self, key: &TaskKey, want: &gpus::Want) -> Vec<String> {
        let all = self.shared.settings.devices.as_ref().map(|r| r.gpus()).unwrap_or_default();
        self.shared.gpu_holds.take(key, want, &all).await
    }

    /// What admission decided about a task: kept in memory from `RunTask`
    /// until its runner ends; for a task recorded by an earlier agent, decided
    /// now from its record (with the identity it was accepted with).
    pub(crate) fn checked_for(&self, info: &TaskInfo) -> Result<Arc<CheckedTask>, admission::Refusal> {
        if let Some(c) = self.in_flight().checked.get(info.key()) {
            return Ok(c.clone());
        }
        let checked = match &info.run_as {
            Some(run_as) => {
                let s = &self.shared.settings;
                let devices = s.devices.as_deref();
                admission::check(
                    &info.spec,
                    Ok(run_as.clone()),
                    &s.policy,
                    self.shared.layout.root(),
                    devices,
                    s.task_slots,
                )?
            }
            None => self.admit_check(&info.spec, info.sequence)?,
        };
        let checked = Arc::new(checked);
        self.in_flight().checked.insert(info.key().clone(), checked.clone());
        Ok(checked)
    }

    /// How a task's process is stopped: from what admission decided, else
    /// from its record.
    fn stop_settings(&self, info: &TaskInfo) -> stop::StopSettings {
        match self.in_flight().checked.get(info.key()) {
            Some(c) => c.stop(),
            None => stop::StopSettings::of_spec(&info.spec),
        }
    }

    /// Accepts a task: records it ACTIVE and queues it for a slot. It may
    /// carry its job's preparation task (see `configure_job`).
    pub async fn run_task(&self, spec: TaskSpec, job_preparation: Option<TaskSpec>) -> Result<TaskInfo, Error> {
        if spec.key.kind() != TaskKind::Task {
            return Err(Error::Invalid {
                field: "task_id",
                reason: format!("\"{}\" is reserved for the job's own preparation or release task", spec.key.task),
            });
        }
        let checked = self.admit_check(&spec, 0)?;
        lookups::check_host(&checked.run_options, &self.shared.settings.policy).await?;
        // Held until the task is recorded: a scheduling switch or a job
        // release answered meanwhile sees it, or it sees them.
        let _admission = self.shared.admission.lock().await;
        self.check_accepting(&spec.key.job).await?;
        if let Some(prep) = job_preparation {
            self.configure_job_admitting(&spec.key.job, Some(prep), None).await?;
        }
        self.admit(spec, checked).await
    }

    /// Records a start, preparation or release task and runs it at once (it
    /// needs no slot).
    async fn accept_special(&self, spec: TaskSpec) -> Result<TaskInfo, Error> {
        let checked = self.admit_check(&spec, 0)?;
        let mut spec = spec;
        spec.required_slots = 0;
        self.admit(spec, checked).await
    }

    /// Records a checked task ACTIVE and queues it.
    async fn admit(&self, spec: TaskSpec, mut checked: CheckedTask) -> Result<TaskInfo, Error> {
        let creds = spec.container.as_ref().and_then(|c| c.credentials.clone());
        let staging = spec.staging.clone();
        let task_scope = matches!(spec.user, UserIdentity::Auto { scope: AutoUserScope::Task, .. });
        let mut new = TaskInfo::new(spec, SystemTime::now());
        new.run_as = Some(checked.run_as.clone());
        let mut info = self.shared.store.insert(new).await?;
        // The URLs' queries, which the record is written without (kept once
        // the record is new: a duplicate never replaces another task's).
        let secrets = self.shared.settings.staging.secrets();
        if let Err(e) = secrets.keep(info.key(), &staging) {
            let message = format!("cannot keep the staging URLs' SAS tokens in {}: {e}", secrets.dir().display());
            let failure = FailureInfo::on_the_node(crate::model::FailureCode::ResourceFileDownloadFailed, message);
            return Ok(self.complete(info, None, Some(failure)).await);
        }
        if task_scope {
            // Successive tasks get successive uids: the task's sequence number picks it.
            checked.run_as = self
                .shared
                .settings
                .identities
                .resolve(&info.spec.user, info.sequence)
                .map_err(|e| Error::Invalid { field: "user", reason: e.to_string() })?;
            info.run_as = Some(checked.run_as.clone());
            self.shared.store.amend(info.clone()).await?;
        }
        {
            let mut in_flight = self.in_flight();
            in_flight.checked.insert(info.key().clone(), Arc::new(checked));
            if let Some(creds) = creds {
                in_flight.credentials.insert(info.key().clone(), creds);
            }
        }
        tracing::info!(job_id = %info.key().job, task_id = %info.key().task, kind = info.key().kind().as_str(),
            "task accepted");
        self.enqueue(info.key().clone(), info.spec.required_slots);
        Ok(info)
    }

    fn enqueue(&self, key: TaskKey, slots: u32) {
        let mut sched = self.sched();
        sched.slots.enqueue(key.clone(), slots);
        sched.stops.insert(key, None);
        self.dispatch(&mut sched);
    }

    /// Starts every queued task that fits in the free slots.
    fn dispatch(&self, sched: &mut Sched) {
        if !sched.recovered {
            return;
        }
        while let Some((key, slots)) = sched.slots.next_ready() {
            let stop = sched
                .stops
                .entry(key.clone())
                .or_default()
                .get_or_insert_with(|| tokio_watch::channel(None).0)
                .subscribe();
            let this = self.clone();
            tokio::spawn(async move { this.run_and_release(key, slots, runner::Phase::Prepare, stop).await });
        }
    }

    /// Runs a task from `phase` to completion, then frees its slots.
    async fn run_and_release(
        &self,
        key: TaskKey,
        slots: u32,
        phase: runner::Phase,
        stop: tokio_watch::Receiver<Option<Stop>>,
    ) {
        let _release = Release { sup: self.clone(), key: key.clone(), slots };
        runner::run(self, &key, phase, stop).await;
    }

    pub async fn get_task(&self, key: &TaskKey) -> Result<TaskInfo, Error> {
        self.shared.store.get(key).await?.ok_or_else(|| Error::NotFound { key: key.clone() })
    }

    /// A page of tasks in acceptance order, after the one accepted at
    /// sequence `after`; the page's last sequence when more follow.
    pub async fn list_tasks(
        &self,
        job: Option<String>,
        state: Option<TaskState>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<TaskInfo>, Option<u64>), Error> {
        Ok(self.shared.store.list_page(job, state, after, limit).await?)
    }

    /// Stops a task. A task still waiting for a slot completes at once; a
    /// preparing or running one gets SIGTERM, then SIGKILL after `grace`.
    /// A completed task is returned unchanged.
    pub async fn terminate(&self, key: &TaskKey, grace: Option<Duration>) -> Result<TaskInfo, Error> {
        // A queued task first: it is not completed, and no runner holds it.
        if self.dequeue(key) {
            return self.terminated_in_queue(key).await;
        }
        let info = self.get_task(key).await?;
        if info.state == TaskState::Completed {
            return Ok(info);
        }
        let grace = grace.or(self.stop_settings(&info).timeout).unwrap_or(self.shared.settings.terminate_grace);
        // Under one lock, so a task queued again meanwhile is not missed.
        let was_queued = {
            let mut sched = self.sched();
            let queued = self.dequeue_locked(&mut sched, key);
            if !queued {
                if let Some(Some(tx)) = sched.stops.get(key) {
                    tx.send_replace(Some(Stop { reason: StopReason::Terminated, grace }));
                } else if !sched.recovered {
                    return Err(Error::Recovering);
                }
            }
            queued
        };
        if was_queued {
            return self.terminated_in_queue(key).await;
        }
        tracing::info!(job_id = %key.job, task_id = %key.task, grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), "terminating task");
        self.get_task(key).await
    }

    /// Takes a task out of the queue, if it waits there.
    fn dequeue(&self, key: &TaskKey) -> bool {
        let mut sched = self.sched();
        self.dequeue_locked(&mut sched, key)
    }

    fn dequeue_locked(&self, sched: &mut Sched, key: &TaskKey) -> bool {
        let queued = sched.slots.remove_queued(key);
        if queued {
            sched.stops.remove(key);
            self.in_flight().forget(key);
        }
        queued
    }

    /// Completes a task terminated while it waited for a slot.
    async fn terminated_in_queue(&self, key: &TaskKey) -> Result<TaskInfo, Error> {
        let now = SystemTime::now();
        let done = move |info: &mut TaskInfo| {
            info.complete(None, Some(StopReason::Terminated.failure(" before it started")), now);
        };
        self.shared.store.modify(key, done).await?.ok_or_else(|| Error::NotFound { key: key.clone() })
    }

    /// Removes a completed task's record and directory.
    pub async fn delete(&self, key: &TaskKey) -> Result<(), Error> {
        let info = self.get_task(key).await?;
        if key.kind() == TaskKind::StartTask && self.life().start_task.is_some() {
            return Err(Error::Precondition {
                reason: "the start task's record is kept while a start task is configured (it decides whether the \
                         node takes tasks); configure a new one to replace it"
                    .into(),
            });
        }
        if info.state != TaskState::Completed {
            return Err(Error::WrongState { key: key.clone(), state: info.state, action: "deleted" });
        }
        // The runner may still be removing the container of a task just completed.
        self.runner_gone(key).await?;
        self.shared.layout.remove_task_dir(key)?;
        self.shared.store.delete(key).await?;
        tracing::info!(job_id = %key.job, task_id = %key.task, "task deleted");
        Ok(())
    }

    /// Reads a file under the task directory.
    pub async fn read_file(&self, key: &TaskKey, path: &str, offset: u64, length: u64) -> Result<TaskFiles, Error> {
        self.get_task(key).await?;
        let max = if length == 0 { MAX_READ } else { length.min(MAX_READ) };
        let layout = self.shared.layout.clone();
        let (key, path, path_owned) = (key.clone(), path.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || layout.read_task_file(&key, &path, offset, max))
            .await
            .map_err(|e| {
                Error::Layout(crate::layout::LayoutError::Read {
                    path: path_owned,
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(Error::from)
    }

    pub async fn node_status(&self) -> NodeStatus {
        let devices = self.shared.settings.devices.clone();
        let (gpus, rdma, cdi_devices, cdi_specs, hint) = tokio::task::spawn_blocking(move || match devices {
            Some(d) => (d.gpus(), d.rdma.clone(), d.names(), d.specs(), d.hint()),
            None => Default::default(),
        })
        .await
        .unwrap_or_default();
        let (total, free) = {
            let sched = self.sched();
            (sched.slots.total(), sched.slots.free())
        };
        let state = self.refresh_state().await;
        let usage = {
            let mut last = self.shared.status.cpu_sample.lock().unwrap_or_else(|p| p.into_inner());
            node_usage::usage(&mut last)
        };
        let packages = self.application_packages().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot count the application packages' references");
            Vec::new()
        });
        NodeStatus {
            usage,
            packages,
            node: self.shared.node.clone(),
            slots_total: total,
            slots_free: free,
            containerd_version: self.shared.link.version.borrow().clone(),
            notes: {
                let mut notes = self.shared.status.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
                notes.extend(hint);
                notes
            },
            gpus,
            rdma,
            cdi_devices,
            cdi_specs,
            prefetch: self.prefetch_status(),
            state,
            disks: [Some(self.shared.layout.root().to_owned()), self.shared.settings.image_filesystem.clone()]
                .into_iter()
                .flatten()
                .map(|p| {
                    let (free, total) = disk_space(&p).unwrap_or((0, 0));
                    (p, free, total)
                })
                .collect(),
        }
    }

    /// A running task's figures now, from its cgroup (`TaskInfo.stats`).
    pub fn live_stats(&self, t: &TaskInfo) -> Option<crate::model::TaskStats> {
        if t.state != TaskState::Running {
            return None;
        }
        let usage = cgroup::usage(&self.cgroups_path(t))?;
        let wall = t.started_at.and_then(|s| SystemTime::now().duration_since(s).ok()).unwrap_or_default();
        Some(cgroup::stats(usage, wall, true))
    }

    /// `linux.cgroupsPath` of a task's container, or of a host task's cgroup.
    fn cgroups_path(&self, t: &TaskInfo) -> String {
        let id = t.container_id();
        match t.spec.container {
            None => self.shared.settings.host.cgroups_path(&id),
            Some(_) => format!("/{}/{id}", self.shared.settings.namespace),
        }
    }

    /// Tasks by state and slots in use, for the metrics endpoint.
    pub async fn gauges(&self) -> (Vec<(String, u64)>, u32) {
        let used = {
            let sched = self.sched();
            sched.slots.total() - sched.slots.free()
        };
        (self.shared.store.count_by_state().await.unwrap_or_default(), used)
    }

    /// containerd's reachability: its version while it answers, None while not.
    pub fn containerd_status(&self) -> tokio_watch::Receiver<Option<String>> {
        self.shared.link.version.subscribe()
    }

    /// Adds a note for operators, shown by `GetNode`.
    pub fn note(&self, note: String) {
        tracing::warn!(note = %note, "node note");
        self.shared.status.notes.lock().unwrap_or_else(|p| p.into_inner()).push(note);
    }

    /// Asks containerd for its version once: updates the reachability state.
    pub async fn check_containerd(&self) -> bool {
        let version = tokio::time::timeout(Duration::from_secs(2), self.shared.runtime.version()).await;
        let version = version.ok().and_then(Result::ok);
        let up = version.is_some();
        self.shared.link.version.send_if_modified(|cur| {
            if *cur == version {
                return false;
            }
            match (&*cur, &version) {
                (Some(_), None) => tracing::warn!("containerd is unreachable"),
                (None, Some(v)) => {
                    tracing::info!(version = %v, "containerd is reachable");
                    if self.shared.link.ever_up.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        self.shared.settings.metrics.containerd_reconnects.inc();
                    }
                }
                _ => {}
            }
            *cur = version.clone();
            true
        });
        up
    }

    /// Checks containerd's reachability every second while it is down, every
    /// five while it is up.
    pub async fn monitor_containerd(&self) {
        loop {
            let up = self.check_containerd().await;
            tokio::time::sleep(Duration::from_secs(if up { 5 } else { 1 })).await;
        }
    }

    /// Every event after `from`, then live ones, into a channel. The feeder ends
    /// when the receiver is dropped.
    pub fn watch(&self, from: u64) -> mpsc::Receiver<Result<TaskEvent, Error>> {
        watch::spawn(self.shared.store.clone(), from)
    }

    /// Removes task directories whose retention time has passed (returns how
    /// many), completed records beyond the history limit, and events beyond what
    /// the log keeps.
    pub async fn sweep_retention(&self, now: SystemTime) -> Result<usize, Error> {
        let mut removed = 0;
        let mut completed = self.shared.store.list(None, Some(TaskState::Completed)).await?;
        // The start task's record and `startup/` stay while it is configured,
        // an open job's preparation and release records while it is open.
        completed.retain(|t| t.key().kind() != TaskKind::StartTask && !self.job_keeps(t.key()));
        let excess = completed.len().saturating_sub(self.shared.settings.history_limit);
        for t in &completed[..excess] {
            if self.sched().stops.contains_key(t.key()) {
                continue;
            }
            self.shared.layout.remove_task_dir(t.key())?;
            self.shared.store.delete(t.key()).await?;
            tracing::info!(job_id = %t.key().job, task_id = %t.key().task, "history limit: task record removed");
        }
        let compacted = self.shared.store.compact_events(self.shared.settings.event_log_keep).await?;
        if compacted > 0 {
            tracing::info!(events = compacted, "event log compacted");
        }
        for t in &completed[excess..] {
            let Some(done) = t.completed_at else { continue };
            let expired = done.checked_add(t.spec.constraints.retention()).is_some_and(|until| until <= now);
            if expired && self.shared.layout.task(t.key()).task_dir.exists() {
                self.shared.layout.remove_task_dir(t.key())?;
                tracing::info!(job_id = %t.key().job, task_id = %t.key().task, "retention time passed: task directory removed");
                removed += 1;
            }
        }
        self.remove_released_job_dirs().await;
        Ok(removed)
    }

    /// Records a completion computed outside a runner (recovery, early failure).
    async fn complete(&self, mut info: TaskInfo, exit: Option<i32>, failure: Option<FailureInfo>) -> TaskInfo {
        info.complete(exit, failure, SystemTime::now());
        let info = record::save_durably(self, info).await;
        self.shared.settings.staging.secrets().forget(info.key());
        info
    }

    /// The credentials for a task's image: its own, else the node's for that registry.
    fn credentials_for(&self, key: &TaskKey, image: &str) -> Option<Credentials> {
        let own = self.in_flight().credentials.get(key).cloned();
        own.or_else(|| self.shared.puller.configured_credentials(image))
    }

    /// How far a task's resource or output file transfers are, while they run.
    pub fn staging_progress(&self, key: &TaskKey) -> Option<crate::staging::Progress> {
        self.shared.settings.staging.progress(key)
    }

    /// How far the pull of an image under way is.
    pub fn pull_progress(&self, reference: &str) -> Option<(String, crate::images::Progress)> {
        let name = images::normalize(reference).ok()?;
        let progress = self.shared.puller.progress(&name)?.borrow().clone();
        Some((name, progress))
    }

    /// Pulls an image (the `PullImage` call).
    pub async fn pull_image(&self, reference: &str, creds: Option<Credentials>) -> Result<(String, PullReport), Error> {
        let name = images::normalize(reference)?;
        let creds = creds.or_else(|| self.shared.puller.configured_credentials(&name));
        let report = self.shared.puller.pull(&name, creds.as_ref()).await?;
        self.touch_image(&name);
        Ok((name, report))
    }

    /// Lets queued tasks run: called when recovery is done.
    fn mark_recovered(&self) {
        let mut sched = self.sched();
        sched.recovered = true;
        self.dispatch(&mut sched);
    }

    /// Forwards containerd's exit events to the runners, resubscribing after a
    /// broken connection. Runners also `Wait` on their task, so an exit missed
    /// while unsubscribed is still collected.
    pub async fn follow_exits(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.shared.runtime.exit_events().await {
                Ok(mut events) => {
                    backoff = Duration::from_millis(100);
                    while let Some(ev) = events.next().await {
                        match ev {
                            Ok(ev) => {
                                let _ = self.shared.link.exits.send(ev);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "containerd event stream broke; resubscribing");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to containerd events; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Re-attaches to what the previous agent left: see `recovery`. `rebuild`:
    /// the state database was created anew, so containers and task directories
    /// without a record are adopted rather than removed.
    pub async fn recover(&self, rebuild: bool) -> Result<RecoveryReport, Error> {
        self.load_lifecycle().await?;
        if !self.shared.status.following.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let this = self.clone();
            tokio::spawn(async move { this.follow_node_state().await });
        }
        let report = recovery::recover(self, rebuild).await?;
        // Before anything queued is dispatched: whether the start task runs
        // again is decided on the records as recovery left them (a start task
        // requeued by recovery must not start first and then be taken for the
        // previous boot's run).
        self.rerun_start_task_after_reboot().await;
        self.mark_recovered();
        self.resume_releases();
        self.shared.status.kick.notify_one();
        if rebuild && (report.adopted > 0 || report.records_lost > 0) {
            self.note(format!(
                "the state database was rebuilt: {} running task(s) adopted from containerd, {} finished task(s) \
                 found in task directories with their results lost",
                report.adopted, report.records_lost
            ));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
