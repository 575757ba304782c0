//! The node's lifecycle: its state (see `model::node_state`), the scheduling
//! switch, and the start task. The switch and the start task's configuration
//! are kept in the state database, so they survive an agent restart.

use super::jobs::Gate;
use super::{Error, Stop, Supervisor};
use crate::model::{
    node_state, FailureCode, FailureInfo, JobConfig, JobId, NodeState, StartTaskConfig, StateInputs, TaskInfo, TaskKey,
    TaskResult, TaskSpec, TaskState,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

const SCHEDULING: &str = "scheduling_enabled";
const START_TASK: &str = "start_task";
/// How long the node root's and state directory's checks stand.
const DISK_PROBE_EVERY: Duration = Duration::from_secs(4);

/// The node's state as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStateView {
    pub state: NodeState,
    pub reason: String,
    pub scheduling_enabled: bool,
}

/// What the lifecycle keeps in memory (loaded from the database at start-up).
#[derive(Debug)]
pub(super) struct Life {
    /// Loaded from the database: until then no task is accepted (the switch,
    /// the start task and released jobs are not known yet).
    pub loaded: bool,
    pub scheduling_enabled: bool,
    pub start_task: Option<StartTaskConfig>,
    /// The start task is to run (again) once recovery is done: the machine
    /// rebooted, or it is configured without a record. Until it has been
    /// accepted anew, no old record counts as a success.
    pub start_task_rerun_pending: bool,
    pub jobs: HashMap<JobId, JobConfig>,
}

impl Default for Life {
    fn default() -> Self {
        Self {
            loaded: false,
            scheduling_enabled: true,
            start_task: None,
            start_task_rerun_pending: false,
            jobs: HashMap::new(),
        }
    }
}

/// This boot of the machine, to tell an agent restart from a reboot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Writes to an unnamed file in `dir` (`O_TMPFILE`; gone when closed): the
/// agent is root, so permission bits say nothing, but a read-only or failing
/// file system, or one out of space or inodes, refuses the write.
fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp =
        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).mode(0o600).open(dir);
    let mut file = match tmp {
        Ok(f) => f,
        // A file system without O_TMPFILE: a named file, removed at once.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let path = dir.join(format!(".berth-write-probe-{}", std::process::id()));
            let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path);
            let _ = std::fs::remove_file(&path);
            f?
        }
        Err(e) => return Err(e),
    };
    file.write_all(b"berth")
}

impl Supervisor {
    pub(super) fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.shared.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the switch, the start task and the jobs from the database (once:
    /// before the API serves, so that no task slips past them).
    pub async fn load_lifecycle(&self) -> Result<(), Error> {
        if self.life().loaded {
            return Ok(());
        }
        let enabled: Option<bool> = self.shared.store.setting(SCHEDULING).await?;
        let start: Option<StartTaskConfig> = self.shared.store.setting(START_TASK).await?;
        let jobs = self.read_jobs().await?;
        self.load_packages().await?;
        let record = match start {
            Some(_) => self.shared.store.get(&TaskKey::start_task()).await?,
            None => None,
        };
        let settings = &self.shared.settings;
        let mut life = self.life();
        // A new boot, or a configured start task without a record: it is run
        // (again) once recovery is done, and does not count as a success until then.
        life.start_task_rerun_pending = start.as_ref().is_some_and(|c| {
            let rebooted =
                settings.rerun_start_task_after_reboot && !settings.boot_id.is_empty() && c.boot_id != settings.boot_id;
            rebooted || record.is_none()
        });
        life.scheduling_enabled = enabled.unwrap_or(true);
        life.start_task = start;
        life.jobs = jobs;
        life.loaded = true;
        Ok(())
    }

    /// Why the node cannot run tasks, if it cannot.
    async fn unusable_reason(&self) -> Option<String> {
        if self.shared.link.version.borrow().is_none() {
            return Some("containerd is unreachable".into());
        }
        // The file system checks (statvfs, a write in two places) are made at
        // most every few seconds, however often the state is asked for.
        if let Some((at, why)) = self.shared.status.disk_probe.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < DISK_PROBE_EVERY {
                return why.clone();
            }
        }
        let root = self.shared.layout.root().to_owned();
        let min_free = self.shared.settings.min_free_bytes;
        let state = self.shared.settings.host.agent_state_dir().to_owned();
        let why = tokio::task::spawn_blocking(move || {
            use nix::sys::statvfs::{statvfs, FsFlags};
            let shown = root.display();
            match statvfs(&root) {
                Err(e) => return Some(format!("the node root {shown} cannot be reached: {e}")),
                Ok(st) if st.flags().contains(FsFlags::ST_RDONLY) => {
                    return Some(format!("the node root {shown} is on a read-only file system"));
                }
                Ok(_) if super::disk_space(&root).is_some_and(|(free, _)| free < min_free) => {
                    return Some(format!("the node root {shown} has less than {} MiB free", min_free >> 20));
                }
                Ok(_) => {}
            }
            for (what, dir) in [("the node root", root.as_path()), ("the agent's state directory", state.as_path())] {
                if let Err(e) = probe_write(dir) {
                    return Some(format!("{what} {} is not writable: {e}", dir.display()));
                }
            }
            None
        })
        .await
        .unwrap_or(None);
        *self.shared.status.disk_probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), why.clone()));
        why
    }

    /// What the state is computed from; `disk`: also look at containerd and
    /// the node root (UNUSABLE), which does not decide whether tasks are taken.
    async fn state_inputs(&self, disk: bool) -> StateInputs {
        let (recovered, busy) = {
            let sched = self.sched();
            (sched.recovered, sched.slots.busy())
        };
        let (scheduling_enabled, wait, pending) = {
            let life = self.life();
            (
                life.scheduling_enabled,
                life.start_task.as_ref().map(|c| c.wait_for_success),
                life.start_task_rerun_pending,
            )
        };
        let record = match wait {
            Some(_) if !pending => self.shared.store.get(&TaskKey::start_task()).await.ok().flatten(),
            _ => None,
        };
        // A configured start task without a record (being replaced, or to run
        // again after a reboot) has not succeeded yet.
        let start_task = wait.map(|w| match &record {
            Some(t) => (w, t.state, t.result),
            None => (w, TaskState::Active, None),
        });
        StateInputs {
            recovered,
            unusable: if disk { self.unusable_reason().await } else { None },
            start_task,
            start_task_failure: record.and_then(|t| t.failure).map(|f| format!("{}: {}", f.code, f.message)),
            scheduling_enabled,
            busy,
        }
    }

    /// Computes the node's state now and tells watchers if it changed.
    pub async fn refresh_state(&self) -> NodeStateView {
        let inputs = self.state_inputs(true).await;
        let (state, reason) = node_state(&inputs);
        let view = NodeStateView { state, reason, scheduling_enabled: inputs.scheduling_enabled };
        self.shared.status.view.send_if_modified(|cur| {
            if *cur == view {
                return false;
            }
            tracing::info!(state = view.state.as_str(), reason = %view.reason, "node state");
            *cur = view.clone();
            true
        });
        view
    }

    /// The node's state, and every change.
    pub fn watch_node(&self) -> watch::Receiver<NodeStateView> {
        self.shared.status.view.subscribe()
    }

    /// Keeps the node's state current for the agent's life: after every task
    /// change, containerd reachability change or switch, and every few seconds
    /// (disk space).
    pub async fn follow_node_state(&self) {
        let mut feed = self.shared.store.subscribe();
        let mut containerd = self.containerd_status();
        loop {
            self.refresh_state().await;
            tokio::select! {
                _ = feed.recv() => {}
                _ = containerd.changed() => {}
                _ = self.shared.status.kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Refuses a new task while the node does not take tasks, or its job was released.
    /// Computed afresh (a start task configured a moment ago counts), without
    /// the disk and containerd checks (an unusable node still takes tasks),
    /// and also while the agent is still re-attaching (STARTING: the tasks
    /// it accepts then wait for recovery, but the switch and the start task
    /// apply to them as to any other).
    pub(super) async fn check_accepting(&self, job: &JobId) -> Result<(), Error> {
        if !self.life().loaded {
            return Err(Error::Recovering);
        }
        let inputs = StateInputs { recovered: true, ..self.state_inputs(false).await };
        let (state, reason) = node_state(&inputs);
        if !state.takes_tasks() {
            return Err(Error::NotAccepting { state, reason });
        }
        self.check_job_open(job)
    }

    /// Before a task of a job is prepared: waits while the node's start task
    /// (with `wait_for_success`) has not succeeded, and fails the task if it
    /// failed. Tasks accepted before such a start task was configured, or
    /// queued across a reboot, wait here rather than run on an unprepared node.
    pub(super) async fn await_start_task(&self, stop: &mut watch::Receiver<Option<Stop>>) -> Result<(), Gate> {
        let mut feed = self.shared.store.subscribe();
        loop {
            let inputs = self.state_inputs(false).await;
            match inputs.start_task {
                None | Some((false, ..)) | Some((true, TaskState::Completed, Some(TaskResult::Success))) => {
                    return Ok(())
                }
                Some((true, TaskState::Completed, _)) => {
                    let why = inputs.start_task_failure.unwrap_or_default();
                    return Err(Gate::Failed(FailureInfo::new(
                        FailureCode::StartTaskFailed,
                        format!("the node's start task failed ({why}); this task did not run"),
                    )));
                }
                Some(_) => {}
            }
            // Until some record changes (or a second: a rerun may be pending).
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(1), feed.recv()) => {}
                s = super::stop::stopped(stop) => return Err(Gate::Stopped(s)),
            }
        }
    }

    /// `SetNodeScheduling`.
    pub async fn set_scheduling(&self, enabled: bool) -> Result<NodeStateView, Error> {
        let admission = self.shared.admission.lock().await;
        self.shared.store.put_setting(SCHEDULING, Some(&enabled)).await?;
        self.life().scheduling_enabled = enabled;
        drop(admission);
        tracing::info!(enabled, "task scheduling switched");
        Ok(self.refresh_state().await)
    }

    /// The start task's configuration and record.
    pub async fn start_task(&self) -> Option<(StartTaskConfig, Option<TaskInfo>)> {
        let config = self.life().start_task.clone()?;
        let record = self.shared.store.get(&TaskKey::start_task()).await.ok().flatten();
        Some((config, record))
    }

    /// Waits until no runner handles `key` (a completed task's cleanup is
    /// done): `Busy` after 10 s (containerd may be wedged).
    pub(super) async fn runner_gone(&self, key: &TaskKey) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.sched().stops.contains_key(key) {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Busy { key: key.clone() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Sets the start task and runs it. Refused while the current one runs.
    pub async fn configure_start_task(&self, spec: TaskSpec, wait_for_success: bool) -> Result<TaskInfo, Error> {
        self.admit_check(&spec, 0)?;
        let _admission = self.shared.admission.lock().await;
        let key = TaskKey::start_task();
        if let Some(old) = self.shared.store.get(&key).await? {
            if old.state != TaskState::Completed {
                return Err(Error::Precondition {
                    reason: "the start task is still running; terminate it first (task @node/starttask)".into(),
                });
            }
            self.runner_gone(&key).await?;
            self.shared.store.delete(&key).await?;
        }
        let config =
            StartTaskConfig { spec: spec.clone(), wait_for_success, boot_id: self.shared.settings.boot_id.clone() };
        self.keep_queries(&spec)?;
        self.shared.store.put_setting(START_TASK, Some(&config)).await?;
        {
            let mut life = self.life();
            life.start_task = Some(config);
            life.start_task_rerun_pending = false;
        }
        let info = self.accept_start_task(spec).await?;
        tracing::info!(wait_for_success, "start task configured");
        self.shared.status.kick.notify_one();
        Ok(info)
    }

    /// Accepts the configured start task; if that fails, a failed record says
    /// why, so that the node is START_TASK_FAILED rather than waiting for a
    /// start task that will never run.
    async fn accept_start_task(&self, spec: TaskSpec) -> Result<TaskInfo, Error> {
        let e = match self.accept_special(spec.clone()).await {
            Ok(info) => return Ok(info),
            Err(e) => e,
        };
        let message = format!("the start task could not be accepted: {e}");
        let mut info = TaskInfo::new(TaskSpec { required_slots: 0, ..spec }, std::time::SystemTime::now());
        info.complete(
            None,
            Some(FailureInfo::new(FailureCode::StartTaskFailed, message)),
            std::time::SystemTime::now(),
        );
        if let Err(e) = self.shared.store.insert(info).await {
            tracing::error!(error = %e, "cannot record the start task's failure");
        }
        Err(e)
    }

    /// After recovery: runs the start task again in a new boot of the machine,
    /// or if it is configured but has no record (an agent that stopped between
    /// configuring and accepting it).
    pub(super) async fn rerun_start_task_after_reboot(&self) {
        if !self.life().start_task_rerun_pending {
            return;
        }
        let _admission = self.shared.admission.lock().await;
        let rerun = self.rerun_start_task().await;
        self.life().start_task_rerun_pending = false;
        match rerun {
            Ok(true) => tracing::info!("start task run again (a new boot, or it had no record)"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot run the start task again"),
        }
        self.shared.status.kick.notify_one();
    }

    /// Replaces the start task's record of an earlier boot by a new run, or
    /// makes the missing one; false when there was nothing to run.
    async fn rerun_start_task(&self) -> Result<bool, Error> {
        let Some(mut config) = self.life().start_task.clone() else { return Ok(false) };
        let key = TaskKey::start_task();
        let boot = self.shared.settings.boot_id.clone();
        let rebooted = self.shared.settings.rerun_start_task_after_reboot && config.boot_id != boot;
        match self.shared.store.get(&key).await? {
            None => {}
            Some(_) if !rebooted => return Ok(false),
            // Accepted but never started before the reboot: that run, now, is this boot's.
            Some(t) if t.state != TaskState::Completed && !t.ever_started => {
                config.boot_id = boot;
                self.shared.store.put_setting(START_TASK, Some(&config)).await?;
                self.life().start_task = Some(config);
                return Ok(false);
            }
            // It ran before the reboot (recovery completes it, lost with the
            // machine, if it was running).
            Some(_) => {
                self.runner_gone(&key).await?;
                self.shared.store.delete(&key).await?;
            }
        }
        // The new boot is recorded whatever follows: a later restart in this
        // boot does not run it again.
        config.boot_id = boot;
        self.shared.store.put_setting(START_TASK, Some(&config)).await?;
        self.life().start_task = Some(config.clone());
        self.accept_start_task(config.spec).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::probe_write;

    #[test]
    fn write_probe_leaves_nothing_and_fails_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        probe_write(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(probe_write(&dir.path().join("missing")).is_err());
        // A file, not a directory.
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(probe_write(&dir.path().join("f")).is_err());
    }
}
