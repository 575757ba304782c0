//! A host task's cgroup: every process the task starts is in it, so that a
//! terminate, a wall-clock expiry or the end of the main process kills all of
//! them, and an OOM kill can be read back. cgroup v2 (one directory), or v1 (a
//! directory in each of the memory, pids, cpu and freezer hierarchies).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a host task joins (those the kernel has mounted).
/// `cpu,cpuacct` where the two are mounted together, `cpuacct` where alone
/// (the task's CPU time, for its statistics), `blkio` for its block I/O.
const V1_HIERARCHIES: [&str; 6] = ["pids", "memory", "cpu,cpuacct", "cpuacct", "blkio", "freezer"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cgroup {
    /// One directory per hierarchy; the first lists the processes.
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// The cgroup at `rel` (`<namespace>/<id>`) on this host's hierarchy.
    pub(super) fn new(rel: &str) -> Self {
        Self::under(Path::new(ROOT), rel)
    }

    fn under(root: &Path, rel: &str) -> Self {
        if root.join("cgroup.controllers").exists() {
            return Self { dirs: vec![root.join(rel)], v2: true };
        }
        // `cpuacct` may be a link to `cpu,cpuacct`: each hierarchy once.
        let mut seen = Vec::new();
        let dirs = V1_HIERARCHIES
            .iter()
            .map(|h| root.join(h))
            .filter(|d| d.is_dir())
            .filter(|d| {
                let real = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
                let new = !seen.contains(&real);
                seen.push(real);
                new
            })
            .map(|d| d.join(rel))
            .collect();
        Self { dirs, v2: false }
    }

    /// Creates the directories (and, on v2, enables the memory and pids
    /// controllers for them, best effort).
    pub(super) fn create(&self) -> io::Result<()> {
        if self.dirs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no cgroup hierarchy under {ROOT}")));
        }
        for d in &self.dirs {
            if self.v2 {
                // Controllers must be enabled in every ancestor below the root.
                let mut ancestors: Vec<&Path> = d.ancestors().skip(1).take_while(|a| *a != Path::new(ROOT)).collect();
                ancestors.reverse();
                let mut parent = PathBuf::from(ROOT);
                for a in ancestors {
                    std::fs::create_dir_all(a)?;
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
                    parent = a.to_owned();
                }
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            }
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Its `cgroup.procs` files (a process written there joins it).
    pub(super) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the cgroup (none if it does not exist).
    pub(super) fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else { return vec![] };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup and waits (up to `within`) until it is
    /// empty. On v1 the freezer keeps processes from forking meanwhile.
    pub(super) fn kill_all(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let freezer =
            self.dirs.iter().find(|d| d.parent().is_some_and(|p| p.starts_with(Path::new(ROOT).join("freezer"))));
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            if self.v2 && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            // cgroup v2 without cgroup.kill (kernels before 5.14): frozen
            // processes cannot fork while they are killed one by one.
            if self.v2 {
                let _ = std::fs::write(self.dirs[0].join("cgroup.freeze"), "1");
            }
            if let Some(f) = freezer {
                let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            if let Some(f) = freezer {
                let _ = std::fs::write(f.join("freezer.state"), "THAWED");
            }
            if self.v2 {
                let _ = std::fs::write(self.dirs[0].join("cgroup.freeze"), "0");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the (empty) cgroup; a missing one is fine.
    pub(super) fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        let v1 = Cgroup::under(dir.path(), "berth/c1");
        assert!(!v1.v2);
        assert_eq!(v1.dirs, vec![dir.path().join("pids/berth/c1"), dir.path().join("memory/berth/c1")]);
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        let v2 = Cgroup::under(dir.path(), "berth/c1");
        assert!(v2.v2);
        assert_eq!(v2.dirs, vec![dir.path().join("berth/c1")]);
        assert!(v2.pids().is_empty());
    }
}
