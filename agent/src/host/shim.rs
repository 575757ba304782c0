//! `berth-agent host-shim DIR`: the small process that owns one host task, as
//! containerd's shim owns a container. The agent starts it in a session of its
//! own; it starts the task's process, tells the agent (one line on stdout),
//! waits for it, kills what the task left in its cgroup, and writes the exit
//! status to `DIR/exit.json` durably. It outlives the agent, so a task keeps
//! running and its exit status is kept while the agent restarts.

use super::cgroup::Cgroup;
use super::{start_time, write_atomic, ExitRecord, ShimSpec, EXIT_FILE, SHIM_PID_FILE, SPEC_FILE, TASK_PID_FILE};
use crate::layout::Layout;
use crate::sys::process::{become_task, TaskSetup};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Runs the shim; returns its exit code (0 once `exit.json` is written).
pub fn main(dir: &Path) -> i32 {
    match run(dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth host-shim: {e}");
            1
        }
    }
}

fn run(dir: &Path) -> std::io::Result<()> {
    let spec: ShimSpec = serde_json::from_slice(&std::fs::read(dir.join(SPEC_FILE))?)?;
    let me = std::process::id() as i32;
    write_atomic(&dir.join(SHIM_PID_FILE), format!("{me} {}", start_time(me).unwrap_or(0)).as_bytes())?;
    let p = &spec.process;
    let layout = Layout::new(&spec.root);
    let (out, err) = match layout.open_task_output(&spec.key) {
        Ok(files) => files,
        Err(e) => return refuse(dir, format!("cannot open the task's stdout.txt and stderr.txt: {e}")),
    };
    // Entered by descriptor once the process is the task's identity (never
    // by path as root): a wd swapped for a symlink is not followed.
    if p.cwd != layout.task(&spec.key).working_dir.display().to_string() {
        return refuse(dir, format!("the working directory {} is not the task's", p.cwd));
    }
    let wd = match layout.open_task_wd(&spec.key) {
        Ok(fd) => fd,
        Err(e) => return refuse(dir, format!("cannot enter the task's working directory {}: {e}", p.cwd)),
    };
    let cgroup = Cgroup::new(&spec.cgroup);
    let (uid, gid, groups, nnp) = (p.uid, p.gid, p.groups.clone(), p.no_new_privileges);
    let mut cmd = Command::new(&p.args[0]);
    cmd.args(&p.args[1..])
        .env_clear()
        .envs(p.env.iter().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let setup = TaskSetup { cgroup_procs: cgroup.procs_files(), uid, gid, groups, no_new_privileges: nnp, wd };
    become_task(&mut cmd, setup);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return refuse(dir, format!("cannot start {:?}: {e}", p.args[0])),
    };
    write_atomic(&dir.join(TASK_PID_FILE), child.id().to_string().as_bytes())?;
    tell(&format!("started {}", child.id()));
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let exited_at_ms = now_ms();
    // The main process ended: so does everything it started, as in a container.
    Cgroup::new(&spec.cgroup).kill_all(Duration::from_secs(30));
    let record = ExitRecord { code: Some(code), exited_at_ms, start_error: None };
    write_atomic(&dir.join(EXIT_FILE), &serde_json::to_vec(&record)?)
}

/// The process could not be started: recorded as such, and told to the agent.
fn refuse(dir: &Path, message: String) -> std::io::Result<()> {
    let record = ExitRecord { code: None, exited_at_ms: now_ms(), start_error: Some(message.clone()) };
    write_atomic(&dir.join(EXIT_FILE), &serde_json::to_vec(&record)?)?;
    tell(&format!("error {message}"));
    Ok(())
}

/// One line to the agent, then stdout goes to /dev/null (the agent stops reading).
fn tell(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
