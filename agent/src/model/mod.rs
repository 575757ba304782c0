//! Domain types shared by every module: task specs and records, ids, node
//! facts, image facts, failure codes.
//! No transport types here (the scheduler API's generated types live in `api/`,
//! containerd's in `containerd/`).

mod credentials;
mod failure;
mod identity;
mod ids;
mod image;
mod lifecycle;
mod network;
mod node;
mod packages;
mod staging;
mod task;

pub use credentials::Credentials;
pub use failure::{FailureCategory, FailureCode, FailureInfo};
pub use identity::{AutoUserScope, AutoUsers, Elevation, Identities, IdentityError, RunAs, UserAccount, UserIdentity};
pub use ids::{IdError, JobId, TaskId, TaskKey, TaskKind, JOB_PREPARATION, JOB_RELEASE, NODE_JOB, START_TASK};
pub use image::{chain_id, normalize, ImageConfig, ImageError, Platform};
pub use lifecycle::{node_state, JobConfig, NodeState, StartTaskConfig, StateInputs};
pub use network::{DnsSettings, NetworkMode, NetworkRequest, PortMapping, Protocol};
pub use node::NodeFacts;
pub use packages::{check_packages, AppPackage, PackageId, MAX_APP_PACKAGES};
pub use staging::{
    file_mode, relative_path, OutputFile, ResourceFile, ResourceSource, SecretUrl, Staging, UploadCondition,
    MAX_OUTPUT_FILES, MAX_RESOURCE_FILES,
};
pub use task::{
    AttemptResult, ContainerInfo, ContainerSettings, HostMount, HostMountSource, PullPolicy, TaskConstraints, TaskInfo,
    TaskResult, TaskSpec, TaskState, TaskStats, Uploads, WorkingDirMode, DEFAULT_RETENTION,
};
