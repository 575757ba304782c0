//! Conversions between the scheduler API's generated types (`berth.v1`) and the
//! domain types. The only place that knows both.

use super::error::DecodeError;
use crate::model::{
    AutoUserScope, ContainerInfo, ContainerSettings, Credentials, Elevation, FailureCategory, FailureInfo, HostMount,
    HostMountSource, NodeState, PullPolicy, TaskConstraints, TaskInfo, TaskKey, TaskKind, TaskResult, TaskSpec,
    TaskState, UserIdentity, WorkingDirMode,
};
use crate::store::TaskEvent;
use crate::supervisor::NodeStatus;
use berth_proto::v1 as pb;
use std::time::{Duration, SystemTime};

/// The key of an existing task (the start task is `@node/starttask`).
pub(super) fn key(job_id: &str, task_id: &str) -> Result<TaskKey, crate::supervisor::Error> {
    Ok(TaskKey::address(job_id, task_id)?)
}

/// A start, preparation or release task's spec: its ids are the agent's.
pub(super) fn special_spec(mut t: pb::TaskSpec, key: &TaskKey) -> Result<TaskSpec, crate::supervisor::Error> {
    t.job_id = key.job.to_string();
    t.task_id = key.task.to_string();
    if t.job_preparation.is_some() {
        return Err(crate::supervisor::Error::Invalid {
            field: "job_preparation",
            reason: "only a job's task may carry the job's preparation task".into(),
        });
    }
    let mut spec = decode_spec(t, key.clone())?;
    spec.required_slots = 0;
    Ok(spec)
}

pub(super) fn kind_to_proto(k: TaskKind) -> pb::TaskKind {
    match k {
        TaskKind::Task => pb::TaskKind::Task,
        TaskKind::StartTask => pb::TaskKind::StartTask,
        TaskKind::JobPreparation => pb::TaskKind::JobPreparation,
        TaskKind::JobRelease => pb::TaskKind::JobRelease,
    }
}

pub(super) fn node_state_to_proto(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Starting => pb::NodeState::Starting,
        NodeState::WaitingForStartTask => pb::NodeState::WaitingForStartTask,
        NodeState::StartTaskFailed => pb::NodeState::StartTaskFailed,
        NodeState::Idle => pb::NodeState::Idle,
        NodeState::Running => pb::NodeState::Running,
        NodeState::Unusable => pb::NodeState::Unusable,
        NodeState::Offline => pb::NodeState::Offline,
    }
}

/// The longest duration protobuf's `Duration` allows (10,000 years).
const MAX_DURATION_SECS: u64 = 315_576_000_000;

pub(super) fn duration(field: &'static str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, DecodeError> {
    d.map(|d| {
        let d = Duration::try_from(d).map_err(|e| DecodeError::new(field, format!("not a valid duration: {e}")))?;
        if d.as_secs() > MAX_DURATION_SECS {
            return Err(DecodeError::new(field, format!("{} s is longer than protobuf allows", d.as_secs())));
        }
        Ok(d)
    })
    .transpose()
}

pub(super) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

pub(super) fn working_dir(v: i32) -> Result<WorkingDirMode, DecodeError> {
    match pb::WorkingDirectory::try_from(v) {
        Ok(pb::WorkingDirectory::Unspecified | pb::WorkingDirectory::TaskWorkingDir) => {
            Ok(WorkingDirMode::TaskWorkingDir)
        }
        Ok(pb::WorkingDirectory::ImageDefault) => Ok(WorkingDirMode::ImageDefault),
        Err(_) => Err(DecodeError::new("container.working_directory", format!("unknown value {v}"))),
    }
}

/// Tasks per `ListTasks` answer when the request names no page size, and the most it may.
pub(super) const DEFAULT_PAGE_SIZE: u32 = 1000;
pub(super) const MAX_PAGE_SIZE: u32 = 10_000;

pub(super) fn page_size(n: u32) -> usize {
    let n = if n == 0 { DEFAULT_PAGE_SIZE } else { n.min(MAX_PAGE_SIZE) };
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A page token: where the previous page ended (`a<sequence>`), opaque to clients.
pub(super) fn next_page_token(last: u64) -> String {
    format!("a{last}")
}

/// The sequence a page token continues after; empty: from the first task.
pub(super) fn page_token(token: &str) -> Result<u64, crate::supervisor::Error> {
    if token.is_empty() {
        return Ok(0);
    }
    token.strip_prefix('a').and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| crate::supervisor::Error::Invalid {
        field: "page_token",
        reason: "is not a next_page_token of this agent".into(),
    })
}

/// `max_task_retry_count`: 0 or more, or -1 for no limit.
fn retry_count(n: i32) -> Result<i32, DecodeError> {
    if n < -1 {
        return Err(DecodeError::new(
            "constraints.max_task_retry_count",
            format!("{n}: give 0 or more retries, or -1 for no limit"),
        ));
    }
    Ok(n)
}

/// `containerHostBatchBindMounts`: unset (None) unless `set`; each source once.
fn host_mounts(set: bool, list: Vec<pb::HostMount>) -> Result<Option<Vec<HostMount>>, DecodeError> {
    const FIELD: &str = "container.host_mounts";
    if !set {
        if !list.is_empty() {
            return Err(DecodeError::new(FIELD, "entries given without host_mounts_set (set it to use the list)"));
        }
        return Ok(None);
    }
    let mut out: Vec<HostMount> = Vec::with_capacity(list.len());
    for m in list {
        let source = match pb::HostMountSource::try_from(m.source) {
            Ok(pb::HostMountSource::Shared) => HostMountSource::Shared,
            Ok(pb::HostMountSource::Startup) => HostMountSource::Startup,
            Ok(pb::HostMountSource::VfsMounts) => HostMountSource::VfsMounts,
            Ok(pb::HostMountSource::Task) => HostMountSource::Task,
            Ok(pb::HostMountSource::JobPrep) => HostMountSource::JobPrep,
            Ok(pb::HostMountSource::Applications) => HostMountSource::Applications,
            Ok(pb::HostMountSource::Unspecified) => {
                return Err(DecodeError::new(FIELD, "an entry has no source"));
            }
            Err(_) => return Err(DecodeError::new(FIELD, format!("unknown source {}", m.source))),
        };
        if out.iter().any(|o| o.source == source) {
            return Err(DecodeError::new(FIELD, format!("{} is listed twice", source.as_str())));
        }
        out.push(HostMount { source, read_only: m.read_only });
    }
    Ok(Some(out))
}

fn host_mounts_to_proto(list: Option<&Vec<HostMount>>) -> (bool, Vec<pb::HostMount>) {
    let Some(list) = list else { return (false, Vec::new()) };
    let source = |s: HostMountSource| match s {
        HostMountSource::Shared => pb::HostMountSource::Shared,
        HostMountSource::Startup => pb::HostMountSource::Startup,
        HostMountSource::VfsMounts => pb::HostMountSource::VfsMounts,
        HostMountSource::Task => pb::HostMountSource::Task,
        HostMountSource::JobPrep => pb::HostMountSource::JobPrep,
        HostMountSource::Applications => pb::HostMountSource::Applications,
    };
    (true, list.iter().map(|m| pb::HostMount { source: source(m.source) as i32, read_only: m.read_only }).collect())
}

pub(super) fn pull_policy(v: i32) -> Result<PullPolicy, DecodeError> {
    match pb::PullPolicy::try_from(v) {
        Ok(pb::PullPolicy::Unspecified | pb::PullPolicy::Missing) => Ok(PullPolicy::Missing),
        Ok(pb::PullPolicy::Always) => Ok(PullPolicy::Always),
        Ok(pb::PullPolicy::Never) => Ok(PullPolicy::Never),
        Err(_) => Err(DecodeError::new("container.pull_policy", format!("unknown value {v}"))),
    }
}

/// Registry credentials: a username with a password, or an identity token.
pub(super) fn credentials(c: Option<pb::RegistryCredentials>) -> Result<Option<Credentials>, DecodeError> {
    let Some(c) = c else { return Ok(None) };
    match (c.username.is_empty(), c.password.is_empty(), c.identity_token.is_empty()) {
        (true, true, true) => Ok(None),
        (false, false, true) => Ok(Some(Credentials::Basic { username: c.username, password: c.password })),
        (true, true, false) if c.identity_token.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(Credentials::Token(c.identity_token)))
        }
        (true, true, false) => {
            Err(DecodeError::new("registry.identity_token", "must be printable ASCII without spaces"))
        }
        _ => Err(DecodeError::new("registry", "give a username with a password, or an identity token alone")),
    }
}

pub(super) fn task_state(v: i32) -> Result<Option<TaskState>, DecodeError> {
    Ok(match pb::TaskState::try_from(v) {
        Ok(pb::TaskState::Unspecified) => None,
        Ok(pb::TaskState::Active) => Some(TaskState::Active),
        Ok(pb::TaskState::Preparing) => Some(TaskState::Preparing),
        Ok(pb::TaskState::Running) => Some(TaskState::Running),
        Ok(pb::TaskState::Completed) => Some(TaskState::Completed),
        Err(_) => return Err(DecodeError::new("state", format!("unknown task state {v}"))),
    })
}

/// Limits of one task spec (beyond the message size), so no request makes the
/// agent build something absurd.
pub(super) const MAX_ENV_VARS: usize = 1024;
pub(super) const MAX_ENV_BYTES: usize = 256 << 10;
pub(super) const MAX_COMMAND_LINE: usize = 32 << 10;
pub(super) const MAX_RUN_OPTIONS: usize = 8 << 10;
pub(super) const MAX_IMAGE_REFERENCE: usize = 1024;

fn check_limits(t: &pb::TaskSpec) -> Result<(), DecodeError> {
    let too_long = |field: &'static str, len: usize, max: usize| {
        if len > max {
            Err(DecodeError::new(field, format!("is {len} bytes; at most {max}")))
        } else {
            Ok(())
        }
    };
    too_long("command_line", t.command_line.len(), MAX_COMMAND_LINE)?;
    if t.environment.len() > MAX_ENV_VARS {
        return Err(DecodeError::new(
            "environment",
            format!("has {} variables; at most {MAX_ENV_VARS}", t.environment.len()),
        ));
    }
    let env_bytes: usize = t.environment.iter().map(|(k, v)| k.len() + v.len()).sum();
    too_long("environment", env_bytes, MAX_ENV_BYTES)?;
    if let Some(c) = &t.container {
        too_long("container.run_options", c.run_options.len(), MAX_RUN_OPTIONS)?;
        too_long("container.image", c.image.len(), MAX_IMAGE_REFERENCE)?;
    }
    Ok(())
}

/// Decodes a `RunTask` spec, and the job's preparation task it may carry. Id
/// errors are reported by the supervisor's id types.
pub(super) fn task_spec(mut t: pb::TaskSpec) -> Result<(TaskSpec, Option<TaskSpec>), crate::supervisor::Error> {
    let key = TaskKey::new(&t.job_id, &t.task_id)?;
    let prep = t.job_preparation.take().map(|p| special_spec(*p, &TaskKey::job_preparation(&key.job))).transpose()?;
    Ok((decode_spec(t, key)?, prep))
}

fn decode_spec(t: pb::TaskSpec, key: TaskKey) -> Result<TaskSpec, crate::supervisor::Error> {
    let decode = |e: DecodeError| crate::supervisor::Error::Invalid { field: e.field, reason: e.reason };
    check_limits(&t).map_err(decode)?;
    let container = match t.container {
        Some(c) => Some(ContainerSettings {
            image: c.image,
            run_options: c.run_options,
            working_directory: working_dir(c.working_directory).map_err(decode)?,
            pull_policy: pull_policy(c.pull_policy).map_err(decode)?,
            credentials: credentials(c.registry).map_err(decode)?,
            host_mounts: host_mounts(c.host_mounts_set, c.host_mounts).map_err(decode)?,
            devices: c.devices,
        }),
        None => None,
    };
    let constraints = t.constraints.unwrap_or_default();
    Ok(TaskSpec {
        key,
        command_line: t.command_line,
        container,
        environment: t.environment.into_iter().collect(),
        user: identity(t.user).map_err(decode)?,
        constraints: TaskConstraints {
            max_wall_clock_time: duration("constraints.max_wall_clock_time", constraints.max_wall_clock_time)
                .map_err(decode)?,
            retention_time: duration("constraints.retention_time", constraints.retention_time).map_err(decode)?,
            max_task_retry_count: retry_count(constraints.max_task_retry_count).map_err(decode)?,
        },
        required_slots: t.required_slots.max(1),
        staging: {
            let mut s = super::staging::decode(t.resource_files, t.output_files).map_err(decode)?;
            s.application_packages =
                super::staging::packages("application_packages", t.application_packages).map_err(decode)?;
            s
        },
    })
}

/// A named pool user or an auto-user; unset is the pool auto-user, non-admin.
fn identity(u: Option<pb::UserIdentity>) -> Result<UserIdentity, DecodeError> {
    let Some(u) = u else { return Ok(UserIdentity::default()) };
    if !u.user_name.is_empty() {
        if u.auto_user.is_some() {
            return Err(DecodeError::new("user", "give user_name or auto_user, not both"));
        }
        return Ok(UserIdentity::Named(u.user_name));
    }
    let auto = u.auto_user.unwrap_or_default();
    let scope = match pb::AutoUserScope::try_from(auto.scope) {
        Ok(pb::AutoUserScope::Unspecified | pb::AutoUserScope::Pool) => AutoUserScope::Pool,
        Ok(pb::AutoUserScope::Task) => AutoUserScope::Task,
        Err(_) => return Err(DecodeError::new("user.auto_user.scope", format!("unknown value {}", auto.scope))),
    };
    let elevation = match pb::ElevationLevel::try_from(auto.elevation_level) {
        Ok(pb::ElevationLevel::Unspecified | pb::ElevationLevel::NonAdmin) => Elevation::NonAdmin,
        Ok(pb::ElevationLevel::Admin) => Elevation::Admin,
        Err(_) => {
            return Err(DecodeError::new(
                "user.auto_user.elevation_level",
                format!("unknown value {}", auto.elevation_level),
            ))
        }
    };
    Ok(UserIdentity::Auto { scope, elevation })
}

fn identity_to_proto(u: &UserIdentity) -> pb::UserIdentity {
    match u {
        UserIdentity::Named(name) => pb::UserIdentity { user_name: name.clone(), auto_user: None },
        UserIdentity::Auto { scope, elevation } => pb::UserIdentity {
            user_name: String::new(),
            auto_user: Some(pb::AutoUserSpecification {
                scope: match scope {
                    AutoUserScope::Pool => pb::AutoUserScope::Pool,
                    AutoUserScope::Task => pb::AutoUserScope::Task,
                } as i32,
                elevation_level: match elevation {
                    Elevation::NonAdmin => pb::ElevationLevel::NonAdmin,
                    Elevation::Admin => pb::ElevationLevel::Admin,
                } as i32,
            }),
        },
    }
}

pub(super) fn spec_to_proto(s: &TaskSpec) -> pb::TaskSpec {
    let (resource_files, output_files) = super::staging::encode(&s.staging);
    pb::TaskSpec {
        job_id: s.key.job.to_string(),
        task_id: s.key.task.to_string(),
        command_line: s.command_line.clone(),
        container: s.container.as_ref().map(|c| {
            let (host_mounts_set, host_mounts) = host_mounts_to_proto(c.host_mounts.as_ref());
            pb::ContainerSettings {
                host_mounts_set,
                host_mounts,
                image: c.image.clone(),
                run_options: c.run_options.clone(),
                working_directory: match c.working_directory {
                    WorkingDirMode::TaskWorkingDir => pb::WorkingDirectory::TaskWorkingDir,
                    WorkingDirMode::ImageDefault => pb::WorkingDirectory::ImageDefault,
                } as i32,
                // Credentials are never echoed back.
                registry: None,
                devices: c.devices.clone(),
                pull_policy: match c.pull_policy {
                    PullPolicy::Missing => pb::PullPolicy::Missing,
                    PullPolicy::Always => pb::PullPolicy::Always,
                    PullPolicy::Never => pb::PullPolicy::Never,
                } as i32,
            }
        }),
        environment: s.environment.clone().into_iter().collect(),
        user: Some(identity_to_proto(&s.user)),
        constraints: Some(pb::TaskConstraints {
            max_wall_clock_time: s.constraints.max_wall_clock_time.map(proto_duration),
            retention_time: Some(proto_duration(s.constraints.retention())),
            max_task_retry_count: s.constraints.max_task_retry_count,
        }),
        required_slots: s.required_slots,
        job_preparation: None,
        resource_files,
        output_files,
        application_packages: super::staging::encode_packages(&s.staging.application_packages),
    }
}

fn state_to_proto(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Active => pb::TaskState::Active,
        TaskState::Preparing => pb::TaskState::Preparing,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Completed => pb::TaskState::Completed,
    }
}

fn failure_to_proto(f: &FailureInfo) -> pb::FailureInfo {
    pb::FailureInfo {
        category: match f.category {
            FailureCategory::UserError => pb::FailureCategory::UserError,
            FailureCategory::ServerError => pb::FailureCategory::ServerError,
        } as i32,
        code: f.code.as_str().to_owned(),
        message: f.message.clone(),
    }
}

/// `ExplainTask`'s answer.
pub(super) fn explanation(e: &crate::supervisor::Explanation) -> pb::TaskExplanation {
    use crate::supervisor::Want;
    let c = &e.checked;
    let stop = c.stop();
    let (exclusive_gpu_count, exclusive_gpus) = match &c.devices.exclusive {
        None => (0, vec![]),
        Some(Want::Count(n)) => (u32::try_from(*n).unwrap_or(u32::MAX), vec![]),
        Some(Want::Named(names)) => (u32::try_from(names.len()).unwrap_or(u32::MAX), names.clone()),
    };
    pb::TaskExplanation {
        image: c.image.clone().unwrap_or_default(),
        uid: c.run_as.uid,
        gid: c.run_as.gid,
        groups: c.run_as.groups.clone(),
        admin: c.run_as.admin,
        devices: c.devices.shared.clone(),
        exclusive_gpu_count,
        exclusive_gpus,
        granted: c.granted.clone(),
        stop_signal: stop.signal,
        stop_timeout: stop.timeout.and_then(|d| d.try_into().ok()),
        container_id: e.container_id.clone(),
        oci_spec_json: e.oci_spec.clone().unwrap_or_default(),
        failure: e.failure.as_ref().map(failure_to_proto),
    }
}

fn container_to_proto(c: &ContainerInfo) -> pb::ContainerInfo {
    pb::ContainerInfo {
        container_id: c.container_id.clone(),
        state: c.state.clone(),
        error: c.error.clone(),
        ip_address: c.ip_address.clone(),
    }
}

/// `TaskInfo` for the API; `paths` are the task's directory and working directory.
pub(super) fn task_info(t: &TaskInfo, task_dir: String, working_dir: String) -> pb::TaskInfo {
    pb::TaskInfo {
        job_id: t.key().job.to_string(),
        task_id: t.key().task.to_string(),
        state: state_to_proto(t.state) as i32,
        exit_code: t.exit_code,
        result: match t.result {
            None => pb::TaskResult::Unspecified,
            Some(TaskResult::Success) => pb::TaskResult::Success,
            Some(TaskResult::Failure) => pb::TaskResult::Failure,
        } as i32,
        failure_info: t.failure.as_ref().map(failure_to_proto),
        container_info: t.container.as_ref().map(container_to_proto),
        created_at: Some(timestamp(t.created_at)),
        started_at: t.started_at.map(timestamp),
        completed_at: t.completed_at.map(timestamp),
        sequence: t.sequence,
        task_dir,
        working_dir,
        spec: Some(spec_to_proto(&t.spec)),
        pull_progress: None,
        staging_progress: None,
        run_as: t.run_as.as_ref().map(|r| pb::RunAs {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
            admin: r.admin,
        }),
        kind: kind_to_proto(t.key().kind()) as i32,
        stats: t.stats.as_ref().map(stats_to_proto),
        retry_count: t.retry_count,
        requeue_count: t.requeue_count,
        last_retry_at: t.last_retry_at.map(timestamp),
        last_requeue_at: t.last_requeue_at.map(timestamp),
        previous_attempt: t.previous_attempt.as_ref().map(|a| pb::AttemptResult {
            exit_code: a.exit_code,
            failure_info: a.failure.as_ref().map(failure_to_proto),
            ended_at: Some(timestamp(a.ended_at)),
        }),
    }
}

pub(super) fn stats_to_proto(s: &crate::model::TaskStats) -> pb::TaskStatistics {
    pb::TaskStatistics {
        user_cpu_time: Some(proto_duration(s.user_cpu)),
        kernel_cpu_time: Some(proto_duration(s.kernel_cpu)),
        wall_clock_time: Some(proto_duration(s.wall_clock)),
        peak_memory_bytes: s.peak_memory_bytes,
        memory_bytes: s.memory_bytes,
        read_bytes: s.read_bytes,
        write_bytes: s.write_bytes,
        read_ops: s.read_ops,
        write_ops: s.write_ops,
    }
}

/// A pull's progress for the API.
pub(super) fn pull_progress(reference: &str, p: &crate::images::Progress) -> pb::PullProgress {
    pb::PullProgress {
        reference: reference.to_owned(),
        bytes_done: p.done(),
        bytes_total: p.total(),
        layers: p
            .layers
            .iter()
            .map(|(digest, done, total)| pb::LayerProgress {
                digest: digest.clone(),
                bytes_done: *done,
                bytes_total: *total,
            })
            .collect(),
        ..Default::default()
    }
}

pub(super) fn event(e: &TaskEvent, task: pb::TaskInfo) -> pb::TaskEvent {
    pb::TaskEvent { sequence: e.sequence, task: Some(task) }
}

pub(super) fn node_info(s: &NodeStatus) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: s.node.node_id.clone(),
        pool_id: s.node.pool_id.clone(),
        os: s.node.os.clone(),
        arch: s.node.arch.clone(),
        cpus: s.node.cpus,
        memory_bytes: s.node.memory_bytes,
        task_slots_total: s.slots_total,
        task_slots_free: s.slots_free,
        containerd_version: s.containerd_version.clone().unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_root: s.node.root_dir.display().to_string(),
        containerd_reachable: s.containerd_version.is_some(),
        hostname: s.node.hostname.clone(),
        notes: s.notes.clone(),
        prefetch: s
            .prefetch
            .iter()
            .map(|(image, state)| pb::PrefetchStatus {
                image: image.clone(),
                state: state.name().into(),
                error: match state {
                    crate::supervisor::PrefetchState::Failed(e) => e.clone(),
                    _ => String::new(),
                },
            })
            .collect(),
        gpus: s.gpus.clone(),
        rdma_devices: s
            .rdma
            .iter()
            .map(|h| pb::RdmaDevice {
                name: h.name.clone(),
                ports: h
                    .ports
                    .iter()
                    .map(|p| pb::RdmaPort { port: p.port, state: p.state.clone(), link_layer: p.link_layer.clone() })
                    .collect(),
                device_nodes: h.nodes.iter().map(|n| n.display().to_string()).collect(),
            })
            .collect(),
        cdi_devices: s.cdi_devices.clone(),
        cdi_specs: s
            .cdi_specs
            .iter()
            .map(|c| pb::CdiSpecStatus {
                path: c.path.display().to_string(),
                kind: c.kind.clone(),
                devices: u32::try_from(c.devices).unwrap_or(u32::MAX),
                error: c.error.clone(),
            })
            .collect(),
        node_root_disk: s.disks.first().map(disk),
        image_store_disk: s.disks.get(1).map(disk),
        state: node_state_to_proto(s.state.state) as i32,
        state_reason: s.state.reason.clone(),
        scheduling_enabled: s.state.scheduling_enabled,
        // Filled in by the API, which knows the task directories.
        start_task: None,
        start_task_wait_for_success: false,
        cpu_used_percent: s.usage.cpu_used_percent,
        memory_used_bytes: s.usage.memory_used_bytes,
        memory_available_bytes: s.usage.memory_available_bytes,
        application_packages: s.packages.iter().map(super::staging::package_info).collect(),
        load_average_1m: s.usage.load[0],
        load_average_5m: s.usage.load[1],
        load_average_15m: s.usage.load[2],
    }
}

fn disk((path, free, total): &(std::path::PathBuf, u64, u64)) -> pb::DiskSpace {
    pb::DiskSpace { path: path.display().to_string(), free_bytes: *free, total_bytes: *total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn proto_spec() -> pb::TaskSpec {
        pb::TaskSpec {
            job_id: "job1".into(),
            task_id: "task1".into(),
            command_line: "/bin/true".into(),
            container: Some(pb::ContainerSettings {
                image: "busybox".into(),
                run_options: "--rm".into(),
                working_directory: pb::WorkingDirectory::ImageDefault as i32,
                registry: Some(pb::RegistryCredentials {
                    username: "u".into(),
                    password: "hunter2".into(),
                    identity_token: String::new(),
                }),
                pull_policy: pb::PullPolicy::Always as i32,
                devices: vec!["nvidia.com/gpu=0".into()],
                host_mounts: vec![],
                host_mounts_set: false,
            }),
            environment: HashMap::from([("A".to_string(), "1".to_string())]),
            user: Some(pb::UserIdentity { user_name: "alice".into(), auto_user: None }),
            constraints: Some(pb::TaskConstraints {
                max_wall_clock_time: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                retention_time: None,
                max_task_retry_count: 2,
            }),
            required_slots: 0,
            job_preparation: None,
            resource_files: vec![],
            output_files: vec![],
            application_packages: vec![],
        }
    }

    #[test]
    fn spec_round_trip() {
        let spec = task_spec(proto_spec()).unwrap().0;
        assert_eq!(spec.key.to_string(), "job1/task1");
        assert_eq!(spec.container.as_ref().unwrap().working_directory, WorkingDirMode::ImageDefault);
        assert_eq!(spec.user, UserIdentity::Named("alice".into()));
        assert_eq!(identity_to_proto(&spec.user).user_name, "alice");
        let auto = pb::UserIdentity {
            user_name: String::new(),
            auto_user: Some(pb::AutoUserSpecification { scope: 2, elevation_level: 2 }),
        };
        let want = UserIdentity::Auto { scope: AutoUserScope::Task, elevation: Elevation::Admin };
        assert_eq!(identity(Some(auto.clone())).unwrap(), want);
        assert_eq!(identity_to_proto(&want), auto);
        assert_eq!(identity(None).unwrap(), UserIdentity::default());
        assert!(
            identity(Some(pb::UserIdentity { user_name: "a".into(), auto_user: Some(Default::default()) })).is_err()
        );
        let bad = pb::AutoUserSpecification { scope: 9, elevation_level: 0 };
        assert!(identity(Some(pb::UserIdentity { user_name: String::new(), auto_user: Some(bad) })).is_err());
        assert_eq!(spec.constraints.max_wall_clock_time, Some(Duration::from_secs(5)));
        assert_eq!(spec.required_slots, 1, "0 slots means 1");
        assert_eq!(spec.constraints.max_task_retry_count, 2);
        let c = spec.container.as_ref().unwrap();
        assert_eq!(c.pull_policy, PullPolicy::Always);
        assert!(matches!(&c.credentials, Some(Credentials::Basic { username, .. }) if username == "u"));
        let back = spec_to_proto(&spec);
        assert!(back.container.as_ref().unwrap().registry.is_none(), "credentials are never echoed");
        assert!(!serde_json::to_string(&spec).unwrap().contains("hunter2"), "nor stored");
        assert_eq!(back.command_line, "/bin/true");
        assert_eq!(back.environment.get("A").map(String::as_str), Some("1"));
        assert_eq!(back.constraints.unwrap().retention_time.unwrap().seconds, 7 * 24 * 3600);
    }

    #[test]
    fn bad_fields() {
        let mut p = proto_spec();
        p.container.as_mut().unwrap().working_directory = 9;
        assert!(task_spec(p).unwrap_err().to_string().contains("container.working_directory"));
        let mut p = proto_spec();
        p.constraints.as_mut().unwrap().max_wall_clock_time = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(task_spec(p).unwrap_err().to_string().contains("max_wall_clock_time"));
        let mut p = proto_spec();
        p.constraints.as_mut().unwrap().retention_time = Some(prost_types::Duration { seconds: i64::MAX, nanos: 0 });
        assert!(task_spec(p).unwrap_err().to_string().contains("retention_time"));
        let mut p = proto_spec();
        p.constraints.as_mut().unwrap().max_task_retry_count = -2;
        assert!(task_spec(p).unwrap_err().to_string().contains("max_task_retry_count"));
        let mut p = proto_spec();
        p.constraints.as_mut().unwrap().max_task_retry_count = -1;
        assert_eq!(task_spec(p).unwrap().0.constraints.max_task_retry_count, -1, "no limit");
        let mut p = proto_spec();
        p.task_id = "../x".into();
        assert!(task_spec(p).is_err());
        assert!(task_state(42).is_err());
        assert_eq!(task_state(0).unwrap(), None);
    }

    #[test]
    fn page_sizes_and_tokens() {
        assert_eq!((page_size(0), page_size(5), page_size(u32::MAX)), (1000, 5, 10_000));
        assert_eq!(page_token(&next_page_token(42)).unwrap(), 42);
        assert_eq!(page_token("").unwrap(), 0);
        for bad in ["42", "a", "ax", "b7", "a-1"] {
            assert!(page_token(bad).unwrap_err().to_string().contains("page_token"), "{bad}");
        }
    }

    #[test]
    fn host_mounts_unset_empty_and_listed() {
        let with = |set: bool, list: Vec<pb::HostMount>| {
            let mut p = proto_spec();
            let c = p.container.as_mut().unwrap();
            (c.host_mounts_set, c.host_mounts) = (set, list);
            task_spec(p).map(|(s, _)| s.container.unwrap().host_mounts)
        };
        let entry = |s: pb::HostMountSource, ro: bool| pb::HostMount { source: s as i32, read_only: ro };
        assert_eq!(with(false, vec![]).unwrap(), None, "unset: the whole root");
        assert_eq!(with(true, vec![]).unwrap(), Some(vec![]), "set and empty: nothing");
        let list = vec![entry(pb::HostMountSource::Task, true), entry(pb::HostMountSource::VfsMounts, false)];
        let got = with(true, list.clone()).unwrap().unwrap();
        assert_eq!(
            got,
            [
                HostMount { source: HostMountSource::Task, read_only: true },
                HostMount { source: HostMountSource::VfsMounts, read_only: false }
            ]
        );
        let mut p = proto_spec();
        let c = p.container.as_mut().unwrap();
        (c.host_mounts_set, c.host_mounts) = (true, list);
        let back = spec_to_proto(&task_spec(p).unwrap().0).container.unwrap();
        assert!(back.host_mounts_set);
        assert_eq!(back.host_mounts.len(), 2);
        assert!(!spec_to_proto(&task_spec(proto_spec()).unwrap().0).container.unwrap().host_mounts_set);
        let err = |r: Result<_, crate::supervisor::Error>| r.unwrap_err().to_string();
        assert!(err(with(false, vec![entry(pb::HostMountSource::Task, false)])).contains("host_mounts_set"));
        assert!(err(with(true, vec![entry(pb::HostMountSource::Unspecified, false)])).contains("no source"));
        assert!(err(with(true, vec![pb::HostMount { source: 42, read_only: false }])).contains("unknown source 42"));
        let twice = vec![entry(pb::HostMountSource::Shared, false), entry(pb::HostMountSource::Shared, true)];
        assert!(err(with(true, twice)).contains("Shared is listed twice"));
    }

    #[test]
    fn info_to_proto() {
        let spec = task_spec(proto_spec()).unwrap().0;
        let mut info = TaskInfo::new(spec, SystemTime::UNIX_EPOCH + Duration::from_secs(10));
        info.complete(
            Some(137),
            Some(FailureInfo::new(crate::model::FailureCode::TaskKilledBySignal, "x")),
            SystemTime::UNIX_EPOCH + Duration::from_secs(20),
        );
        let p = task_info(&info, "/d".into(), "/d/wd".into());
        assert_eq!(p.state, pb::TaskState::Completed as i32);
        assert_eq!(p.exit_code, Some(137));
        assert_eq!(p.result, pb::TaskResult::Failure as i32);
        assert_eq!(p.failure_info.unwrap().category, pb::FailureCategory::UserError as i32);
        assert_eq!(p.completed_at.unwrap().seconds, 20);
    }
}
