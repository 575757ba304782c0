//! A task as the scheduler describes it (`TaskSpec`) and as the agent reports it
//! (`TaskInfo`). The semantics are those of `shared/design/SEMANTICS.md`.

use super::{FailureInfo, RunAs, TaskKey, UserIdentity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Task directories are kept this long after completion unless the task says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkingDirMode {
    /// Start in the task's working directory (same absolute path as on the host).
    #[default]
    TaskWorkingDir,
    /// Start in the image's WORKDIR (or `/`).
    ImageDefault,
}

/// When the image is pulled from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Only when the node does not have it.
    #[default]
    Missing,
    /// Every time (a tag may have moved).
    Always,
    /// Never: the image must be on the node.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    pub image: String,
    pub run_options: String,
    pub working_directory: WorkingDirMode,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// The task's own registry credentials (they win over the node's for this
    /// task). In memory only: never written to the state database.
    #[serde(skip)]
    pub credentials: Option<super::Credentials>,
    /// CDI devices asked for by name (`vendor.com/class=name`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Batch's `containerHostBatchBindMounts`. None: the whole node root,
    /// read-write; a list (maybe empty): exactly those directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mounts: Option<Vec<HostMount>>,
}

impl ContainerSettings {
    /// Whether the container gets `source` (every source when no list is given).
    pub fn mounts(&self, source: HostMountSource) -> bool {
        self.host_mounts.as_ref().is_none_or(|list| list.iter().any(|m| m.source == source))
    }
}

/// A node directory bound into a container at its host path (Batch's
/// `ContainerHostBatchBindMountEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMount {
    pub source: HostMountSource,
    pub read_only: bool,
}

/// Batch's `ContainerHostDataPath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HostMountSource {
    /// `shared/` (`AZ_BATCH_NODE_SHARED_DIR`).
    Shared,
    /// `startup/` (`AZ_BATCH_NODE_STARTUP_DIR`).
    Startup,
    /// `fsmounts/` (`AZ_BATCH_NODE_MOUNTS_DIR`).
    VfsMounts,
    /// The task's own directory (`AZ_BATCH_TASK_DIR`).
    Task,
    /// The job preparation task's directory (`AZ_BATCH_JOB_PREP_DIR`).
    JobPrep,
    /// `applications/` (`AZ_BATCH_APP_PACKAGE_*`), always read-only.
    Applications,
}

impl HostMountSource {
    pub const ALL: [Self; 6] =
        [Self::Shared, Self::Startup, Self::VfsMounts, Self::Task, Self::JobPrep, Self::Applications];

    /// Batch's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "Shared",
            Self::Startup => "Startup",
            Self::VfsMounts => "VfsMounts",
            Self::Task => "Task",
            Self::JobPrep => "JobPrep",
            Self::Applications => "Applications",
        }
    }

    /// Batch's spelling, any case.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskConstraints {
    pub max_wall_clock_time: Option<Duration>,
    pub retention_time: Option<Duration>,
    /// Batch's `maxTaskRetryCount`: 0 never, -1 without limit.
    #[serde(default)]
    pub max_task_retry_count: i32,
}

impl TaskConstraints {
    pub fn retention(&self) -> Duration {
        self.retention_time.unwrap_or(DEFAULT_RETENTION)
    }
}

/// A task as accepted from the scheduler (already validated: ids are safe, the
/// image is named, no reserved environment names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub key: TaskKey,
    pub command_line: String,
    pub container: Option<ContainerSettings>,
    pub environment: BTreeMap<String, String>,
    /// Records written before identities existed hold `{uid, gid}` here; they read as the default.
    #[serde(default, deserialize_with = "identity_or_default")]
    pub user: UserIdentity,
    pub constraints: TaskConstraints,
    pub required_slots: u32,
    /// Resource files and output files (their URLs' queries are not stored).
    #[serde(default, skip_serializing_if = "super::Staging::is_empty")]
    pub staging: super::Staging,
}

fn identity_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<UserIdentity, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Active,
    Preparing,
    Running,
    Completed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "ACTIVE",
            TaskState::Preparing => "PREPARING",
            TaskState::Running => "RUNNING",
            TaskState::Completed => "COMPLETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Preparing, Self::Running, Self::Completed]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskResult {
    Success,
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub container_id: String,
    pub state: String,
    pub error: String,
    /// A bridge task's address on the node's bridge.
    #[serde(default)]
    pub ip_address: String,
}

/// What a task's processes used, from its cgroup (Batch's `TaskStatistics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub user_cpu: Duration,
    pub kernel_cpu: Duration,
    pub wall_clock: Duration,
    pub peak_memory_bytes: u64,
    /// In use now (live figures only).
    pub memory_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// Everything the agent reports about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub spec: TaskSpec,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub result: Option<TaskResult>,
    pub failure: Option<FailureInfo>,
    pub container: Option<ContainerInfo>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub completed_at: Option<SystemTime>,
    /// Sequence number of this task's last state change.
    pub sequence: u64,
    /// Set once the task's process was started, so a restart never starts it again.
    pub ever_started: bool,
    /// How many containers were made for the task (more than one only when an
    /// agent crash interrupted creating one).
    #[serde(default)]
    pub attempt: u32,
    /// The identity the task runs as, resolved when it was accepted.
    #[serde(default)]
    pub run_as: Option<RunAs>,
    /// GPUs (CDI names) the task holds exclusively while it runs.
    #[serde(default)]
    pub held_gpus: Vec<String>,
    /// What it used, read from its cgroup when it completed.
    #[serde(default)]
    pub stats: Option<TaskStats>,
    /// Set while its output files upload (its process has exited; the exit
    /// code and failure are recorded): the uploads already done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<Uploads>,
    /// Attempts that ended and were retried.
    #[serde(default)]
    pub retry_count: u32,
    /// Times it was queued again because the node rebooted while it ran.
    #[serde(default)]
    pub requeue_count: u32,
    #[serde(default)]
    pub last_retry_at: Option<SystemTime>,
    #[serde(default)]
    pub last_requeue_at: Option<SystemTime>,
    /// How the attempt before this one ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attempt: Option<AttemptResult>,
}

/// How one attempt of a retried task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub exit_code: Option<i32>,
    pub failure: Option<FailureInfo>,
    pub ended_at: SystemTime,
}

/// The output files uploaded so far, by `<output index>:<blob name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploads {
    pub done: Vec<String>,
}

impl TaskInfo {
    pub fn new(spec: TaskSpec, now: SystemTime) -> Self {
        Self {
            spec,
            state: TaskState::Active,
            exit_code: None,
            result: None,
            failure: None,
            container: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            sequence: 0,
            ever_started: false,
            attempt: 0,
            run_as: None,
            held_gpus: Vec::new(),
            stats: None,
            uploads: None,
            retry_count: 0,
            requeue_count: 0,
            last_retry_at: None,
            last_requeue_at: None,
            previous_attempt: None,
        }
    }

    /// The id of the task's current container.
    pub fn container_id(&self) -> String {
        self.spec.key.container_id_for(self.attempt)
    }

    pub fn key(&self) -> &TaskKey {
        &self.spec.key
    }

    /// Marks the task completed with an exit code (if the process ran) and a
    /// failure (if any). The result follows: success only for exit code 0 and no failure.
    pub fn complete(&mut self, exit_code: Option<i32>, failure: Option<FailureInfo>, now: SystemTime) {
        self.state = TaskState::Completed;
        self.exit_code = exit_code;
        self.result =
            Some(if failure.is_none() && exit_code == Some(0) { TaskResult::Success } else { TaskResult::Failure });
        self.failure = failure;
        self.completed_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            key: TaskKey::new("j", "t").unwrap(),
            command_line: String::new(),
            container: None,
            environment: BTreeMap::new(),
            user: UserIdentity::default(),
            constraints: TaskConstraints::default(),
            required_slots: 1,
            staging: Default::default(),
        }
    }

    #[test]
    fn result_follows_exit_code_and_failure() {
        let now = SystemTime::now();
        let mut t = TaskInfo::new(spec(), now);
        t.complete(Some(0), None, now);
        assert_eq!(t.result, Some(TaskResult::Success));
        t.complete(Some(3), None, now);
        assert_eq!(t.result, Some(TaskResult::Failure));
        t.complete(None, Some(FailureInfo::new(crate::model::FailureCode::ImageNotFound, "x")), now);
        assert_eq!(t.result, Some(TaskResult::Failure));
        assert_eq!(t.state, TaskState::Completed);
    }

    #[test]
    fn state_names_round_trip() {
        for s in [TaskState::Active, TaskState::Preparing, TaskState::Running, TaskState::Completed] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert_eq!(TaskState::parse(&s.as_str().to_lowercase()), Some(s));
        }
        assert_eq!(TaskState::parse("done"), None);
    }

    #[test]
    fn retention_defaults_to_seven_days() {
        assert_eq!(TaskConstraints::default().retention(), DEFAULT_RETENTION);
    }
}
