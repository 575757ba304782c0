//! A host task's run: the process is started through a `host-shim` (see
//! `crate::host`), then followed like a container's, with the same terminate
//! and wall-clock rules (`stop::supervise`). SIGKILL kills the task's whole
//! cgroup, and the end of the main process ends every process it started.

use super::outcome::completion;
use super::prepare::Ready;
use super::record::{fail, final_stats, save, save_durably};
use super::stop::{stop_requested, supervise, StopSettings};
use super::{Stop, Supervisor};
use crate::host::{ExitRecord, HostError};
use crate::model::{FailureCode, FailureInfo, TaskInfo, TaskState};
use std::time::SystemTime;
use tokio::sync::watch;

/// Starts the process and waits for it; returns the completed record.
pub(super) async fn start(
    sup: &Supervisor,
    ready: Ready,
    how: StopSettings,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> TaskInfo {
    let Ready { mut info, run_as, job_prep } = ready;
    let sh = &sup.shared;
    let key = info.key().clone();
    let packages: Vec<_> = sup.task_packages(&info.spec).into_iter().map(|p| p.id).collect();
    let process = match crate::spec::host_process(&info.spec, &run_as, &sh.node, &sh.layout, job_prep, &packages) {
        Ok(p) => p,
        Err(e) => return fail(sup, info, FailureInfo::new(FailureCode::CommandLineInvalid, e.to_string())).await,
    };
    if let Some(s) = stop_requested(stop) {
        return sup.complete(info, None, Some(s.reason.failure(" before it started"))).await;
    }
    // Recorded before the process starts: after a crash it is never started again.
    info.attempt += 1;
    info.ever_started = true;
    if let Err(e) = sh.store.amend(info.clone()).await {
        return fail(sup, info, FailureInfo::new(FailureCode::StateDatabaseFailed, e.to_string())).await;
    }
    let id = info.container_id();
    match sh.settings.host.start(&id, &key, &process, &sh.layout).await {
        Ok(pid) => {
            tracing::info!(job_id = %key.job, task_id = %key.task, pid, uid = process.uid, "host task running");
        }
        Err(e) => {
            let failure = match &e {
                HostError::Start(_) => FailureInfo::new(FailureCode::HostProcessStartFailed, e.to_string()),
                _ => FailureInfo::new(FailureCode::HostShimFailed, e.to_string()),
            };
            return fail(sup, info, failure).await;
        }
    }
    info.state = TaskState::Running;
    info.started_at = Some(SystemTime::now());
    let info = save(sup, info).await;
    if let Some(Ok(waited)) = info.started_at.map(|s| s.duration_since(info.created_at)) {
        sup.shared.settings.metrics.task_start_seconds.observe(waited.as_secs_f64());
    }
    wait(sup, info, how, stop).await
}

/// Waits for a host task's process (also one started by an earlier agent).
pub(super) async fn wait(
    sup: &Supervisor,
    mut info: TaskInfo,
    how: StopSettings,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> TaskInfo {
    let host = sup.shared.settings.host.clone();
    let id = info.container_id();
    if info.state != TaskState::Running {
        info.state = TaskState::Running;
        info.started_at.get_or_insert_with(SystemTime::now);
        info = save(sup, info).await;
    }
    let exit = host.wait(&id);
    let signal = |sig: u32| {
        let host = host.clone();
        let id = id.clone();
        async move { host.signal(&id, sig as i32).await }
    };
    let (exit, reason) = supervise(sup, &info, how, stop, exit, signal).await;
    finish(sup, info, exit, reason).await
}

async fn finish(
    sup: &Supervisor,
    mut info: TaskInfo,
    exit: Result<ExitRecord, HostError>,
    reason: Option<super::StopReason>,
) -> TaskInfo {
    let key = info.key().clone();
    let id = info.container_id();
    match exit {
        Ok(ExitRecord { code: Some(code), exited_at_ms, .. }) => {
            let cgroups_path = sup.shared.settings.host.cgroups_path(&id);
            let oom = code != 0 && super::cgroup::oom_killed(&cgroups_path).await;
            let (code, failure) = completion(code as u32, reason, oom);
            if let Some(failure) = failure.clone().filter(|f| super::retry::applies(&info, Some(f))) {
                return save_durably(sup, super::retry::next_attempt(info, Some(code), failure)).await;
            }
            tracing::info!(job_id = %key.job, task_id = %key.task, exit_code = code, "host task completed");
            // The shim's clock reading has milliseconds: never before the start.
            let at = ExitRecord { code: None, exited_at_ms, start_error: None }.exited_at();
            let at = info.started_at.map_or(at, |started| at.max(started));
            info.complete(Some(code), failure, at);
            info.stats = final_stats(&sup.shared.settings.metrics, &info, &cgroups_path);
            super::outputs::finish(sup, info).await
        }
        Ok(ExitRecord { start_error, .. }) => {
            let message = start_error.unwrap_or_else(|| "the process did not start".into());
            fail(sup, info, FailureInfo::new(FailureCode::HostProcessStartFailed, message)).await
        }
        Err(e) => {
            let message = format!("{e}: the agent or the machine restarted while it ran and its shim is gone");
            fail(sup, info, FailureInfo::new(FailureCode::HostProcessLost, message)).await
        }
    }
}
