//! The agent's configuration file (TOML, `berth-agent --config FILE`).
//!
//! Parsed strictly (unknown keys are an error, so a typo never silently falls back
//! to a default), then validated into [`Config`]. Every key has a default that
//! serves a single node without a file and listens only locally.

mod network;
mod security;
mod staging;

pub use staging::StagingConfig;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The parser's message and where, never the offending line itself: it may
    /// hold a registry password.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    containerd: RawContainerd,
    #[serde(default)]
    tasks: RawTasks,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    registries: RawRegistries,
    #[serde(default)]
    images: RawImages,
    #[serde(default)]
    users: Vec<security::RawUser>,
    #[serde(default)]
    auto_users: security::RawAutoUsers,
    #[serde(default)]
    policy: security::RawPolicy,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    devices: RawDevices,
    #[serde(default)]
    staging: staging::RawStaging,
    #[serde(default)]
    network: network::RawNetwork,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    cdi_spec_dirs: Option<Vec<PathBuf>>,
    cdi_output_dir: Option<PathBuf>,
    gpu_classes: Option<Vec<String>>,
    inject_all_gpus: Option<bool>,
    inject_rdma: Option<bool>,
    share_gpus: Option<bool>,
    sysfs_root: Option<PathBuf>,
    dev_root: Option<PathBuf>,
    ipc_lock_non_admin: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImages {
    #[serde(default)]
    prefetch: Vec<String>,
    gc_high_percent: Option<u8>,
    gc_low_percent: Option<u8>,
    gc_interval_seconds: Option<u64>,
    filesystem: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegistries {
    #[serde(default)]
    insecure: Vec<String>,
    #[serde(default)]
    ca_files: Vec<PathBuf>,
    #[serde(default)]
    credentials: Vec<RawCredentials>,
    max_concurrent_downloads: Option<usize>,
    pull_timeout_seconds: Option<u64>,
    no_progress_timeout_seconds: Option<u64>,
    max_manifest_bytes: Option<u64>,
    max_layer_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    server: String,
    username: Option<String>,
    password: Option<String>,
    identity_token: Option<String>,
}

impl std::fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawCredentials({}, <redacted>)", self.server)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    root_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    id: Option<String>,
    pool_id: Option<String>,
    account_name: Option<String>,
    account_url: Option<String>,
    is_dedicated: Option<bool>,
    task_slots: Option<u32>,
    min_free_mb: Option<u64>,
    rerun_start_task_after_reboot: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    allowed_subjects: Vec<String>,
    socket_group: Option<String>,
    max_message_bytes: Option<usize>,
    insecure_loopback: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContainerd {
    socket: Option<PathBuf>,
    namespace: Option<String>,
    snapshotter: Option<String>,
    runtime: Option<String>,
    shim_group: Option<String>,
    root: Option<PathBuf>,
    state: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTasks {
    terminate_grace_seconds: Option<u64>,
    retention_sweep_seconds: Option<u64>,
    history_limit: Option<usize>,
    event_log_keep: Option<u64>,
    requeue_after_reboot: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

/// TLS of a TCP listener: the agent's certificate and key (PEM, re-read on
/// SIGHUP); with `client_ca`, mutual TLS: a client must present a certificate
/// that CA signed, and, when `allowed_subjects` is not empty, one whose subject
/// (or `CN=<common name>`) is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub allowed_subjects: Vec<String>,
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    pub node_id: String,
    pub pool_id: String,
    pub account_name: String,
    /// `[node] account_url`: `AZ_BATCH_ACCOUNT_URL`; None: the variable is not set.
    pub account_url: Option<String>,
    pub is_dedicated: bool,
    pub task_slots: u32,
    pub listen: Listen,
    pub tls: Option<ApiTls>,
    /// Group owning the unix socket (mode 0660); None: root's.
    pub socket_group: Option<String>,
    /// `[api] insecure_loopback`: a loopback TCP listener may go without mutual TLS.
    pub insecure_loopback: bool,
    /// Largest request message accepted.
    pub max_message_bytes: usize,
    /// `[metrics] listen`: Prometheus text on `http://ADDR/metrics`; None: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[staging]`: resource and output file transfers.
    pub staging: StagingConfig,
    /// `[network]`: the bridge tasks are attached to, through CNI.
    pub network: crate::network::NetworkConfig,
    /// `[devices]`: CDI spec directories, GPU classes, ...
    pub devices: crate::devices::DeviceConfig,
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub runtime: String,
    /// `[containerd] shim_group`: which containers share a shim process.
    pub shim_group: crate::containerd::ShimGroup,
    pub terminate_grace: Duration,
    pub retention_sweep: Duration,
    /// A task is not started while the node root has less free space than this.
    pub min_free_bytes: u64,
    /// Completed task records kept; the oldest beyond are deleted with their directories.
    pub history_limit: usize,
    /// Events kept in the log `WatchTasks` replays from.
    pub event_log_keep: u64,
    /// `[tasks] requeue_after_reboot`: tasks that ran when the machine
    /// rebooted are queued again (else they end `ContainerLost`).
    pub requeue_after_reboot: bool,
    pub log_format: LogFormat,
    pub registries: RegistryConfig,
    /// `[images] prefetch`: pulled at start-up, never garbage-collected.
    pub prefetch: Vec<String>,
    pub image_gc: crate::supervisor::ImageGc,
    /// `[[users]]` and `[auto_users]`.
    pub identities: crate::model::Identities,
    /// `[policy]`: what run options may ask for.
    pub policy: crate::spec::Policy,
    /// `[node] rerun_start_task_after_reboot`: run the start task again when
    /// the agent starts in a new boot of the machine.
    pub rerun_start_task_after_reboot: bool,
}

/// `[registries]`: how the agent reaches image registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `host:port` reached over plain HTTP.
    pub insecure: Vec<String>,
    /// CA certificates (PEM files) trusted besides the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Node-wide credentials by registry `server` (`host[:port]`).
    pub credentials: Vec<(String, crate::model::Credentials)>,
    pub max_concurrent_downloads: usize,
    pub pull_timeout: Duration,
    pub no_progress_timeout: Duration,
    /// Largest manifest or index read.
    pub max_manifest_bytes: u64,
    /// Largest uncompressed size of one layer.
    pub max_layer_bytes: u64,
}

impl Config {
    /// Reads and validates `path`. `hostname` is the default node id.
    pub fn load(path: &Path, hostname: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let cfg = Self::parse(&text, hostname).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })?;
        // A file holding registry secrets must not be readable by every user.
        if !cfg.registries.credentials.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let mode = meta.permissions().mode();
            if mode & 0o004 != 0 {
                return Err(invalid(
                    "registries.credentials",
                    &format!(
                        "{} holds registry credentials and is world-readable (mode {:o}); chmod o-r it",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
        }
        Ok(cfg)
    }

    /// Validates TOML text; the defaults when `text` is empty.
    pub fn parse(text: &str, hostname: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: parse_message(text, &e) })?;
        Self::validate(raw, hostname)
    }

    fn validate(raw: RawConfig, hostname: &str) -> Result<Self, ConfigError> {
        let root_dir = absolute("node.root_dir", raw.node.root_dir, "/var/lib/berth/node")?;
        let state_dir = absolute("node.state_dir", raw.node.state_dir, "/var/lib/berth/state")?;
        let node_id = raw.node.id.unwrap_or_else(|| hostname.to_owned());
        if node_id.is_empty() {
            return Err(invalid("node.id", "must not be empty"));
        }
        let task_slots = raw.node.task_slots.unwrap_or(1);
        if task_slots == 0 {
            return Err(invalid("node.task_slots", "must be at least 1"));
        }
        let listen = parse_listen(raw.api.listen.as_deref().unwrap_or("unix:///run/berth/agent.sock"))?;
        let tls = api_tls(&raw.api)?;
        let insecure_loopback = raw.api.insecure_loopback.unwrap_or(false);
        if let Listen::Tcp(addr) = &listen {
            if tls.is_none() && !addr.ip().is_loopback() {
                return Err(invalid(
                    "api.listen",
                    &format!(
                        "{addr} is not a loopback address: set api.tls_cert and api.tls_key (and api.client_ca for \
                         mutual TLS); the API starts containers as root and must not be reachable in the clear"
                    ),
                ));
            }
            // Tasks share the node's network: any of them reaches a TCP
            // listener, loopback included, and could start an admin start task.
            let mutual = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            let on_purpose = insecure_loopback && addr.ip().is_loopback();
            if !(mutual || on_purpose) {
                return Err(invalid(
                    "api.listen",
                    &format!(
                        "a TCP listener ({addr}) needs mutual TLS (api.tls_cert, api.tls_key and api.client_ca): \
                         tasks share the node's network and could reach it; set api.insecure_loopback = true to \
                         serve a loopback address without it on purpose"
                    ),
                ));
            }
        }
        if tls.is_some() && !matches!(listen, Listen::Tcp(_)) {
            return Err(invalid("api.tls_cert", "TLS applies to a TCP listener (api.listen = \"IP:port\")"));
        }
        let metrics_listen = match raw.metrics.listen.as_deref() {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| invalid("metrics.listen", &format!("{a:?} is not IP:port")))?),
        };
        let max_message_bytes = raw.api.max_message_bytes.unwrap_or(4 << 20);
        if !(1024..=(64 << 20)).contains(&max_message_bytes) {
            return Err(invalid("api.max_message_bytes", "must be between 1024 and 67108864"));
        }
        let account_url = raw.node.account_url.map(account_url).transpose()?;
        let namespace = raw.containerd.namespace.unwrap_or_else(|| "berth".into());
        if namespace.is_empty()
            || !namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid("containerd.namespace", "must be letters, digits, '-', '_' or '.'"));
        }
        let runtime = raw.containerd.runtime.unwrap_or_else(|| "io.containerd.runc.v2".into());
        let shim_group = match raw.containerd.shim_group.as_deref() {
            None => crate::containerd::ShimGroup::None,
            Some(g) => crate::containerd::ShimGroup::parse(g).ok_or_else(|| {
                invalid("containerd.shim_group", &format!("{g:?} is not \"none\", \"job\" or \"node\""))
            })?,
        };
        if shim_group != crate::containerd::ShimGroup::None && runtime != "io.containerd.runc.v2" {
            return Err(invalid(
                "containerd.shim_group",
                "shared shims are the runc shim's (runtime io.containerd.runc.v2)",
            ));
        }
        let log_format = match raw.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log.format", &format!("{other:?} is not \"text\" or \"json\""))),
        };
        let mut credentials = Vec::new();
        for c in raw.registries.credentials {
            let cred = match (c.username, c.password, c.identity_token) {
                (Some(username), Some(password), None) => crate::model::Credentials::Basic { username, password },
                (None, None, Some(token)) if token.bytes().all(|b| b.is_ascii_graphic()) => {
                    crate::model::Credentials::Token(token)
                }
                _ => {
                    return Err(invalid(
                        "registries.credentials",
                        &format!("{}: give username and password, or identity_token alone", c.server),
                    ))
                }
            };
            crate::registry::normalize_server(&c.server).map_err(|e| invalid("registries.credentials", &e))?;
            credentials.push((c.server, cred));
        }
        for f in &raw.registries.ca_files {
            if !f.is_absolute() {
                return Err(invalid("registries.ca_files", &format!("{} is not an absolute path", f.display())));
            }
        }
        let registries = RegistryConfig {
            insecure: raw.registries.insecure,
            ca_files: raw.registries.ca_files,
            credentials,
            max_concurrent_downloads: raw.registries.max_concurrent_downloads.unwrap_or(3).max(1),
            pull_timeout: Duration::from_secs(raw.registries.pull_timeout_seconds.unwrap_or(3600).max(1)),
            no_progress_timeout: Duration::from_secs(raw.registries.no_progress_timeout_seconds.unwrap_or(60).max(1)),
            max_manifest_bytes: raw.registries.max_manifest_bytes.unwrap_or(4 << 20),
            max_layer_bytes: raw.registries.max_layer_bytes.unwrap_or(32 << 30),
        };
        if registries.max_manifest_bytes < 1024 {
            return Err(invalid("registries.max_manifest_bytes", "must be at least 1024"));
        }
        if registries.max_layer_bytes < 1 << 20 {
            return Err(invalid("registries.max_layer_bytes", "must be at least 1048576"));
        }
        let high = raw.images.gc_high_percent.unwrap_or(85);
        let low = raw.images.gc_low_percent.unwrap_or(75);
        if high > 100 || low > high {
            return Err(invalid("images.gc_high_percent", "need 0 <= gc_low_percent <= gc_high_percent <= 100"));
        }
        let image_gc = crate::supervisor::ImageGc {
            high_percent: high,
            low_percent: low,
            interval: Duration::from_secs(raw.images.gc_interval_seconds.unwrap_or(300).max(1)),
            filesystem: absolute("images.filesystem", raw.images.filesystem, "/var/lib/containerd")?,
        };
        for p in &raw.images.prefetch {
            crate::images::normalize(p).map_err(|e| invalid("images.prefetch", &e.to_string()))?;
        }
        let mut policy = security::policy(raw.policy)?;
        policy.reserved_host_ports = [
            match &listen {
                Listen::Tcp(a) => Some(a.port()),
                Listen::Unix(_) => None,
            },
            metrics_listen.map(|a: std::net::SocketAddr| a.port()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let containerd_root = absolute("containerd.root", raw.containerd.root, "/var/lib/containerd")?;
        let containerd_state = absolute("containerd.state", raw.containerd.state, "/run/containerd")?;
        let mut guarded: Vec<(PathBuf, &str)> =
            ["/proc", "/sys", "/dev", "/run", "/etc", "/boot"].map(|d| (PathBuf::from(d), "a system directory")).into();
        guarded.extend([
            // Tasks write the node root: a bind prefix there could be swapped
            // for a symlink between the agent's check and runc's mount.
            (root_dir.clone(), "the node root, which tasks can write"),
            (state_dir.clone(), "the agent's state directory"),
            (containerd_root, "containerd's root (containerd.root)"),
            (containerd_state, "containerd's state (containerd.state)"),
        ]);
        if let Listen::Unix(sock) = &listen {
            if let Some(dir) = sock.parent() {
                guarded.push((dir.to_owned(), "the directory of the agent's socket"));
            }
        }
        security::check_bind_prefixes(&policy.bind_mount_prefixes, &guarded)?;
        let devices = devices(raw.devices)?;
        let network = network::network(raw.network, &state_dir)?;
        Ok(Config {
            devices,
            identities: security::identities(raw.users, raw.auto_users)?,
            policy,
            registries,
            prefetch: raw.images.prefetch,
            image_gc,
            root_dir,
            state_dir,
            node_id,
            pool_id: raw.node.pool_id.unwrap_or_else(|| "default".into()),
            account_name: raw.node.account_name.unwrap_or_else(|| "berth".into()),
            account_url,
            is_dedicated: raw.node.is_dedicated.unwrap_or(true),
            task_slots,
            listen,
            tls,
            socket_group: raw.api.socket_group,
            insecure_loopback,
            max_message_bytes,
            metrics_listen,
            staging: staging::staging(raw.staging)?,
            network,
            containerd_socket: absolute("containerd.socket", raw.containerd.socket, "/run/containerd/containerd.sock")?,
            namespace,
            snapshotter: raw.containerd.snapshotter.unwrap_or_else(|| "overlayfs".into()),
            runtime,
            shim_group,
            terminate_grace: Duration::from_secs(raw.tasks.terminate_grace_seconds.unwrap_or(10)),
            retention_sweep: Duration::from_secs(raw.tasks.retention_sweep_seconds.unwrap_or(300).max(1)),
            min_free_bytes: raw.node.min_free_mb.unwrap_or(64) * 1024 * 1024,
            history_limit: raw.tasks.history_limit.unwrap_or(10_000),
            requeue_after_reboot: raw.tasks.requeue_after_reboot.unwrap_or(true),
            event_log_keep: raw.tasks.event_log_keep.unwrap_or(100_000).max(1),
            log_format,
            rerun_start_task_after_reboot: raw.node.rerun_start_task_after_reboot.unwrap_or(true),
        })
    }
}

fn devices(d: RawDevices) -> Result<crate::devices::DeviceConfig, ConfigError> {
    let def = crate::devices::DeviceConfig::default();
    let dirs = d.cdi_spec_dirs.unwrap_or(def.cdi_spec_dirs);
    for p in dirs.iter().chain(&d.cdi_output_dir).chain(&d.sysfs_root).chain(&d.dev_root) {
        if !p.is_absolute() {
            return Err(invalid("devices", &format!("{} is not an absolute path", p.display())));
        }
    }
    let classes = d.gpu_classes.unwrap_or(def.gpu_classes);
    if let Some(c) = classes.iter().find(|c| c.split_once('/').is_none_or(|(v, k)| v.is_empty() || k.is_empty())) {
        return Err(invalid("devices.gpu_classes", &format!("{c:?} is not vendor.com/class")));
    }
    Ok(crate::devices::DeviceConfig {
        cdi_spec_dirs: dirs,
        cdi_output_dir: d.cdi_output_dir.unwrap_or(def.cdi_output_dir),
        gpu_classes: classes,
        inject_all_gpus: d.inject_all_gpus.unwrap_or(def.inject_all_gpus),
        inject_rdma: d.inject_rdma.unwrap_or(def.inject_rdma),
        share_gpus: d.share_gpus.unwrap_or(def.share_gpus),
        sysfs_root: d.sysfs_root.unwrap_or(def.sysfs_root),
        dev_root: d.dev_root.unwrap_or(def.dev_root),
        ipc_lock_non_admin: d.ipc_lock_non_admin.unwrap_or(def.ipc_lock_non_admin),
    })
}

fn api_tls(a: &RawApi) -> Result<Option<ApiTls>, ConfigError> {
    let (cert, key) = match (&a.tls_cert, &a.tls_key) {
        (None, None) => {
            if a.client_ca.is_some() || !a.allowed_subjects.is_empty() {
                return Err(invalid("api.client_ca", "needs api.tls_cert and api.tls_key"));
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => return Err(invalid("api.tls_cert", "give both api.tls_cert and api.tls_key")),
    };
    for p in [Some(&cert), Some(&key), a.client_ca.as_ref()].into_iter().flatten() {
        if !p.is_absolute() {
            return Err(invalid("api.tls_cert", &format!("{} is not an absolute path", p.display())));
        }
    }
    if !a.allowed_subjects.is_empty() && a.client_ca.is_none() {
        return Err(invalid("api.allowed_subjects", "needs api.client_ca (subjects come from client certificates)"));
    }
    Ok(Some(ApiTls { cert, key, client_ca: a.client_ca.clone(), allowed_subjects: a.allowed_subjects.clone() }))
}

/// "line N, column M: message", without quoting the source text.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// `[node] account_url`: an http(s) URL, handed to tasks as it is.
fn account_url(url: String) -> Result<String, ConfigError> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control()) => Ok(url),
        _ => Err(invalid("node.account_url", "must be an http:// or https:// URL with a host and no spaces")),
    }
}

fn invalid(key: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.to_owned() }
}

fn absolute(key: &'static str, v: Option<PathBuf>, default: &str) -> Result<PathBuf, ConfigError> {
    let p = v.unwrap_or_else(|| PathBuf::from(default));
    if !p.is_absolute() {
        return Err(invalid(key, &format!("{} is not an absolute path", p.display())));
    }
    // Normalise away a trailing slash: the path is compared and joined as is.
    Ok(p.components().collect())
}

/// `unix:///path` or `host:port` (also `tcp://host:port`).
pub fn parse_listen(s: &str) -> Result<Listen, ConfigError> {
    if let Some(p) = s.strip_prefix("unix://") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(invalid("api.listen", "a unix socket path must be absolute (unix:///run/berth/agent.sock)"));
        }
        return Ok(Listen::Unix(p));
    }
    let addr = s.strip_prefix("tcp://").unwrap_or(s);
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| invalid("api.listen", &format!("{s:?} is neither unix:///path nor an IP address with a port")))?;
    Ok(Listen::Tcp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_one_node_locally() {
        let c = Config::parse("", "node7").unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/berth/node"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/berth/state"));
        assert_eq!(c.node_id, "node7");
        assert_eq!(c.task_slots, 1);
        assert_eq!(c.listen, Listen::Unix("/run/berth/agent.sock".into()));
        assert_eq!(c.namespace, "berth");
        assert!(c.rerun_start_task_after_reboot);
        assert_eq!(c.containerd_socket, PathBuf::from("/run/containerd/containerd.sock"));
        assert_eq!(c.shim_group, crate::containerd::ShimGroup::None);
    }

    #[test]
    fn reads_every_section() {
        let c = Config::parse(
            r#"
            [node]
            root_dir = "/srv/node/"
            state_dir = "/srv/state"
            id = "n1"
            pool_id = "p1"
            task_slots = 4
            rerun_start_task_after_reboot = false
            [api]
            listen = "127.0.0.1:7070"
            insecure_loopback = true
            [containerd]
            socket = "/tmp/c.sock"
            namespace = "b2"
            shim_group = "job"
            [tasks]
            terminate_grace_seconds = 3
            history_limit = 5
            requeue_after_reboot = false
            event_log_keep = 50
            [log]
            format = "json"
            "#,
            "h",
        )
        .unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/srv/node"));
        assert_eq!(c.shim_group, crate::containerd::ShimGroup::Job);
        assert_eq!(c.task_slots, 4);
        assert!(!c.rerun_start_task_after_reboot);
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:7070".parse().unwrap()));
        let tls = Config::parse(
            "[api]\nlisten = \"0.0.0.0:7070\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\nclient_ca = \"/ca.pem\"\n\
             allowed_subjects = [\"CN=scheduler\"]\n[metrics]\nlisten = \"127.0.0.1:9100\"",
            "h",
        )
        .unwrap();
        assert_eq!(tls.tls.unwrap().allowed_subjects, ["CN=scheduler"]);
        assert_eq!(tls.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.namespace, "b2");
        assert_eq!(c.terminate_grace, Duration::from_secs(3));
        assert_eq!((c.history_limit, c.event_log_keep), (5, 50));
        assert!(!c.requeue_after_reboot);
        assert_eq!(c.min_free_bytes, 64 << 20);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.account_url, None);
    }

    #[test]
    fn account_url() {
        let c = Config::parse("[node]\naccount_url = \"https://acct.westeurope.batch.example\"", "h").unwrap();
        assert_eq!(c.account_url.as_deref(), Some("https://acct.westeurope.batch.example"));
        for bad in ["acct.example", "https://", "ftp://x", "https://a b"] {
            let err = Config::parse(&format!("[node]\naccount_url = {bad:?}"), "h").unwrap_err().to_string();
            assert!(err.contains("node.account_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn registries() {
        let c = Config::parse(
            r#"
            [registries]
            insecure = ["127.0.0.1:5000"]
            ca_files = ["/etc/berth/ca.pem"]
            [[registries.credentials]]
            server = "reg.example:443"
            username = "u"
            password = "hunter2"
            [[registries.credentials]]
            server = "other.example"
            identity_token = "tok"
            "#,
            "h",
        )
        .unwrap();
        assert_eq!(c.registries.insecure, ["127.0.0.1:5000"]);
        assert_eq!(c.registries.credentials.len(), 2);
        assert!(!format!("{c:?}").contains("hunter2"), "Debug of the config shows no secret");
        for bad in [
            "[[registries.credentials]]\nserver = \"a\"\nusername = \"u\"",
            "[[registries.credentials]]\nserver = \"a\"\npassword = \"p\"\nidentity_token = \"t\"",
            "[[registries.credentials]]\nserver = \"a/b\"\nidentity_token = \"t\"",
            "[[registries.credentials]]\nserver = \"ftp://a\"\nidentity_token = \"t\"",
            "[registries]\nca_files = [\"rel.pem\"]",
        ] {
            let err = Config::parse(bad, "h").unwrap_err().to_string();
            assert!(err.contains("registries."), "{bad}: {err}");
            assert!(!err.contains("hunter2"));
        }
    }

    #[test]
    fn parse_errors_never_quote_a_secret() {
        for text in [
            "[[registries.credentials]]\nserver = \"r\"\nusername = \"u\"\npassword = \"hun\\qter2\"\n",
            "[[registries.credentials]]\nserver = \"r\"\nusername = \"u\"\npasword = \"hunter2\"\n",
            "[[registries.credentials]]\nserver = \"r\"\nusername = \"u\"\npassword = hunter2\n",
        ] {
            let err = Config::parse(text, "h").unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("hun\\qter2"), "{err}");
            assert!(err.contains("line 4"), "{err}");
        }
    }

    #[test]
    fn world_readable_credentials_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[[registries.credentials]]\nserver = \"r\"\nusername = \"u\"\npassword = \"p\"\n")
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(&path, "h").unwrap_err().to_string();
        assert!(err.contains("world-readable"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path, "h").is_ok());
    }

    #[test]
    fn refuses_bad_input() {
        let cases = [
            ("[node]\nroot_dirr = \"/x\"", "unknown field"),
            ("[nodes]\n", "unknown field"),
            ("[node]\nroot_dir = \"rel\"", "node.root_dir"),
            ("[node]\ntask_slots = 0", "node.task_slots"),
            ("[api]\nlisten = \"nowhere\"", "api.listen"),
            ("[api]\nlisten = \"unix://rel.sock\"", "api.listen"),
            ("[containerd]\nnamespace = \"a/b\"", "containerd.namespace"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[containerd]\nshim_group = \"pod\"", "containerd.shim_group"),
            ("[containerd]\nshim_group = \"node\"\nruntime = \"io.containerd.kata.v2\"", "runc shim"),
            ("[api]\nlisten = \"0.0.0.0:7070\"", "not a loopback address"),
            ("[api]\nlisten = \"10.0.0.5:7070\"", "api.tls_cert"),
            ("[api]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"/c.pem\"", "api.tls_cert"),
            ("[api]\nlisten = \"unix:///s\"\ntls_cert = \"/c\"\ntls_key = \"/k\"", "api.tls_cert"),
            ("[api]\nlisten = \"127.0.0.1:1\"\nallowed_subjects = [\"CN=x\"]", "api.client_ca"),
            ("[api]\nlisten = \"127.0.0.1:7070\"", "needs mutual TLS"),
            ("[api]\nlisten = \"127.0.0.1:7070\"\ntls_cert = \"/c\"\ntls_key = \"/k\"", "needs mutual TLS"),
            (
                "[api]\nlisten = \"0.0.0.0:7070\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\ninsecure_loopback = true",
                "needs mutual TLS",
            ),
            ("[metrics]\nlisten = \"nowhere\"", "metrics.listen"),
            ("[devices]\ncdi_spec_dirs = [\"rel\"]", "devices"),
            ("[devices]\ngpu_classes = [\"gpu\"]", "devices.gpu_classes"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "h").unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
