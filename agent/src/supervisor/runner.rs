//! One task's job: PREPARING (directories, image, spec, container) → RUNNING →
//! COMPLETED. Each state is recorded before the side effect that follows it, and
//! a container is only ever started from containerd's `Created` state, so a task
//! never runs twice (see `recovery`).

use super::outcome::{completion, StopReason};
use super::{Stop, Supervisor};
use crate::containerd::ResolvedImage;
use crate::containerd::{
    CreateRequest, ExitStatus, RuntimeError, TaskStatus, LABEL_JOB, LABEL_KEY, LABEL_NODE, LABEL_TASK,
};
use crate::images::{self, PullError};
use crate::model::{ContainerInfo, FailureInfo, TaskInfo, TaskKey, TaskKind, TaskState};
use crate::model::{Credentials, PullPolicy};
use crate::spec::{self, SpecInputs};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a runner starts: from scratch, at an existing created container, or at
/// a process that is already running (the last two after an agent restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    Start,
    Wait,
}

pub(super) const SIGTERM: u32 = 15;
pub(super) const SIGKILL: u32 = 9;

/// Saves a task record; a failing state database is logged, not fatal to the task.
pub async fn save(sup: &Supervisor, info: TaskInfo) -> TaskInfo {
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
pub async fn save_durably(sup: &Supervisor, info: TaskInfo) -> TaskInfo {
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

pub(super) fn stop_requested(stop: &watch::Receiver<Option<Stop>>) -> Option<Stop> {
    *stop.borrow()
}

pub async fn run(sup: &Supervisor, key: &TaskKey, phase: Phase, mut stop: watch::Receiver<Option<Stop>>) {
    let info = match sup.get_task(key).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(job_id = %key.job, task_id = %key.task, error = %e, "task record unreadable");
            return;
        }
    };
    if info.state == TaskState::Completed {
        return;
    }
    // A task re-attached after a restart still holds its GPUs.
    if phase != Phase::Prepare && !info.held_gpus.is_empty() {
        sup.shared.gpu_holds.claim(key, &info.held_gpus);
    }
    let host = info.spec.container.is_none();
    let info = match phase {
        Phase::Prepare => match prepare(sup, info, &stop).await {
            Ok(Prepared::Container(info)) => {
                let cid = info.container_id();
                start(sup, info, &cid, &mut stop).await
            }
            Ok(Prepared::Host(h)) => Some(super::host_task::start(sup, h, &mut stop).await),
            Err(done) => Some(done),
        },
        Phase::Wait if host => Some(super::host_task::wait(sup, info, &mut stop).await),
        Phase::Start => {
            let cid = info.container_id();
            start(sup, info, &cid, &mut stop).await
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
            Some(wait(sup, info, &cid, &mut stop).await)
        }
    };
    if let Some(info) = info {
        let cid = info.container_id();
        if host {
            if let Err(e) = sup.shared.settings.host.remove(&cid).await {
                tracing::warn!(job_id = %key.job, task_id = %key.task, error = %e, "cannot remove the host task's files");
            }
            return;
        }
        if let Err(e) = sup.shared.runtime.remove(&cid).await {
            tracing::warn!(job_id = %key.job, task_id = %key.task, container_id = %cid, error = %e, "cannot remove container");
            return;
        }
        let mut info = info;
        if let Some(c) = info.container.as_mut() {
            c.state = "deleted".into();
        }
        let _ = sup.shared.store.amend(info).await;
    }
}

/// Fails the task during preparation: records it completed, removes leftovers.
pub(super) async fn fail(sup: &Supervisor, info: TaskInfo, failure: FailureInfo) -> TaskInfo {
    let key = info.key().clone();
    tracing::warn!(job_id = %key.job, task_id = %key.task, code = %failure.code, message = %failure.message, "task failed before running");
    sup.complete(info, None, Some(failure)).await
}

/// What `prepare` hands on.
enum Prepared {
    /// A container task whose container is created.
    Container(TaskInfo),
    /// A host task with its directories made.
    Host(super::host_task::Ready),
}

/// PREPARING: directories, the job's preparation, image, spec, container and
/// task created. Returns the task ready to start, or its completed record.
async fn prepare(
    sup: &Supervisor,
    mut info: TaskInfo,
    stop: &watch::Receiver<Option<Stop>>,
) -> Result<Prepared, TaskInfo> {
    let sh = &sup.shared;
    let key = info.key().clone();
    // A task, and a job's preparation or release task, waits (still ACTIVE,
    // holding its slots) for the node's start task.
    if key.kind() != TaskKind::StartTask {
        let mut stop_rx = stop.clone();
        if let Err(gate) = sup.await_start_task(&mut stop_rx).await {
            return Err(match gate {
                super::jobs::Gate::Failed(failure) => fail(sup, info, failure).await,
                super::jobs::Gate::Stopped(s) => {
                    sup.complete(info, None, Some(s.reason.failure(" while it waited for the start task"))).await
                }
            });
        }
    }
    if info.state != TaskState::Preparing {
        info.state = TaskState::Preparing;
        info = save(sup, info).await;
    }
    // Records from before identities existed have none: resolve it now.
    let run_as = match info.run_as.clone() {
        Some(r) => r,
        None => match sh.settings.identities.resolve(&info.spec.user, info.sequence) {
            Ok(r) => r,
            Err(e) => return Err(fail(sup, info, FailureInfo::user("UserIdentityInvalid", e.to_string())).await),
        },
    };
    info.run_as = Some(run_as.clone());
    let owner = Some(run_as.dir_owner(sh.settings.policy.user_namespaces));
    let layout = sh.layout.clone();
    let k = key.clone();
    let min_free = sh.settings.min_free_bytes;
    let dirs = tokio::task::spawn_blocking(move || match free_bytes(layout.root()) {
        Some(free) if free < min_free => Err(FailureInfo::server(
            "DiskFull",
            format!(
                "the node root {} has {} MiB free, less than the {} MiB a task needs to start",
                layout.root().display(),
                free >> 20,
                min_free >> 20
            ),
        )),
        _ => layout.create_task_dirs(&k, owner).map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ENOSPC as i32 => FailureInfo::server("DiskFull", e.to_string()),
            _ if e.is_unsafe_file() => FailureInfo::user(
                "UnsafeTaskFile",
                format!("{e}: a task put it there; the agent opens nothing but regular files in task directories"),
            ),
            _ => FailureInfo::server("TaskDirectoryCreateFailed", e.to_string()),
        }),
    })
    .await;
    let paths = match dirs {
        Ok(Ok(p)) => p,
        Ok(Err(failure)) => return Err(fail(sup, info, failure).await),
        Err(e) => return Err(fail(sup, info, FailureInfo::server("TaskDirectoryCreateFailed", e.to_string())).await),
    };

    // A job's tasks wait for its preparation task (which runs once per node).
    let job_prep = sup.job_has_preparation(&key.job);
    if key.kind() == TaskKind::Task && job_prep {
        let mut stop_rx = stop.clone();
        if let Err(gate) = sup.await_job_preparation(&key.job, &mut stop_rx).await {
            return Err(match gate {
                super::jobs::Gate::Failed(failure) => fail(sup, info, failure).await,
                super::jobs::Gate::Stopped(s) => {
                    sup.complete(info, None, Some(s.reason.failure(" while it waited for the job's preparation"))).await
                }
            });
        }
    }
    let Some(container) = info.spec.container.clone() else {
        return Ok(Prepared::Host(super::host_task::Ready { info, run_as, job_prep }));
    };
    let image_name = match images::normalize(&container.image) {
        Ok(n) => n,
        Err(e) => return Err(fail(sup, info, FailureInfo::user("ImageReferenceInvalid", e.to_string())).await),
    };
    tracing::info!(job_id = %key.job, task_id = %key.task, image = %image_name, "preparing task");
    let creds = sup.credentials_for(&key, &image_name);
    // A terminate is honoured while the image is pulled (the pull itself goes
    // on for any other task that wants the image).
    let mut stop_rx = stop.clone();
    let pulled = tokio::select! {
        r = image_for(sup, &image_name, container.pull_policy, creds.as_ref()) => r,
        s = stopped(&mut stop_rx) => {
            return Err(sup.complete(info, None, Some(s.reason.failure(" while its image was being pulled"))).await);
        }
    };
    let image = match pulled {
        Ok(i) => {
            sup.touch_image(&image_name);
            i
        }
        Err(failure) => return Err(fail(sup, info, failure).await),
    };

    let run_options = match spec::check_task(&info.spec)
        .and_then(|o| spec::check_policy(&o, &sh.settings.policy, &run_as, sh.layout.root()).map(|()| o))
    {
        Ok(r) => r,
        Err(e) => return Err(fail(sup, info, FailureInfo::user("RunOptionInvalid", e.to_string())).await),
    };
    let lookups = match super::lookups::lookups(sup, &key, &run_options, &run_as, &image).await {
        Ok(l) => l,
        Err(failure) => return Err(fail(sup, info, failure).await),
    };
    // CDI devices; specific GPUs are waited for while others hold them.
    let (mut device_names, want) = match sup.devices_for(&info.spec, &run_options) {
        Ok(d) => d,
        Err(e) => return Err(fail(sup, info, FailureInfo::user("DeviceInjectionFailed", e.to_string())).await),
    };
    if let Some(want) = want {
        let mut stop_rx = stop.clone();
        let held = tokio::select! {
            g = sup.hold_gpus(&key, &want) => g,
            s = stopped(&mut stop_rx) => {
                return Err(sup.complete(info, None, Some(s.reason.failure(" while it waited for GPUs"))).await);
            }
        };
        device_names.extend(held.iter().cloned());
        info.held_gpus = held;
    }
    // A new container id per attempt, recorded before the container is made so
    // that recovery knows which to look for; what an interrupted attempt left goes first.
    if info.attempt > 0 {
        let _ = sh.runtime.remove(&info.container_id()).await;
    }
    info.attempt += 1;
    let cid = info.container_id();
    if let Err(e) = sh.store.amend(info.clone()).await {
        return Err(fail(sup, info, FailureInfo::server("StateDatabaseFailed", e.to_string())).await);
    }
    // `finish` reads the OOM count from here.
    let cgroups_path = format!("/{}/{cid}", sh.settings.namespace);
    let inputs = SpecInputs {
        task: &info.spec,
        run_options: &run_options,
        run_as: &run_as,
        policy: &sh.settings.policy,
        lookups: &lookups,
        image: &image.config,
        node: &sh.node,
        layout: &sh.layout,
        cgroups_path: &cgroups_path,
        job_prep,
    };
    let oci = match spec::build(inputs) {
        Ok(mut s) => {
            let injected = match &sh.settings.devices {
                Some(reg) => reg.inject(&mut s, &device_names).map_err(|e| e.to_string()),
                None => Ok(()),
            };
            if let Err(e) = injected {
                return Err(fail(sup, info, FailureInfo::user("DeviceInjectionFailed", e)).await);
            }
            s
        }
        Err(e) => {
            let code = match e {
                spec::SpecError::User { .. } => "ImageUserNotFound",
                spec::SpecError::RunOption { .. } => "RunOptionInvalid",
                _ => "ContainerCreateFailed",
            };
            return Err(fail(sup, info, FailureInfo::user(code, e.to_string())).await);
        }
    };
    if let Some(s) = stop_requested(stop) {
        return Err(sup.complete(info, None, Some(s.reason.failure(" before it started"))).await);
    }

    let mut labels: HashMap<String, String> = run_options.labels.iter().cloned().collect();
    labels.extend([
        (LABEL_JOB.to_string(), key.job.to_string()),
        (LABEL_TASK.to_string(), key.task.to_string()),
        (LABEL_KEY.to_string(), key.to_string()),
        (LABEL_NODE.to_string(), sh.node.node_id.clone()),
    ]);
    // containerd's shim (root on the host) opens the output files by the
    // paths it is given, and the task's identity owns their directory: it
    // could have swapped them for links to host files by now. The shim is
    // given the files the agent opens here without following links, by the
    // /proc paths of their descriptors, held until the task is created.
    let output = match sh.layout.open_task_output(&key) {
        Ok(files) => files,
        Err(e) => {
            let message =
                format!("cannot open the task's stdout.txt and stderr.txt in {}: {e}", paths.task_dir.display());
            let code = if crate::safefs::is_unsafe(&e) { "UnsafeTaskFile" } else { "ContainerCreateFailed" };
            return Err(fail(sup, info, FailureInfo::user(code, message)).await);
        }
    };
    let by_fd = |f: &std::fs::File| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()));
    let (stdout, stderr) = (by_fd(&output.0), by_fd(&output.1));
    let req = CreateRequest { id: cid.clone(), image, spec: oci, labels, stdout, stderr };
    let created = sh.runtime.create(req).await;
    drop(output);
    if let Err(e) = created {
        let failure = match &e {
            RuntimeError::Unavailable { .. } => FailureInfo::server("ContainerdUnavailable", e.to_string()),
            _ => FailureInfo::user("ContainerCreateFailed", e.to_string()),
        };
        return Err(fail(sup, info, failure).await);
    }
    info.container =
        Some(ContainerInfo { container_id: cid.to_owned(), state: "created".into(), error: String::new() });
    // Written with the next record change (the "may have started" mark, just
    // before Start): recovery finds the container by its id anyway, so one
    // synchronous write fewer on every task's critical path.
    Ok(Prepared::Container(info))
}

/// Starts a created container and waits for it. Returns the completed record,
/// or None if the task was completed elsewhere.
async fn start(
    sup: &Supervisor,
    info: TaskInfo,
    cid: &str,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<TaskInfo> {
    let key = info.key().clone();
    if let Some(s) = stop_requested(stop) {
        return Some(sup.complete(info, None, Some(s.reason.failure(" before it started"))).await);
    }
    // Recorded before Start: after a crash, a task that may have run is never
    // prepared and run again (recovery reports it lost instead).
    let mut info = info;
    info.ever_started = true;
    if let Err(e) = sup.shared.store.amend(info.clone()).await {
        return Some(fail(sup, info, FailureInfo::server("StateDatabaseFailed", e.to_string())).await);
    }
    if let Err(e) = start_with_retry(sup, cid).await {
        let failure = match &e {
            RuntimeError::Unavailable { .. } => FailureInfo::server("ContainerdUnavailable", e.to_string()),
            RuntimeError::NotFound { .. } => FailureInfo::server("ContainerLost", e.to_string()),
            _ => FailureInfo::user("ContainerStartFailed", e.to_string()),
        };
        if let Some(c) = info.container.as_mut() {
            c.error = e.to_string();
        }
        return Some(fail(sup, info, failure).await);
    }
    info.state = TaskState::Running;
    info.ever_started = true;
    info.started_at = Some(SystemTime::now());
    if let Some(c) = info.container.as_mut() {
        c.state = "running".into();
    }
    let info = save(sup, info).await;
    if let Some(Ok(waited)) = info.started_at.map(|s| s.duration_since(info.created_at)) {
        crate::metrics::get().task_start_seconds.observe(waited.as_secs_f64());
    }
    tracing::info!(job_id = %key.job, task_id = %key.task, container_id = %cid, "task running");
    Some(wait(sup, info, cid, stop).await)
}

/// Waits for the process to exit, stopping it on terminate or wall-clock expiry.
async fn wait(sup: &Supervisor, info: TaskInfo, cid: &str, stop: &mut watch::Receiver<Option<Stop>>) -> TaskInfo {
    let rt = sup.shared.runtime.clone();
    // A task that already exited (while the agent was away) is not stopped again.
    if let Ok(TaskStatus::Stopped(status)) = rt.status(cid).await {
        return finish(sup, info, Ok(status), None).await;
    }
    // Subscribed before Wait is called, so an exit between the two is not missed.
    let mut events = sup.shared.exits.subscribe();
    let exit = async {
        let waited = wait_with_retry(sup, cid);
        tokio::pin!(waited);
        loop {
            tokio::select! {
                r = &mut waited => return r,
                ev = events.recv() => {
                    if let Ok(ev) = ev {
                        if ev.container_id == cid {
                            return Ok(ev.status);
                        }
                    }
                }
            }
        }
    };
    let signal = |sig: u32| {
        let rt = rt.clone();
        async move {
            let _ = rt.kill(cid, sig).await;
        }
    };
    let (exit, reason) = supervise(sup, &info, stop, exit, signal).await;
    finish(sup, info, exit, reason).await
}

/// Drives a running process until `exit` resolves: on a terminate request or
/// when `max_wall_clock_time` expires, sends the stop signal (`--stop-signal`,
/// else SIGTERM), then SIGKILL after the grace period (`--stop-timeout`, the
/// terminate's, else the node's). Returns the exit and why the agent stopped it.
pub(super) async fn supervise<T, S, F>(
    sup: &Supervisor,
    info: &TaskInfo,
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
    let options = spec::check_task(&info.spec).ok();
    let stop_signal = options.as_ref().and_then(|o| o.stop_signal).map_or(SIGTERM, |s| s as u32);
    let wall_clock_grace = options
        .as_ref()
        .and_then(|o| o.stop_timeout)
        .map_or(sup.shared.settings.terminate_grace, |s| Duration::from_secs(s.into()));
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
            let cgroups_path = format!("/{}/{}", sup.shared.settings.namespace, info.container_id());
            let oom = status.code != 0 && super::cgroup::oom_killed(&cgroups_path).await;
            let (code, failure) = completion(status.code, reason, oom);
            tracing::info!(job_id = %key.job, task_id = %key.task, exit_code = code, "task completed");
            if let Some(c) = info.container.as_mut() {
                c.state = "stopped".into();
            }
            info.complete(Some(code), failure, status.exited_at.unwrap_or_else(SystemTime::now));
            info.stats = final_stats(&info, &cgroups_path);
            save_durably(sup, info).await
        }
        Err(e) => {
            if let Some(c) = info.container.as_mut() {
                c.error = e.to_string();
            }
            fail(sup, info, FailureInfo::server("ContainerLost", format!("the task's container disappeared: {e}")))
                .await
        }
    }
}

/// What a completed task used, read from its cgroup (still there: the
/// container is deleted only after the result is recorded).
pub(super) fn final_stats(info: &TaskInfo, cgroups_path: &str) -> Option<crate::model::TaskStats> {
    let usage = super::cgroup::usage(cgroups_path)?;
    let wall = match (info.started_at, info.completed_at) {
        (Some(s), Some(c)) => c.duration_since(s).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    Some(super::cgroup::stats(usage, wall, false))
}

/// Resolves once a stop is requested.
pub(super) async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The image of a task, pulled first as its policy says.
async fn image_for(
    sup: &Supervisor,
    name: &str,
    policy: PullPolicy,
    creds: Option<&Credentials>,
) -> Result<ResolvedImage, FailureInfo> {
    let sh = &sup.shared;
    let resolve = || sh.runtime.resolve_image(name, &sh.settings.platform);
    let pull = || async {
        sh.puller.pull(name, creds).await.map_err(|e| match e {
            PullError::PlatformMismatch { .. } => FailureInfo::user("ImagePlatformMismatch", e.to_string()),
            PullError::Store(_) => FailureInfo::server("ImagePullFailed", e.to_string()),
            _ => FailureInfo::user("ImagePullFailed", e.to_string()),
        })
    };
    let first = match policy {
        PullPolicy::Always => {
            pull().await?;
            resolve().await
        }
        PullPolicy::Missing | PullPolicy::Never => resolve().await,
    };
    let resolved = match (first, policy) {
        (Err(RuntimeError::NotFound { .. }), PullPolicy::Missing) => {
            pull().await?;
            resolve().await
        }
        (other, _) => other,
    };
    resolved.map_err(|e| match e {
        RuntimeError::NotFound { .. } if policy == PullPolicy::Never => {
            FailureInfo::user("ImageNotFound", format!("image {name} is not on this node and the pull policy is NEVER"))
        }
        RuntimeError::NotFound { .. } => {
            FailureInfo::server("ImageNotFound", format!("image {name} was pulled but is not in containerd"))
        }
        e @ RuntimeError::BadImage { .. } => {
            let code = if e.to_string().contains("no entry for") { "ImagePlatformMismatch" } else { "ImageInvalid" };
            FailureInfo::user(code, e.to_string())
        }
        e => FailureInfo::server("ContainerdUnavailable", e.to_string()),
    })
}

/// Free bytes for unprivileged users on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    super::disk_space(path).map(|(free, _)| free)
}

/// An instant no task will live to see.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `Wait` on the task, retried while containerd is unreachable (a restart), so an
/// exit that happens meanwhile is still collected. Ends with `NotFound` when the
/// task is gone.
async fn wait_with_retry(sup: &Supervisor, cid: &str) -> Result<ExitStatus, RuntimeError> {
    let mut backoff = Duration::from_millis(100);
    // containerd answering with an error is retried a few times; it being
    // unreachable (a restart) as long as it takes.
    let mut errors_left = 10;
    loop {
        match sup.shared.runtime.wait(cid).await {
            Err(RuntimeError::Unavailable { message }) => {
                tracing::warn!(container_id = %cid, error = %message, "containerd unreachable while waiting; retrying");
            }
            Err(e @ RuntimeError::Failed { .. }) if errors_left > 0 => {
                errors_left -= 1;
                tracing::warn!(container_id = %cid, error = %e, "wait failed; retrying");
            }
            other => return other,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
