//! Steps that wait: a task, and a job's preparation or release task, waits
//! (still holding its slots) for the node's start task; a job's tasks wait
//! for its preparation task, which runs once per node.

use super::{Failure, Task};
use crate::model::TaskKind;
use crate::supervisor::jobs::Gate;
use crate::supervisor::Supervisor;

fn gate_failure(gate: Gate, while_: &'static str) -> Failure {
    match gate {
        Gate::Failed(failure) => Failure::Gate(failure),
        Gate::Stopped(stop) => Failure::Stopped { stop, while_ },
    }
}

pub(super) async fn start_task(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    if t.info.key().kind() == TaskKind::StartTask {
        return Ok(());
    }
    let mut stop = t.stop.clone();
    sup.await_start_task(&mut stop).await.map_err(|g| gate_failure(g, " while it waited for the start task"))
}

pub(super) async fn job_preparation(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    let key = t.info.key().clone();
    t.job_prep = sup.job_has_preparation(&key.job);
    if key.kind() != TaskKind::Task || !t.job_prep {
        return Ok(());
    }
    let mut stop = t.stop.clone();
    sup.await_job_preparation(&key.job, &mut stop)
        .await
        .map_err(|g| gate_failure(g, " while it waited for the job's preparation"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailureCode, FailureInfo};
    use crate::supervisor::{Stop, StopReason};

    #[test]
    fn a_gate_fails_with_its_own_failure_or_the_stop() {
        let own = FailureInfo::new(FailureCode::StartTaskFailed, "it failed");
        let f: FailureInfo = gate_failure(Gate::Failed(own.clone()), " while").into();
        assert_eq!(f, own);
        let stop = Stop { reason: StopReason::Terminated, grace: Default::default() };
        let f: FailureInfo = gate_failure(Gate::Stopped(stop), " while it waited for the start task").into();
        assert_eq!(f.code, "TaskTerminated");
        assert!(f.message.ends_with(" while it waited for the start task"), "{}", f.message);
    }
}
