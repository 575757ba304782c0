//! What a task's cgroup tells: whether the kernel's OOM killer killed a
//! process in it, and what its processes used (CPU, memory, block I/O, for
//! `TaskInfo.stats`). Read before the container (and with it the cgroup) is
//! deleted, and while the task runs. cgroup v2 (`cpu.stat`, `memory.peak`,
//! `io.stat`) and v1 (the cpuacct, memory and blkio hierarchies).

use std::path::Path;
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the cgroup at `cgroups_path` (the spec's `linux.cgroupsPath`)
/// recorded an OOM kill: `memory.events` on cgroup v2, `memory.oom_control` on v1.
pub(super) async fn oom_killed(cgroups_path: &str) -> bool {
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

/// What a cgroup's processes used so far (the wall clock is the caller's).
pub(super) type Usage = crate::model::TaskStats;

/// `TaskInfo.stats` from a cgroup's usage and the time the task ran;
/// `live`: it still runs (the memory in use now is kept).
pub(super) fn stats(u: Usage, wall_clock: Duration, live: bool) -> crate::model::TaskStats {
    crate::model::TaskStats { wall_clock, memory_bytes: if live { u.memory_bytes } else { 0 }, ..u }
}

/// The usage of the cgroup at `cgroups_path`; None when it does not exist.
pub(super) fn usage(cgroups_path: &str) -> Option<Usage> {
    usage_under(Path::new(ROOT), cgroups_path, clock_ticks())
}

/// USER_HZ, the unit of cgroup v1's `cpuacct.stat`.
fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n.unsigned_abs(),
        _ => 100,
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(text: Option<String>) -> Option<u64> {
    text?.trim().parse().ok()
}

/// `key value` lines (`cpu.stat`, `cpuacct.stat`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn usage_under(root: &Path, cgroups_path: &str, ticks: u64) -> Option<Usage> {
    let rel = cgroups_path.trim_start_matches('/');
    let mut u = Usage::default();
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        let cpu = read(&dir.join("cpu.stat"))?;
        u.user_cpu = Duration::from_micros(field(&cpu, "user_usec").unwrap_or(0));
        u.kernel_cpu = Duration::from_micros(field(&cpu, "system_usec").unwrap_or(0));
        u.memory_bytes = number(read(&dir.join("memory.current"))).unwrap_or(0);
        // memory.peak is Linux 5.19 and later.
        u.peak_memory_bytes = number(read(&dir.join("memory.peak"))).unwrap_or(u.memory_bytes);
        for line in read(&dir.join("io.stat")).unwrap_or_default().lines() {
            for kv in line.split_whitespace().skip(1) {
                let Some((k, v)) = kv.split_once('=') else { continue };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => u.read_bytes += v,
                    "wbytes" => u.write_bytes += v,
                    "rios" => u.read_ops += v,
                    "wios" => u.write_ops += v,
                    _ => {}
                }
            }
        }
        return Some(u);
    }
    // v1: cpuacct on its own or with cpu.
    let cpuacct = ["cpuacct", "cpu,cpuacct", "cpu"].iter().map(|h| root.join(h).join(rel)).find(|d| d.is_dir())?;
    let stat = read(&cpuacct.join("cpuacct.stat"))?;
    let tick = |n: u64| Duration::from_millis(n.saturating_mul(1000) / ticks.max(1));
    u.user_cpu = tick(field(&stat, "user").unwrap_or(0));
    u.kernel_cpu = tick(field(&stat, "system").unwrap_or(0));
    let memory = root.join("memory").join(rel);
    u.memory_bytes = number(read(&memory.join("memory.usage_in_bytes"))).unwrap_or(0);
    u.peak_memory_bytes = number(read(&memory.join("memory.max_usage_in_bytes"))).unwrap_or(u.memory_bytes);
    let blkio = root.join("blkio").join(rel);
    // `MAJ:MIN Read N` lines; the `Total` lines are left out.
    let sum = |file: &str, op: &str| -> u64 {
        read(&blkio.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (_dev, kind, n) = (w.next()?, w.next()?, w.next()?);
                (kind == op).then(|| n.parse::<u64>().ok()).flatten()
            })
            .sum()
    };
    u.read_bytes = sum("blkio.throttle.io_service_bytes", "Read");
    u.write_bytes = sum("blkio.throttle.io_service_bytes", "Write");
    u.read_ops = sum("blkio.throttle.io_serviced", "Read");
    u.write_ops = sum("blkio.throttle.io_serviced", "Write");
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats() {
        assert_eq!(super::oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(super::oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(super::oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn usage_on_cgroup_v2() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cgroup.controllers", "cpu memory io");
        let d = root.path().join("berth/c1");
        write(&d, "cpu.stat", "usage_usec 1500000\nuser_usec 1200000\nsystem_usec 300000\n");
        write(&d, "memory.current", "1048576\n");
        write(&d, "memory.peak", "67108864\n");
        write(
            &d,
            "io.stat",
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=4096 wbytes=0 rios=1 wios=0\n",
        );
        let u = usage_under(root.path(), "/berth/c1", 100).unwrap();
        assert_eq!(
            u,
            Usage {
                user_cpu: Duration::from_millis(1200),
                kernel_cpu: Duration::from_millis(300),
                wall_clock: Duration::ZERO,
                peak_memory_bytes: 64 << 20,
                memory_bytes: 1 << 20,
                read_bytes: 8192,
                write_bytes: 8192,
                read_ops: 2,
                write_ops: 2,
            }
        );
        assert_eq!(usage_under(root.path(), "/berth/gone", 100), None);
    }

    #[test]
    fn usage_on_cgroup_v1() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("cpuacct/berth/c1"), "cpuacct.stat", "user 120\nsystem 30\n");
        write(&root.path().join("memory/berth/c1"), "memory.max_usage_in_bytes", "67108864\n");
        write(&root.path().join("memory/berth/c1"), "memory.usage_in_bytes", "0\n");
        let b = root.path().join("blkio/berth/c1");
        write(&b, "blkio.throttle.io_service_bytes", "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n");
        write(&b, "blkio.throttle.io_serviced", "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n");
        let u = usage_under(root.path(), "/berth/c1", 100).unwrap();
        assert_eq!((u.user_cpu, u.kernel_cpu), (Duration::from_millis(1200), Duration::from_millis(300)));
        assert_eq!(
            (u.peak_memory_bytes, u.read_bytes, u.write_bytes, u.read_ops, u.write_ops),
            (64 << 20, 4096, 8192, 1, 2)
        );
    }
}
