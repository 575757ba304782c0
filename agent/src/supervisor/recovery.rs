//! Start-up recovery: the previous agent may have died at any point of a task's
//! life. For every record not yet completed, containerd's view decides:
//!
//! | record                 | containerd task     | action                                  |
//! |------------------------|---------------------|-----------------------------------------|
//! | any                    | running             | re-attach: wait for its exit            |
//! | any                    | created (never ran) | start it (it has never run)             |
//! | any                    | stopped             | record its real exit code               |
//! | never started          | none                | prepare again from scratch              |
//! | started (maybe)        | none                | COMPLETED, `ContainerLost`              |
//!
//! A host task (no container settings) that may have started is waited for:
//! its shim still runs, or wrote its exit status, or neither (a reboot): then it
//! completes with `HostProcessLost`. One that never started is prepared again.
//! After a rebuild, host tasks are adopted from their shims' spec files.
//!
//! A container is only started from containerd's `Created` state, so a finished
//! task is never run again.
//!
//! Containers with this node's labels but no record are removed, unless the
//! state database was lost (`rebuild`): then they are adopted (a record is made
//! from their labels and spec) and task directories without a record become
//! COMPLETED with `TaskRecordLost`. Network attachments (CNI) of containers
//! that do not go on are deleted: their addresses, rules and namespaces are
//! released. Snapshots and leases of interrupted work are removed last.

use super::runner::Phase;
use super::{Error, Supervisor};
use crate::containerd::{LabelledContainer, TaskStatus};
use crate::model::{
    ContainerSettings, FailureCode, FailureInfo, RunAs, TaskConstraints, TaskInfo, TaskKey, TaskSpec, TaskState,
    UserIdentity,
};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What recovery did, for the log and `GetNode`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub reattached: usize,
    pub requeued: usize,
    pub lost: usize,
    pub adopted: usize,
    pub removed_containers: usize,
    pub records_lost: usize,
    /// Network attachments of containers that were gone (CNI DEL done).
    pub networks_removed: usize,
    /// Tasks that ran when the machine rebooted, queued again (also counted in `requeued`).
    pub requeued_after_reboot: usize,
}

/// A record for a container found without one (the database was lost).
fn adopted_record(c: &LabelledContainer, key: TaskKey) -> TaskInfo {
    let spec = TaskSpec {
        key,
        command_line: shell_words::join(&c.args),
        container: Some(ContainerSettings {
            image: c.image.clone(),
            run_options: String::new(),
            working_directory: Default::default(),
            pull_policy: Default::default(),
            credentials: None,
            devices: vec![],
            host_mounts: None,
        }),
        environment: Default::default(),
        user: UserIdentity::default(),
        constraints: TaskConstraints::default(),
        required_slots: 1,
        staging: Default::default(),
    };
    let mut info = TaskInfo::new(spec, c.created_at.unwrap_or_else(SystemTime::now));
    // The container's process user is what is known of who it ran as.
    info.run_as = Some(RunAs { uid: c.uid, gid: c.gid, groups: vec![], admin: c.uid == 0 });
    // It may have run: a stopped one's exit is collected, never taken for a
    // retry's leftover (a created one is started, as before).
    info.ever_started = true;
    info
}

/// A record for a host task found without one (the database was lost): it
/// may have started, so it is only ever waited for.
fn adopted_host_record(key: TaskKey, process: &crate::spec::HostProcess) -> TaskInfo {
    let spec = TaskSpec {
        required_slots: u32::from(key.kind() == crate::model::TaskKind::Task),
        staging: Default::default(),
        key,
        command_line: shell_words::join(&process.args),
        container: None,
        environment: Default::default(),
        user: UserIdentity::default(),
        constraints: TaskConstraints::default(),
    };
    let mut info = TaskInfo::new(spec, SystemTime::now());
    info.ever_started = true;
    let admin = process.uid == 0;
    info.run_as = Some(RunAs { uid: process.uid, gid: process.gid, groups: process.groups.clone(), admin });
    info
}

/// Kills and removes a container that no record accounts for.
async fn remove_orphan(sup: &Supervisor, c: &LabelledContainer) {
    tracing::warn!(container_id = %c.id, job_id = %c.job, task_id = %c.task,
        "removing a container of this node that has no task record");
    let rt = &sup.shared.runtime;
    if matches!(rt.status(&c.id).await, Ok(TaskStatus::Running | TaskStatus::Other)) {
        let _ = rt.kill(&c.id, 9).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), rt.wait(&c.id)).await;
    }
    if let Err(e) = rt.remove(&c.id).await {
        tracing::warn!(container_id = %c.id, error = %e, "cannot remove orphan container");
    }
}

/// The store setting that holds the boot the agent last recovered in.
const LAST_BOOT: &str = "last_boot_id";

/// A task that ran when the machine went down, queued again (`[tasks]
/// requeue_after_reboot`): not started, its earlier attempt's files gone with
/// the boot (a host task's shim state is removed here, a container's by the
/// next attempt).
async fn requeue_after_reboot(sup: &Supervisor, mut info: TaskInfo) -> Result<TaskInfo, Error> {
    let key = info.key().clone();
    tracing::warn!(job_id = %key.job, task_id = %key.task, "the node rebooted while the task ran; it is queued again");
    if info.spec.container.is_none() {
        let _ = sup.shared.settings.host.remove(&info.container_id()).await;
    }
    info.requeue_count += 1;
    info.last_requeue_at = Some(SystemTime::now());
    info.state = TaskState::Active;
    info.ever_started = false;
    info.started_at = None;
    info.stats = None;
    info.held_gpus.clear();
    Ok(sup.shared.store.update(info).await?)
}

pub(super) async fn recover(sup: &Supervisor, rebuild: bool) -> Result<Report, Error> {
    let mut report = Report::default();
    let boot = sup.shared.settings.boot_id.clone();
    let last_boot: Option<String> = sup.shared.store.setting(LAST_BOOT).await?;
    let rebooted = !boot.is_empty() && last_boot.as_ref().is_some_and(|b| *b != boot);
    let requeue_lost = rebooted && sup.shared.settings.requeue_after_reboot;
    let node_id = sup.shared.node.node_id.clone();
    let labelled = sup.shared.runtime.list_labelled(&node_id).await?;
    let mut records = sup.shared.store.list(None, None).await?;
    let known: HashSet<String> = records.iter().map(TaskInfo::container_id).collect();
    // Network attachments made before this start; those of containers that
    // go on (re-attached, or already being handled) are kept below.
    let attached = sup.shared.settings.network.attachments();
    let mut networks_in_use: HashSet<String> = HashSet::new();

    for c in labelled.iter().filter(|c| !known.contains(&c.id)) {
        let key = TaskKey::new(&c.job, &c.task).ok();
        let attempt = key.as_ref().and_then(|k| k.attempt_of(&c.id));
        let adoptable = rebuild && !records.iter().any(|r| Some(r.key()) == key.as_ref());
        match (key, attempt) {
            (Some(key), Some(attempt)) if adoptable => {
                tracing::warn!(job_id = %key.job, task_id = %key.task, container_id = %c.id,
                    "adopting a container found without a record (the state database was rebuilt)");
                let mut info = adopted_record(c, key);
                info.attempt = attempt;
                records.push(sup.shared.store.insert(info).await?);
                report.adopted += 1;
            }
            _ => {
                remove_orphan(sup, c).await;
                report.removed_containers += 1;
            }
        }
    }

    // Host task files that no record accounts for: adopted after a rebuild
    // (their shims still run, or left their exit status), else their
    // processes are killed.
    let host_ids: HashSet<String> =
        records.iter().filter(|r| r.spec.container.is_none()).map(TaskInfo::container_id).collect();
    let host = &sup.shared.settings.host;
    for id in host.list() {
        if host_ids.contains(&id) {
            continue;
        }
        let adoptable = host.adoptable(&id).and_then(|(key, process)| {
            let attempt = key.attempt_of(&id)?;
            (rebuild && !records.iter().any(|r| r.key() == &key)).then_some((key, process, attempt))
        });
        match adoptable {
            Some((key, process, attempt)) => {
                tracing::warn!(job_id = %key.job, task_id = %key.task, id = %id,
                    "adopting a host task found without a record (the state database was rebuilt)");
                let mut info = adopted_host_record(key, &process);
                info.attempt = attempt;
                records.push(sup.shared.store.insert(info).await?);
                report.adopted += 1;
            }
            None => {
                tracing::warn!(id = %id, "removing a host task that has no task record");
                let _ = host.remove(&id).await;
                report.removed_containers += 1;
            }
        }
    }

    let mut requeue = Vec::new();
    for info in records {
        let key = info.key().clone();
        let cid = info.container_id();
        if sup.sched().stops.contains_key(&key) {
            networks_in_use.insert(cid);
            continue; // already being handled (recovery is retried after a failure)
        }
        let host = info.spec.container.is_none();
        if info.state == TaskState::Completed {
            // The container (or host shim files) of a completed task may have outlived a crash.
            if host && sup.shared.settings.host.known(&cid) {
                let _ = sup.shared.settings.host.remove(&cid).await;
            } else if info.container.as_ref().is_some_and(|c| c.state != "deleted") {
                let _ = sup.shared.runtime.remove(&cid).await;
            }
            continue;
        }
        let phase = match host {
            // Its process exited and was recorded; its uploads resume.
            _ if info.uploads.is_some() => Some(Phase::Upload),
            // No host process outlives the machine.
            true if info.ever_started && requeue_lost => None,
            // A host task that may have started: its shim, or its exit record,
            // or neither (HostProcessLost), is what the runner finds.
            true if info.ever_started => Some(Phase::Wait),
            true => None,
            false => match sup.shared.runtime.status(&cid).await {
                // The attempt before a retry (recorded, not yet removed).
                Ok(TaskStatus::Stopped(_)) if !info.ever_started => None,
                Ok(TaskStatus::Running | TaskStatus::Other | TaskStatus::Stopped(_)) => Some(Phase::Wait),
                Ok(TaskStatus::Created) => Some(Phase::Start),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
        };
        tracing::info!(job_id = %key.job, task_id = %key.task, state = info.state.as_str(), ?phase, "recovering task");
        match (phase, info.state) {
            (Some(phase), _) => {
                networks_in_use.insert(cid.clone());
                let slots = info.spec.required_slots;
                let stop = {
                    let mut sched = sup.sched();
                    sched.slots.occupy(slots);
                    let tx = watch::channel(None).0;
                    let rx = tx.subscribe();
                    sched.stops.insert(key.clone(), Some(tx));
                    rx
                };
                let this = sup.clone();
                tokio::spawn(async move { this.run_and_release(key, slots, phase, stop).await });
                report.reattached += 1;
            }
            (None, TaskState::Active | TaskState::Preparing) if !info.ever_started => requeue.push(info),
            (None, _) if requeue_lost => {
                requeue.push(requeue_after_reboot(sup, info).await?);
                report.requeued_after_reboot += 1;
            }
            (None, _) => {
                let failure = FailureInfo::new(
                    FailureCode::ContainerLost,
                    "the task's container was gone when the agent restarted; its exit code is unknown",
                );
                sup.complete(info, None, Some(failure)).await;
                report.lost += 1;
            }
        }
    }
    report.requeued = requeue.len();
    let total = sup.shared.settings.task_slots;
    for info in requeue {
        // The node may have been reconfigured with fewer slots since it was accepted.
        if info.spec.required_slots > total {
            let failure = FailureInfo::new(
                FailureCode::TaskSlotsUnavailable,
                format!("the task needs {} slots; this node now has {total}", info.spec.required_slots),
            );
            sup.complete(info, None, Some(failure)).await;
            continue;
        }
        sup.enqueue(info.key().clone(), info.spec.required_slots);
    }

    for cid in attached.iter().filter(|c| !networks_in_use.contains(*c)) {
        tracing::info!(container_id = %cid, "removing the network of a container that is gone");
        match sup.shared.settings.network.detach(cid).await {
            Ok(()) => report.networks_removed += 1,
            Err(e) => tracing::warn!(container_id = %cid, error = %e, "cannot remove a leftover task network"),
        }
    }

    if rebuild {
        report.records_lost = record_lost_task_dirs(sup).await?;
    }
    if last_boot.as_deref() != Some(boot.as_str()) {
        sup.shared.store.put_setting(LAST_BOOT, Some(&boot)).await?;
    }
    let keep: Vec<String> = sup.shared.runtime.list_labelled(&node_id).await?.into_iter().map(|c| c.id).collect();
    for what in sup.shared.runtime.remove_leftovers(&node_id, &keep).await? {
        tracing::info!(removed = %what, "removed leftover of interrupted work");
    }
    Ok(report)
}

/// Task directories without a record (the database was lost): their tasks are
/// over, but their results are unknown.
async fn record_lost_task_dirs(sup: &Supervisor) -> Result<usize, Error> {
    let layout = sup.shared.layout.clone();
    let dirs = tokio::task::spawn_blocking(move || layout.list_task_dirs()).await.unwrap_or_default();
    let mut n = 0;
    for key in dirs {
        if sup.shared.store.get(&key).await?.is_some() {
            continue;
        }
        let spec = TaskSpec {
            key,
            command_line: String::new(),
            container: None,
            environment: Default::default(),
            user: UserIdentity::default(),
            constraints: TaskConstraints::default(),
            required_slots: 1,
            staging: Default::default(),
        };
        let mut info = sup.shared.store.insert(TaskInfo::new(spec, SystemTime::now())).await?;
        let failure = FailureInfo::new(
            FailureCode::TaskRecordLost,
            "the agent's state database was lost; this task had finished and its result is unknown",
        );
        info.complete(None, Some(failure), SystemTime::now());
        sup.shared.store.update(info).await?;
        n += 1;
    }
    Ok(n)
}
