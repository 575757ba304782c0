//! Process plumbing for host tasks: pidfds, a new session for the shim, and
//! what the task's process does between fork and exec.

use nix::unistd::{setgid, setgroups, setsid, setuid, Gid, Uid};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// A pidfd for `pid` (it stays bound to that process, whatever reuses the pid).
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves when the process of `pidfd` has exited (a pidfd polls readable then).
pub async fn pidfd_exited(pidfd: OwnedFd) -> std::io::Result<()> {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until it is dropped.
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let _ = fd.readable().await?;
    Ok(())
}

/// Makes the command's process the leader of a new session (detached from the agent's).
pub fn own_session(cmd: &mut Command) {
    // SAFETY: the closure only calls setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| setsid().map(drop).map_err(std::io::Error::from));
    }
}

/// What a host task's process becomes before exec.
#[derive(Debug)]
pub struct TaskSetup {
    /// The `cgroup.procs` files it joins (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privileges: bool,
    /// Its working directory, entered as its identity.
    pub wd: OwnedFd,
}

/// In the task's process, before exec: its own session, its cgroup, then its
/// identity (groups, gid, uid: in that order, while still allowed to), then
/// its working directory, no way back up for a non-admin one, and no
/// descriptor but its stdio. Only for a single-threaded caller (the shim).
pub fn become_task(cmd: &mut Command, who: TaskSetup) {
    // SAFETY: the caller (the host shim) is single-threaded, so the forked
    // child may allocate (the cgroup write) before exec; close_range takes
    // plain integers and touches only this process's descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            for procs in &who.cgroup_procs {
                std::fs::write(procs, "0")?;
            }
            let gids: Vec<Gid> = who.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            setgroups(&gids)?;
            setgid(Gid::from_raw(who.gid))?;
            setuid(Uid::from_raw(who.uid))?;
            nix::unistd::fchdir(&who.wd)?;
            if who.no_new_privileges {
                nix::sys::prctl::set_no_new_privs()?;
            }
            // Whatever else the shim holds open is not the task's: every
            // descriptor above stderr is closed at exec (CLOEXEC rather than
            // closed now, so std's exec-error pipe still reports a failed exec).
            // Best effort: kernels before 5.11 lack the flag.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfds() {
        assert!(pidfd_open(i32::try_from(std::process::id()).unwrap()).is_some());
        assert!(pidfd_open(i32::MAX).is_none());
    }
}
