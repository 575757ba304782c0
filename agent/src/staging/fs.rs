//! The staging side of a task's files. The agent runs as root and a task may
//! have planted links, FIFOs or devices where it writes (a start task's
//! working directory lives across runs), so:
//! - resource files are written below the working directory one component
//!   at a time, never through a link (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`),
//!   into a new temporary file that is renamed over the name when complete;
//!   what is made belongs to the task's identity;
//! - output files are opened the same way and only if they are regular
//!   files that the task's identity could read itself.

use crate::model::RunAs;
use crate::safefs;
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

fn dir_how() -> OpenHow {
    OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY).resolve(beneath())
}

/// Opens a directory the agent made (a task's working directory).
pub(super) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(openat2(nix::fcntl::AT_FDCWD, path, how)?)
}

/// Why a path below the working directory cannot be written.
fn blocked(rel: &str, e: Errno) -> io::Error {
    let why = match e {
        Errno::ELOOP | Errno::EXDEV => "goes through a symbolic link".to_owned(),
        Errno::ENOTDIR => "has a component that is a symbolic link or no directory".to_owned(),
        Errno::EISDIR => "is a directory".to_owned(),
        other => other.desc().to_owned(),
    };
    io::Error::new(io::ErrorKind::InvalidInput, format!("{rel}: {why}"))
}

/// Opens (making what is missing, owned by `owner`) the directory `rel` below `dir`.
pub(super) fn make_dirs(dir: &OwnedFd, rel: &str, owner: (u32, u32)) -> io::Result<OwnedFd> {
    let mut cur = dir.try_clone()?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        cur = match openat2(&cur, comp, dir_how()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&cur, comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(blocked(rel, e)),
                }
                let fd = openat2(&cur, comp, dir_how()).map_err(|e| blocked(rel, e))?;
                fchown(&fd, Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)))?;
                fd
            }
            Err(e) => return Err(blocked(rel, e)),
        };
    }
    Ok(cur)
}

/// A file being written: a temporary name until [`NewFile::commit`].
pub(super) struct NewFile {
    parent: OwnedFd,
    tmp: String,
    name: String,
    rel: String,
    pub file: File,
}

impl NewFile {
    /// Starts writing `rel` below `dir` (a normalised relative path).
    pub(super) fn create(dir: &OwnedFd, rel: &str, owner: (u32, u32)) -> io::Result<NewFile> {
        let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = make_dirs(dir, parent_rel, owner)?;
        let tmp = format!(".berth-download-{}-{}", std::process::id(), rand_suffix());
        let how = OpenHow::new()
            .flags(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(0o600))
            .resolve(beneath());
        let fd = openat2(&parent, tmp.as_str(), how).map_err(|e| blocked(rel, e))?;
        fchown(&fd, Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)))?;
        Ok(NewFile { parent, tmp, name: name.to_owned(), rel: rel.to_owned(), file: File::from(fd) })
    }

    /// Gives the file its mode and its name (replacing a file of that name;
    /// a directory there is an error).
    pub(super) fn commit(self, mode: u32) -> io::Result<()> {
        fchmod(&self.file, Mode::from_bits_truncate(mode))?;
        self.file.sync_all()?;
        if let Err(e) = renameat(&self.parent, self.tmp.as_str(), &self.parent, self.name.as_str()) {
            let _ = unlinkat(&self.parent, self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(blocked(&self.rel, e));
        }
        Ok(())
    }

    /// Removes the temporary file.
    pub(super) fn abandon(self) {
        let _ = unlinkat(&self.parent, self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", h.finish())
}

/// Whether `who` may do `bits` (4 read, 2 write, 1 execute/search) on a file
/// with this metadata, by its mode bits (an admin may do anything).
pub(super) fn may(meta: &std::fs::Metadata, who: &RunAs, bits: u32) -> bool {
    if who.admin || who.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    let shift = if meta.uid() == who.uid {
        6
    } else if meta.gid() == who.gid || who.groups.contains(&meta.gid()) {
        3
    } else {
        0
    };
    (mode >> shift) & bits == bits
}

/// Opens `rel` below `root` for reading: a regular file (no link on the way,
/// no FIFO or device) that `who` may read. Returns it with its size.
pub(super) fn open_output(root: &OwnedFd, rel: &Path, who: &RunAs) -> io::Result<(File, u64)> {
    let fd = safefs::path_at(root, rel, beneath()).map_err(io::Error::from)?;
    let meta = safefs::check_regular(&fd, &rel.display().to_string(), false)?;
    if !may(&meta, who, 4) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the task's user may not read it"));
    }
    let file = safefs::reopen(&fd, std::fs::OpenOptions::new().read(true))?;
    Ok((file, meta.len()))
}

/// Opens (or creates) a log file in the task directory for appending,
/// replacing whatever a task put there that is not a regular file.
pub(super) fn open_log(task_dir: &Path, name: &str) -> io::Result<File> {
    let dir = open_dir(task_dir)?;
    let append = std::fs::OpenOptions::new().append(true).clone();
    match safefs::open_at(&dir, Path::new(name), beneath(), true, &append) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)?;
        }
    }
    let how = OpenHow::new()
        .flags(
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(beneath());
    Ok(File::from(openat2(&dir, name, how)?))
}

/// Gives a log file the owner of its directory (the task's identity).
pub(super) fn own_like_dir(task_dir: &Path, name: &str) {
    if let (Ok(dir), Ok(meta)) = (open_dir(task_dir), std::fs::symlink_metadata(task_dir)) {
        let _ = fchownat(
            &dir,
            name,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn me() -> (u32, u32) {
        (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    }

    #[test]
    fn files_are_made_below_the_dir_and_renamed_when_complete() {
        let d = tempfile::tempdir().unwrap();
        let wd = open_dir(d.path()).unwrap();
        let mut f = NewFile::create(&wd, "in/deep/a.txt", me()).unwrap();
        f.file.write_all(b"data").unwrap();
        assert!(!d.path().join("in/deep/a.txt").exists(), "not visible before commit");
        f.commit(0o750).unwrap();
        let meta = std::fs::metadata(d.path().join("in/deep/a.txt")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o750);
        assert_eq!(std::fs::read(d.path().join("in/deep/a.txt")).unwrap(), b"data");
        let names: Vec<_> =
            std::fs::read_dir(d.path().join("in/deep")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn planted_links_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), d.path().join("file")).unwrap();
        let wd = open_dir(d.path()).unwrap();
        let e = NewFile::create(&wd, "link/x", me()).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A link at the name itself is replaced, not written through.
        let mut f = NewFile::create(&wd, "file", me()).unwrap();
        f.file.write_all(b"mine").unwrap();
        f.commit(0o644).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert!(std::fs::symlink_metadata(d.path().join("file")).unwrap().is_file());
        std::fs::create_dir(d.path().join("adir")).unwrap();
        let f = NewFile::create(&wd, "adir", me()).unwrap();
        assert!(f.commit(0o644).unwrap_err().to_string().contains("directory"));
    }

    #[test]
    fn outputs_open_only_what_the_user_could_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("mine"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        std::fs::set_permissions(d.path().join("secret"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("shadow")).unwrap();
        let root = open_dir(d.path()).unwrap();
        let other = RunAs { uid: 4242, gid: 4242, groups: vec![], admin: false };
        let (mut f, len) = open_output(&root, Path::new("mine"), &other).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("x", 1));
        assert!(open_output(&root, Path::new("secret"), &other).is_err(), "0600 of root");
        let admin = RunAs { admin: true, ..other.clone() };
        assert!(open_output(&root, Path::new("secret"), &admin).is_ok());
        assert!(open_output(&root, Path::new("fifo"), &admin).is_err());
        assert!(open_output(&root, Path::new("shadow"), &admin).is_err());
        assert!(open_output(&root, Path::new("../x"), &admin).is_err());
    }

    #[test]
    fn logs_replace_what_is_not_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&d.path().join("fileuploadout.txt"), Mode::from_bits_truncate(0o644)).unwrap();
        let mut f = open_log(d.path(), "fileuploadout.txt").unwrap();
        writeln!(f, "one").unwrap();
        let mut f = open_log(d.path(), "fileuploadout.txt").unwrap();
        writeln!(f, "two").unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("fileuploadout.txt")).unwrap(), "one\ntwo\n");
    }
}
