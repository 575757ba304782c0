//! Opening files that a task may have planted, without ever opening anything
//! but a regular file: a path is first opened with `O_PATH` (which opens
//! nothing: no FIFO blocks, no device driver is called), checked with
//! `fstat`, and only then reopened through `/proc/self/fd` with the access
//! wanted (the same inode, so nothing can be swapped in between). Used for
//! every file the agent (root) reads or writes in places a task can write:
//! `stdout.txt`/`stderr.txt`, `ReadTaskFile`, `--env-file`, an image's
//! `/etc/passwd`, seccomp profiles.

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A path that is not a regular file of its own where one was expected.
#[derive(Debug, thiserror::Error)]
#[error("{name} is {what}, not a regular file{tail}", tail = if *.single_link { " of the task's own" } else { "" })]
pub struct UnsafeFile {
    pub name: String,
    pub what: &'static str,
    single_link: bool,
}

/// Whether an error is an [`UnsafeFile`] (or wraps one).
pub fn is_unsafe(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<UnsafeFile>())
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if meta.nlink() != 1 {
        "a hard link to another file"
    } else {
        "a regular file"
    }
}

/// Checks that `fd` (an `O_PATH` descriptor) is a regular file; with
/// `single_link`, also that no other name links to it (a hard link a task
/// made to a host file).
pub fn check_regular(fd: &OwnedFd, name: &str, single_link: bool) -> std::io::Result<std::fs::Metadata> {
    let meta = File::from(fd.try_clone()?).metadata()?;
    if meta.file_type().is_symlink() {
        // As a plain open with O_NOFOLLOW would have it.
        return Err(std::io::Error::from_raw_os_error(nix::errno::Errno::ELOOP as i32));
    }
    if !meta.file_type().is_file() || (single_link && meta.nlink() != 1) {
        let e = UnsafeFile { name: name.to_owned(), what: kind_of(&meta), single_link };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
    }
    Ok(meta)
}

/// Opens `rel` below `dir` with `O_PATH` (nothing is opened yet), under
/// `resolve` (e.g. `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
pub fn path_at(dir: impl AsFd, rel: &Path, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(resolve);
    openat2(dir, rel, how)
}

/// Reopens an `O_PATH` descriptor with `options` (read, write, append, truncate).
pub fn reopen(fd: &OwnedFd, options: &std::fs::OpenOptions) -> std::io::Result<File> {
    options.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `rel` below `dir` (no symlink followed on the way) for `options`,
/// only if it is a regular file (with `single_link`: with one link).
pub fn open_at(
    dir: impl AsFd,
    rel: &Path,
    resolve: ResolveFlag,
    single_link: bool,
    options: &std::fs::OpenOptions,
) -> std::io::Result<File> {
    let fd = path_at(dir, rel, resolve)?;
    check_regular(&fd, &rel.display().to_string(), single_link)?;
    reopen(&fd, options)
}

/// Opens an operator's file (a seccomp profile) for reading: an absolute
/// path without any symlink (it is given resolved), a regular file owned by
/// root and writable by no one else, so no task that can write beside it
/// can have put it there or change it.
pub fn open_trusted(path: &Path) -> std::io::Result<File> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(nix::fcntl::AT_FDCWD, path, how)?;
    let meta = check_regular(&fd, &path.display().to_string(), false)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} must belong to root and be writable by root only", path.display()),
        ));
    }
    reopen(&fd, std::fs::OpenOptions::new().read(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::io::Read;

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        nix::unistd::mkfifo(&dir.path().join("p"), Mode::from_bits_truncate(0o644)).unwrap();
        mknod(&dir.path().join("d"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
        std::fs::hard_link(dir.path().join("f"), dir.path().join("h")).unwrap();
        let root = File::open(dir.path()).unwrap();
        let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        let read = std::fs::OpenOptions::new().read(true).clone();
        let mut s = String::new();
        open_at(&root, Path::new("f"), beneath, false, &read).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "data");
        for (name, what) in [("p", "FIFO"), ("d", "character device")] {
            let e = open_at(&root, Path::new(name), beneath, false, &read).unwrap_err();
            assert!(is_unsafe(&e) && e.to_string().contains(what), "{name}: {e}");
        }
        let e = open_at(&root, Path::new("h"), beneath, true, &read).unwrap_err();
        assert!(is_unsafe(&e) && e.to_string().contains("hard link"), "{e}");
        assert!(open_trusted(&dir.path().join("p")).is_err());
        assert!(open_trusted(&dir.path().join("f")).is_ok(), "root's, 0644");
        std::fs::set_permissions(dir.path().join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
        assert!(open_trusted(&dir.path().join("f")).is_err(), "group-writable");
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("l")).unwrap();
        assert!(open_trusted(&dir.path().join("l")).is_err(), "a link");
    }
}
