//! Facts about the node that go into every task's spec and environment.

use std::path::PathBuf;

/// What the agent knows about its node, gathered once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub node_id: String,
    pub pool_id: String,
    pub account_name: String,
    /// `AZ_BATCH_ACCOUNT_URL`, when configured.
    pub account_url: Option<String>,
    pub is_dedicated: bool,
    /// `AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES`: the free space
    /// below which the node takes no task (`[node] min_free_mb`).
    pub reserved_disk_bytes: u64,
    /// `AZ_BATCH_NODE_ROOT_DIR`: absolute, no trailing slash.
    pub root_dir: PathBuf,
    pub hostname: String,
    /// OCI platform values, e.g. "linux", "amd64".
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Host files bind-mounted read-only into every container because it shares
    /// the node's network: `/etc/resolv.conf`, `/etc/hosts` (those that exist).
    pub network_files: Vec<PathBuf>,
}
