//! Retries (Batch's `maxTaskRetryCount`): an attempt whose process exited
//! non-zero, or that could not start for a reason that may pass, is not
//! completed but recorded as retried, and the runner prepares a new attempt
//! (a new container) while the task keeps its slots. A terminate or
//! `max_wall_clock_time` ends the task without a retry.
//!
//! Before the next attempt the previous one's `stdout.txt` and `stderr.txt`
//! are kept as `stdout.<n>.txt` and `stderr.<n>.txt` (n = the attempt's
//! retry count: 0 for the first run), and the new attempt starts with empty
//! ones; the working directory stays as the previous attempt left it. Output
//! files are uploaded once, after the last attempt.
//!
//! Pure: `applies` decides, `next_attempt` makes the record the caller saves.
//! The retry is recorded (PREPARING, not started) before the previous
//! attempt's container is removed: recovery takes a stopped container of a
//! task that is not started for a leftover and queues the task again.

use crate::model::{AttemptResult, FailureCategory, FailureCode, FailureInfo, TaskInfo, TaskState};
use std::time::SystemTime;

/// Whether the attempt of `info` that ended with `failure` runs again.
pub(super) fn applies(info: &TaskInfo, failure: Option<&FailureInfo>) -> bool {
    let Some(failure) = failure else { return false };
    let limit = info.spec.constraints.max_task_retry_count;
    let left = match u32::try_from(limit) {
        Ok(max) => info.retry_count < max,
        // -1: no limit (the API refuses anything lower).
        Err(_) => true,
    };
    left && may_pass(failure)
}

/// Failures a new attempt may not meet again: a process that failed, a
/// container that could not be made or started, and the node's own troubles.
/// What the task asked for wrongly (a bad option, a missing image, an
/// unknown user), a terminate and the wall-clock limit would end the same way.
fn may_pass(f: &FailureInfo) -> bool {
    use FailureCode as C;
    match f.code {
        C::FailureExitCode | C::TaskKilledBySignal | C::OOMKilled => true,
        C::ContainerCreateFailed | C::ContainerStartFailed | C::HostProcessStartFailed | C::NetworkSetupFailed => true,
        C::ContainerdUnavailable
        | C::DiskFull
        | C::TaskDirectoryCreateFailed
        | C::ImageStoreFailed
        | C::HostShimFailed => true,
        // A download the node failed (5xx, the network), not one refused.
        C::ResourceFileDownloadFailed | C::ApplicationPackageFailed => f.category == FailureCategory::ServerError,
        _ => false,
    }
}

/// The record of a task whose attempt ended with `failure` and is retried
/// (the caller saves it durably): PREPARING again, not started, with the
/// attempt's outcome in `previous_attempt`.
pub(super) fn next_attempt(mut info: TaskInfo, exit: Option<i32>, failure: FailureInfo) -> TaskInfo {
    let now = SystemTime::now();
    let key = info.key().clone();
    tracing::warn!(job_id = %key.job, task_id = %key.task, code = %failure.code, message = %failure.message,
        retry = info.retry_count + 1, "task attempt failed; it runs again");
    info.previous_attempt = Some(AttemptResult { exit_code: exit, failure: Some(failure), ended_at: now });
    info.retry_count += 1;
    info.last_retry_at = Some(now);
    info.state = TaskState::Preparing;
    info.ever_started = false;
    info.started_at = None;
    info.stats = None;
    info.held_gpus.clear();
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskKey;

    fn info(max: i32, retries: u32) -> TaskInfo {
        let mut spec = crate::supervisor::admission::tests::spec(Some("busybox"), "");
        spec.key = TaskKey::new("job", "t").unwrap();
        spec.constraints.max_task_retry_count = max;
        let mut info = TaskInfo::new(spec, SystemTime::UNIX_EPOCH);
        info.retry_count = retries;
        info
    }

    fn f(code: FailureCode) -> FailureInfo {
        FailureInfo::new(code, "x")
    }

    #[test]
    fn the_limit_counts_retries_and_minus_one_has_none() {
        let exit = f(FailureCode::FailureExitCode);
        assert!(!applies(&info(0, 0), Some(&exit)), "0: never");
        assert!(applies(&info(2, 0), Some(&exit)));
        assert!(applies(&info(2, 1), Some(&exit)));
        assert!(!applies(&info(2, 2), Some(&exit)), "2 retries: 3 attempts");
        assert!(applies(&info(-1, 1000), Some(&exit)));
        assert!(!applies(&info(-1, 0), None), "a success is not retried");
    }

    #[test]
    fn the_next_attempt_is_not_started_and_remembers_the_last() {
        let mut i = info(3, 1);
        (i.state, i.ever_started, i.started_at) = (TaskState::Running, true, Some(SystemTime::now()));
        i.held_gpus = vec!["nvidia.com/gpu=0".into()];
        let n = next_attempt(i, Some(2), f(FailureCode::FailureExitCode));
        assert_eq!((n.state, n.ever_started, n.started_at, n.retry_count), (TaskState::Preparing, false, None, 2));
        assert!(n.held_gpus.is_empty() && n.last_retry_at.is_some() && n.exit_code.is_none());
        let prev = n.previous_attempt.unwrap();
        assert_eq!((prev.exit_code, prev.failure.unwrap().code), (Some(2), FailureCode::FailureExitCode));
    }

    #[test]
    fn only_what_may_pass_is_retried() {
        let yes = [
            FailureCode::FailureExitCode,
            FailureCode::TaskKilledBySignal,
            FailureCode::OOMKilled,
            FailureCode::ContainerStartFailed,
            FailureCode::ContainerCreateFailed,
            FailureCode::HostProcessStartFailed,
            FailureCode::ContainerdUnavailable,
            FailureCode::DiskFull,
            FailureCode::NetworkSetupFailed,
        ];
        for code in yes {
            assert!(applies(&info(1, 0), Some(&f(code))), "{code}");
        }
        let no = [
            FailureCode::TaskTerminated,
            FailureCode::MaxWallClockTimeExpiry,
            FailureCode::RunOptionInvalid,
            FailureCode::ImageNotFound,
            FailureCode::ImagePullFailed,
            FailureCode::UserIdentityInvalid,
            FailureCode::CommandLineInvalid,
            FailureCode::UnsafeTaskFile,
            FailureCode::ContainerLost,
            FailureCode::StartTaskFailed,
            FailureCode::JobPreparationFailed,
            FailureCode::ResourceFileDownloadFailed,
        ];
        for code in no {
            assert!(!applies(&info(-1, 0), Some(&f(code))), "{code}");
        }
        let node_side = FailureInfo::on_the_node(FailureCode::ResourceFileDownloadFailed, "503");
        assert!(applies(&info(1, 0), Some(&node_side)), "a download the node failed may pass");
    }
}
