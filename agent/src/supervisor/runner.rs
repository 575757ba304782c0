//! One task's job: PREPARING (directories, image, spec, container) → RUNNING →
//! COMPLETED. Each state is recorded before the side effect that follows it, and
//! a container is only ever started from containerd's `Created` state, so a task
//! never runs twice (see `recovery`).

use super::failure::Failure;
use super::outcome::{completion, StopReason};
use super::phases::Phases;
use super::prepare::{prepare, Prepared};
use super::record::{fail, final_stats, save, save_durably};
use super::stop::{stop_requested, supervise, StopSettings};
use super::{Stop, Supervisor};
use crate::containerd::{ExitStatus, Runtime, RuntimeError, TaskStatus};
use crate::model::{TaskInfo, TaskKey, TaskState};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a runner starts: from scratch, at an existing created container, or at
/// a process that is already running (the last two after an agent restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Prepare,
    Start,
    Wait,
    /// The process exited and its output files are uploading.
    Upload,
}

pub(super) async fn run(sup: &Supervisor, key: &TaskKey, phase: Phase, mut stop: watch::Receiver<Option<Stop>>) {
    let mut phase = phase;
    // An attempt that is retried ends with the task not completed: the next
    // one is prepared from scratch, in the same slots.
    while let Some(info) = attempt(sup, key, phase, &mut stop).await {
        if info.state == TaskState::Completed {
            return;
        }
        sup.shared.gpu_holds.release(key);
        phase = Phase::Prepare;
    }
}

/// One attempt, from `phase` to its end and the removal of its container;
/// None when there was nothing to do.
async fn attempt(
    sup: &Supervisor,
    key: &TaskKey,
    phase: Phase,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<TaskInfo> {
    let info = match sup.get_task(key).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(job_id = %key.job, task_id = %key.task, error = %e, "task record unreadable");
            return None;
        }
    };
    if info.state == TaskState::Completed {
        return None;
    }
    // A task re-attached after a restart still holds its GPUs.
    if phase != Phase::Prepare && !info.held_gpus.is_empty() {
        sup.shared.gpu_holds.claim(key, &info.held_gpus);
    }
    let host = info.spec.container.is_none();
    // Admission's decisions: made when the task was accepted, or now for a
    // task re-attached after a restart.
    let checked = match phase {
        Phase::Prepare => match sup.checked_for(&info) {
            Ok(c) => Some(c),
            Err(refusal) => return Some(fail(sup, info, Failure::from(refusal).into()).await),
        },
        Phase::Start | Phase::Wait | Phase::Upload => None,
    };
    let stop_settings = checked.as_ref().map_or_else(|| sup.stop_settings(&info), |c| c.stop());
    let info = match phase {
        Phase::Prepare => {
            let checked = checked?;
            match prepare(sup, info, checked, stop).await {
                Ok(Prepared::Container(info, phases)) => {
                    let cid = info.container_id();
                    start(sup, info, &cid, (stop_settings, Some(phases)), stop).await
                }
                Ok(Prepared::Host(h)) => Some(super::host_task::start(sup, h, stop_settings, stop).await),
                Err(done) => Some(done),
            }
        }
        Phase::Upload => Some(super::outputs::upload(sup, info).await),
        Phase::Wait if host => Some(super::host_task::wait(sup, info, stop_settings, stop).await),
        Phase::Start => {
            let cid = info.container_id();
            start(sup, info, &cid, (stop_settings, None), stop).await
        }
        Phase::Wait => {
            // It runs (or ran while the agent was away): the record says so before the exit.
            let mut info = info;
            if info.state != TaskState::Running {
                info.state = TaskState::Running;
                info.ever_started = true;
                info.started_at.get_or_insert_with(SystemTime::now);
                info = save(sup, info).await;
            }
            let cid = info.container_id();
            Some(wait(sup, info, &cid, stop_settings, stop).await)
        }
    };
    let info = info?;
    let retried = info.state != TaskState::Completed;
    if !retried {
        sup.shared.settings.staging.secrets().forget(key);
    }
    let cid = info.container_id();
    if host {
        if let Err(e) = sup.shared.settings.host.remove(&cid).await {
            tracing::warn!(job_id = %key.job, task_id = %key.task, error = %e, "cannot remove the host task's files");
        }
        return Some(info);
    }
    let removed = sup.shared.runtime.remove(&cid).await;
    // The process is gone: its network goes too (CNI DEL), even if the
    // container could not be removed yet.
    if let Err(e) = sup.shared.settings.network.detach(&cid).await {
        tracing::warn!(job_id = %key.job, task_id = %key.task, container_id = %cid, error = %e,
            "cannot remove the task's network; the agent tries again when it starts");
    }
    if let Err(e) = removed {
        tracing::warn!(job_id = %key.job, task_id = %key.task, container_id = %cid, error = %e, "cannot remove container");
        return Some(info);
    }
    if retried {
        // The next attempt records its own container.
        return Some(info);
    }
    let mut info = info;
    if let Some(c) = info.container.as_mut() {
        c.state = "deleted".into();
    }
    let _ = sup.shared.store.amend(info.clone()).await;
    Some(info)
}

/// Starts a created container and waits for it. Returns the completed record,
/// or None if the task was completed elsewhere. `phases`: where the time went
/// since the task was accepted (none for a container created by an earlier agent).
async fn start(
    sup: &Supervisor,
    info: TaskInfo,
    cid: &str,
    (how, mut phases): (StopSettings, Option<Phases>),
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<TaskInfo> {
    let mut mark = |name| phases.as_mut().map(|p: &mut Phases| p.mark(name));
    let key = info.key().clone();
    if let Some(s) = stop_requested(stop) {
        return Some(sup.complete(info, None, Some(s.reason.failure(" before it started"))).await);
    }
    // Recorded before Start: after a crash, a task that may have run is never
    // prepared and run again (recovery reports it lost instead).
    let mut info = info;
    info.ever_started = true;
    if let Err(e) = sup.shared.store.amend(info.clone()).await {
        return Some(fail(sup, info, Failure::Store(e.to_string()).into()).await);
    }
    mark("record_started");
    if let Err(e) = start_with_retry(sup, cid).await {
        if let Some(c) = info.container.as_mut() {
            c.error = e.to_string();
        }
        return Some(fail(sup, info, Failure::Start(e).into()).await);
    }
    info.state = TaskState::Running;
    info.ever_started = true;
    info.started_at = Some(SystemTime::now());
    if let Some(c) = info.container.as_mut() {
        c.state = "running".into();
    }
    mark("start");
    let info = save(sup, info).await;
    mark("record_running");
    if let Some(Ok(waited)) = info.started_at.map(|s| s.duration_since(info.created_at)) {
        sup.shared.settings.metrics.task_start_seconds.observe(waited.as_secs_f64());
    }
    let phases = phases.map(|p| p.to_string()).unwrap_or_default();
    tracing::info!(job_id = %key.job, task_id = %key.task, container_id = %cid, phases, "task running");
    Some(wait(sup, info, cid, how, stop).await)
}

/// Waits for the process to exit, stopping it on terminate or wall-clock expiry.
async fn wait(
    sup: &Supervisor,
    info: TaskInfo,
    cid: &str,
    how: StopSettings,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> TaskInfo {
    let rt = sup.shared.runtime.clone();
    // A task that already exited (while the agent was away) is not stopped again.
    if let Ok(TaskStatus::Stopped(status)) = rt.status(cid).await {
        return finish(sup, info, Ok(status), None).await;
    }
    // Subscribed before Wait is called, so an exit between the two is not missed.
    let mut events = sup.shared.link.exits.subscribe();
    let exit = async {
        let waited = wait_with_retry(sup, cid);
        tokio::pin!(waited);
        let exit = loop {
            tokio::select! {
                r = &mut waited => break r,
                ev = events.recv() => {
                    if let Ok(ev) = ev {
                        if ev.container_id == cid {
                            break Ok(ev.status);
                        }
                    }
                }
            }
        };
        unless_shim_lost(&*rt, cid, exit).await
    };
    let signal = |sig: u32| {
        let rt = rt.clone();
        async move {
            let _ = rt.kill(cid, sig).await;
        }
    };
    let (exit, reason) = supervise(sup, &info, how, stop, exit, signal).await;
    finish(sup, info, exit, reason).await
}

/// Records how the process ended (durably: the container goes only afterwards).
async fn finish(
    sup: &Supervisor,
    mut info: TaskInfo,
    exit: Result<ExitStatus, RuntimeError>,
    reason: Option<StopReason>,
) -> TaskInfo {
    let key = info.key().clone();
    match exit {
        Ok(status) => {
            let cgroups_path = super::prepare::spec::cgroups_path(&sup.shared.settings.namespace, &info.container_id());
            let oom = status.code != 0 && super::cgroup::oom_killed(&cgroups_path).await;
            let (code, failure) = completion(status.code, reason, oom);
            if let Some(c) = info.container.as_mut() {
                c.state = "stopped".into();
            }
            if let Some(failure) = failure.clone().filter(|f| super::retry::applies(&info, Some(f))) {
                return save_durably(sup, super::retry::next_attempt(info, Some(code), failure)).await;
            }
            tracing::info!(job_id = %key.job, task_id = %key.task, exit_code = code, "task completed");
            info.complete(Some(code), failure, status.exited_at.unwrap_or_else(SystemTime::now));
            info.stats = final_stats(&sup.shared.settings.metrics, &info, &cgroups_path);
            super::outputs::finish(sup, info).await
        }
        Err(e) => {
            if let Some(c) = info.container.as_mut() {
                c.error = e.to_string();
            }
            fail(sup, info, Failure::ContainerGone(e).into()).await
        }
    }
}

/// `Start`, with a lost answer (containerd restarting) resolved by asking for
/// the task's state: started if it runs or ran, started again only if it is
/// still `Created`.
async fn start_with_retry(sup: &Supervisor, cid: &str) -> Result<(), RuntimeError> {
    let rt = &sup.shared.runtime;
    let mut backoff = Duration::from_millis(100);
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        match rt.start(cid).await {
            Err(RuntimeError::Unavailable { message }) if Instant::now() < give_up => {
                tracing::warn!(container_id = %cid, error = %message, "containerd unreachable while starting; checking the task");
            }
            other => return other.map(drop),
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match rt.status(cid).await {
                Ok(TaskStatus::Created) => break,
                Ok(_) => return Ok(()),
                Err(RuntimeError::Unavailable { .. }) if Instant::now() < give_up => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The exit status containerd reports for a container whose shim died: its
/// own clean-up's SIGKILL (128 + 9), not anything the task did.
const CLEANUP_KILL: u32 = 137;

/// A 137 whose task containerd no longer has (it cleaned up after the dead
/// shim), or whose shim is unreachable, is the shim's death, not the task's
/// exit. (The exit event can beat `Wait`'s error to the runner.) A task that
/// really got a SIGKILL is still there, stopped, until the agent removes it.
async fn unless_shim_lost(
    rt: &dyn Runtime,
    cid: &str,
    exit: Result<ExitStatus, RuntimeError>,
) -> Result<ExitStatus, RuntimeError> {
    match exit {
        Ok(status) if status.code == CLEANUP_KILL => match rt.status(cid).await {
            Err(e @ RuntimeError::ShimLost { .. }) => Err(e),
            Err(RuntimeError::NotFound { .. }) => Err(RuntimeError::ShimLost {
                op: "wait task",
                message: "containerd removed the task after its shim died".into(),
            }),
            _ => Ok(status),
        },
        other => other,
    }
}

/// `Wait` on the task, retried while containerd is unreachable (a restart), so an
/// exit that happens meanwhile is still collected. Ends with `NotFound` when the
/// task is gone, and with `ShimLost` when its shim died under the wait (once
/// containerd has cleaned up after it).
async fn wait_with_retry(sup: &Supervisor, cid: &str) -> Result<ExitStatus, RuntimeError> {
    let mut backoff = Duration::from_millis(100);
    // containerd answering with an error is retried a few times; it being
    // unreachable (a restart) as long as it takes.
    let mut errors_left = 10;
    let mut lost = None;
    loop {
        match sup.shared.runtime.wait(cid).await {
            Err(RuntimeError::Unavailable { message }) => {
                tracing::warn!(container_id = %cid, error = %message, "containerd unreachable while waiting; retrying");
            }
            Err(e @ (RuntimeError::Failed { .. } | RuntimeError::ShimLost { .. })) if errors_left > 0 => {
                errors_left -= 1;
                tracing::warn!(container_id = %cid, error = %e, "wait failed; retrying");
                if matches!(e, RuntimeError::ShimLost { .. }) {
                    lost = Some(e);
                }
            }
            // What containerd answers after a shim's death is its clean-up's.
            other => return lost.map_or(other, Err),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
