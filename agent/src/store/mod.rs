//! Durable task records and the sequenced event log, in SQLite (WAL,
//! `synchronous=FULL`: a change the agent reported is on disk).
//!
//! Every change of a task record appends an event with the next sequence number
//! in the same transaction, and is then published to live watchers while the
//! store's lock is still held, so watchers see events in sequence order.
//! `WatchTasks` replays from the log and then follows the live feed.

use crate::model::{TaskInfo, TaskKey, TaskState};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database record is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("task {key} already exists")]
    Exists { key: TaskKey },
    #[error("task {key} not found")]
    Missing { key: TaskKey },
    #[error("state database failed its integrity check: {detail}")]
    Corrupt { detail: String },
    #[error("state database worker failed: {0}")]
    Join(String),
}

/// An opened state database.
pub struct Opened {
    pub store: Store,
    /// The database was created now (missing, or unreadable and moved aside):
    /// what it should hold must be rebuilt from containerd and the task directories.
    pub fresh: bool,
    /// Why it was rebuilt, for operators.
    pub note: Option<String>,
}

/// One entry of the event log: the task as it was right after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub sequence: u64,
    pub task: TaskInfo,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    job_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state   TEXT NOT NULL,
    record  TEXT NOT NULL,
    -- sequence number of the task's first event: acceptance order
    created_seq INTEGER NOT NULL,
    PRIMARY KEY (job_id, task_id)
);
-- node-level settings and job configurations: name -> JSON
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    record  TEXT NOT NULL
);
";

/// Brings a database written by an earlier agent up to the current schema.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_created_seq: bool =
        conn.query_row("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'created_seq'", [], |r| {
            r.get::<_, i64>(0).map(|n| n > 0)
        })?;
    if !has_created_seq {
        conn.execute_batch(
            "ALTER TABLE tasks ADD COLUMN created_seq INTEGER NOT NULL DEFAULT 0;
             UPDATE tasks SET created_seq = IFNULL((SELECT MIN(seq) FROM events e
                 WHERE e.job_id = tasks.job_id AND e.task_id = tasks.task_id), 0);",
        )?;
    }
    // ListTasks pages walk the acceptance order.
    conn.execute_batch("CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_seq);")?;
    Ok(())
}

/// The state directory is the agent's alone (0700) and the database with its
/// `-wal` and `-shm` files are 0600: they hold every task's environment and
/// command line. An installation made before this rule is fixed here.
fn restrict(dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?,
            _ => {}
        }
    }
    Ok(())
}

/// Creates the database file 0600 before SQLite opens it: SQLite gives the
/// `-wal` and `-shm` files the database file's mode.
fn create_private(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(db).map(drop)
}

struct Inner {
    conn: Mutex<Connection>,
    feed: broadcast::Sender<TaskEvent>,
}

/// The state database. Cheap to clone; blocking work runs on tokio's blocking pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) `dir/berth.db`. A database that cannot be
    /// opened or fails SQLite's integrity check is moved aside and a new one is
    /// created: the agent never refuses to start over its state database.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let path = dir.join("berth.db");
        let io_err = |e: std::io::Error| StoreError::Open {
            path: path.clone(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let existed = path.exists();
        restrict(dir, &path).map_err(io_err)?;
        match Self::open_checked(&path) {
            Ok(store) => Ok(Opened { store, fresh: !existed, note: None }),
            Err(e) if existed => {
                let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let aside = dir.join(format!("berth.db.corrupt-{stamp}"));
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    if from.exists() {
                        let _ = std::fs::rename(&from, format!("{}{suffix}", aside.display()));
                    }
                }
                let note = format!("the state database was unreadable ({e}); moved to {} and rebuilt", aside.display());
                Ok(Opened { store: Self::open_checked(&path)?, fresh: true, note: Some(note) })
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        create_private(path).map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let conn = Connection::open(path).map_err(open_err)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(open_err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt { detail: check });
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Self::from_conn(conn))
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self::from_conn(conn))
    }

    fn from_conn(conn: Connection) -> Self {
        let (feed, _) = broadcast::channel(1024);
        Self { inner: Arc::new(Inner { conn: Mutex::new(conn), feed }) }
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.feed.subscribe()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Records a new task; `ALREADY_EXISTS`-style error if the key is taken.
    pub async fn insert(&self, task: TaskInfo) -> Result<TaskInfo, StoreError> {
        self.blocking(move |inner| inner.write(task, true)).await
    }

    /// Records a change of an existing task.
    pub async fn update(&self, task: TaskInfo) -> Result<TaskInfo, StoreError> {
        self.blocking(move |inner| inner.write(task, false)).await
    }

    pub async fn get(&self, key: &TaskKey) -> Result<Option<TaskInfo>, StoreError> {
        let key = key.clone();
        self.blocking(move |inner| Inner::read(&inner.lock(), &key)).await
    }

    /// Reads a task's record, changes it with `f` and records the change (a
    /// new event), under one lock and in one trip to a blocking thread: no
    /// other write comes between the read and the write. `None` if there is
    /// no such task.
    pub async fn modify(
        &self,
        key: &TaskKey,
        f: impl FnOnce(&mut TaskInfo) + Send + 'static,
    ) -> Result<Option<TaskInfo>, StoreError> {
        let key = key.clone();
        self.blocking(move |inner| {
            let mut conn = inner.lock();
            let Some(mut task) = Inner::read(&conn, &key)? else {
                return Ok(None);
            };
            f(&mut task);
            inner.write_locked(&mut conn, task, false).map(Some)
        })
        .await
    }

    /// Tasks in acceptance order, optionally of one job and/or in one state.
    pub async fn list(&self, job: Option<String>, state: Option<TaskState>) -> Result<Vec<TaskInfo>, StoreError> {
        self.blocking(move |inner| {
            let conn = inner.lock();
            let mut stmt = conn.prepare(
                "SELECT t.record FROM tasks t
                 WHERE (?1 IS NULL OR t.job_id = ?1) AND (?2 IS NULL OR t.state = ?2)
                 ORDER BY t.created_seq",
            )?;
            let rows = stmt.query_map(params![job, state.map(|s| s.as_str())], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for r in rows {
                out.push(serde_json::from_str(&r?)?);
            }
            Ok(out)
        })
        .await
    }

    /// One page of [`Store::list`]: at most `limit` tasks accepted after the
    /// one whose acceptance sequence is `after` (0: from the first), and
    /// the last one's sequence when more follow.
    pub async fn list_page(
        &self,
        job: Option<String>,
        state: Option<TaskState>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<TaskInfo>, Option<u64>), StoreError> {
        self.blocking(move |inner| {
            let conn = inner.lock();
            let mut stmt = conn.prepare_cached(
                "SELECT t.record, t.created_seq FROM tasks t
                 WHERE (?1 IS NULL OR t.job_id = ?1) AND (?2 IS NULL OR t.state = ?2) AND t.created_seq > ?3
                 ORDER BY t.created_seq LIMIT ?4",
            )?;
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let one_more = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
            let rows = stmt.query_map(params![job, state.map(|s| s.as_str()), after, one_more], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            let mut last = 0u64;
            let mut more = false;
            for r in rows {
                let (record, seq) = r?;
                if out.len() == limit {
                    more = true;
                    break;
                }
                out.push(serde_json::from_str(&record)?);
                last = u64::try_from(seq).unwrap_or(0);
            }
            Ok((out, more.then_some(last)))
        })
        .await
    }

    /// How many tasks are in each state.
    pub async fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.blocking(move |inner| {
            let conn = inner.lock();
            let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Updates a record without a new event: for details that are not a state
    /// change (the container was removed after completion).
    pub async fn amend(&self, task: TaskInfo) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let key = task.key().clone();
            let rec = serde_json::to_string(&task)?;
            inner.lock().execute(
                "UPDATE tasks SET record = ?1 WHERE job_id = ?2 AND task_id = ?3",
                params![rec, key.job.as_str(), key.task.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a task's record (its events stay in the log).
    pub async fn delete(&self, key: &TaskKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.blocking(move |inner| {
            let n = inner.lock().execute(
                "DELETE FROM tasks WHERE job_id = ?1 AND task_id = ?2",
                params![key.job.as_str(), key.task.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::Missing { key });
            }
            Ok(())
        })
        .await
    }

    /// Deletes the oldest events so that at most `keep` remain; returns how many went.
    pub async fn compact_events(&self, keep: u64) -> Result<usize, StoreError> {
        self.blocking(move |inner| {
            Ok(inner
                .lock()
                .execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1", params![keep as i64])?)
        })
        .await
    }

    /// The oldest and newest sequence numbers still in the log.
    pub async fn event_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.blocking(|inner| {
            let v: (Option<i64>, Option<i64>) =
                inner.lock().query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(v.0.zip(v.1).map(|(a, b)| (a as u64, b as u64)))
        })
        .await
    }

    /// Makes the next sequence number greater than `floor`: a rebuilt database
    /// must not hand out numbers a watcher has already seen.
    pub async fn seed_sequence(&self, floor: u64) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let conn = inner.lock();
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'", [])?;
            conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'events', MAX(?1, IFNULL(MAX(seq), 0)) FROM events",
                params![floor as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets (Some) or clears (None) a named setting, as JSON.
    pub async fn put_setting<T: serde::Serialize>(&self, name: &str, value: Option<&T>) -> Result<(), StoreError> {
        let name = name.to_owned();
        let value = value.map(serde_json::to_string).transpose()?;
        self.blocking(move |inner| {
            let conn = inner.lock();
            match value {
                Some(v) => conn.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    params![name, v],
                )?,
                None => conn.execute("DELETE FROM settings WHERE name = ?1", params![name])?,
            };
            Ok(())
        })
        .await
    }

    /// A named setting.
    pub async fn setting<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.settings_with_prefix(name).await?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v))
    }

    /// Every setting whose name starts with `prefix`, by name.
    pub async fn settings_with_prefix<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| {
            let conn = inner.lock();
            let mut stmt =
                conn.prepare("SELECT name, value FROM settings WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name")?;
            let rows = stmt.query_map(params![prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for r in rows {
                let (name, value) = r?;
                out.push((name, serde_json::from_str(&value)?));
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` events with a sequence greater than `after`, in order.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, StoreError> {
        self.blocking(move |inner| {
            let conn = inner.lock();
            let mut stmt = conn.prepare("SELECT seq, record FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt.query_map(params![after.min(i64::MAX as u64) as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, rec) = r?;
                out.push(TaskEvent { sequence: seq as u64, task: serde_json::from_str(&rec)? });
            }
            Ok(out)
        })
        .await
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(conn: &Connection, key: &TaskKey) -> Result<Option<TaskInfo>, StoreError> {
        let rec: Option<String> = conn
            .prepare_cached("SELECT record FROM tasks WHERE job_id = ?1 AND task_id = ?2")?
            .query_row(params![key.job.as_str(), key.task.as_str()], |r| r.get(0))
            .optional()?;
        Ok(rec.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    fn write(&self, task: TaskInfo, new: bool) -> Result<TaskInfo, StoreError> {
        self.write_locked(&mut self.lock(), task, new)
    }

    /// [`Inner::write`] with the connection's lock already held.
    fn write_locked(&self, conn: &mut Connection, mut task: TaskInfo, new: bool) -> Result<TaskInfo, StoreError> {
        let tx = conn.transaction()?;
        let key = task.key().clone();
        let (job, id) = (key.job.as_str(), key.task.as_str());
        // Cached statements: a write is one of the agent's most frequent calls.
        let exists: bool = tx
            .prepare_cached("SELECT COUNT(*) FROM tasks WHERE job_id = ?1 AND task_id = ?2")?
            .query_row(params![job, id], |r| r.get::<_, i64>(0).map(|n| n > 0))?;
        match (new, exists) {
            (true, true) => return Err(StoreError::Exists { key }),
            (false, false) => return Err(StoreError::Missing { key }),
            _ => {}
        }
        // Reserve the sequence number, then store the record carrying it.
        tx.prepare_cached("INSERT INTO events (job_id, task_id, record) VALUES (?1, ?2, '')")?
            .execute(params![job, id])?;
        task.sequence = tx.last_insert_rowid() as u64;
        let rec = serde_json::to_string(&task)?;
        tx.prepare_cached("UPDATE events SET record = ?1 WHERE seq = ?2")?
            .execute(params![rec, task.sequence as i64])?;
        tx.prepare_cached(
            "INSERT INTO tasks (job_id, task_id, state, record, created_seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(job_id, task_id) DO UPDATE SET state = excluded.state, record = excluded.record",
        )?
        .execute(params![job, id, task.state.as_str(), rec, task.sequence as i64])?;
        tx.commit()?;
        // Published under the lock, so live events go out in sequence order.
        let _ = self.feed.send(TaskEvent { sequence: task.sequence, task: task.clone() });
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskConstraints, TaskSpec, UserIdentity};
    use std::time::SystemTime;

    fn task(job: &str, id: &str) -> TaskInfo {
        TaskInfo::new(
            TaskSpec {
                key: TaskKey::new(job, id).unwrap(),
                command_line: "/bin/true".into(),
                container: None,
                environment: Default::default(),
                user: UserIdentity::default(),
                constraints: TaskConstraints::default(),
                required_slots: 1,
                staging: Default::default(),
            },
            SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn settings_round_trip() {
        let s = Store::in_memory().unwrap();
        s.put_setting("job:a", Some(&1u32)).await.unwrap();
        s.put_setting("job:b", Some(&2u32)).await.unwrap();
        s.put_setting("jobx", Some(&3u32)).await.unwrap();
        s.put_setting("job:a", Some(&4u32)).await.unwrap();
        assert_eq!(s.setting::<u32>("job:a").await.unwrap(), Some(4));
        let all: Vec<(String, u32)> = s.settings_with_prefix("job:").await.unwrap();
        assert_eq!(all, [("job:a".to_string(), 4), ("job:b".to_string(), 2)]);
        s.put_setting::<u32>("job:a", None).await.unwrap();
        assert_eq!(s.setting::<u32>("job:a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn insert_update_get_list_delete() {
        let s = Store::in_memory().unwrap();
        let a = s.insert(task("j1", "a")).await.unwrap();
        assert_eq!(a.sequence, 1);
        assert!(matches!(s.insert(task("j1", "a")).await, Err(StoreError::Exists { .. })));
        s.insert(task("j2", "b")).await.unwrap();
        let mut a2 = a.clone();
        a2.state = TaskState::Running;
        let a2 = s.update(a2).await.unwrap();
        assert_eq!(a2.sequence, 3, "the refused insert must not consume a sequence number");
        assert_eq!(s.get(&a.spec.key).await.unwrap().unwrap().state, TaskState::Running);
        assert_eq!(s.list(None, None).await.unwrap().len(), 2);
        assert_eq!(s.list(Some("j1".into()), None).await.unwrap().len(), 1);
        assert_eq!(s.list(None, Some(TaskState::Active)).await.unwrap()[0].spec.key.task.as_str(), "b");
        s.delete(&a.spec.key).await.unwrap();
        assert!(s.get(&a.spec.key).await.unwrap().is_none());
        assert!(matches!(s.update(a2).await, Err(StoreError::Missing { .. })));
    }

    #[tokio::test]
    async fn modify_reads_changes_and_records_in_one_write() {
        let s = Store::in_memory().unwrap();
        let a = s.insert(task("j1", "a")).await.unwrap();
        let mut feed = s.subscribe();
        let changed = s.modify(&a.spec.key, |t| t.state = TaskState::Running).await.unwrap().unwrap();
        assert_eq!(changed.state, TaskState::Running);
        assert_eq!(changed.sequence, a.sequence + 1, "a change is a new event");
        assert_eq!(feed.recv().await.unwrap().task.state, TaskState::Running);
        assert_eq!(s.get(&a.spec.key).await.unwrap().unwrap().state, TaskState::Running);
        let gone = TaskKey::new("j1", "nobody").unwrap();
        assert!(s.modify(&gone, |t| t.state = TaskState::Running).await.unwrap().is_none());
        assert_eq!(s.event_range().await.unwrap().map(|r| r.1), Some(changed.sequence), "no event for a missing task");
    }

    #[tokio::test]
    async fn pages_walk_the_acceptance_order_with_filters() {
        let s = Store::in_memory().unwrap();
        for i in 0..7 {
            s.insert(task(if i % 2 == 0 { "even" } else { "odd" }, &format!("t{i}"))).await.unwrap();
        }
        // A change of state after acceptance does not move a task in the order.
        let mut t1 = s.get(&TaskKey::new("odd", "t1").unwrap()).await.unwrap().unwrap();
        t1.state = TaskState::Running;
        s.update(t1).await.unwrap();
        let ids = |v: &[TaskInfo]| v.iter().map(|t| t.key().task.to_string()).collect::<Vec<_>>();
        let (p1, next) = s.list_page(None, None, 0, 3).await.unwrap();
        assert_eq!(ids(&p1), ["t0", "t1", "t2"]);
        let (p2, next) = s.list_page(None, None, next.unwrap(), 3).await.unwrap();
        assert_eq!(ids(&p2), ["t3", "t4", "t5"]);
        let (p3, next) = s.list_page(None, None, next.unwrap(), 3).await.unwrap();
        assert_eq!((ids(&p3), next), (vec!["t6".to_string()], None), "the last page says so");
        let (exact, next) = s.list_page(None, None, 0, 7).await.unwrap();
        assert_eq!((exact.len(), next), (7, None), "a page that ends with the last task is the last");
        let (even, _) = s.list_page(Some("even".into()), None, 0, 10).await.unwrap();
        assert_eq!(ids(&even), ["t0", "t2", "t4", "t6"]);
        let (active, next) = s.list_page(None, Some(TaskState::Active), 0, 2).await.unwrap();
        assert_eq!(ids(&active), ["t0", "t2"]);
        let (active, _) = s.list_page(None, Some(TaskState::Active), next.unwrap(), 10).await.unwrap();
        assert_eq!(ids(&active), ["t3", "t4", "t5", "t6"]);
    }

    #[tokio::test]
    async fn events_are_sequenced_and_published() {
        let s = Store::in_memory().unwrap();
        let mut rx = s.subscribe();
        let a = s.insert(task("j", "a")).await.unwrap();
        let mut b = a.clone();
        b.state = TaskState::Preparing;
        s.update(b).await.unwrap();
        let evs = s.events_after(0, 100).await.unwrap();
        assert_eq!(evs.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(evs[1].task.state, TaskState::Preparing);
        assert_eq!(s.events_after(1, 100).await.unwrap().len(), 1);
        assert_eq!(rx.recv().await.unwrap().sequence, 1);
        assert_eq!(rx.recv().await.unwrap().sequence, 2);
    }

    #[tokio::test]
    async fn corrupt_database_is_moved_aside_and_recreated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.db"), vec![0x5a; 8192]).unwrap();
        let o = Store::open(dir.path()).unwrap();
        assert!(o.fresh);
        assert!(o.note.unwrap().contains("berth.db.corrupt-"));
        o.store.insert(task("j", "a")).await.unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("berth.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[tokio::test]
    async fn compaction_keeps_the_newest_events_and_the_order() {
        let s = Store::in_memory().unwrap();
        let a = s.insert(task("j", "a")).await.unwrap();
        s.insert(task("j", "b")).await.unwrap();
        for _ in 0..3 {
            s.update(a.clone()).await.unwrap();
        }
        assert_eq!(s.compact_events(2).await.unwrap(), 3);
        assert_eq!(s.event_range().await.unwrap(), Some((4, 5)));
        let tasks: Vec<String> = s.list(None, None).await.unwrap().iter().map(|t| t.key().to_string()).collect();
        assert_eq!(tasks, ["j/a", "j/b"], "acceptance order survives compaction");
    }

    #[tokio::test]
    async fn seeded_sequence_continues_above_the_floor() {
        let s = Store::in_memory().unwrap();
        s.seed_sequence(1_000_000).await.unwrap();
        assert_eq!(s.insert(task("j", "a")).await.unwrap().sequence, 1_000_001);
    }

    #[tokio::test]
    async fn a_database_of_the_first_schema_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("berth.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE tasks (job_id TEXT NOT NULL, task_id TEXT NOT NULL, state TEXT NOT NULL,
                     record TEXT NOT NULL, PRIMARY KEY (job_id, task_id));
                 CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
                     task_id TEXT NOT NULL, record TEXT NOT NULL);",
            )
            .unwrap();
        }
        let o = Store::open(dir.path()).unwrap();
        assert!(!o.fresh);
        o.store.insert(task("j", "a")).await.unwrap();
        o.store.insert(task("j", "b")).await.unwrap();
        let keys: Vec<String> = o.store.list(None, None).await.unwrap().iter().map(|t| t.key().to_string()).collect();
        assert_eq!(keys, ["j/a", "j/b"]);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Store::open(dir.path()).unwrap();
            assert!(o.fresh && o.note.is_none());
            o.store.insert(task("j", "a")).await.unwrap();
        }
        let o = Store::open(dir.path()).unwrap();
        assert!(!o.fresh);
        let s = o.store;
        assert!(s.get(&TaskKey::new("j", "a").unwrap()).await.unwrap().is_some());
        let next = s.insert(task("j", "b")).await.unwrap();
        assert_eq!(next.sequence, 2);
    }

    #[tokio::test]
    async fn state_dir_and_database_are_private_also_when_they_were_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        {
            let o = Store::open(&dir).unwrap();
            o.store.insert(task("j", "a")).await.unwrap();
            assert_eq!(mode(&dir), 0o700);
            for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
                assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
            }
        }
        // An installation of an earlier agent: 0755 and 0644.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
            if dir.join(f).exists() {
                std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let o = Store::open(&dir).unwrap();
        assert!(!o.fresh);
        o.store.insert(task("j", "b")).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f} fixed");
        }
    }
}
