//! Why preparing or starting a task failed, typed; and the one place where such
//! an error becomes the task's `FailureInfo` (its code and category come from
//! `model::FailureCode`).

use super::admission::Refusal;
use super::Stop;
use crate::containerd::RuntimeError;
use crate::images::PullError;
use crate::model::{FailureCode as C, FailureInfo, PullPolicy};
use crate::spec::SpecError;

/// A step's failure.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Admission refused the task when its runner re-checked it.
    Refused(Refusal),
    /// The node root is below `min_free_mb`, or filled up.
    DiskFull(String),
    /// Making the task's directories failed.
    TaskDir(crate::layout::LayoutError),
    /// Pulling the image failed.
    Pull(PullError),
    /// Resolving the image in containerd failed (after a pull, if any).
    Resolve { image: String, policy: PullPolicy, error: RuntimeError },
    /// A host lookup for the spec failed (bind source, device, `--env-file`).
    Lookup(SpecError),
    /// Reading the image's files from containerd failed.
    ImageFiles(RuntimeError),
    /// Building the OCI spec failed.
    Spec(SpecError),
    /// CDI injection failed.
    Devices(String),
    /// Opening `stdout.txt`/`stderr.txt` failed.
    Output { task_dir: std::path::PathBuf, error: std::io::Error },
    /// containerd refused or could not make the container.
    Create(RuntimeError),
    /// containerd could not start the task.
    Start(RuntimeError),
    /// The state database did not take a record that must be written before
    /// the next side effect.
    Store(String),
    /// A gate (the start task, the job's preparation) failed the task.
    Gate(FailureInfo),
    /// A stop request (terminate, wall clock) came while the step waited.
    Stopped { stop: Stop, while_: &'static str },
    /// The container vanished before its exit was seen.
    ContainerGone(RuntimeError),
    /// A resource file could not be downloaded.
    Download(crate::staging::StagingError),
    /// An application package could not be installed.
    Package(crate::staging::StagingError),
    /// The task's network could not be set up.
    Network(crate::network::NetworkError),
    /// `--platform` names one this node cannot run.
    Platform(String),
    /// A blocking job of the agent failed (a panic): a bug.
    Internal(String),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

impl From<Failure> for FailureInfo {
    fn from(f: Failure) -> Self {
        let new = FailureInfo::new;
        match f {
            Failure::Refused(r) => {
                let code = match &r {
                    Refusal::Identity(_) => C::UserIdentityInvalid,
                    Refusal::Image(_) => C::ImageReferenceInvalid,
                    Refusal::Devices(_) => C::DeviceInjectionFailed,
                    Refusal::RunOption(_) | Refusal::Invalid { .. } => C::RunOptionInvalid,
                };
                new(code, r.to_string())
            }
            Failure::DiskFull(m) => new(C::DiskFull, m),
            Failure::TaskDir(e) => match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::ENOSPC as i32 => new(C::DiskFull, e.to_string()),
                _ if e.is_unsafe_file() => new(
                    C::UnsafeTaskFile,
                    format!("{e}: a task put it there; the agent opens nothing but regular files in task directories"),
                ),
                _ => new(C::TaskDirectoryCreateFailed, e.to_string()),
            },
            Failure::Pull(e) => match e {
                PullError::PlatformMismatch { .. } => new(C::ImagePlatformMismatch, e.to_string()),
                PullError::Store(_) => new(C::ImageStoreFailed, e.to_string()),
                _ => new(C::ImagePullFailed, e.to_string()),
            },
            Failure::Resolve { image, policy, error } => match error {
                RuntimeError::NotFound { .. } if policy == PullPolicy::Never => {
                    new(C::ImageNotFound, format!("image {image} is not on this node and the pull policy is NEVER"))
                }
                RuntimeError::NotFound { .. } => {
                    new(C::ImageStoreFailed, format!("image {image} was pulled but is not in containerd"))
                }
                e @ RuntimeError::PlatformMismatch { .. } => new(C::ImagePlatformMismatch, e.to_string()),
                e @ RuntimeError::BadImage { .. } => new(C::ImageInvalid, e.to_string()),
                e => new(C::ContainerdUnavailable, e.to_string()),
            },
            Failure::Lookup(e) => new(C::RunOptionInvalid, e.to_string()),
            Failure::ImageFiles(e) => new(C::ImageStoreFailed, format!("cannot read the image's users: {e}")),
            Failure::Spec(e) => {
                let code = match e {
                    SpecError::User { .. } => C::ImageUserNotFound,
                    SpecError::RunOption { .. } => C::RunOptionInvalid,
                    _ => C::ContainerCreateFailed,
                };
                new(code, e.to_string())
            }
            Failure::Devices(m) => new(C::DeviceInjectionFailed, m),
            Failure::Platform(m) => new(C::ImagePlatformMismatch, m),
            Failure::Download(e) if e.is_server() => {
                FailureInfo::on_the_node(C::ResourceFileDownloadFailed, e.to_string())
            }
            Failure::Download(e) => new(C::ResourceFileDownloadFailed, e.to_string()),
            Failure::Package(e) if e.is_server() => {
                FailureInfo::on_the_node(C::ApplicationPackageFailed, e.to_string())
            }
            Failure::Package(e) => new(C::ApplicationPackageFailed, e.to_string()),
            Failure::Output { task_dir, error } => {
                let code = if crate::safefs::is_unsafe(&error) { C::UnsafeTaskFile } else { C::ContainerCreateFailed };
                let dir = task_dir.display();
                new(code, format!("cannot open the task's stdout.txt and stderr.txt in {dir}: {error}"))
            }
            Failure::Create(e) => match e {
                RuntimeError::Unavailable { .. } => new(C::ContainerdUnavailable, e.to_string()),
                // The shim died or was gone after the create's tries: the node's.
                _ if e.is_shim_failure() => FailureInfo::on_the_node(C::ContainerCreateFailed, e.to_string()),
                _ => new(C::ContainerCreateFailed, e.to_string()),
            },
            Failure::Start(e) => match e {
                RuntimeError::Unavailable { .. } => new(C::ContainerdUnavailable, e.to_string()),
                RuntimeError::NotFound { .. } => new(C::ContainerLost, e.to_string()),
                _ => new(C::ContainerStartFailed, e.to_string()),
            },
            Failure::Store(m) => new(C::StateDatabaseFailed, m),
            Failure::Gate(f) => f,
            Failure::Stopped { stop, while_ } => stop.reason.failure(while_),
            Failure::ContainerGone(e) => new(C::ContainerLost, format!("the task's container disappeared: {e}")),
            Failure::Network(e @ crate::network::NetworkError::PortInUse { .. }) => {
                new(C::NetworkSetupFailed, e.to_string())
            }
            Failure::Network(e) => {
                FailureInfo::on_the_node(C::NetworkSetupFailed, format!("setting up the task's network: {e}"))
            }
            Failure::Internal(m) => new(C::AgentInternalError, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FailureCategory;
    use std::io;

    fn code(f: Failure) -> (&'static str, FailureCategory) {
        let info = FailureInfo::from(f);
        (info.code.as_str(), info.category)
    }

    #[test]
    fn each_failure_has_its_code() {
        use FailureCategory::{ServerError as S, UserError as U};
        let rt = |what: &str| RuntimeError::NotFound { what: what.into() };
        let unavailable = || RuntimeError::Unavailable { message: "down".into() };
        let failed = || RuntimeError::Failed { op: "create", message: "no".into() };
        let create = |source| crate::layout::LayoutError::Create { path: "/t".into(), source };
        let enospc = io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        let cases: Vec<(Failure, (&str, FailureCategory))> = vec![
            (Failure::Refused(Refusal::Identity("x".into())), ("UserIdentityInvalid", U)),
            (Failure::Refused(Refusal::Devices("x".into())), ("DeviceInjectionFailed", U)),
            (Failure::Refused(Refusal::RunOption(SpecError::NoCommand)), ("RunOptionInvalid", U)),
            (Failure::DiskFull("x".into()), ("DiskFull", S)),
            (
                Failure::Network(crate::network::NetworkError::PortInUse {
                    port: crate::model::PortMapping {
                        host_ip: None,
                        host_port: 8080,
                        container_port: 80,
                        protocol: crate::model::Protocol::Tcp,
                    },
                    by: "c".into(),
                }),
                ("NetworkSetupFailed", U),
            ),
            (Failure::Network(crate::network::NetworkError::NoAddress), ("NetworkSetupFailed", S)),
            (Failure::TaskDir(create(enospc)), ("DiskFull", S)),
            (
                Failure::TaskDir(create(io::Error::from(io::ErrorKind::PermissionDenied))),
                ("TaskDirectoryCreateFailed", S),
            ),
            (
                Failure::Resolve { image: "i".into(), policy: PullPolicy::Never, error: rt("image") },
                ("ImageNotFound", U),
            ),
            (
                Failure::Resolve { image: "i".into(), policy: PullPolicy::Missing, error: rt("image") },
                ("ImageStoreFailed", S),
            ),
            (
                Failure::Resolve {
                    image: "i".into(),
                    policy: PullPolicy::Missing,
                    error: RuntimeError::PlatformMismatch { image: "i".into(), reason: "no entry".into() },
                },
                ("ImagePlatformMismatch", U),
            ),
            (
                Failure::Resolve {
                    image: "i".into(),
                    policy: PullPolicy::Missing,
                    error: RuntimeError::BadImage { image: "i".into(), reason: "bad".into() },
                },
                ("ImageInvalid", U),
            ),
            (
                Failure::Resolve { image: "i".into(), policy: PullPolicy::Always, error: unavailable() },
                ("ContainerdUnavailable", S),
            ),
            (Failure::Spec(SpecError::User { reason: "x".into() }), ("ImageUserNotFound", U)),
            (Failure::Spec(SpecError::NoCommand), ("ContainerCreateFailed", U)),
            (Failure::ImageFiles(failed()), ("ImageStoreFailed", S)),
            (Failure::Create(unavailable()), ("ContainerdUnavailable", S)),
            (Failure::Create(failed()), ("ContainerCreateFailed", U)),
            (
                Failure::Create(RuntimeError::ShimLost { op: "create task", message: "ttrpc: closed".into() }),
                ("ContainerCreateFailed", S),
            ),
            (
                Failure::Create(RuntimeError::ShimGone { op: "create task", message: "dial unix".into() }),
                ("ContainerCreateFailed", S),
            ),
            (Failure::Start(rt("task")), ("ContainerLost", S)),
            (Failure::Start(failed()), ("ContainerStartFailed", U)),
            (Failure::Store("x".into()), ("StateDatabaseFailed", S)),
            (Failure::Internal("x".into()), ("AgentInternalError", S)),
            (
                Failure::Stopped {
                    stop: Stop { reason: super::super::StopReason::Terminated, grace: Default::default() },
                    while_: " before it started",
                },
                ("TaskTerminated", U),
            ),
        ];
        for (f, want) in cases {
            let what = format!("{f:?}");
            assert_eq!(code(f), want, "{what}");
        }
    }
}
