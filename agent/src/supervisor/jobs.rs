//! Jobs on this node: their preparation task (once per job, before the job's
//! first task here; the job's tasks wait for it) and release task (when the job
//! is released, after its tasks ended). Job configurations are kept in the state
//! database (`job:<id>` settings); the preparation and release tasks are task
//! records with the reserved ids `jobpreparation` and `jobrelease`.

use super::stop::stopped;
use super::{Error, Stop, Supervisor};
use crate::model::{
    FailureCategory, FailureCode, FailureInfo, JobConfig, JobId, TaskInfo, TaskKey, TaskKind, TaskResult, TaskSpec,
    TaskState,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const JOB_PREFIX: &str = "job:";
/// Lost preparation runs replaced by a new one, per job and node.
const MAX_PREPARATION_RERUNS: u32 = 1;

/// Whether a completed record says its run was lost (its exit is unknown)
/// rather than that the task failed.
fn lost_run(t: &TaskInfo) -> bool {
    t.failure.as_ref().is_some_and(|f| {
        f.category == FailureCategory::ServerError && matches!(f.code.as_str(), "HostProcessLost" | "ContainerLost")
    })
}

/// Why a task does not get past its job's preparation.
pub(super) enum Gate {
    Failed(FailureInfo),
    Stopped(Stop),
}

/// A job's configuration and the records of its preparation and release tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub job: JobId,
    pub config: JobConfig,
    pub preparation: Option<TaskInfo>,
    pub release: Option<TaskInfo>,
}

/// Whether two specs ask for the same (credentials, which are never stored, aside).
fn same(a: &TaskSpec, b: &TaskSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

impl Supervisor {
    pub(super) async fn read_jobs(&self) -> Result<HashMap<JobId, JobConfig>, Error> {
        let jobs: Vec<(String, JobConfig)> = self.shared.store.settings_with_prefix(JOB_PREFIX).await?;
        Ok(jobs
            .into_iter()
            .filter_map(|(name, c)| Some((JobId::new(name.strip_prefix(JOB_PREFIX)?).ok()?, c)))
            .collect())
    }

    /// Keeps the staging URLs' queries of a stored task spec (a job's
    /// preparation or release task, the start task) under its task's key,
    /// where that task's preparation looks for them.
    pub(super) fn keep_queries(&self, spec: &crate::model::TaskSpec) -> Result<(), Error> {
        let secrets = self.shared.settings.staging.secrets();
        secrets.keep(&spec.key, &spec.staging).map_err(|e| Error::Precondition {
            reason: format!("cannot keep the staging URLs' SAS tokens in {}: {e}", secrets.dir().display()),
        })
    }

    async fn save_job(&self, job: &JobId, config: JobConfig) -> Result<(), Error> {
        // The record is written without the staging URLs' queries: they are
        // kept for the tasks to come (a preparation task first run after an
        // agent restart finds them).
        for spec in [&config.preparation, &config.release].into_iter().flatten() {
            self.keep_queries(spec)?;
        }
        self.shared.store.put_setting(&format!("{JOB_PREFIX}{job}"), Some(&config)).await?;
        self.life().jobs.insert(job.clone(), config);
        Ok(())
    }

    pub(super) fn job_has_preparation(&self, job: &JobId) -> bool {
        self.life().jobs.get(job).is_some_and(|c| c.preparation.is_some())
    }

    /// Whether a record of the job's preparation or release task must stay
    /// (with its directory) whatever the history limit and retention say: the
    /// job is still open here, so its tasks use `jobpreparation/`, and a
    /// missing preparation record would make the next task run it again.
    pub(super) fn job_keeps(&self, key: &TaskKey) -> bool {
        matches!(key.kind(), TaskKind::JobPreparation | TaskKind::JobRelease)
            && self.life().jobs.get(&key.job).is_some_and(|c| !c.released)
    }

    /// Refuses new tasks of a released job.
    pub(super) fn check_job_open(&self, job: &JobId) -> Result<(), Error> {
        if self.life().jobs.get(job).is_some_and(|c| c.released) {
            return Err(Error::Precondition { reason: format!("job {job} was released from this node") });
        }
        Ok(())
    }

    /// Sets a job's preparation and/or release task. What is already set stays;
    /// setting it to something else is refused.
    pub async fn configure_job(
        &self,
        job: &JobId,
        preparation: Option<TaskSpec>,
        release: Option<TaskSpec>,
    ) -> Result<JobStatus, Error> {
        let _admission = self.shared.admission.lock().await;
        self.configure_job_admitting(job, preparation, release).await
    }

    /// `configure_job` for a caller that holds the admission lock (`run_task`).
    pub(super) async fn configure_job_admitting(
        &self,
        job: &JobId,
        preparation: Option<TaskSpec>,
        release: Option<TaskSpec>,
    ) -> Result<JobStatus, Error> {
        for spec in preparation.iter().chain(&release) {
            self.admit_check(spec, 0)?;
        }
        self.check_job_open(job)?;
        let mut config = self.life().jobs.get(job).cloned().unwrap_or_default();
        for (new, slot, what) in
            [(preparation, &mut config.preparation, "preparation"), (release, &mut config.release, "release")]
        {
            match (new, slot.as_ref()) {
                (Some(new), Some(old)) if !same(&new, old) => {
                    return Err(Error::Precondition {
                        reason: format!("job {job} already has a different {what} task on this node"),
                    });
                }
                (Some(new), None) => *slot = Some(new),
                _ => {}
            }
        }
        self.save_job(job, config).await?;
        self.job_status(job).await
    }

    pub async fn job_status(&self, job: &JobId) -> Result<JobStatus, Error> {
        let config = self.life().jobs.get(job).cloned();
        let preparation = self.shared.store.get(&TaskKey::job_preparation(job)).await?;
        let release = self.shared.store.get(&TaskKey::job_release(job)).await?;
        let Some(config) = config else {
            return Err(Error::JobNotFound { job: job.clone() });
        };
        Ok(JobStatus { job: job.clone(), config, preparation, release })
    }

    /// Releases a job: no new task of it is accepted; once its tasks have
    /// ended (or were terminated), its release task runs.
    pub async fn release_job(&self, job: &JobId, terminate_tasks: bool) -> Result<JobStatus, Error> {
        // Under the admission lock: a task being accepted is in the records
        // before the release looks for the job's open tasks.
        let admission = self.shared.admission.lock().await;
        let mut config = self.life().jobs.get(job).cloned().unwrap_or_default();
        if !config.released {
            config.released = true;
            self.save_job(job, config).await?;
            tracing::info!(job_id = %job, "job released");
        }
        drop(admission);
        let this = self.clone();
        let j = job.clone();
        tokio::spawn(async move { this.finish_release(&j, terminate_tasks).await });
        self.job_status(job).await
    }

    /// Waits for the job's tasks to end, then runs its release task (once).
    pub(super) async fn finish_release(&self, job: &JobId, terminate_tasks: bool) {
        let mut feed = self.shared.store.subscribe();
        loop {
            let open: Vec<TaskInfo> = match self.shared.store.list(Some(job.to_string()), None).await {
                Ok(tasks) => tasks
                    .into_iter()
                    .filter(|t| t.state != TaskState::Completed && t.key().kind() != TaskKind::JobRelease)
                    .collect(),
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "cannot list the job's tasks; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if open.is_empty() {
                break;
            }
            if terminate_tasks {
                for t in &open {
                    let _ = self.terminate(t.key(), None).await;
                }
            }
            // Any task change (or a second) is a reason to look again.
            let _ = tokio::time::timeout(Duration::from_secs(1), feed.recv()).await;
        }
        let release = self.life().jobs.get(job).and_then(|c| c.release.clone());
        let Some(spec) = release else { return };
        match self.accept_special(spec).await {
            Ok(_) => tracing::info!(job_id = %job, "job release task accepted"),
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => tracing::error!(job_id = %job, error = %e, "cannot run the job's release task"),
        }
    }

    /// Removes the directories of released jobs once their task directories
    /// are gone (retention), and forgets the job when no record of it is left.
    pub(super) async fn remove_released_job_dirs(&self) {
        let released: Vec<JobId> =
            self.life().jobs.iter().filter(|(_, c)| c.released).map(|(j, _)| j.clone()).collect();
        for job in released {
            let dir = self.shared.layout.job_dir(&job);
            // Only empty directories go: a task directory still kept stops it.
            let _ = std::fs::remove_dir(&dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            let records = self.shared.store.list(Some(job.to_string()), None).await.map(|v| v.len()).unwrap_or(1);
            if records == 0 && !dir.exists() {
                if let Ok(()) = self.shared.store.put_setting::<JobConfig>(&format!("{JOB_PREFIX}{job}"), None).await {
                    self.life().jobs.remove(&job);
                    tracing::info!(job_id = %job, "released job forgotten: its records and directories are gone");
                }
            }
        }
    }

    /// After recovery: finishes releases an agent restart interrupted.
    pub(super) fn resume_releases(&self) {
        let released: Vec<JobId> =
            self.life().jobs.iter().filter(|(_, c)| c.released).map(|(j, _)| j.clone()).collect();
        for job in released {
            let this = self.clone();
            tokio::spawn(async move {
                if matches!(this.shared.store.get(&TaskKey::job_release(&job)).await, Ok(None)) {
                    this.finish_release(&job, false).await;
                }
            });
        }
    }

    /// A preparation task whose run was lost (not one that failed) runs again,
    /// once: its record is replaced by a new one. True if it was (by this or
    /// a concurrent caller, under the admission lock).
    async fn rerun_lost_preparation(&self, job: &JobId) -> Result<bool, Error> {
        let _admission = self.shared.admission.lock().await;
        let key = TaskKey::job_preparation(job);
        let Some(record) = self.shared.store.get(&key).await? else { return Ok(true) };
        if !(record.state == TaskState::Completed && lost_run(&record)) {
            return Ok(true); // replaced meanwhile
        }
        let Some(mut config) = self.life().jobs.get(job).cloned() else { return Ok(false) };
        let Some(spec) = config.preparation.clone().filter(|_| config.preparation_reruns < MAX_PREPARATION_RERUNS)
        else {
            return Ok(false);
        };
        tracing::warn!(job_id = %job, "the job's preparation task was lost while it ran; running it again");
        self.runner_gone(&key).await?;
        config.preparation_reruns += 1;
        self.save_job(job, config).await?;
        self.shared.store.delete(&key).await?;
        match self.accept_special(spec).await {
            // A task that just reached the gate made the new record first.
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Waits until the job's preparation task has succeeded, running it first
    /// if no task of the job has yet.
    pub(super) async fn await_job_preparation(
        &self,
        job: &JobId,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<(), Gate> {
        let Some(spec) = self.life().jobs.get(job).and_then(|c| c.preparation.clone()) else {
            return Ok(());
        };
        let key = TaskKey::job_preparation(job);
        let server = |e: Error| Gate::Failed(FailureInfo::new(FailureCode::StateDatabaseFailed, e.to_string()));
        let mut feed = self.shared.store.subscribe();
        loop {
            match self.shared.store.get(&key).await.map_err(|e| server(e.into()))? {
                None => match self.accept_special(spec.clone()).await {
                    Ok(_) | Err(Error::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(server(e)),
                },
                Some(t) if t.state == TaskState::Completed => {
                    if t.result == Some(TaskResult::Success) {
                        return Ok(());
                    }
                    if lost_run(&t) && self.rerun_lost_preparation(job).await.map_err(server)? {
                        continue;
                    }
                    let why = t.failure.map(|f| format!("{}: {}", f.code, f.message)).unwrap_or_default();
                    return Err(Gate::Failed(FailureInfo::new(
                        FailureCode::JobPreparationFailed,
                        format!("the job's preparation task failed ({why}); this task did not run"),
                    )));
                }
                Some(_) => {}
            }
            // Until the preparation task's record changes.
            loop {
                tokio::select! {
                    ev = feed.recv() => match ev {
                        Ok(ev) if ev.task.key() != &key => continue,
                        Err(broadcast::error::RecvError::Closed) => return Err(server(Error::Recovering)),
                        _ => break,
                    },
                    s = stopped(stop) => return Err(Gate::Stopped(s)),
                }
            }
        }
    }
}
