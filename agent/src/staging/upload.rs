//! Output files: the patterns are matched once the process has exited (the
//! task can no longer change what is there), each match is a `Put Blob` to
//! its destination, and every upload or failure is a line of
//! `fileuploadout.txt` or `fileuploaderr.txt` in the task directory, as
//! Batch writes them. The caller records each finished upload, so after an
//! agent crash none is sent twice and none is skipped.

use super::fs::{open_dir, open_log, open_output, own_like_dir};
use super::http::{check, network, retrying, Attempt, BLOB_API_VERSION};
use super::pattern::{expand, find};
use super::{StagingError, Transfers};
use crate::model::{OutputFile, RunAs, SecretUrl};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The largest file one `Put Blob` takes at that version.
const MAX_PUT_BLOB: u64 = 5000 << 20;

/// One upload to do.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Names the upload in the task's record: `<output index>:<blob name>`.
    pub id: String,
    /// Below the node root.
    pub rel: PathBuf,
    pub dest: SecretUrl,
    pub headers: Vec<(String, String)>,
}

/// The matches of the output files whose condition applies, and the
/// patterns that could not be matched (the task's errors).
pub fn plan(
    root: &Path,
    wd: &Path,
    outputs: &[OutputFile],
    success: bool,
    env: &BTreeMap<String, String>,
    who: &RunAs,
) -> (Vec<Planned>, Vec<String>) {
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        if !o.condition.applies(success) {
            continue;
        }
        let pattern = expand(&o.pattern, env);
        match find(root, wd, &pattern, &o.path, who) {
            Ok(matches) if matches.is_empty() => {
                tracing::info!(pattern = %pattern, "no file matches an output file pattern");
            }
            Ok(matches) => planned.extend(matches.into_iter().map(|m| Planned {
                id: format!("{i}:{}", m.blob),
                dest: o.container_url.join_blob(&m.blob),
                rel: m.rel,
                headers: o.headers.clone(),
            })),
            Err(e) => errors.push(format!("output file {i}: {e}")),
        }
    }
    (planned, errors)
}

/// Uploads one planned file.
pub async fn upload(t: &Transfers, root: &Path, p: &Planned, who: &RunAs) -> Result<u64, StagingError> {
    let what = format!("uploading {} to {}", p.rel.display(), p.dest);
    let root_fd = open_dir(root).map_err(|e| StagingError::Server(format!("cannot open the node root: {e}")))?;
    let _permit = t.permits.acquire().await.map_err(|_| StagingError::Server("the agent is stopping".into()))?;
    retrying(t, &what, || async {
        let (file, len) = open_output(&root_fd, &p.rel, who)
            .map_err(|e| Attempt::Fatal(StagingError::User(format!("{what}: {e}"))))?;
        if len > MAX_PUT_BLOB {
            return Err(Attempt::Fatal(StagingError::User(format!("{what}: {len} bytes; at most {MAX_PUT_BLOB}"))));
        }
        let mut req = t
            .http()
            .await
            .map_err(Attempt::Fatal)?
            .put(p.dest.full())
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-version", BLOB_API_VERSION)
            .header(reqwest::header::CONTENT_LENGTH, len);
        for (name, value) in &p.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        // Read in large pieces (reqwest's own file body reads 4 KiB at a time).
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
        let body = reqwest::Body::wrap_stream(stream);
        let resp = req.body(body).send().await.map_err(|e| network(&what, e))?;
        check(&what, resp)?;
        Ok(len)
    })
    .await
}

/// `fileuploadout.txt` and `fileuploaderr.txt` of a task.
pub struct UploadLog {
    task_dir: PathBuf,
}

impl UploadLog {
    pub fn new(task_dir: &Path) -> Self {
        Self { task_dir: task_dir.to_owned() }
    }

    fn line(&self, name: &str, text: &str) {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        match open_log(&self.task_dir, name) {
            Ok(mut f) => {
                let _ = writeln!(f, "{stamp} {text}");
                own_like_dir(&self.task_dir, name);
            }
            Err(e) => tracing::warn!(file = name, error = %e, "cannot write the upload log"),
        }
    }

    pub fn uploaded(&self, p: &Planned, bytes: u64) {
        self.line("fileuploadout.txt", &format!("Uploaded {} ({bytes} bytes) to {}", p.rel.display(), p.dest));
    }

    pub fn note(&self, text: &str) {
        self.line("fileuploadout.txt", text);
    }

    pub fn failed(&self, text: &str) {
        self.line("fileuploaderr.txt", text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UploadCondition;

    #[test]
    fn plans_follow_the_condition_and_name_each_upload() {
        let d = tempfile::tempdir().unwrap();
        let wd = d.path().join("t/wd");
        std::fs::create_dir_all(wd.join("sub")).unwrap();
        std::fs::write(wd.join("a.txt"), "a").unwrap();
        std::fs::write(wd.join("sub/b.txt"), "b").unwrap();
        let out = |pattern: &str, path: &str, condition| OutputFile {
            pattern: pattern.into(),
            container_url: SecretUrl::parse("http://127.0.0.1:1/acct/con?sig=S").unwrap(),
            path: path.into(),
            headers: vec![],
            condition,
        };
        let outputs = [
            out("**/*.txt", "run1", UploadCondition::TaskCompletion),
            out("a.txt", "only-on-failure.txt", UploadCondition::TaskFailure),
            out("/etc/*", "", UploadCondition::TaskSuccess),
        ];
        let me = RunAs { uid: 0, gid: 0, groups: vec![], admin: true };
        let (planned, errors) = plan(d.path(), &wd, &outputs, true, &BTreeMap::new(), &me);
        let ids: Vec<_> = planned.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["0:run1/a.txt", "0:run1/sub/b.txt"]);
        assert_eq!(planned[1].dest.full().as_str(), "http://127.0.0.1:1/acct/con/run1/sub/b.txt?sig=S");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("outside the node root"));
        let (planned, _) = plan(d.path(), &wd, &outputs, false, &BTreeMap::new(), &me);
        let ids: Vec<_> = planned.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["0:run1/a.txt", "0:run1/sub/b.txt", "1:only-on-failure.txt"]);
    }

    #[test]
    fn logs_show_no_query() {
        let d = tempfile::tempdir().unwrap();
        let log = UploadLog::new(d.path());
        let p = Planned {
            id: "0:x".into(),
            rel: "t/x".into(),
            dest: SecretUrl::parse("http://h/acct/con/x?sig=SECRET").unwrap(),
            headers: vec![],
        };
        log.uploaded(&p, 3);
        log.failed(&format!("uploading to {}: HTTP 403", p.dest));
        let out = std::fs::read_to_string(d.path().join("fileuploadout.txt")).unwrap();
        let err = std::fs::read_to_string(d.path().join("fileuploaderr.txt")).unwrap();
        assert!(out.contains("Uploaded t/x (3 bytes) to http://h/acct/con/x?<redacted>"), "{out}");
        assert!(!format!("{out}{err}").contains("SECRET"));
    }
}
