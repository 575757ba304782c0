//! What a task's cgroup tells after its process exited: whether the kernel's
//! OOM killer killed a process in it. Read before the container (and with it
//! the cgroup) is deleted.

/// Whether the cgroup at `cgroups_path` (the spec's `linux.cgroupsPath`)
/// recorded an OOM kill: `memory.events` on cgroup v2, `memory.oom_control` on v1.
pub async fn oom_killed(cgroups_path: &str) -> bool {
    let files = [
        format!("/sys/fs/cgroup{cgroups_path}/memory.events"),
        format!("/sys/fs/cgroup/memory{cgroups_path}/memory.oom_control"),
    ];
    for f in files {
        if let Ok(text) = tokio::fs::read_to_string(&f).await {
            return oom_kills(&text) > 0;
        }
    }
    false
}

/// The `oom_kill N` count of either file.
fn oom_kills(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_both_formats() {
        assert_eq!(super::oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(super::oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(super::oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }
}
