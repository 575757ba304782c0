//! Gathering the node's facts at start-up (the only I/O that feeds the spec
//! builder's `NodeFacts`).

use crate::config::Config;
use crate::images::Platform;
use crate::model::NodeFacts;
use std::path::PathBuf;

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

pub fn facts(cfg: &Config, platform: &Platform) -> NodeFacts {
    NodeFacts {
        node_id: cfg.node_id.clone(),
        pool_id: cfg.pool_id.clone(),
        account_name: cfg.account_name.clone(),
        account_url: cfg.account_url.clone(),
        is_dedicated: cfg.is_dedicated,
        reserved_disk_bytes: cfg.min_free_bytes,
        root_dir: cfg.root_dir.clone(),
        hostname: hostname(),
        os: platform.os.clone(),
        arch: platform.architecture.clone(),
        cpus: std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)).unwrap_or(1),
        memory_bytes: memory_bytes(),
        network_files: ["/etc/resolv.conf", "/etc/hosts"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect(),
    }
}
