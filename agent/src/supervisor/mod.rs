//! The supervisor: accepts tasks, keeps their records, hands out task slots, and
//! runs one async job per task (`runner`) that drives it through containerd.
//! Everything the API does is one call here.

mod cgroup;
mod error;
mod gpus;
mod host_task;
mod image_store;
mod jobs;
mod lifecycle;
mod lookups;
mod node_usage;
mod outcome;
mod recovery;
mod runner;
mod slots;
mod watch;

pub use error::Error;
pub use image_store::{ImageEntry, ImageGc, PrefetchState};
pub use jobs::JobStatus;
pub use lifecycle::{boot_id, NodeStateView};
pub use node_usage::NodeUsage;
pub use outcome::StopReason;
pub use recovery::Report as RecoveryReport;

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
    /// This boot of the machine (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
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
    /// One per task that was accepted and whose runner has not finished yet.
    stops: HashMap<TaskKey, StopSender>,
    /// No task is dispatched before recovery has re-attached (and counted the
    /// slots of) what the previous agent left running.
    recovered: bool,
}

/// Frees a runner's slots when it ends, also if it panics.
struct Release {
    sup: Supervisor,
    key: TaskKey,
    slots: u32,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.sup.shared.credentials.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        self.sup.shared.gpu_holds.release(&self.key);
        let mut sched = self.sup.sched();
        sched.slots.release(self.slots);
        sched.stops.remove(&self.key);
        self.sup.dispatch(&mut sched);
    }
}

struct Shared {
    settings: Settings,
    node: NodeFacts,
    layout: Layout,
    store: Store,
    runtime: Arc<dyn Runtime>,
    puller: Arc<dyn Pull>,
    /// Tasks' own registry credentials, in memory only (never in the database).
    credentials: Mutex<HashMap<TaskKey, Credentials>>,
    images: Mutex<image_store::ImagesState>,
    sched: Mutex<Sched>,
    /// containerd's `/tasks/exit` events, fanned out to the runners.
    exits: broadcast::Sender<ExitEvent>,
    /// containerd's version while it answers; None while it does not.
    containerd: tokio_watch::Sender<Option<String>>,
    /// What recovery found worth telling an operator (a rebuilt database, ...).
    notes: Mutex<Vec<String>>,
    /// containerd answered at least once (so answering again is a reconnect).
    ever_up: std::sync::atomic::AtomicBool,
    /// GPUs held by tasks that asked for specific ones.
    gpu_holds: gpus::GpuHolds,
    /// The scheduling switch, the start task and the jobs.
    life: Mutex<lifecycle::Life>,
    node_state: tokio_watch::Sender<NodeStateView>,
    /// Wakes `follow_node_state` (the switch or the start task changed).
    state_kick: tokio::sync::Notify,
    /// `follow_node_state` was started.
    following_state: std::sync::atomic::AtomicBool,
    /// Serialises accepting tasks with what decides whether they are
    /// accepted (the scheduling switch, the start task, job releases).
    admission: tokio::sync::Mutex<()>,
    /// When the node root and state directory were last checked, and why
    /// the node was unusable then (see `lifecycle`).
    disk_probe: Mutex<Option<(std::time::Instant, Option<String>)>>,
    /// The node's CPU counters (total, idle jiffies) at the last `GetNode`.
    cpu_sample: Mutex<Option<(u64, u64)>>,
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
        let exits = broadcast::channel(1024).0;
        let containerd = tokio_watch::channel(None).0;
        let shared = Shared {
            settings,
            node,
            layout,
            store,
            runtime,
            puller,
            credentials: Mutex::default(),
            images: Mutex::default(),
            sched: Mutex::new(sched),
            exits,
            containerd,
            notes: Mutex::default(),
            ever_up: Default::default(),
            gpu_holds: Default::default(),
            life: Mutex::default(),
            node_state: tokio_watch::channel(NodeStateView {
                state: crate::model::NodeState::Starting,
                reason: String::new(),
                scheduling_enabled: true,
            })
            .0,
            state_kick: Default::default(),
            following_state: Default::default(),
            admission: Default::default(),
            disk_probe: Default::default(),
            cpu_sample: Default::default(),
        };
        Self { shared: Arc::new(shared) }
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.shared.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a task before anything is created: ids (already typed), command
    /// line, run options, environment, image reference, slots.
    /// Start, preparation and release tasks may always run on the host; other
    /// tasks only if the policy allows it.
    fn check(&self, spec: &TaskSpec) -> Result<crate::spec::RunOptions, Error> {
        let special = spec.key.kind() != TaskKind::Task;
        match &spec.container {
            Some(container) => {
                images::normalize(&container.image)?;
            }
            None if !special && !self.shared.settings.policy.allow_host_tasks => {
                return Err(Error::Invalid {
                    field: "container",
                    reason: "container settings are required: this node's policy does not allow host tasks \
                             ([policy] allow_host_tasks)"
                        .into(),
                });
            }
            // Words, and a program to run: `''` or a lone line continuation
            // split into no program at all.
            None if shell_words::split(&spec.command_line).is_ok_and(|w| w.first().is_none_or(String::is_empty)) => {
                return Err(Error::Invalid {
                    field: "command_line",
                    reason:
                        "a task without container settings runs on the host and needs a command line naming a program \
                             (it splits into no words, or an empty first word)"
                            .into(),
                });
            }
            None => {}
        }
        let run_options = crate::spec::check_task(spec)?;
        let who = self.run_as(spec, 0)?;
        crate::spec::check_policy(&run_options, &self.shared.settings.policy, &who, self.shared.layout.root())?;
        self.devices_for(spec, &run_options)?;
        let total = self.shared.settings.task_slots;
        if special {
            return Ok(run_options);
        }
        if spec.required_slots == 0 || spec.required_slots > total {
            return Err(Error::Invalid {
                field: "required_slots",
                reason: format!("{} slots requested; this node has {total}", spec.required_slots),
            });
        }
        Ok(run_options)
    }

    /// The CDI devices a task gets, as (devices to inject now, GPUs to hold):
    /// the non-GPU devices it names and the RDMA devices (`inject_rdma`); on a
    /// GPU node every GPU, shared, when it asks for none (`inject_all_gpus`);
    /// else the GPUs of `--gpus` and those it names, held exclusively while it
    /// runs (see `gpus`), or shared with `share_gpus`. Unknown names and more
    /// GPUs than the node has are errors.
    pub(crate) fn devices_for(
        &self,
        spec: &TaskSpec,
        o: &crate::spec::RunOptions,
    ) -> Result<(Vec<String>, Option<gpus::Want>), Error> {
        let asked: Vec<String> = spec.container.as_ref().map(|c| c.devices.clone()).unwrap_or_default();
        let Some(reg) = &self.shared.settings.devices else {
            if asked.is_empty() && o.gpus.is_none() {
                return Ok((vec![], None));
            }
            return Err(Error::Invalid { field: "container.devices", reason: "this node has no CDI devices".into() });
        };
        reg.check(&asked).map_err(|e| Error::Invalid { field: "container.devices", reason: e.to_string() })?;
        let gpus = reg.gpus();
        let classes = &reg.config.gpu_classes;
        let is_gpu = |n: &String| n.split_once('=').is_some_and(|(k, _)| classes.iter().any(|c| c == k));
        let (named_gpus, mut names): (Vec<String>, Vec<String>) = asked.iter().cloned().partition(is_gpu);
        if let Some(req) = &o.gpus {
            crate::devices::gpus::select(req, &gpus)
                .map_err(|reason| Error::Spec(crate::spec::SpecError::RunOption { flag: "--gpus".into(), reason }))?;
        }
        let want = gpus::Want::of(o.gpus.as_ref(), named_gpus, &gpus);
        let want = match want {
            None if reg.config.inject_all_gpus => {
                names.extend(gpus.iter().cloned());
                None
            }
            // Shared: the first N, or the named ones, without holding them.
            Some(w) if reg.config.share_gpus => {
                names.extend(match w {
                    gpus::Want::Count(n) => gpus.iter().take(n).cloned().collect(),
                    gpus::Want::Named(v) => v,
                });
                None
            }
            w => w,
        };
        let rdma_kind = format!("{}=", crate::devices::rdma::KIND);
        if reg.config.inject_rdma && !asked.iter().any(|n| n.starts_with(&rdma_kind)) {
            names.extend(reg.rdma_all());
        }
        names.dedup();
        Ok((names, want))
    }

    /// Waits for the GPUs `want` asks for and holds them for `key`.
    pub(crate) async fn hold_gpus(&self, key: &TaskKey, want: &gpus::Want) -> Vec<String> {
        let all = self.shared.settings.devices.as_ref().map(|r| r.gpus()).unwrap_or_default();
        self.shared.gpu_holds.take(key, want, &all).await
    }

    /// The identity a task runs as; `ticket` picks a task-scope auto-user's uid.
    fn run_as(&self, spec: &TaskSpec, ticket: u64) -> Result<crate::model::RunAs, Error> {
        self.shared
            .settings
            .identities
            .resolve(&spec.user, ticket)
            .map_err(|e| Error::Invalid { field: "user", reason: e.to_string() })
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
        let run_options = self.check(&spec)?;
        lookups::check_host(&run_options, &self.shared.settings.policy).await?;
        // Held until the task is recorded: a scheduling switch or a job
        // release answered meanwhile sees it, or it sees them.
        let _admission = self.shared.admission.lock().await;
        self.check_accepting(&spec.key.job).await?;
        if let Some(prep) = job_preparation {
            self.configure_job_admitting(&spec.key.job, Some(prep), None).await?;
        }
        self.admit(spec).await
    }

    /// Records a start, preparation or release task and runs it at once (it
    /// needs no slot).
    async fn accept_special(&self, spec: TaskSpec) -> Result<TaskInfo, Error> {
        self.check(&spec)?;
        let mut spec = spec;
        spec.required_slots = 0;
        self.admit(spec).await
    }

    /// Records a checked task ACTIVE and queues it.
    async fn admit(&self, spec: TaskSpec) -> Result<TaskInfo, Error> {
        let creds = spec.container.as_ref().and_then(|c| c.credentials.clone());
        let task_scope = matches!(spec.user, UserIdentity::Auto { scope: AutoUserScope::Task, .. });
        let mut new = TaskInfo::new(spec, SystemTime::now());
        new.run_as = Some(self.run_as(&new.spec, 0)?);
        let mut info = self.shared.store.insert(new).await?;
        if task_scope {
            // Successive tasks get successive uids: the task's sequence number picks it.
            info.run_as = Some(self.run_as(&info.spec, info.sequence)?);
            self.shared.store.amend(info.clone()).await?;
        }
        if let Some(creds) = creds {
            self.shared.credentials.lock().unwrap_or_else(|p| p.into_inner()).insert(info.key().clone(), creds);
        }
        tracing::info!(job_id = %info.key().job, task_id = %info.key().task, kind = info.key().kind().as_str(),
            "task accepted");
        self.enqueue(info.key().clone(), info.spec.required_slots);
        Ok(info)
    }

    fn enqueue(&self, key: TaskKey, slots: u32) {
        let mut sched = self.sched();
        sched.slots.enqueue(key.clone(), slots);
        sched.stops.insert(key, tokio_watch::channel(None).0);
        self.dispatch(&mut sched);
    }

    /// Starts every queued task that fits in the free slots.
    fn dispatch(&self, sched: &mut Sched) {
        if !sched.recovered {
            return;
        }
        while let Some((key, slots)) = sched.slots.next_ready() {
            let stop = sched.stops.entry(key.clone()).or_insert_with(|| tokio_watch::channel(None).0).subscribe();
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

    pub async fn list_tasks(&self, job: Option<String>, state: Option<TaskState>) -> Result<Vec<TaskInfo>, Error> {
        Ok(self.shared.store.list(job, state).await?)
    }

    /// Stops a task. A task still waiting for a slot completes at once; a
    /// preparing or running one gets SIGTERM, then SIGKILL after `grace`.
    /// A completed task is returned unchanged.
    pub async fn terminate(&self, key: &TaskKey, grace: Option<Duration>) -> Result<TaskInfo, Error> {
        let info = self.get_task(key).await?;
        if info.state == TaskState::Completed {
            return Ok(info);
        }
        let task_timeout = crate::spec::check_task(&info.spec).ok().and_then(|o| o.stop_timeout);
        let grace = grace
            .or(task_timeout.map(|s| Duration::from_secs(s.into())))
            .unwrap_or(self.shared.settings.terminate_grace);
        let was_queued = {
            let mut sched = self.sched();
            let queued = sched.slots.remove_queued(key);
            if queued {
                sched.stops.remove(key);
                self.shared.credentials.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            } else if let Some(tx) = sched.stops.get(key) {
                tx.send_replace(Some(Stop { reason: StopReason::Terminated, grace }));
            } else if !sched.recovered {
                return Err(Error::Recovering);
            }
            queued
        };
        if was_queued {
            let mut info = self.get_task(key).await?;
            info.complete(None, Some(StopReason::Terminated.failure(" before it started")), SystemTime::now());
            return Ok(self.shared.store.update(info).await?);
        }
        tracing::info!(job_id = %key.job, task_id = %key.task, grace_ms = grace.as_millis() as u64, "terminating task");
        self.get_task(key).await
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
            let mut last = self.shared.cpu_sample.lock().unwrap_or_else(|p| p.into_inner());
            node_usage::usage(&mut last)
        };
        NodeStatus {
            usage,
            node: self.shared.node.clone(),
            slots_total: total,
            slots_free: free,
            containerd_version: self.shared.containerd.borrow().clone(),
            notes: {
                let mut notes = self.shared.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
        self.shared.containerd.subscribe()
    }

    /// Adds a note for operators, shown by `GetNode`.
    pub fn note(&self, note: String) {
        tracing::warn!(note = %note, "node note");
        self.shared.notes.lock().unwrap_or_else(|p| p.into_inner()).push(note);
    }

    /// Asks containerd for its version once: updates the reachability state.
    pub async fn check_containerd(&self) -> bool {
        let version = tokio::time::timeout(Duration::from_secs(2), self.shared.runtime.version()).await;
        let version = version.ok().and_then(Result::ok);
        let up = version.is_some();
        self.shared.containerd.send_if_modified(|cur| {
            if *cur == version {
                return false;
            }
            match (&*cur, &version) {
                (Some(_), None) => tracing::warn!("containerd is unreachable"),
                (None, Some(v)) => {
                    tracing::info!(version = %v, "containerd is reachable");
                    if self.shared.ever_up.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        crate::metrics::get().containerd_reconnects.inc();
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
        runner::save_durably(self, info).await
    }

    /// The credentials for a task's image: its own, else the node's for that registry.
    fn credentials_for(&self, key: &TaskKey, image: &str) -> Option<Credentials> {
        let own = self.shared.credentials.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        own.or_else(|| self.shared.puller.configured_credentials(image))
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
                                let _ = self.shared.exits.send(ev);
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
        if !self.shared.following_state.swap(true, std::sync::atomic::Ordering::Relaxed) {
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
        self.shared.state_kick.notify_one();
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
