//! Creating and removing node and task directories, and reading task files
//! without ever leaving the task directory.

use super::{Layout, TaskPaths};
use crate::model::TaskKey;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
}

/// What a read of a task file returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFiles {
    pub data: Vec<u8>,
    pub size: u64,
    pub eof: bool,
}

fn create_dir(path: &Path, mode: u32) -> Result<bool, LayoutError> {
    let existed = path.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|source| LayoutError::Create { path: path.into(), source })?;
    Ok(!existed)
}

impl Layout {
    /// Creates the node directories (idempotent).
    pub fn create_node_dirs(&self) -> Result<(), LayoutError> {
        for (dir, mode) in self.node_dirs() {
            create_dir(&dir, mode)?;
        }
        Ok(())
    }

    /// Creates the task directory, its `wd/`, and empty `stdout.txt`/`stderr.txt`
    /// (the containerd shim appends to them), owned by `owner` when given. If any
    /// step fails, what this call created is removed again.
    pub fn create_task_dirs(&self, key: &TaskKey, owner: Option<(u32, u32)>) -> Result<TaskPaths, LayoutError> {
        let paths = self.task(key);
        let created = create_dir(&paths.task_dir, 0o755)?;
        let result = (|| {
            create_dir(&paths.working_dir, 0o755)?;
            for f in [&paths.stdout, &paths.stderr] {
                OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(f)
                    .map_err(|source| LayoutError::Create { path: f.clone(), source })?;
            }
            if let Some((uid, gid)) = owner {
                for p in [&paths.task_dir, &paths.working_dir, &paths.stdout, &paths.stderr] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid))
                        .map_err(|source| LayoutError::Create { path: p.clone(), source })?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            if created {
                let _ = fs::remove_dir_all(&paths.task_dir);
            }
            return Err(e);
        }
        Ok(paths)
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

    /// Removes the task directory; a missing one is not an error.
    pub fn remove_task_dir(&self, key: &TaskKey) -> Result<(), LayoutError> {
        let dir = self.task(key).task_dir;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LayoutError::Remove { path: dir, source: e }),
            _ => Ok(()),
        }
    }

    /// Reads up to `max` bytes at `offset` of the file `rel` under the task
    /// directory. `rel` must be relative and stay inside the task directory, also
    /// after symlinks are resolved (a task may plant a symlink in its wd).
    pub fn read_task_file(&self, key: &TaskKey, rel: &str, offset: u64, max: u64) -> Result<TaskFiles, LayoutError> {
        let unsafe_path = || LayoutError::UnsafePath { path: rel.to_owned() };
        let rel_path = Path::new(rel);
        if rel.is_empty()
            || rel.contains('\0')
            || !rel_path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(unsafe_path());
        }
        let task_dir = self.task(key).task_dir;
        let base = task_dir.canonicalize().map_err(|_| LayoutError::NoSuchFile { path: rel.into() })?;
        let full = match base.join(rel_path).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LayoutError::NoSuchFile { path: rel.into() })
            }
            Err(source) => return Err(LayoutError::Read { path: rel.into(), source }),
        };
        if !full.starts_with(&base) {
            return Err(unsafe_path());
        }
        let read_err = |source| LayoutError::Read { path: rel.to_owned(), source };
        let mut file = fs::File::open(&full).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(LayoutError::NotAFile { path: rel.into() });
        }
        let size = meta.len();
        let mut data = Vec::new();
        if offset < size {
            file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
            file.take(max.min(size - offset)).read_to_end(&mut data).map_err(read_err)?;
        }
        let eof = offset + data.len() as u64 >= size;
        Ok(TaskFiles { data, size, eof })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn remove_is_idempotent() {
        let (_tmp, layout, key) = setup();
        layout.remove_task_dir(&key).unwrap();
        assert!(!layout.task(&key).task_dir.exists());
        layout.remove_task_dir(&key).unwrap();
    }
}
