//! Stopping a task's process: the stop signal, the grace period and the
//! wall-clock limit, shared by container and host tasks.

use super::outcome::StopReason;
use super::{Stop, Supervisor};
use crate::model::{TaskInfo, TaskSpec};
use crate::spec::RunOptions;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the agent stops the task's process: `--stop-signal`, `--stop-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSettings {
    pub signal: u32,
    pub timeout: Option<Duration>,
}

impl StopSettings {
    pub fn of(o: &RunOptions) -> Self {
        StopSettings {
            signal: o.stop_signal.map_or(SIGTERM, |s| s.unsigned_abs()),
            timeout: o.stop_timeout.map(|s| Duration::from_secs(s.into())),
        }
    }

    /// For a task whose run options no longer pass admission (a record from
    /// before a policy change, re-attached after a restart): the defaults
    /// unless its options still parse.
    pub fn of_spec(spec: &TaskSpec) -> Self {
        crate::spec::check_task(spec).map(|o| Self::of(&o)).unwrap_or(StopSettings { signal: SIGTERM, timeout: None })
    }
}

pub(in crate::supervisor) const SIGTERM: u32 = 15;

pub(in crate::supervisor) const SIGKILL: u32 = 9;

pub(in crate::supervisor) fn stop_requested(stop: &watch::Receiver<Option<Stop>>) -> Option<Stop> {
    *stop.borrow()
}

/// Drives a running process until `exit` resolves: on a terminate request or
/// when `max_wall_clock_time` expires, sends the stop signal (`--stop-signal`,
/// else SIGTERM), then SIGKILL after the grace period (`--stop-timeout`, the
/// terminate's, else the node's). Returns the exit and why the agent stopped it.
pub(in crate::supervisor) async fn supervise<T, S, F>(
    sup: &Supervisor,
    info: &TaskInfo,
    how: StopSettings,
    stop: &mut watch::Receiver<Option<Stop>>,
    exit: impl std::future::Future<Output = T>,
    signal: S,
) -> (T, Option<StopReason>)
where
    S: Fn(u32) -> F,
    F: std::future::Future<Output = ()>,
{
    let key = info.key().clone();
    let deadline = info.spec.constraints.max_wall_clock_time.and_then(|max| {
        let ran = info.started_at.and_then(|s| SystemTime::now().duration_since(s).ok()).unwrap_or_default();
        Instant::now().checked_add(max.saturating_sub(ran))
    });
    tokio::pin!(exit);
    let stop_signal = how.signal;
    let wall_clock_grace = how.timeout.unwrap_or(sup.shared.settings.terminate_grace);
    let mut reason: Option<StopReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut stop_open = true;
    let exit = loop {
        let pending_stop = if reason.is_none() { stop_requested(stop) } else { None };
        if let Some(s) = pending_stop {
            reason = Some(s.reason);
            kill_at = Some(Instant::now().checked_add(s.grace).unwrap_or_else(far_future));
            signal(stop_signal).await;
            continue;
        }
        tokio::select! {
            r = &mut exit => break r,
            _ = sleep_until_opt(deadline), if reason.is_none() && deadline.is_some() => {
                tracing::info!(job_id = %key.job, task_id = %key.task, "max wall clock time reached: stopping task");
                reason = Some(StopReason::WallClock);
                kill_at = Some(Instant::now().checked_add(wall_clock_grace).unwrap_or_else(far_future));
                signal(stop_signal).await;
            }
            _ = sleep_until_opt(kill_at), if kill_at.is_some() => {
                kill_at = None;
                signal(SIGKILL).await;
            }
            changed = stop.changed(), if stop_open && reason.is_none() => {
                if changed.is_err() {
                    stop_open = false;
                }
            }
        }
    };
    (exit, reason)
}

/// Resolves once a stop is requested.
pub(in crate::supervisor) async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// An instant no task will live to see.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
