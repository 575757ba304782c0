//! Named network namespaces: a namespace made with `unshare(CLONE_NEWNET)`
//! on a thread of its own (its loopback set up there), kept alive by a bind mount of that thread's
//! `ns/net` on a file (as `ip netns add` does), so that it outlives the
//! thread and the agent; containerd's runc joins it by that path.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Makes the namespace at `path` (a new one: a file left there is removed first).
pub(super) fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    remove(path)?;
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let target: PathBuf = path.to_owned();
    // unshare changes the calling thread's namespace: a thread that does
    // only this, and ends, keeps every other thread in the node's.
    let made = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        // Its loopback up, as CNI's `loopback` plugin would.
        crate::sys::net::loopback_up()?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(io::Error::from)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts and removes the namespace's file; a namespace already gone is no
/// error. The namespace itself ends with the last process in it.
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a network namespace (a mounted nsfs file).
pub(super) fn exists(path: &Path) -> bool {
    let (Ok(ns), Ok(own)) = (std::fs::metadata(path), std::fs::metadata("/proc/self/ns/net")) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    ns.dev() == own.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_made_and_removed_again() {
        if !nix::unistd::geteuid().is_root() {
            return; // making namespaces needs root; the integration tests run as root
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns/n1");
        create(&p).unwrap();
        assert!(exists(&p), "an nsfs mount");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(",UP"), "lo is up: {out:?}");
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(
            std::fs::metadata(&p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap(),
            {
                std::fs::metadata(format!("/proc/self/ns/{}", "net"))
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .unwrap()
            },
            "not the agent's own ({own:?})"
        );
        create(&p).unwrap();
        assert!(exists(&p), "made again over a leftover");
        remove(&p).unwrap();
        assert!(!p.exists() && !exists(&p));
        remove(&p).unwrap();
    }
}
