//! Creating and removing node and task directories, and reading task files
//! without ever leaving the task directory.

use super::{Layout, TaskPaths};
use crate::model::{TaskKey, TaskKind};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("path {path:?} is not a relative path inside the task directory")]
    UnsafePath { path: String },
    #[error("no file {path:?} in the task directory")]
    NoSuchFile { path: String },
    #[error("{path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("cannot read {path:?}: {source}")]
    Read { path: String, source: std::io::Error },
}

impl LayoutError {
    /// The OS error behind a failed create or remove, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            LayoutError::Create { source, .. } | LayoutError::Remove { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether a create failed because a task planted something other than a
    /// regular file (a FIFO, a device node, a hard link) where the agent
    /// makes one.
    pub fn is_unsafe_file(&self) -> bool {
        matches!(self, LayoutError::Create { source, .. } if crate::safefs::is_unsafe(source))
    }
}

/// What a read of a task file returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFiles {
    pub data: Vec<u8>,
    pub size: u64,
    pub eof: bool,
}

fn create_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Create { path: path.to_owned(), source }
}

/// Everything under the node root is reachable by tasks (the root is bind-mounted
/// into every container), so a task may have replaced any directory with a
/// symlink. The agent, running as root on the host, therefore walks below the
/// root only with `openat2(RESOLVE_NO_SYMLINKS)` and works on file descriptors.
fn open_beneath(dir: impl AsFd, name: &Path) -> std::io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(openat2(dir, name, how)?)
}

/// Opens (creating with `mode` if missing) the directory `rel` below `root`,
/// refusing symlinks in any component.
fn dir_beneath(root: &Path, rel: &Path, create: Option<u32>) -> std::io::Result<(OwnedFd, bool)> {
    let mut cur: OwnedFd = fs::File::open(root)?.into();
    let mut created = false;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "unexpected path component"));
        };
        if let Some(mode) = create {
            match mkdirat(&cur, name, Mode::from_bits_truncate(mode)) {
                Ok(()) => created = true,
                Err(Errno::EEXIST) => created = false,
                Err(e) => return Err(e.into()),
            }
        }
        cur = open_beneath(&cur, Path::new(name))?;
    }
    Ok((cur, created))
}

fn chmod_chown(fd: impl AsFd, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
    if let Some((uid, gid)) = owner {
        fchown(fd.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    Ok(())
}

/// The directory holding a task's directory, relative to the node root, and
/// the task directory's name in it.
fn job_rel(key: &TaskKey) -> PathBuf {
    match key.kind() {
        TaskKind::StartTask => PathBuf::new(),
        _ => Path::new("workitems").join(key.job.as_str()).join("job-1"),
    }
}

fn dir_name(key: &TaskKey) -> &str {
    match key.kind() {
        TaskKind::StartTask => "startup",
        _ => key.task.as_str(),
    }
}

impl Layout {
    /// Creates the node directories (idempotent), with their modes.
    pub fn create_node_dirs(&self) -> Result<(), LayoutError> {
        let root = self.root();
        fs::DirBuilder::new().recursive(true).mode(0o755).create(root).map_err(create_err(root))?;
        for (dir, mode) in self.node_dirs() {
            let Ok(rel) = dir.strip_prefix(root) else { continue };
            if rel.as_os_str().is_empty() {
                continue;
            }
            dir_beneath(root, rel, Some(mode))
                .and_then(|(fd, _)| chmod_chown(fd, mode, None))
                .map_err(create_err(&dir))?;
        }
        Ok(())
    }

    /// Creates the task directory, its `wd/`, and empty `stdout.txt`/`stderr.txt`
    /// (the containerd shim appends to them), owned by `owner` when given. If any
    /// step fails, what this call created is removed again.
    pub fn create_task_dirs(&self, key: &TaskKey, owner: Option<(u32, u32)>) -> Result<TaskPaths, LayoutError> {
        let paths = self.task(key);
        let (job, _) = dir_beneath(self.root(), &job_rel(key), Some(0o755)).map_err(create_err(&paths.task_dir))?;
        let created = match mkdirat(&job, dir_name(key), Mode::from_bits_truncate(0o755)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(LayoutError::Create { path: paths.task_dir.clone(), source: e.into() }),
        };
        let result = (|| -> std::io::Result<()> {
            let task = open_beneath(&job, Path::new(dir_name(key)))?;
            chmod_chown(&task, 0o755, owner)?;
            match mkdirat(&task, "wd", Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            chmod_chown(open_beneath(&task, Path::new("wd"))?, 0o755, owner)?;
            // Certificates may hold private keys: the task's identity only.
            match mkdirat(&task, "certs", Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            chmod_chown(open_beneath(&task, Path::new("certs"))?, 0o700, owner)?;
            for name in ["stdout.txt", "stderr.txt"] {
                // New, or (a start task run again, a retry) truncated, but
                // only if it is still a regular file of its own: a task may
                // have put a FIFO (which would block the open), a device
                // node or a hard link there.
                let how = OpenHow::new()
                    .flags(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
                    .mode(Mode::from_bits_truncate(0o644))
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                let file = match openat2(&task, name, how) {
                    Ok(fd) => fs::File::from(fd),
                    Err(Errno::EEXIST) => crate::safefs::open_at(
                        &task,
                        Path::new(name),
                        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
                        true,
                        fs::OpenOptions::new().write(true).truncate(true),
                    )?,
                    Err(e) => return Err(e.into()),
                };
                chmod_chown(&file, 0o644, owner)?;
            }
            Ok(())
        })();
        if let Err(source) = result {
            if created {
                let _ = self.remove_task_dir(key);
            }
            return Err(LayoutError::Create { path: paths.task_dir, source });
        }
        Ok(paths)
    }

    /// Keeps a retried attempt's output: `stdout.txt` and `stderr.txt` become
    /// `stdout.<n>.txt` and `stderr.<n>.txt` (renamed in the task directory,
    /// opened without following a link: a link a task put there is renamed
    /// itself, never followed). A name already taken is left as it is, so a
    /// second call after a crash changes nothing; a file already gone is skipped.
    pub fn keep_attempt_output(&self, key: &TaskKey, n: u32) -> std::io::Result<()> {
        let opened = dir_beneath(self.root(), &job_rel(key), None)
            .and_then(|(job, _)| open_beneath(&job, Path::new(dir_name(key))));
        let task = match opened {
            Ok(task) => task,
            // The attempt failed before the directory was made: nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in ["stdout", "stderr"] {
            let (from, to) = (format!("{name}.txt"), format!("{name}.{n}.txt"));
            match nix::fcntl::renameat2(
                &task,
                from.as_str(),
                &task,
                to.as_str(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) | Err(Errno::EEXIST | Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Opens the task's `stdout.txt` and `stderr.txt` for appending, for a
    /// process started as root on the host (a host task's shim). The task's
    /// identity owns its directory, so by now either file may have been
    /// swapped for a symlink or a hard link to a host file: no symlink is
    /// followed anywhere below the root, and only a regular file with a
    /// single link is taken.
    pub fn open_task_output(&self, key: &TaskKey) -> std::io::Result<(fs::File, fs::File)> {
        let (job, _) = dir_beneath(self.root(), &job_rel(key), None)?;
        let task = open_beneath(&job, Path::new(dir_name(key)))?;
        let open = |name: &str| -> std::io::Result<fs::File> {
            crate::safefs::open_at(
                &task,
                Path::new(name),
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
                true,
                fs::OpenOptions::new().append(true),
            )
        };
        Ok((open("stdout.txt")?, open("stderr.txt")?))
    }

    /// Opens the task's working directory for a process that is to start in
    /// it (a host task's shim enters it with `fchdir` once it runs as the
    /// task's identity): below the root, no symlink followed, so a `wd/`
    /// swapped for a link is never entered.
    pub fn open_task_wd(&self, key: &TaskKey) -> std::io::Result<OwnedFd> {
        let (job, _) = dir_beneath(self.root(), &job_rel(key), None)?;
        let task = open_beneath(&job, Path::new(dir_name(key)))?;
        open_beneath(&task, Path::new("wd"))
    }

    /// Every task directory under `workitems/` (`<job>/job-1/<task>` with valid
    /// ids; job preparation and release directories are not tasks).
    pub fn list_task_dirs(&self) -> Vec<TaskKey> {
        let names = |dir: PathBuf| -> Vec<String> {
            fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for job in names(self.workitems()) {
            for task in names(self.workitems().join(&job).join("job-1")) {
                if task == "jobpreparation" || task == "jobrelease" {
                    continue;
                }
                if let Ok(key) = TaskKey::new(&job, &task) {
                    out.push(key);
                }
            }
        }
        out.sort();
        out
    }

    /// Removes the task directory; a missing one is not an error. The job
    /// directory is reached without following symlinks, and `remove_dir_all`
    /// does not follow them inside the task directory.
    pub fn remove_task_dir(&self, key: &TaskKey) -> Result<(), LayoutError> {
        let dir = self.task(key).task_dir;
        let job = match dir_beneath(self.root(), &job_rel(key), None) {
            Ok((fd, _)) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(LayoutError::Remove { path: dir, source }),
        };
        // The task directory, named through the job directory's descriptor.
        let target = PathBuf::from(format!("/proc/self/fd/{}", job.as_raw_fd())).join(dir_name(key));
        match fs::symlink_metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(meta) if !meta.is_dir() => {
                fs::remove_file(&target).map_err(|source| LayoutError::Remove { path: dir, source })
            }
            _ => fs::remove_dir_all(&target).map_err(|source| LayoutError::Remove { path: dir, source }),
        }
    }

    /// Reads up to `max` bytes at `offset` of the file `rel` under the task
    /// directory. `rel` must be relative and stay inside the task directory, also
    /// through symlinks (a task may plant them); the task directory itself is
    /// reached without following any symlink; only regular files are read.
    pub fn read_task_file(&self, key: &TaskKey, rel: &str, offset: u64, max: u64) -> Result<TaskFiles, LayoutError> {
        let unsafe_path = || LayoutError::UnsafePath { path: rel.to_owned() };
        let no_file = || LayoutError::NoSuchFile { path: rel.to_owned() };
        let rel_path = Path::new(rel);
        if rel.is_empty()
            || rel.contains('\0')
            || !rel_path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(unsafe_path());
        }
        let task_rel = job_rel(key).join(dir_name(key));
        let (task, _) = dir_beneath(self.root(), &task_rel, None).map_err(|_| no_file())?;
        // O_PATH first: a FIFO or a device node a task planted is never opened.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match openat2(&task, rel_path, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(no_file()),
            Err(Errno::EXDEV | Errno::ELOOP) => return Err(unsafe_path()),
            Err(e) => return Err(LayoutError::Read { path: rel.to_owned(), source: e.into() }),
        };
        let read_err = |source| LayoutError::Read { path: rel.to_owned(), source };
        let meta = match crate::safefs::check_regular(&fd, rel, false) {
            Ok(m) => m,
            Err(e) if crate::safefs::is_unsafe(&e) => return Err(LayoutError::NotAFile { path: rel.into() }),
            Err(e) => return Err(read_err(e)),
        };
        let mut file = crate::safefs::reopen(&fd, fs::OpenOptions::new().read(true)).map_err(read_err)?;
        let size = meta.len();
        let mut data = Vec::new();
        if offset < size {
            file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
            file.take(max.min(size - offset)).read_to_end(&mut data).map_err(read_err)?;
        }
        let eof = offset.saturating_add(data.len() as u64) >= size;
        Ok(TaskFiles { data, size, eof })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, Layout, TaskKey) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().join("node"));
        layout.create_node_dirs().unwrap();
        let key = TaskKey::new("j", "t").unwrap();
        layout.create_task_dirs(&key, None).unwrap();
        (tmp, layout, key)
    }

    #[test]
    fn creates_dirs_and_output_files() {
        let (_tmp, layout, key) = setup();
        let p = layout.task(&key);
        assert!(p.working_dir.is_dir());
        assert_eq!(fs::read(&p.stdout).unwrap(), b"");
        assert_eq!(fs::metadata(layout.shared()).unwrap().permissions().mode() & 0o7777, 0o1777);
    }

    #[test]
    fn reads_with_offset_and_length() {
        let (_tmp, layout, key) = setup();
        fs::write(layout.task(&key).stdout, b"hello world").unwrap();
        let r = layout.read_task_file(&key, "stdout.txt", 6, 100).unwrap();
        assert_eq!((r.data.as_slice(), r.size, r.eof), (&b"world"[..], 11, true));
        let r = layout.read_task_file(&key, "stdout.txt", 0, 5).unwrap();
        assert_eq!((r.data.as_slice(), r.eof), (&b"hello"[..], false));
        let r = layout.read_task_file(&key, "stdout.txt", 50, 5).unwrap();
        assert!(r.data.is_empty() && r.eof);
    }

    #[test]
    fn refuses_paths_leaving_the_task_dir() {
        let (tmp, layout, key) = setup();
        fs::write(tmp.path().join("secret"), b"x").unwrap();
        let wd = layout.task(&key).working_dir;
        std::os::unix::fs::symlink(tmp.path().join("secret"), wd.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", wd.join("etc")).unwrap();
        for bad in ["../t/stdout.txt", "/etc/passwd", "wd/../../../../secret", "", "a\0b", "wd/link", "wd/etc/passwd"] {
            let err = layout.read_task_file(&key, bad, 0, 10).unwrap_err();
            assert!(matches!(err, LayoutError::UnsafePath { .. }), "{bad:?}: {err}");
        }
        assert!(matches!(
            layout.read_task_file(&key, "wd/none.txt", 0, 10).unwrap_err(),
            LayoutError::NoSuchFile { .. }
        ));
        assert!(matches!(layout.read_task_file(&key, "wd", 0, 10).unwrap_err(), LayoutError::NotAFile { .. }));
    }

    #[test]
    fn lists_task_dirs() {
        let (_tmp, layout, key) = setup();
        layout.create_task_dirs(&TaskKey::new("j2", "b").unwrap(), None).unwrap();
        fs::create_dir_all(layout.task(&key).job_prep_dir).unwrap();
        fs::create_dir_all(layout.workitems().join("j/job-1/bad name")).unwrap();
        let got: Vec<String> = layout.list_task_dirs().iter().map(|k| k.to_string()).collect();
        assert_eq!(got, ["j/t", "j2/b"]);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let (tmp, layout, key) = setup();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"s").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();

        // A task replaces its own directory with a symlink to the host.
        let dir = layout.task(&key).task_dir;
        fs::remove_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, &dir).unwrap();
        assert!(matches!(layout.read_task_file(&key, "secret", 0, 10), Err(LayoutError::NoSuchFile { .. })));
        assert!(layout.create_task_dirs(&key, None).is_err());
        assert_eq!(fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o700, "no chmod through the link");
        layout.remove_task_dir(&key).unwrap();
        assert!(outside.join("secret").exists(), "removing the task dir removed only the link");

        // stdout.txt planted as a symlink to a host file: refused, file untouched.
        let k2 = TaskKey::new("j", "t2").unwrap();
        let p2 = layout.task(&k2);
        fs::create_dir_all(&p2.task_dir).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), &p2.stdout).unwrap();
        assert!(layout.create_task_dirs(&k2, None).is_err());
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s");

        // A job directory that is a symlink: removal does not reach through it.
        let k3 = TaskKey::new("j3", "secret").unwrap();
        fs::create_dir_all(layout.workitems().join("j3")).unwrap();
        std::os::unix::fs::symlink(&outside, layout.workitems().join("j3/job-1")).unwrap();
        assert!(layout.remove_task_dir(&k3).is_err());
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn task_output_is_opened_only_as_the_files_the_agent_made() {
        let (tmp, layout, key) = setup();
        let paths = layout.task(&key);
        let (mut out, mut err) = layout.open_task_output(&key).unwrap();
        use std::io::Write;
        out.write_all(b"o").unwrap();
        err.write_all(b"e").unwrap();
        assert_eq!(
            (fs::read(&paths.stdout).unwrap(), fs::read(&paths.stderr).unwrap()),
            (b"o".to_vec(), b"e".to_vec())
        );

        // Swapped for a symlink, or a hard link, to a host file: refused, the file untouched.
        let host_file = tmp.path().join("authorized_keys");
        fs::write(&host_file, b"keep").unwrap();
        fs::remove_file(&paths.stdout).unwrap();
        std::os::unix::fs::symlink(&host_file, &paths.stdout).unwrap();
        assert!(layout.open_task_output(&key).is_err());
        fs::remove_file(&paths.stdout).unwrap();
        fs::hard_link(&host_file, &paths.stdout).unwrap();
        assert!(layout.open_task_output(&key).is_err());
        // A FIFO is not taken either (and opening it does not block).
        fs::remove_file(&paths.stdout).unwrap();
        nix::unistd::mkfifo(&paths.stdout, Mode::from_bits_truncate(0o644)).unwrap();
        assert!(layout.open_task_output(&key).is_err());
        assert_eq!(fs::read(&host_file).unwrap(), b"keep");
        // The task directory itself replaced by a symlink.
        fs::remove_dir_all(&paths.task_dir).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &paths.task_dir).unwrap();
        assert!(layout.open_task_output(&key).is_err());
    }

    #[test]
    fn planted_fifos_and_devices_are_never_opened() {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use nix::sys::stat::{makedev, mknod, SFlag};
        let (_tmp, layout, key) = setup();
        let p = layout.task(&key);
        // A FIFO at stdout.txt (a start task run again, a retry): the create
        // fails at once instead of blocking on it.
        fs::remove_file(&p.stdout).unwrap();
        nix::unistd::mkfifo(&p.stdout, Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (l2, k2) = (layout.clone(), key.clone());
        std::thread::spawn(move || tx.send(l2.create_task_dirs(&k2, None).map(drop)).unwrap());
        let r = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("create_task_dirs blocked on a FIFO");
        assert!(r.unwrap_err().is_unsafe_file());
        // A device node: never opened (no IN_OPEN), and refused everywhere.
        fs::remove_file(&p.stdout).unwrap();
        mknod(&p.stdout, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        ino.add_watch(&p.stdout, AddWatchFlags::IN_OPEN).unwrap();
        let err = layout.create_task_dirs(&key, None).unwrap_err();
        assert!(err.is_unsafe_file(), "{err}");
        assert!(err.to_string().contains("character device"), "{err}");
        assert!(layout.open_task_output(&key).is_err());
        assert!(matches!(layout.read_task_file(&key, "stdout.txt", 0, 10), Err(LayoutError::NotAFile { .. })));
        assert!(ino.read_events().is_err_and(|e| e == Errno::EAGAIN), "the device node was opened");
    }

    #[test]
    fn the_working_directory_is_entered_only_as_made() {
        let (tmp, layout, key) = setup();
        assert!(layout.open_task_wd(&key).is_ok());
        let wd = layout.task(&key).working_dir;
        fs::remove_dir_all(&wd).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &wd).unwrap();
        assert!(layout.open_task_wd(&key).is_err(), "a wd swapped for a symlink is not entered");
    }

    #[test]
    fn fifos_and_directories_are_not_read() {
        let (_tmp, layout, key) = setup();
        let fifo = layout.task(&key).working_dir.join("p");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(layout.read_task_file(&key, "wd/p", 0, 10), Err(LayoutError::NotAFile { .. })));
        assert!(matches!(layout.read_task_file(&key, "stdout.txt/x", 0, 10), Err(LayoutError::NoSuchFile { .. })));
    }

    #[test]
    fn remove_is_idempotent() {
        let (_tmp, layout, key) = setup();
        layout.remove_task_dir(&key).unwrap();
        assert!(!layout.task(&key).task_dir.exists());
        layout.remove_task_dir(&key).unwrap();
    }
}
