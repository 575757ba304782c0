//! Host tasks: tasks without container settings run as processes on the node,
//! each owned by a `host-shim` (see `shim`) that outlives the agent, in a cgroup
//! of its own (see `cgroup`). What a host task's process is made of comes from
//! `spec::host_process`; this module starts, signals, waits for and cleans up
//! after it. Per task, `<state dir>/host/<id>/` holds the shim's files:
//! `spec.json` (written by the agent), `shim.pid`, `task.pid` and, once the
//! process ended, `exit.json`.

mod cgroup;
pub mod shim;

use crate::layout::Layout;
use crate::model::TaskKey;
use crate::spec::HostProcess;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncBufReadExt;

const SPEC_FILE: &str = "spec.json";
const SHIM_PID_FILE: &str = "shim.pid";
const TASK_PID_FILE: &str = "task.pid";
const EXIT_FILE: &str = "exit.json";
const SHIM_LOG: &str = "shim.log";
/// How long a shim may take to write its pid once spawned.
const SHIM_PID_GRACE: Duration = Duration::from_secs(5);

/// What the shim reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShimSpec {
    process: HostProcess,
    /// The node root and the task: the shim opens the task's `stdout.txt` and
    /// `stderr.txt` itself, below the root without following symlinks
    /// (`Layout::open_task_output`). The key also lets a rebuilt state
    /// database adopt the task.
    root: PathBuf,
    key: TaskKey,
    /// Relative to the cgroup root: `<namespace>/<id>`.
    cgroup: String,
}

/// How a host task's process ended, as its shim wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128+N when killed by signal N; None if it never started.
    pub code: Option<i32>,
    pub exited_at_ms: u64,
    /// Why the process could not be started (executable missing, ...).
    pub start_error: Option<String>,
}

impl ExitRecord {
    pub fn exited_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.exited_at_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot prepare the host process: {0}")]
    Setup(#[from] std::io::Error),
    /// The process could not be started (a user error: a missing executable, ...).
    #[error("{0}")]
    Start(String),
    #[error("the host task's shim failed: {0}")]
    Shim(String),
    /// Neither the shim nor its exit record is there: a reboot, or a killed shim.
    #[error("the host process is gone and its exit status was not recorded")]
    Lost,
}

/// Starts and follows host tasks.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    state_dir: PathBuf,
    /// The cgroup directory host tasks are put under (the containerd namespace's).
    cgroup_parent: String,
    /// The `berth-agent` executable (it is also the shim).
    shim_exe: PathBuf,
}

impl HostRuntime {
    pub fn new(state_dir: &Path, cgroup_parent: &str, shim_exe: PathBuf) -> Self {
        Self { state_dir: state_dir.join("host"), cgroup_parent: cgroup_parent.to_owned(), shim_exe }
    }

    /// The agent's state directory (holding `host/`).
    pub fn agent_state_dir(&self) -> &Path {
        self.state_dir.parent().unwrap_or(&self.state_dir)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// `linux.cgroupsPath`-style path of a task's cgroup: `/<parent>/<id>`.
    pub fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent)
    }

    fn cgroup(&self, id: &str) -> cgroup::Cgroup {
        cgroup::Cgroup::new(&format!("{}/{id}", self.cgroup_parent))
    }

    /// Starts the task's process through a new shim; returns its pid once it runs.
    pub async fn start(
        &self,
        id: &str,
        key: &TaskKey,
        process: &HostProcess,
        layout: &Layout,
    ) -> Result<u32, HostError> {
        let dir = self.dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let spec = ShimSpec {
            process: process.clone(),
            root: layout.root().to_owned(),
            key: key.clone(),
            cgroup: format!("{}/{id}", self.cgroup_parent),
        };
        write_atomic(&dir.join(SPEC_FILE), &serde_json::to_vec(&spec).map_err(std::io::Error::from)?)?;
        self.cgroup(id).create()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(SHIM_LOG))?;
        let mut cmd = tokio::process::Command::new(&self.shim_exe);
        cmd.arg("host-shim")
            .arg(&dir)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        crate::sys::process::own_session(cmd.as_std_mut());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| HostError::Shim("no pipe to the shim".into()))?;
        // Reaped in the background; the task is followed through its files and pid.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HostError::Shim(e.to_string())),
            Err(_) => return Err(HostError::Shim("the shim did not answer within 60 s".into())),
        }
        let line = line.trim_end();
        if let Some(pid) = line.strip_prefix("started ") {
            return pid.parse().map_err(|_| HostError::Shim(format!("unexpected answer {line:?}")));
        }
        if let Some(message) = line.strip_prefix("error ") {
            return Err(HostError::Start(message.to_owned()));
        }
        let log = std::fs::read_to_string(dir.join(SHIM_LOG)).unwrap_or_default();
        Err(HostError::Shim(format!("the shim ended without starting the process: {}", log.trim())))
    }

    /// The exit record, if the process has ended.
    pub fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(self.dir(id).join(EXIT_FILE)).ok()?).ok()
    }

    /// Whether the agent ever made a shim for `id` (its directory exists).
    pub fn known(&self, id: &str) -> bool {
        self.dir(id).is_dir()
    }

    /// Waits until the process has ended; `Lost` when its shim is gone without a record.
    pub async fn wait(&self, id: &str) -> Result<ExitRecord, HostError> {
        if let Some(r) = self.exit_record(id) {
            return Ok(r);
        }
        let dir = self.dir(id);
        // A shim the previous agent spawned just before it died may not have
        // written its pid yet (its first step): give it a moment.
        let deadline = tokio::time::Instant::now() + SHIM_PID_GRACE;
        while dir.join(SPEC_FILE).exists()
            && !dir.join(SHIM_PID_FILE).exists()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(pidfd) = self.shim_pidfd(id) {
            crate::sys::process::pidfd_exited(pidfd).await?;
        }
        self.exit_record(id).ok_or(HostError::Lost)
    }

    /// A pidfd of the task's shim if it still runs (the pid's start time is
    /// checked, so a reused pid is not taken for it).
    fn shim_pidfd(&self, id: &str) -> Option<OwnedFd> {
        let text = std::fs::read_to_string(self.dir(id).join(SHIM_PID_FILE)).ok()?;
        let (pid, started) = text.trim().split_once(' ')?;
        let (pid, started): (i32, u64) = (pid.parse().ok()?, started.parse().ok()?);
        let fd = crate::sys::process::pidfd_open(pid)?;
        (start_time(pid) == Some(started)).then_some(fd)
    }

    /// Sends `signal` to the task's main process; SIGKILL kills every process
    /// of its cgroup instead.
    pub async fn signal(&self, id: &str, signal: i32) {
        if signal == nix::sys::signal::Signal::SIGKILL as i32 {
            self.kill_all(id).await;
            return;
        }
        let Some(pid) =
            std::fs::read_to_string(self.dir(id).join(TASK_PID_FILE)).ok().and_then(|t| t.trim().parse().ok())
        else {
            return;
        };
        // Only a process still in the task's cgroup (the pid is not reused).
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id));
        if ours && self.exit_record(id).is_none() {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Kills every process of the task's cgroup.
    pub async fn kill_all(&self, id: &str) {
        let cg = self.cgroup(id);
        let _ = tokio::task::spawn_blocking(move || cg.kill_all(Duration::from_secs(10))).await;
    }

    /// Removes what is left of a task: its processes, cgroup and shim files.
    pub async fn remove(&self, id: &str) -> std::io::Result<()> {
        self.kill_all(id).await;
        self.cgroup(id).remove();
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The task and process a shim of `id` was started for, from its spec
    /// file (for a state database rebuilt from nothing). The environment is
    /// left out: it may hold secrets the scheduler passed, and the record
    /// of an adopted task needs only what identifies it.
    pub fn adoptable(&self, id: &str) -> Option<(TaskKey, HostProcess)> {
        let spec: ShimSpec = serde_json::from_slice(&std::fs::read(self.dir(id).join(SPEC_FILE)).ok()?).ok()?;
        let mut process = spec.process;
        process.env.clear();
        Some((spec.key, process))
    }

    /// The ids of every host task the agent has files for.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.state_dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }
}

/// Writes a file through a temporary name, synced, so readers never see half of it.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exit.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("exit.tmp").exists());
    }
}
