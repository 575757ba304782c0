//! Job and task ids. They become directory names under the node root and part of
//! containerd labels, so only the Azure Batch id alphabet is accepted: 1 to 64
//! ASCII letters, digits, '-' and '_'. That rules out '/', '..', NUL and any
//! other way to leave the node root.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Longest accepted id, as in Azure Batch.
pub(super) const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} id \"{shown}\" has a character other than ASCII letters, digits, '-' and '_'")]
    BadCharacter { kind: &'static str, shown: String },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        // Escape control characters (NUL) so the message stays printable.
        let shown: String = s.chars().take(MAX_ID_LEN).flat_map(char::escape_default).collect();
        return Err(IdError::BadCharacter { kind, shown });
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            /// Records read back from the state database may also hold the
            /// agent's own reserved id (the start task's job), which `new` refuses.
            fn try_from(s: String) -> Result<Self, IdError> {
                if s == NODE_JOB {
                    return Ok(Self(s));
                }
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(JobId, "job");
id_type!(TaskId, "task");

/// The job of the node's start task. '@' is outside the id alphabet, so no
/// scheduler job can take it.
pub const NODE_JOB: &str = "@node";
/// The start task's id (under [`NODE_JOB`]).
pub const START_TASK: &str = "starttask";
/// The id of a job's preparation task, as in Azure Batch; no task may take it.
pub const JOB_PREPARATION: &str = "jobpreparation";
/// The id of a job's release task.
pub const JOB_RELEASE: &str = "jobrelease";

/// What a task record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// A task of a job, placed by the scheduler.
    Task,
    /// The node's start task.
    StartTask,
    /// A job's preparation task: once per job per node, before its tasks.
    JobPreparation,
    /// A job's release task: when the job is released from the node.
    JobRelease,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Task => "TASK",
            TaskKind::StartTask => "START_TASK",
            TaskKind::JobPreparation => "JOB_PREPARATION",
            TaskKind::JobRelease => "JOB_RELEASE",
        }
    }
}

/// A task's address on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub job: JobId,
    pub task: TaskId,
}

impl TaskKey {
    pub fn new(job: &str, task: &str) -> Result<Self, IdError> {
        Ok(Self { job: JobId::new(job)?, task: TaskId::new(task)? })
    }

    /// The start task's key.
    pub fn start_task() -> Self {
        Self { job: JobId(NODE_JOB.into()), task: TaskId(START_TASK.into()) }
    }

    /// A job's preparation task.
    pub fn job_preparation(job: &JobId) -> Self {
        Self { job: job.clone(), task: TaskId(JOB_PREPARATION.into()) }
    }

    /// A job's release task.
    pub fn job_release(job: &JobId) -> Self {
        Self { job: job.clone(), task: TaskId(JOB_RELEASE.into()) }
    }

    /// An existing task's key as the scheduler names it: like `new`, and the
    /// start task as `@node/starttask`.
    pub fn address(job: &str, task: &str) -> Result<Self, IdError> {
        if job == NODE_JOB && task == START_TASK {
            return Ok(Self::start_task());
        }
        Self::new(job, task)
    }

    pub fn kind(&self) -> TaskKind {
        if self.job.as_str() == NODE_JOB {
            return TaskKind::StartTask;
        }
        match self.task.as_str() {
            JOB_PREPARATION => TaskKind::JobPreparation,
            JOB_RELEASE => TaskKind::JobRelease,
            _ => TaskKind::Task,
        }
    }

    /// The containerd container id of this task: deterministic, so that after a
    /// crash the agent finds what it created. Job and task ids together can be
    /// longer than containerd accepts (76 characters), hence the hash.
    pub fn container_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.job.as_str());
        h.update([0u8]);
        h.update(self.task.as_str());
        format!("berth-{}", &hex::encode(h.finalize())[..32])
    }

    /// The container id of the task's `attempt`-th container. A fresh id per
    /// attempt: containerd 1.6 cannot reuse an id whose shim start was cut short
    /// (its bundle directory stays until containerd restarts).
    pub fn container_id_for(&self, attempt: u32) -> String {
        match attempt {
            0 | 1 => self.container_id(),
            n => format!("{}-{n}", self.container_id()),
        }
    }

    /// The attempt a container id of this task stands for, if it is one.
    pub fn attempt_of(&self, container_id: &str) -> Option<u32> {
        let base = self.container_id();
        match container_id.strip_prefix(&base)? {
            "" => Some(1),
            rest => rest.strip_prefix('-')?.parse().ok().filter(|n| *n > 1),
        }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_batch_ids() {
        for ok in ["a", "job-1", "Task_07", &"x".repeat(64)] {
            assert!(TaskId::new(ok).is_ok(), "{ok}");
        }
    }

    type Check = fn(&IdError) -> bool;

    #[test]
    fn refuses_unsafe_ids() {
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, IdError::Empty { .. })),
            ("a/b", |e| matches!(e, IdError::BadCharacter { .. })),
            ("..", |e| matches!(e, IdError::BadCharacter { .. })),
            ("a\0b", |e| matches!(e, IdError::BadCharacter { .. })),
            ("a b", |e| matches!(e, IdError::BadCharacter { .. })),
            ("é", |e| matches!(e, IdError::BadCharacter { .. })),
            (&"x".repeat(65), |e| matches!(e, IdError::TooLong { len: 65, .. })),
        ];
        for (id, want) in cases {
            let err = JobId::new(*id).expect_err(id);
            assert!(want(&err), "{id:?}: {err}");
        }
    }

    #[test]
    fn nul_is_escaped_in_message() {
        let err = TaskId::new("a\0b").unwrap_err().to_string();
        assert!(err.contains("a\\u{0}b"), "{err}");
        assert!(err.starts_with("task id"));
    }

    #[test]
    fn container_id_is_stable_and_valid() {
        let k = TaskKey::new("job", "task").unwrap();
        assert_eq!(k.container_id(), k.clone().container_id());
        assert_eq!(k.container_id().len(), 38);
        // "ab"+"c" and "a"+"bc" must not collide.
        let a = TaskKey::new("ab", "c").unwrap();
        let b = TaskKey::new("a", "bc").unwrap();
        assert_ne!(a.container_id(), b.container_id());
    }

    #[test]
    fn attempts_have_their_own_ids() {
        let k = TaskKey::new("job", "task").unwrap();
        assert_eq!(k.container_id_for(1), k.container_id());
        assert_eq!(k.container_id_for(3), format!("{}-3", k.container_id()));
        for n in [1, 2, 17] {
            assert_eq!(k.attempt_of(&k.container_id_for(n)), Some(n));
        }
        assert_eq!(k.attempt_of("berth-other"), None);
        assert_eq!(k.attempt_of(&format!("{}-x", k.container_id())), None);
        assert_eq!(k.attempt_of(&format!("{}-1", k.container_id())), None);
    }

    #[test]
    fn reserved_keys() {
        assert!(JobId::new(NODE_JOB).is_err());
        let start = TaskKey::address(NODE_JOB, START_TASK).unwrap();
        assert_eq!(start, TaskKey::start_task());
        assert_eq!(start.kind(), TaskKind::StartTask);
        assert!(TaskKey::address(NODE_JOB, "other").is_err());
        let back: TaskKey = serde_json::from_str(&serde_json::to_string(&start).unwrap()).unwrap();
        assert_eq!(back, start);
        let job = JobId::new("j").unwrap();
        assert_eq!(TaskKey::job_preparation(&job).kind(), TaskKind::JobPreparation);
        assert_eq!(TaskKey::job_release(&job).kind(), TaskKind::JobRelease);
        assert_eq!(TaskKey::new("j", "t").unwrap().kind(), TaskKind::Task);
        assert_ne!(start.container_id(), TaskKey::new("node", START_TASK).unwrap().container_id());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<JobId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
    }
}
