//! How berthctl prints API answers: a short human form, or JSON (`--output json`).

use berth_proto::v1 as pb;
use serde_json::{json, Value};

pub(crate) fn state_name(v: i32) -> &'static str {
    pb::TaskState::try_from(v).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => {
            let st = std::time::UNIX_EPOCH + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            Value::String(humantime::format_rfc3339_millis(st).to_string())
        }
        None => Value::Null,
    }
}

pub(crate) fn task_json(t: &pb::TaskInfo) -> Value {
    json!({
        "job_id": t.job_id,
        "task_id": t.task_id,
        "state": state_name(t.state),
        "exit_code": t.exit_code,
        "result": pb::TaskResult::try_from(t.result).map(|r| r.as_str_name()).unwrap_or("UNKNOWN"),
        "failure_info": t.failure_info.as_ref().map(|f| json!({
            "category": pb::FailureCategory::try_from(f.category).map(|c| c.as_str_name()).unwrap_or("UNKNOWN"),
            "code": f.code,
            "message": f.message,
        })),
        "container_info": t.container_info.as_ref().map(|c| json!({
            "container_id": c.container_id, "state": c.state, "error": c.error, "ip_address": c.ip_address,
        })),
        "created_at": ts(&t.created_at),
        "started_at": ts(&t.started_at),
        "completed_at": ts(&t.completed_at),
        "sequence": t.sequence,
        "task_dir": t.task_dir,
        "working_dir": t.working_dir,
        "kind": pb::TaskKind::try_from(t.kind).map(|k| k.as_str_name().trim_start_matches("TASK_KIND_")).unwrap_or("TASK"),
        "stats": t.stats.as_ref().map(stats_json),
        "retry_count": t.retry_count,
        "requeue_count": t.requeue_count,
        "last_retry_at": ts(&t.last_retry_at),
        "last_requeue_at": ts(&t.last_requeue_at),
        "previous_attempt": t.previous_attempt.as_ref().map(|a| json!({
            "exit_code": a.exit_code,
            "failure_code": a.failure_info.as_ref().map(|f| &f.code),
            "ended_at": ts(&a.ended_at),
        })),
    })
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9).unwrap_or(0.0)
}

pub(crate) fn stats_json(s: &pb::TaskStatistics) -> Value {
    json!({
        "user_cpu_seconds": secs(&s.user_cpu_time),
        "kernel_cpu_seconds": secs(&s.kernel_cpu_time),
        "wall_clock_seconds": secs(&s.wall_clock_time),
        "peak_memory_bytes": s.peak_memory_bytes,
        "memory_bytes": s.memory_bytes,
        "read_bytes": s.read_bytes,
        "write_bytes": s.write_bytes,
        "read_ops": s.read_ops,
        "write_ops": s.write_ops,
    })
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
}

/// One line of a task's figures: `cpu 1.23 s (user 1.10, kernel 0.13)  wall 2.0 s  peak 64.0 MiB  io r 0 B w 8.0 MiB`.
pub(crate) fn stats_human(s: &pb::TaskStatistics) -> String {
    let (user, kernel) = (secs(&s.user_cpu_time), secs(&s.kernel_cpu_time));
    format!(
        "cpu {:.2} s (user {user:.2}, kernel {kernel:.2})  wall {:.1} s  peak memory {}  read {} ({} ops)  written {} ({} ops)",
        user + kernel,
        secs(&s.wall_clock_time),
        mib(s.peak_memory_bytes),
        mib(s.read_bytes),
        s.read_ops,
        mib(s.write_bytes),
        s.write_ops
    )
}

/// `berthctl top`: running tasks, the busiest first.
pub(crate) fn top(tasks: &[pb::TaskInfo]) -> String {
    let mut rows: Vec<(f64, [String; 6])> = tasks
        .iter()
        .map(|t| {
            let s = t.stats.unwrap_or_default();
            let cpu = secs(&s.user_cpu_time) + secs(&s.kernel_cpu_time);
            let wall = secs(&s.wall_clock_time);
            let percent = if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 };
            (
                cpu,
                [
                    t.job_id.clone(),
                    t.task_id.clone(),
                    format!("{cpu:.2}"),
                    format!("{percent:.0}"),
                    mib(s.memory_bytes),
                    mib(s.peak_memory_bytes),
                ],
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1[5].cmp(&a.1[5])));
    let header = ["JOB", "TASK", "CPU(s)", "CPU%", "MEMORY", "PEAK"].map(String::from);
    let all: Vec<[String; 6]> = std::iter::once(header).chain(rows.into_iter().map(|r| r.1)).collect();
    let widths: Vec<usize> = (0..6).map(|i| all.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    all.iter()
        .map(|r| {
            r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node state's name without the enum prefix: IDLE, OFFLINE, ...
pub(crate) fn node_state_name(s: i32) -> &'static str {
    pb::NodeState::try_from(s).map(|s| s.as_str_name().trim_start_matches("NODE_STATE_")).unwrap_or("UNKNOWN")
}

pub(crate) fn job_json(j: &pb::JobInfo) -> Value {
    let spec = |s: &Option<pb::TaskSpec>| {
        s.as_ref().map(|s| json!({"command_line": s.command_line, "image": s.container.as_ref().map(|c| &c.image)}))
    };
    json!({
        "job_id": j.job_id,
        "released": j.released,
        "preparation": spec(&j.preparation),
        "release": spec(&j.release),
        "preparation_task": j.preparation_task.as_ref().map(task_json),
        "release_task": j.release_task.as_ref().map(task_json),
    })
}

pub(crate) fn job_human(j: &pb::JobInfo) -> String {
    let mut s = format!("job {}{}", j.job_id, if j.released { "  released" } else { "" });
    for (what, spec, task) in
        [("preparation", &j.preparation, &j.preparation_task), ("release", &j.release, &j.release_task)]
    {
        if let Some(spec) = spec {
            s.push_str(&format!("\n  {what}: {}", spec.command_line));
            if let Some(t) = task {
                s.push_str(&format!("\n    {}", task_human(t)));
            }
        }
    }
    s
}

pub(crate) fn event_json(e: &pb::TaskEvent) -> Value {
    let mut v = e.task.as_ref().map(task_json).unwrap_or_else(|| json!({}));
    v["sequence"] = json!(e.sequence);
    v
}

pub(crate) fn node_json(n: &pb::NodeInfo) -> Value {
    json!({
        "node_id": n.node_id, "pool_id": n.pool_id, "hostname": n.hostname, "os": n.os, "arch": n.arch,
        "cpus": n.cpus, "memory_bytes": n.memory_bytes,
        "task_slots_total": n.task_slots_total, "task_slots_free": n.task_slots_free,
        "containerd_version": n.containerd_version, "containerd_reachable": n.containerd_reachable,
        "agent_version": n.agent_version, "node_root": n.node_root, "notes": n.notes,
        "prefetch": n.prefetch.iter().map(|p| json!({"image": p.image, "state": p.state, "error": p.error})).collect::<Vec<_>>(),
        "gpus": n.gpus, "cdi_devices": n.cdi_devices,
        "cdi_specs": n.cdi_specs.iter().map(|s| json!({"path": s.path, "kind": s.kind, "devices": s.devices, "error": s.error})).collect::<Vec<_>>(),
        "rdma_devices": n.rdma_devices.iter().map(|d| json!({
            "name": d.name, "device_nodes": d.device_nodes,
            "ports": d.ports.iter().map(|p| json!({"port": p.port, "state": p.state, "link_layer": p.link_layer})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "node_root_disk": n.node_root_disk.as_ref().map(|d| json!({"path": d.path, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes})),
        "image_store_disk": n.image_store_disk.as_ref().map(|d| json!({"path": d.path, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes})),
        "state": node_state_name(n.state),
        "state_reason": n.state_reason,
        "scheduling_enabled": n.scheduling_enabled,
        "start_task": n.start_task.as_ref().map(task_json),
        "start_task_wait_for_success": n.start_task_wait_for_success,
        "application_packages": packages_json(&n.application_packages),
    })
}

pub(crate) fn packages_json(p: &[pb::ApplicationPackageInfo]) -> Value {
    p.iter()
        .map(|p| {
            json!({
                "application_id": p.application_id, "version": p.version, "path": p.path,
                "node_level": p.node_level, "task_references": p.task_references,
                "environment_variables": p.environment_variables,
            })
        })
        .collect()
}

pub(crate) fn task_human(t: &pb::TaskInfo) -> String {
    let mut s = format!("{}/{}  {}", t.job_id, t.task_id, state_name(t.state));
    if let Some(code) = t.exit_code {
        s.push_str(&format!("  exit {code}"));
    }
    if let Some(f) = &t.failure_info {
        s.push_str(&format!("  {}: {}", f.code, f.message));
    }
    s
}

pub(crate) fn table(tasks: &[pb::TaskInfo]) -> String {
    let mut rows = vec![["JOB".to_string(), "TASK".into(), "STATE".into(), "EXIT".into(), "FAILURE".into()]];
    for t in tasks {
        rows.push([
            t.job_id.clone(),
            t.task_id.clone(),
            state_name(t.state).into(),
            t.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            t.failure_info.as_ref().map(|f| f.code.clone()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `explain --output json`: the decisions, with the OCI spec as an object.
pub(crate) fn explanation_json(e: &pb::TaskExplanation) -> Value {
    let spec: Value = serde_json::from_str(&e.oci_spec_json).unwrap_or(Value::Null);
    json!({
        "image": e.image,
        "uid": e.uid,
        "gid": e.gid,
        "groups": e.groups,
        "admin": e.admin,
        "devices": e.devices,
        "exclusive_gpu_count": e.exclusive_gpu_count,
        "exclusive_gpus": e.exclusive_gpus,
        "granted": e.granted,
        "stop_signal": e.stop_signal,
        "stop_timeout_seconds": e.stop_timeout.as_ref().map(|_| secs(&e.stop_timeout)),
        "container_id": e.container_id,
        "failure_info": e.failure.as_ref().map(|f| json!({
            "category": pb::FailureCategory::try_from(f.category).map(|c| c.as_str_name()).unwrap_or("UNKNOWN"),
            "code": f.code,
            "message": f.message,
        })),
        "oci_spec": spec,
    })
}

/// `explain`: the decisions, one per line, then the OCI spec.
pub(crate) fn explanation_human(e: &pb::TaskExplanation) -> String {
    let mut s = String::new();
    let image = if e.image.is_empty() { "(host task)" } else { &e.image };
    s.push_str(&format!("image:      {image}\n"));
    let groups: Vec<String> = e.groups.iter().map(u32::to_string).collect();
    let admin = if e.admin { "  admin" } else { "" };
    s.push_str(&format!("identity:   uid {} gid {} groups [{}]{admin}\n", e.uid, e.gid, groups.join(",")));
    if !e.devices.is_empty() {
        s.push_str(&format!("devices:    {}\n", e.devices.join(", ")));
    }
    match (e.exclusive_gpu_count, e.exclusive_gpus.is_empty()) {
        (0, _) => {}
        (n, true) => s.push_str(&format!("gpus:       {n}, held exclusively (chosen when it starts)\n")),
        (_, false) => s.push_str(&format!("gpus:       {}, held exclusively\n", e.exclusive_gpus.join(", "))),
    }
    for g in &e.granted {
        s.push_str(&format!("granted:    {g}\n"));
    }
    let timeout =
        e.stop_timeout.as_ref().map_or("the grace period".to_string(), |_| format!("{}s", secs(&e.stop_timeout)));
    s.push_str(&format!("stop:       signal {}, SIGKILL after {timeout}\n", e.stop_signal));
    s.push_str(&format!("container:  {}\n", e.container_id));
    if let Some(f) = &e.failure {
        s.push_str(&format!("would fail: {}: {}\n", f.code, f.message));
    }
    if !e.oci_spec_json.is_empty() {
        s.push_str(&e.oci_spec_json);
        s.push('\n');
    }
    s
}
