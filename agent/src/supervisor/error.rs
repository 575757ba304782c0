//! Errors of the supervisor's operations, as the API reports them.

use crate::containerd::RuntimeError;
use crate::images::ImageError;
use crate::layout::LayoutError;
use crate::model::{IdError, TaskKey, TaskState};
use crate::spec::SpecError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("task {key} already exists")]
    AlreadyExists { key: TaskKey },
    #[error("task {key} not found")]
    NotFound { key: TaskKey },
    #[error("task {key} is {state}; only a completed task can be {action}", state = state.as_str())]
    WrongState { key: TaskKey, state: TaskState, action: &'static str },
    #[error("events up to {} were removed from the log (it starts at {oldest}); list the tasks, then watch from the newest sequence", oldest - 1)]
    Compacted { from: u64, oldest: u64 },
    #[error("sequence {from} is past the newest event ({newest}): the agent's log was reset; list the tasks, then watch from the newest sequence")]
    AheadOfLog { from: u64, newest: u64 },
    #[error("task {key} is completed but its container is still being removed; retry")]
    Busy { key: TaskKey },
    #[error("the agent is still re-attaching to the tasks of its previous run; retry")]
    Recovering,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Pull(#[from] crate::images::PullError),
    #[error("image {image} is used by a task that is not completed")]
    ImageInUse { image: String },
    #[error("the node takes no task while it is {}: {reason}", state.as_str())]
    NotAccepting { state: crate::model::NodeState, reason: String },
    #[error("{reason}")]
    Precondition { reason: String },
    #[error(transparent)]
    Package(crate::staging::StagingError),
    #[error("job {job} is not known on this node")]
    JobNotFound { job: crate::model::JobId },
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists { key } => Error::AlreadyExists { key },
            StoreError::Missing { key } => Error::NotFound { key },
            other => Error::Store(other),
        }
    }
}
