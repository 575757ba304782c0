//! Common `docker create` flags refused by name, each with its reason, and
//! the boolean short flags that may be clustered.

/// Common `docker create` flags refused by name, with the reason.
pub(super) fn reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "--restart" => "a batch task runs once; to run it again after a failure use constraints.max_task_retry_count",
        "--health-cmd"
        | "--health-interval"
        | "--health-retries"
        | "--health-start-period"
        | "--health-start-interval"
        | "--health-timeout"
        | "--no-healthcheck" => "health checks are not run: a batch task's health is its exit code",
        "--log-driver" | "--log-opt" => {
            "stdout.txt and stderr.txt in the task directory are written by containerd's shim straight from the \
             task; the agent neither rotates nor caps them (the node's min_free_mb keeps the disk from filling)"
        }
        "--userns" => "user namespaces are the node's choice (policy.user_namespaces)",
        "--cgroup-parent" => "every task's cgroup is the agent's (berth/<container id>)",
        "--volumes-from" | "--link" => "tasks do not share containers; use shared/ or the network",
        "--cidfile" => "the container id is in TaskInfo.container_info.container_id",
        "--kernel-memory" => "kernel memory limits are gone from the kernel (cgroup v2) and deprecated in docker",
        "-a" | "--attach" | "--sig-proxy" | "--detach-keys" => {
            "no one attaches to a batch task: its output is in stdout.txt and stderr.txt"
        }
        _ => return None,
    })
}

/// The boolean short flags that may be clustered (`-it`).
pub(super) const CLUSTERABLE: &str = "itd";
