//! The container runtime edge: the [`Runtime`] trait the supervisor drives, and
//! its implementation over containerd's gRPC API ([`Containerd`]). This is the
//! only module that touches `containerd_client`.
//!
//! Order of calls for one task, as containerd's own client does it (see
//! containerd/rust-extensions `crates/client/examples/container.rs`):
//! snapshot prepare → container create → task create → start → wait →
//! task delete → container delete → snapshot remove.

mod client;
mod content;
mod files;
mod image;
mod inventory;

pub use client::Containerd;

use crate::model::{ImageConfig, Platform};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("containerd is unreachable: {message}")]
    Unavailable { message: String },
    #[error("{op} failed: {message}")]
    Failed { op: &'static str, message: String },
    /// containerd's connection to the container's shim closed under the
    /// call: the shim died (with it, every container it served).
    #[error("{op} failed: the container's shim died ({message})")]
    ShimLost { op: &'static str, message: String },
    /// containerd could not reach the shim it was handed for a new task: in a
    /// shim group, the group's shim exited as the container joined it.
    #[error("{op} failed: the shim it was given had exited ({message})")]
    ShimGone { op: &'static str, message: String },
    #[error("image {image}: {reason}")]
    BadImage { image: String, reason: String },
    /// The image's index has no entry for the node's platform.
    #[error("image {image}: {reason}")]
    PlatformMismatch { image: String, reason: String },
    /// The data being written failed at its source (a download).
    #[error("{message}")]
    Source { message: String },
    /// The data was refused on its way in (more than declared, a
    /// decompression bomb); nothing of it was committed.
    #[error("{message}")]
    Refused { message: String },
}

impl RuntimeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }

    /// The container's shim died or was gone: the node's trouble, not the
    /// task's.
    pub fn is_shim_failure(&self) -> bool {
        matches!(self, RuntimeError::ShimLost { .. } | RuntimeError::ShimGone { .. })
    }
}

/// Labels on every container (and snapshot and lease) berth creates. The node
/// label scopes start-up cleanup to this agent's own objects.
pub const LABEL_JOB: &str = "berth.job-id";
pub const LABEL_TASK: &str = "berth.task-id";
pub const LABEL_KEY: &str = "berth.task-key";
pub const LABEL_NODE: &str = "berth.node-id";
/// On leases only: the agent process that holds them.
pub const LABEL_BOOT: &str = "berth.boot-id";

/// The label that puts containers into one runc shim (the spec carries the
/// same annotation, `spec::SHIM_GROUP_ANNOTATION`).
pub const SHIM_GROUP_LABEL: &str = "io.containerd.runc.v2.group";

/// Which containers share a shim process (`[containerd] shim_group`; the
/// container's label is [`SHIM_GROUP_LABEL`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShimGroup {
    /// One shim per container (containerd's default).
    #[default]
    None,
    /// One shim per job: a crash of it ends the job's running tasks on the node.
    Job,
    /// One shim for the node: a crash of it ends every running container task.
    Node,
}

impl ShimGroup {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "job" => Some(Self::Job),
            "node" => Some(Self::Node),
            _ => None,
        }
    }

    /// The group value of a task of `job`, None: a shim of its own. The shim's
    /// socket is derived from containerd's address, the namespace and this.
    pub fn group_of(self, job: &str) -> Option<String> {
        match self {
            Self::None => None,
            Self::Job => Some(format!("berth-job-{job}")),
            Self::Node => Some("berth-node".to_owned()),
        }
    }
}

/// A container in the runtime that carries this node's berth labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledContainer {
    pub id: String,
    pub job: String,
    pub task: String,
    pub image: String,
    pub created_at: Option<SystemTime>,
    /// From the container's OCI spec: what it runs and as whom.
    pub args: Vec<String>,
    pub uid: u32,
    pub gid: u32,
}

/// A blob as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

/// containerd's content and snapshot stores, as a pull uses them.
#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// A lease protecting what a pull writes until the image record holds it.
    async fn create_lease(&self, node_id: &str) -> Result<String, RuntimeError>;
    async fn delete_lease(&self, id: &str);
    /// Puts content that already exists (or that another pull wrote) under
    /// `lease` too, so containerd's GC keeps it until this pull's image record
    /// holds it.
    async fn lease_blob(&self, lease: &str, digest: &str);
    /// The same for a committed snapshot this pull builds on.
    async fn lease_snapshot(&self, lease: &str, chain_id: &str);
    async fn has_blob(&self, digest: &str) -> Result<bool, RuntimeError>;
    /// Streams a blob in; containerd verifies size and digest at commit. Returns
    /// the bytes written (0 when the blob was already there).
    async fn write_blob(
        &self,
        lease: &str,
        blob: &BlobRef,
        labels: HashMap<String, String>,
        data: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    ) -> Result<u64, RuntimeError>;
    /// Creates or updates the image record.
    async fn put_image(&self, name: &str, target: &BlobRef) -> Result<(), RuntimeError>;
    async fn has_snapshot(&self, chain_id: &str) -> Result<bool, RuntimeError>;
    /// Applies a layer on `parent` and commits the result as `chain_id`,
    /// checking that the unpacked digest is the config's `diff_id`.
    async fn unpack_layer(
        &self,
        lease: &str,
        layer: &BlobRef,
        parent: Option<&str>,
        chain_id: &str,
        diff_id: &str,
    ) -> Result<UnpackTimes, RuntimeError>;
}

/// Where one layer's unpack spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackTimes {
    /// containerd's `Diff.Apply`: it decompresses, hashes and writes the files.
    pub apply: std::time::Duration,
    /// Preparing the snapshot and committing it.
    pub snapshots: std::time::Duration,
}

/// An image found in the runtime's image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image record's name (the normalised reference).
    pub name: String,
    pub config: ImageConfig,
    /// Chain ID of the image's layers: the parent snapshot of a container.
    pub chain_id: String,
}

/// What is needed to create a container and its task (not yet started).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: String,
    pub image: ResolvedImage,
    pub spec: oci_spec::runtime::Spec,
    pub labels: HashMap<String, String>,
    /// Regular files the shim appends the process's output to.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// As containerd reports it: the exit code, or 128+N when killed by signal N.
    pub code: u32,
    pub exited_at: Option<SystemTime>,
}

/// A task's init process exited (containerd's `/tasks/exit` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub container_id: String,
    pub status: ExitStatus,
}

/// Exit events as they happen; ends (or errs) when the connection to the runtime breaks.
pub type ExitStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ExitEvent, RuntimeError>> + Send>>;

/// The state of a container's task, as far as the runtime knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Stopped(ExitStatus),
    Other,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's version string.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Finds an unpacked image by name and reads its config.
    async fn resolve_image(&self, name: &str, platform: &Platform) -> Result<ResolvedImage, RuntimeError>;
    /// Creates the snapshot, the container and its task (created, not started).
    /// On failure, whatever this call made is removed again.
    async fn create(&self, req: CreateRequest) -> Result<(), RuntimeError>;
    /// Reads small files (absolute paths) of an image's root filesystem, by its
    /// layers' chain ID; None for a file the image does not have.
    async fn image_files(
        &self,
        node_id: &str,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError>;
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    /// Waits for the task's process to exit.
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;
    /// Sends a signal to every process of the task.
    async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError>;
    /// The task's status; `NotFound` when there is no container or no task.
    async fn status(&self, id: &str) -> Result<TaskStatus, RuntimeError>;
    /// Deletes the task, the container and its snapshot; what is missing is skipped.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Image records in our namespace: (name, target digest).
    async fn list_images(&self) -> Result<Vec<(String, String)>, RuntimeError>;
    /// Deletes an image record; containerd's GC then frees its content and snapshots.
    async fn delete_image(&self, name: &str) -> Result<(), RuntimeError>;
    /// Subscribes to the exits of task init processes in our namespace.
    async fn exit_events(&self) -> Result<ExitStream, RuntimeError>;
    /// Containers labelled with this node's id.
    async fn list_labelled(&self, node_id: &str) -> Result<Vec<LabelledContainer>, RuntimeError>;
    /// Removes this node's snapshots and leases that no container in `keep` uses
    /// (left by interrupted work); returns what was removed.
    async fn remove_leftovers(&self, node_id: &str, keep: &[String]) -> Result<Vec<String>, RuntimeError>;
}

#[cfg(test)]
mod tests {
    use super::ShimGroup;

    #[test]
    fn shim_groups_by_setting() {
        assert_eq!(ShimGroup::parse("none").map(|g| g.group_of("j1")), Some(None));
        assert_eq!(ShimGroup::parse("job").and_then(|g| g.group_of("j1")).as_deref(), Some("berth-job-j1"));
        assert_ne!(ShimGroup::Job.group_of("j1"), ShimGroup::Job.group_of("j2"), "one shim per job");
        assert_eq!(ShimGroup::parse("node").and_then(|g| g.group_of("j1")), ShimGroup::Node.group_of("j2"));
        assert_eq!(ShimGroup::parse("pod"), None);
        assert_eq!(ShimGroup::default(), ShimGroup::None);
    }
}
