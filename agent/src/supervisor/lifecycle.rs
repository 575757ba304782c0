//! The node's lifecycle: its state (see `model::node_state`), the scheduling
//! switch, and the start task. The switch and the start task's configuration
//! are kept in the state database, so they survive an agent restart.

use super::{Error, Supervisor};
use crate::model::{
    node_state, JobConfig, JobId, NodeState, StartTaskConfig, StateInputs, TaskInfo, TaskKey, TaskSpec, TaskState,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

const SCHEDULING: &str = "scheduling_enabled";
const START_TASK: &str = "start_task";

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
    pub scheduling_enabled: bool,
    pub start_task: Option<StartTaskConfig>,
    pub jobs: HashMap<JobId, JobConfig>,
}

impl Default for Life {
    fn default() -> Self {
        Self { scheduling_enabled: true, start_task: None, jobs: HashMap::new() }
    }
}

/// This boot of the machine, to tell an agent restart from a reboot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

impl Supervisor {
    pub(super) fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.shared.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the switch, the start task and the jobs from the database.
    pub(super) async fn load_lifecycle(&self) -> Result<(), Error> {
        let enabled: Option<bool> = self.shared.store.setting(SCHEDULING).await?;
        let start: Option<StartTaskConfig> = self.shared.store.setting(START_TASK).await?;
        {
            let mut life = self.life();
            life.scheduling_enabled = enabled.unwrap_or(true);
            life.start_task = start;
        }
        self.load_jobs().await
    }

    /// Why the node cannot run tasks, if it cannot.
    async fn unusable_reason(&self) -> Option<String> {
        if self.shared.containerd.borrow().is_none() {
            return Some("containerd is unreachable".into());
        }
        let root = self.shared.layout.root().to_owned();
        let min_free = self.shared.settings.min_free_bytes;
        tokio::task::spawn_blocking(move || {
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
            nix::unistd::access(&root, nix::unistd::AccessFlags::W_OK)
                .err()
                .map(|e| format!("the node root {shown} is not writable: {e}"))
        })
        .await
        .unwrap_or(None)
    }

    /// What the state is computed from; `disk`: also look at containerd and
    /// the node root (UNUSABLE), which does not decide whether tasks are taken.
    async fn state_inputs(&self, disk: bool) -> StateInputs {
        let (recovered, busy) = {
            let sched = self.sched();
            (sched.recovered, sched.slots.busy())
        };
        let (scheduling_enabled, wait) = {
            let life = self.life();
            (life.scheduling_enabled, life.start_task.as_ref().map(|c| c.wait_for_success))
        };
        let record = match wait {
            Some(_) => self.shared.store.get(&TaskKey::start_task()).await.ok().flatten(),
            None => None,
        };
        StateInputs {
            recovered,
            unusable: if disk { self.unusable_reason().await } else { None },
            start_task: wait.zip(record.as_ref()).map(|(w, t)| (w, t.state, t.result)),
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
        self.shared.node_state.send_if_modified(|cur| {
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
        self.shared.node_state.subscribe()
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
                _ = self.shared.state_kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Refuses a new task while the node does not take tasks, or its job was released.
    /// Computed afresh (a start task configured a moment ago counts), without
    /// the disk and containerd checks (an unusable node still takes tasks).
    pub(super) async fn check_accepting(&self, job: &JobId) -> Result<(), Error> {
        let (state, reason) = node_state(&self.state_inputs(false).await);
        if !state.takes_tasks() {
            return Err(Error::NotAccepting { state, reason });
        }
        self.check_job_open(job)
    }

    /// `SetNodeScheduling`.
    pub async fn set_scheduling(&self, enabled: bool) -> Result<NodeStateView, Error> {
        self.shared.store.put_setting(SCHEDULING, Some(&enabled)).await?;
        self.life().scheduling_enabled = enabled;
        tracing::info!(enabled, "task scheduling switched");
        Ok(self.refresh_state().await)
    }

    /// The start task's configuration and record.
    pub async fn start_task(&self) -> Option<(StartTaskConfig, Option<TaskInfo>)> {
        let config = self.life().start_task.clone()?;
        let record = self.shared.store.get(&TaskKey::start_task()).await.ok().flatten();
        Some((config, record))
    }

    /// Waits until no runner handles `key` (a completed task's cleanup is done).
    async fn runner_gone(&self, key: &TaskKey) {
        while self.sched().stops.contains_key(key) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets the start task and runs it. Refused while the current one runs.
    pub async fn configure_start_task(&self, spec: TaskSpec, wait_for_success: bool) -> Result<TaskInfo, Error> {
        self.check(&spec)?;
        let key = TaskKey::start_task();
        if let Some(old) = self.shared.store.get(&key).await? {
            if old.state != TaskState::Completed {
                return Err(Error::Precondition {
                    reason: "the start task is still running; terminate it first (task @node/starttask)".into(),
                });
            }
            self.runner_gone(&key).await;
            self.shared.store.delete(&key).await?;
        }
        let config =
            StartTaskConfig { spec: spec.clone(), wait_for_success, boot_id: self.shared.settings.boot_id.clone() };
        self.shared.store.put_setting(START_TASK, Some(&config)).await?;
        self.life().start_task = Some(config);
        let info = self.accept_special(spec).await?;
        tracing::info!(wait_for_success, "start task configured");
        self.shared.state_kick.notify_one();
        Ok(info)
    }

    /// After recovery, in a new boot of the machine: runs the start task again
    /// (once what recovery found of its last run is recorded).
    pub(super) async fn rerun_start_task_after_reboot(&self) {
        let settings = &self.shared.settings;
        let Some(mut config) = self.life().start_task.clone() else { return };
        if !settings.rerun_start_task_after_reboot || settings.boot_id.is_empty() || config.boot_id == settings.boot_id
        {
            return;
        }
        let key = TaskKey::start_task();
        self.runner_gone(&key).await;
        match self.shared.store.get(&key).await {
            Ok(Some(t)) if t.state == TaskState::Completed => {
                if let Err(e) = self.shared.store.delete(&key).await {
                    tracing::error!(error = %e, "cannot rerun the start task");
                    return;
                }
            }
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot rerun the start task");
                return;
            }
        }
        config.boot_id = settings.boot_id.clone();
        if let Err(e) = self.shared.store.put_setting(START_TASK, Some(&config)).await {
            tracing::error!(error = %e, "cannot record the start task's new boot");
        }
        self.life().start_task = Some(config.clone());
        match self.accept_special(config.spec).await {
            Ok(_) => tracing::info!("the machine rebooted: start task run again"),
            Err(e) => tracing::error!(error = %e, "cannot rerun the start task"),
        }
        self.shared.state_kick.notify_one();
    }
}
