//! The node's lifecycle (its state, its start task) and the jobs it has seen
//! (their preparation and release tasks).

use super::{TaskResult, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};

/// What the scheduler reads to know whether it may place tasks here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// The agent is re-attaching to what it left running.
    Starting,
    /// The start task (with `wait_for_success`) has not succeeded yet.
    WaitingForStartTask,
    /// The start task (with `wait_for_success`) failed.
    StartTaskFailed,
    Idle,
    Running,
    /// containerd is unreachable, the node root is not writable, or its disk is full.
    Unusable,
    /// Scheduling is disabled (`SetNodeScheduling(false)`).
    Offline,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "STARTING",
            NodeState::WaitingForStartTask => "WAITING_FOR_START_TASK",
            NodeState::StartTaskFailed => "START_TASK_FAILED",
            NodeState::Idle => "IDLE",
            NodeState::Running => "RUNNING",
            NodeState::Unusable => "UNUSABLE",
            NodeState::Offline => "OFFLINE",
        }
    }

    /// Whether `RunTask` is accepted in this state. A starting node queues
    /// tasks until recovery is done; an unusable one still accepts them: they
    /// wait (containerd restarting) or fail with the reason (`DiskFull`).
    pub fn takes_tasks(self) -> bool {
        matches!(self, NodeState::Starting | NodeState::Idle | NodeState::Running | NodeState::Unusable)
    }
}

/// The start task as the scheduler configured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartTaskConfig {
    pub spec: TaskSpec,
    /// The node takes no task until the start task succeeded.
    pub wait_for_success: bool,
    /// The boot (`/proc/sys/kernel/random/boot_id`) it last ran in.
    #[serde(default)]
    pub boot_id: String,
}

/// A job's tasks around its tasks on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobConfig {
    pub preparation: Option<TaskSpec>,
    pub release: Option<TaskSpec>,
    /// `ReleaseJob` was called: the job takes no new task here.
    #[serde(default)]
    pub released: bool,
    /// Times the preparation task was run again because its run was lost
    /// (the agent's machine or the task's shim went away while it ran).
    #[serde(default)]
    pub preparation_reruns: u32,
}

/// What the node state is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateInputs {
    pub recovered: bool,
    /// Why the node cannot run tasks, if it cannot.
    pub unusable: Option<String>,
    /// The start task's configuration flag and its record's state and result.
    pub start_task: Option<(bool, TaskState, Option<TaskResult>)>,
    /// How the start task failed (its failure code and message), if it did.
    pub start_task_failure: Option<String>,
    pub scheduling_enabled: bool,
    /// Some task (not a start, preparation or release task) is not completed.
    pub busy: bool,
}

/// The node's state and, for the states that have one, why.
pub fn node_state(i: &StateInputs) -> (NodeState, String) {
    if !i.recovered {
        return (NodeState::Starting, "re-attaching to the tasks the previous agent left".into());
    }
    if let Some(why) = &i.unusable {
        return (NodeState::Unusable, why.clone());
    }
    if let Some((true, state, result)) = i.start_task {
        match (state, result) {
            (TaskState::Completed, Some(TaskResult::Success)) => {}
            (TaskState::Completed, _) => {
                let why = i.start_task_failure.as_deref().unwrap_or("no failure recorded");
                return (NodeState::StartTaskFailed, format!("the start task failed: {why}"));
            }
            _ => return (NodeState::WaitingForStartTask, "the start task has not completed".into()),
        }
    }
    if !i.scheduling_enabled {
        return (NodeState::Offline, "scheduling is disabled".into());
    }
    if i.busy {
        (NodeState::Running, String::new())
    } else {
        (NodeState::Idle, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> StateInputs {
        StateInputs { recovered: true, scheduling_enabled: true, ..Default::default() }
    }

    #[test]
    fn states_in_order_of_precedence() {
        let cases: Vec<(StateInputs, NodeState)> = vec![
            (StateInputs::default(), NodeState::Starting),
            (StateInputs { unusable: Some("disk full".into()), ..ok() }, NodeState::Unusable),
            (
                StateInputs { start_task: Some((true, TaskState::Running, None)), ..ok() },
                NodeState::WaitingForStartTask,
            ),
            (
                StateInputs { start_task: Some((true, TaskState::Completed, Some(TaskResult::Failure))), ..ok() },
                NodeState::StartTaskFailed,
            ),
            (
                StateInputs { start_task: Some((true, TaskState::Completed, Some(TaskResult::Success))), ..ok() },
                NodeState::Idle,
            ),
            // Without wait_for_success a running or failed start task does not matter.
            (
                StateInputs { start_task: Some((false, TaskState::Running, None)), busy: true, ..ok() },
                NodeState::Running,
            ),
            (StateInputs { scheduling_enabled: false, busy: true, ..ok() }, NodeState::Offline),
            (ok(), NodeState::Idle),
        ];
        for (inputs, want) in cases {
            assert_eq!(node_state(&inputs).0, want, "{inputs:?}");
        }
    }

    #[test]
    fn only_usable_states_take_tasks() {
        assert!(NodeState::Idle.takes_tasks() && NodeState::Running.takes_tasks());
        for s in [NodeState::WaitingForStartTask, NodeState::StartTaskFailed, NodeState::Offline] {
            assert!(!s.takes_tasks(), "{s:?}");
        }
    }
}
