//! The queries (SAS tokens) of a task's staging URLs, kept apart from the
//! state database: in memory, and in one root-only file per task in the
//! secrets directory (`[staging] secrets_dir`, by default on `/run`, a
//! tmpfs: they survive an agent restart, not a reboot). A task's file goes
//! when the task completes.

use crate::model::{Staging, TaskKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

pub struct Secrets {
    dir: PathBuf,
    memory: Mutex<HashMap<TaskKey, Vec<Option<String>>>>,
}

impl Secrets {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, memory: Mutex::new(HashMap::new()) }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn file(&self, key: &TaskKey) -> PathBuf {
        let digest = Sha256::digest(format!("{}\0{}", key.job, key.task));
        self.dir.join(hex::encode(&digest[..16]))
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Vec<Option<String>>>> {
        self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a task's queries (before its record is written without them).
    pub fn keep(&self, key: &TaskKey, staging: &Staging) -> std::io::Result<()> {
        if !staging.has_queries() {
            return Ok(());
        }
        let queries = staging.queries();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let path = self.file(key);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec(&queries).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        self.memory().insert(key.clone(), queries);
        Ok(())
    }

    /// Puts a task's queries back into its spec, from memory or the file.
    /// False if it had some and they are gone (a reboot).
    pub fn restore(&self, key: &TaskKey, staging: &mut Staging) -> bool {
        if !staging.lost_queries() {
            return true;
        }
        let kept = self.memory().get(key).cloned();
        let kept = kept.or_else(|| {
            let q: Vec<Option<String>> = serde_json::from_slice(&std::fs::read(self.file(key)).ok()?).ok()?;
            self.memory().insert(key.clone(), q.clone());
            Some(q)
        });
        if let Some(q) = kept {
            staging.set_queries(q);
        }
        !staging.lost_queries()
    }

    /// Forgets a completed task's queries.
    pub fn forget(&self, key: &TaskKey) {
        self.memory().remove(key);
        let _ = std::fs::remove_file(self.file(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResourceFile, ResourceSource, SecretUrl};

    #[test]
    fn queries_survive_a_new_agent_and_go_with_the_task() {
        let d = tempfile::tempdir().unwrap();
        let key = TaskKey::new("j", "t").unwrap();
        let staging = Staging {
            resource_files: vec![ResourceFile {
                source: ResourceSource::Http(SecretUrl::parse("http://h/a?sig=SECRET").unwrap()),
                file_path: "a".into(),
                file_mode: 0o644,
            }],
            output_files: vec![],
            application_packages: vec![],
        };
        Secrets::new(d.path().join("s")).keep(&key, &staging).unwrap();
        let meta = std::fs::metadata(d.path().join("s")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o700);
        let fresh = Secrets::new(d.path().join("s"));
        let mut stored: Staging = serde_json::from_str(&serde_json::to_string(&staging).unwrap()).unwrap();
        assert!(fresh.restore(&key, &mut stored));
        assert_eq!(stored, staging);
        fresh.forget(&key);
        let mut again: Staging = serde_json::from_str(&serde_json::to_string(&staging).unwrap()).unwrap();
        assert!(!Secrets::new(d.path().join("s")).restore(&key, &mut again));
        assert_eq!(std::fs::read_dir(d.path().join("s")).unwrap().count(), 0);
    }
}
