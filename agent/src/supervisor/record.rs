//! Recording a task: saves, durable saves of results, failures before a
//! task ran, and what a completed task used.

use super::Supervisor;
use crate::model::{FailureInfo, TaskInfo};
use std::time::Duration;

/// Saves a task record; a failing state database is logged, not fatal to the task.
pub(in crate::supervisor) async fn save(sup: &Supervisor, info: TaskInfo) -> TaskInfo {
    match sup.shared.store.update(info.clone()).await {
        Ok(saved) => saved,
        Err(e) => {
            tracing::error!(job_id = %info.key().job, task_id = %info.key().task, error = %e, "cannot record task state");
            info
        }
    }
}

/// Saves a completion, retrying until the state database takes it: the
/// container (which holds the exit status) is removed only after that.
pub(in crate::supervisor) async fn save_durably(sup: &Supervisor, info: TaskInfo) -> TaskInfo {
    let mut backoff = Duration::from_millis(200);
    loop {
        match sup.shared.store.update(info.clone()).await {
            Ok(saved) => return saved,
            Err(e) => {
                tracing::error!(job_id = %info.key().job, task_id = %info.key().task, error = %e,
                    "cannot record the task's result; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Fails the task during preparation: records it completed, removes leftovers.
/// A failure that may pass, of a task with retries left, is recorded as a
/// retry instead (see `retry`).
pub(in crate::supervisor) async fn fail(sup: &Supervisor, info: TaskInfo, failure: FailureInfo) -> TaskInfo {
    if super::retry::applies(&info, Some(&failure)) {
        return save_durably(sup, super::retry::next_attempt(info, None, failure)).await;
    }
    let key = info.key().clone();
    tracing::warn!(job_id = %key.job, task_id = %key.task, code = %failure.code, message = %failure.message, "task failed before running");
    sup.complete(info, None, Some(failure)).await
}

/// What a completed task used, read from its cgroup (still there: the
/// container is deleted only after the result is recorded).
pub(in crate::supervisor) fn final_stats(
    metrics: &crate::metrics::Metrics,
    info: &TaskInfo,
    cgroups_path: &str,
) -> Option<crate::model::TaskStats> {
    let usage = super::cgroup::usage(cgroups_path)?;
    let wall = match (info.started_at, info.completed_at) {
        (Some(s), Some(c)) => c.duration_since(s).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    // The node-wide totals of the metrics endpoint are counted up too.
    metrics.count_completed(&usage, wall);
    Some(super::cgroup::stats(usage, wall, false))
}
