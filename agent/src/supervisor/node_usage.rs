//! The node's own figures for `GetNode`: CPU use since the previous call,
//! memory in use and available, load average (`/proc/stat`, `/proc/meminfo`,
//! `/proc/loadavg`).

/// What the node uses now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeUsage {
    /// Percent of all CPUs busy since the previous sample (the first: since boot).
    pub cpu_used_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    pub load: [f64; 3],
}

/// (total, idle) jiffies of the `cpu` line of `/proc/stat`.
fn cpu_counters(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reads the figures; `last` holds the previous CPU sample and gets this one.
pub(super) fn usage(last: &mut Option<(u64, u64)>) -> NodeUsage {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    compute(&stat, &meminfo, &loadavg, last)
}

fn compute(stat: &str, meminfo: &str, loadavg: &str, last: &mut Option<(u64, u64)>) -> NodeUsage {
    let mut u = NodeUsage::default();
    if let Some((total, idle)) = cpu_counters(stat) {
        let (t0, i0) = last.unwrap_or((0, 0));
        let (dt, di) = (total.saturating_sub(t0), idle.saturating_sub(i0));
        if dt > 0 {
            u.cpu_used_percent = 100.0 * dt.saturating_sub(di) as f64 / dt as f64;
        }
        *last = Some((total, idle));
    }
    let total = meminfo_kib(meminfo, "MemTotal:").unwrap_or(0) * 1024;
    let available = meminfo_kib(meminfo, "MemAvailable:").unwrap_or(0) * 1024;
    u.memory_available_bytes = available;
    u.memory_used_bytes = total.saturating_sub(available);
    for (slot, v) in u.load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_proc() {
        let mut last = None;
        let meminfo = "MemTotal:        1000 kB\nMemFree:  100 kB\nMemAvailable:     400 kB\n";
        let u = compute("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n", meminfo, "0.50 0.25 0.10 1/99 7", &mut last);
        assert_eq!(u.cpu_used_percent, 20.0);
        assert_eq!((u.memory_used_bytes, u.memory_available_bytes), (600 * 1024, 400 * 1024));
        assert_eq!(u.load, [0.5, 0.25, 0.1]);
        // Since the previous sample: 100 jiffies more, 50 of them idle.
        let u = compute("cpu  150 0 100 850 0 0 0 0 0 0\n", meminfo, "", &mut last);
        assert_eq!(u.cpu_used_percent, 50.0);
    }
}
