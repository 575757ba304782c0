//! Resource files: every source expanded to files (a container URL is
//! listed), the total checked against the task's cap, then each file
//! streamed into a temporary file below the working directory and renamed
//! into place when complete. A retried file starts again from its first byte.

use super::fs::{open_dir, NewFile};
use super::http::{get, retrying, stream_body, Attempt};
use super::{blobs, ProgressTx, StagingError, Transfers};
use crate::model::{relative_path, ResourceFile, ResourceSource, SecretUrl};
use std::io::Write;
use std::path::Path;

/// Bytes gathered before a write to the file.
pub(super) const WRITE_BUFFER: usize = 1 << 20;

/// One file to fetch.
struct Item {
    url: SecretUrl,
    rel: String,
    mode: u32,
    size: Option<u64>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

async fn expand(t: &Transfers, files: &[ResourceFile]) -> Result<Vec<Item>, StagingError> {
    let mut items = Vec::new();
    for f in files {
        match &f.source {
            ResourceSource::Http(url) => {
                items.push(Item { url: url.clone(), rel: f.file_path.clone(), mode: f.file_mode, size: None })
            }
            ResourceSource::Container { url, prefix } => {
                for b in blobs::list(t, url, prefix).await? {
                    // A blob name keeps its path below file_path, and must stay inside.
                    let rel = relative_path("blob name", &join(&f.file_path, &b.name), false)
                        .map_err(|e| StagingError::User(format!("{url}: {e}")))?;
                    items.push(Item { url: url.join_blob(&b.name), rel, mode: f.file_mode, size: Some(b.size) });
                }
            }
        }
    }
    Ok(items)
}

/// Downloads `files` into `wd` as `owner`, publishing progress.
pub async fn download(
    t: &Transfers,
    wd: &Path,
    files: &[ResourceFile],
    owner: (u32, u32),
    progress: &ProgressTx,
) -> Result<(), StagingError> {
    let items = expand(t, files).await?;
    let cap = t.limits.max_task_bytes;
    let known: u64 = items.iter().filter_map(|i| i.size).sum();
    if known > cap {
        return Err(StagingError::User(format!(
            "the resource files are {known} bytes; this node takes at most {cap} per task ([staging] max_task_bytes)"
        )));
    }
    let total = u32::try_from(items.len()).unwrap_or(u32::MAX);
    progress.send_modify(|p| {
        p.files_total = total;
        p.bytes_total = known;
    });
    let dir = open_dir(wd).map_err(|e| StagingError::Server(format!("cannot open the working directory: {e}")))?;
    let mut done_bytes = 0u64;
    for item in &items {
        let _permit = t.permits.acquire().await.map_err(|_| StagingError::Server("the agent is stopping".into()))?;
        let what = format!("downloading {} to {}", item.url, item.rel);
        let got = retrying(t, &what, || fetch(t, &what, &dir, item, owner, done_bytes, cap, progress)).await?;
        done_bytes += got;
        progress.send_modify(|p| {
            p.files_done += 1;
            p.bytes_done = done_bytes;
        });
        tracing::info!(file = %item.rel, url = %item.url, bytes = got, "resource file downloaded");
    }
    Ok(())
}

/// One attempt at one file; returns its size.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    t: &Transfers,
    what: &str,
    dir: &std::os::fd::OwnedFd,
    item: &Item,
    owner: (u32, u32),
    before: u64,
    cap: u64,
    progress: &ProgressTx,
) -> Result<u64, Attempt> {
    let mut resp = get(t, what, item.url.full()).await?;
    if item.size.is_none() {
        if let Some(len) = resp.content_length() {
            progress.send_modify(|p| p.bytes_total += len);
        }
    }
    let mut out = NewFile::create(dir, &item.rel, owner)
        .map_err(|e| Attempt::Fatal(StagingError::User(format!("{what}: {e}"))))?;
    let too_big =
        || StagingError::User(format!("{what}: the resource files pass {cap} bytes ([staging] max_task_bytes)"));
    // Written in large pieces: the answer comes in chunks of a few KiB.
    let mut file = std::io::BufWriter::with_capacity(WRITE_BUFFER, &mut out.file);
    let result = stream_body(
        t,
        what,
        &mut resp,
        cap.saturating_sub(before),
        too_big,
        |c| file.write_all(c),
        |n| progress.send_modify(|p| p.bytes_done = before + n),
    )
    .await
    .and_then(|n| {
        file.flush().map_err(|e| Attempt::Fatal(StagingError::Server(format!("{what}: cannot write: {e}"))))?;
        Ok(n)
    });
    drop(file);
    match result {
        Ok(n) => {
            out.commit(item.mode).map_err(|e| Attempt::Fatal(StagingError::User(format!("{what}: {e}"))))?;
            Ok(n)
        }
        Err(e) => {
            out.abandon();
            if item.size.is_none() {
                if let Some(len) = resp.content_length() {
                    progress.send_modify(|p| p.bytes_total = p.bytes_total.saturating_sub(len));
                }
            }
            Err(e)
        }
    }
}
