//! Start-up recovery: the previous agent may have died at any point of a task's
//! life. For every record not yet completed, containerd's view decides:
//!
//! | record                 | containerd task     | action                                  |
//! |------------------------|---------------------|-----------------------------------------|
//! | any                    | running             | re-attach: wait for its exit            |
//! | any                    | created (never ran) | start it (it has never run)             |
//! | any                    | stopped             | record its real exit code               |
//! | ACTIVE / PREPARING     | none                | prepare again from scratch              |
//! | RUNNING                | none                | COMPLETED, `ContainerLost`              |
//!
//! A container is only started from containerd's `Created` state, so a finished
//! task is never run again.

use super::runner::Phase;
use super::{Error, Supervisor};
use crate::containerd::TaskStatus;
use crate::model::{FailureInfo, TaskState};
use tokio::sync::watch;

pub async fn recover(sup: &Supervisor) -> Result<(), Error> {
    let tasks = sup.shared.store.list(None, None).await?;
    let mut requeue = Vec::new();
    for info in tasks {
        let key = info.key().clone();
        let cid = key.container_id();
        if info.state == TaskState::Completed {
            // The container of a completed task may have outlived a crash.
            if info.container.as_ref().is_some_and(|c| c.state != "deleted") {
                let _ = sup.shared.runtime.remove(&cid).await;
            }
            continue;
        }
        let status = sup.shared.runtime.status(&cid).await;
        let phase = match status {
            Ok(TaskStatus::Running) | Ok(TaskStatus::Other) => Some(Phase::Wait),
            Ok(TaskStatus::Created) => Some(Phase::Start),
            Ok(TaskStatus::Stopped(_)) => Some(Phase::Wait),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        tracing::info!(job_id = %key.job, task_id = %key.task, state = info.state.as_str(), ?phase, "recovering task");
        match (phase, info.state) {
            (Some(phase), _) => {
                let slots = info.spec.required_slots;
                let stop = {
                    let mut sched = sup.sched();
                    sched.slots.occupy(slots);
                    let tx = watch::channel(None).0;
                    let rx = tx.subscribe();
                    sched.stops.insert(key.clone(), tx);
                    rx
                };
                let this = sup.clone();
                tokio::spawn(async move { this.run_and_release(key, slots, phase, stop).await });
            }
            (None, TaskState::Active | TaskState::Preparing) => requeue.push(info),
            (None, _) => {
                let failure = FailureInfo::server(
                    "ContainerLost",
                    "the task's container was gone when the agent restarted; its exit code is unknown",
                );
                sup.complete(info, None, Some(failure)).await;
            }
        }
    }
    for info in requeue {
        sup.enqueue(info.key().clone(), info.spec.required_slots);
    }
    Ok(())
}
