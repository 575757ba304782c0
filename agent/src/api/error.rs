//! The one place where errors become gRPC statuses. Messages say what was wrong
//! with the request, never a Debug dump.

use crate::containerd::RuntimeError;
use crate::images::PullError;
use crate::layout::LayoutError;
use crate::supervisor::Error;
use tonic::{Code, Status};

/// A request that could not be decoded (a missing or malformed field).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    pub field: &'static str,
    pub reason: String,
}

impl DecodeError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

impl From<DecodeError> for Status {
    fn from(e: DecodeError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn code_of(e: &Error) -> Code {
    match e {
        Error::Id(_) | Error::Spec(_) | Error::Image(_) | Error::Invalid { .. } => Code::InvalidArgument,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::NotFound { .. } => Code::NotFound,
        Error::WrongState { .. } => Code::FailedPrecondition,
        Error::Compacted { .. } | Error::AheadOfLog { .. } => Code::OutOfRange,
        Error::Busy { .. } | Error::ImageInUse { .. } => Code::FailedPrecondition,
        Error::NotAccepting { .. } | Error::Precondition { .. } => Code::FailedPrecondition,
        Error::JobNotFound { .. } => Code::NotFound,
        Error::Recovering => Code::Unavailable,
        Error::Package(crate::staging::StagingError::User(_)) => Code::FailedPrecondition,
        Error::Package(crate::staging::StagingError::Server(_)) => Code::Unavailable,
        Error::Layout(LayoutError::UnsafePath { .. } | LayoutError::NotAFile { .. }) => Code::InvalidArgument,
        Error::Layout(LayoutError::NoSuchFile { .. }) => Code::NotFound,
        Error::Layout(_) | Error::Store(_) => Code::Internal,
        Error::Runtime(RuntimeError::Unavailable { .. }) => Code::Unavailable,
        Error::Runtime(RuntimeError::NotFound { .. }) => Code::NotFound,
        Error::Runtime(_) => Code::Internal,
        Error::Pull(p) => match p {
            PullError::Unauthorized(_) => Code::PermissionDenied,
            PullError::NotFound(_) => Code::NotFound,
            PullError::PlatformMismatch { .. } => Code::FailedPrecondition,
            PullError::Schema1 { .. } | PullError::Invalid { .. } => Code::InvalidArgument,
            PullError::Blob { .. } => Code::DataLoss,
            PullError::Timeout { .. } => Code::DeadlineExceeded,
            PullError::Registry(_) | PullError::Store(_) => Code::Unavailable,
        },
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = code_of(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskKey, TaskState};
    use crate::spec::SpecError;

    #[test]
    fn codes() {
        let key = TaskKey::new("j", "t").unwrap();
        let cases: Vec<(Error, Code)> = vec![
            (Error::Id(crate::model::JobId::new("a/b").unwrap_err()), Code::InvalidArgument),
            (Error::Spec(SpecError::NoCommand), Code::InvalidArgument),
            (Error::AlreadyExists { key: key.clone() }, Code::AlreadyExists),
            (Error::NotFound { key: key.clone() }, Code::NotFound),
            (Error::WrongState { key, state: TaskState::Running, action: "deleted" }, Code::FailedPrecondition),
            (Error::Layout(LayoutError::UnsafePath { path: "../x".into() }), Code::InvalidArgument),
            (Error::Layout(LayoutError::NoSuchFile { path: "x".into() }), Code::NotFound),
            (Error::Runtime(RuntimeError::Unavailable { message: "down".into() }), Code::Unavailable),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), want, "{msg}");
            assert_eq!(s.message(), msg);
        }
    }
}
