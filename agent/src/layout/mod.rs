//! The node's directory layout (Azure Batch names, see SEMANTICS.md):
//!
//! ```text
//! <root>/shared/  startup/wd/  applications/  fsmounts/
//! <root>/workitems/<job>/job-1/<task>/{stdout.txt,stderr.txt,wd/}
//! <root>/workitems/<job>/job-1/jobpreparation/
//! ```
//!
//! Path computation is pure ([`Layout`], [`TaskPaths`]); the functions that touch
//! the filesystem are in [`fs`].

mod fs;

pub use fs::{LayoutError, TaskFiles};

use crate::model::{JobId, TaskKey, TaskKind};
use std::path::{Path, PathBuf};

/// The node root and everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

/// The directories of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPaths {
    /// `AZ_BATCH_TASK_DIR`.
    pub task_dir: PathBuf,
    /// `AZ_BATCH_TASK_WORKING_DIR`.
    pub working_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// `AZ_BATCH_JOB_PREP_DIR`.
    pub job_prep_dir: PathBuf,
    /// `AZ_BATCH_CERTIFICATES_DIR`: `certs/` in the task directory, the task's own.
    pub certs_dir: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }
    pub fn startup(&self) -> PathBuf {
        self.root.join("startup")
    }
    pub fn startup_wd(&self) -> PathBuf {
        self.startup().join("wd")
    }
    pub fn applications(&self) -> PathBuf {
        self.root.join("applications")
    }
    pub fn mounts(&self) -> PathBuf {
        self.root.join("fsmounts")
    }
    pub fn workitems(&self) -> PathBuf {
        self.root.join("workitems")
    }

    /// `workitems/<job>/job-1`: everything of one job on this node.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.workitems().join(job.as_str()).join("job-1")
    }

    /// A task's directories. The start task's is `startup/`; a job's
    /// preparation and release tasks have `jobpreparation/` and `jobrelease/`
    /// in the job directory (their ids).
    pub fn task(&self, key: &TaskKey) -> TaskPaths {
        let job_dir = self.job_dir(&key.job);
        let task_dir = match key.kind() {
            TaskKind::StartTask => self.startup(),
            _ => job_dir.join(key.task.as_str()),
        };
        TaskPaths {
            working_dir: task_dir.join("wd"),
            stdout: task_dir.join("stdout.txt"),
            stderr: task_dir.join("stderr.txt"),
            job_prep_dir: job_dir.join("jobpreparation"),
            certs_dir: task_dir.join("certs"),
            task_dir,
        }
    }

    /// Directories created at start-up, with their modes.
    pub fn node_dirs(&self) -> Vec<(PathBuf, u32)> {
        vec![
            (self.root.clone(), 0o755),
            // Every task identity may write here; the sticky bit keeps them from
            // removing each other's files.
            (self.shared(), 0o1777),
            (self.startup(), 0o755),
            (self.startup_wd(), 0o755),
            (self.applications(), 0o755),
            (self.mounts(), 0o755),
            (self.workitems(), 0o755),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_paths() {
        let l = Layout::new("/var/lib/berth/node");
        let t = l.task(&TaskKey::new("job1", "task1").unwrap());
        assert_eq!(t.task_dir, Path::new("/var/lib/berth/node/workitems/job1/job-1/task1"));
        assert_eq!(t.working_dir, Path::new("/var/lib/berth/node/workitems/job1/job-1/task1/wd"));
        assert_eq!(t.stdout, Path::new("/var/lib/berth/node/workitems/job1/job-1/task1/stdout.txt"));
        assert_eq!(t.stderr, Path::new("/var/lib/berth/node/workitems/job1/job-1/task1/stderr.txt"));
        assert_eq!(t.job_prep_dir, Path::new("/var/lib/berth/node/workitems/job1/job-1/jobpreparation"));
        assert_eq!(l.startup_wd(), Path::new("/var/lib/berth/node/startup/wd"));
        assert_eq!(l.mounts(), Path::new("/var/lib/berth/node/fsmounts"));
        let s = l.task(&TaskKey::start_task());
        assert_eq!(s.task_dir, Path::new("/var/lib/berth/node/startup"));
        assert_eq!(s.working_dir, l.startup_wd());
        assert_eq!(s.stdout, Path::new("/var/lib/berth/node/startup/stdout.txt"));
        let prep = l.task(&TaskKey::job_preparation(&JobId::new("job1").unwrap()));
        assert_eq!(prep.task_dir, t.job_prep_dir);
        assert_eq!(prep.working_dir, Path::new("/var/lib/berth/node/workitems/job1/job-1/jobpreparation/wd"));
    }
}
