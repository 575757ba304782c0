//! The completion step: a task's output files, uploaded after its process
//! exits and before it is COMPLETED.
//!
//! The exit is recorded first (durably, still RUNNING, with its exit code
//! and an empty `uploads` list), then each upload is recorded once it is
//! done. An agent that dies meanwhile resumes from the record (recovery's
//! `Phase::Upload`): what is listed is not sent again, the rest is, and the
//! completion is recorded once. A failed upload makes the failure
//! `FileUploadFailed`; the exit code stays the process's.

use super::record::save_durably;
use super::Supervisor;
use crate::model::{FailureCode, FailureInfo, TaskInfo, TaskResult, TaskState, Uploads};
use crate::staging::{StagingError, UploadLog};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Records a completed task (`info.complete` was called), uploading its
/// output files first if it has any.
pub(super) async fn finish(sup: &Supervisor, info: TaskInfo) -> TaskInfo {
    if info.spec.staging.output_files.is_empty() {
        return save_durably(sup, info).await;
    }
    let mut pending = info;
    pending.state = TaskState::Running;
    pending.uploads.get_or_insert_with(Uploads::default);
    let pending = save_durably(sup, pending).await;
    upload(sup, pending).await
}

/// The task's environment, for `$NAME` in patterns.
fn environment(sup: &Supervisor, info: &TaskInfo) -> BTreeMap<String, String> {
    let sh = &sup.shared;
    let paths = sh.layout.task(info.key());
    let mut env: BTreeMap<String, String> = info.spec.environment.clone();
    env.extend(crate::spec::batch_vars(&sh.node, &sh.layout, info.key(), &paths, false, &[]));
    env
}

/// Uploads what is not yet uploaded, then records the completion.
pub(super) async fn upload(sup: &Supervisor, mut info: TaskInfo) -> TaskInfo {
    let sh = &sup.shared;
    let key = info.key().clone();
    let transfers = sh.settings.staging.clone();
    let paths = sh.layout.task(&key);
    let log = UploadLog::new(&paths.task_dir);
    let success = info.exit_code == Some(0) && info.failure.is_none();
    let mut first_error: Option<StagingError> = None;
    let mut staging = info.spec.staging.clone();
    // Records from before identities existed: read as nobody, never as root.
    let nobody = crate::model::RunAs { uid: 65534, gid: 65534, groups: vec![], admin: false };
    let who = info.run_as.clone().unwrap_or(nobody);
    if !transfers.secrets().restore(&key, &mut staging) {
        let e = "the output files' SAS tokens were not kept across the node's reboot; nothing was uploaded";
        log.failed(e);
        first_error = Some(StagingError::Server(e.into()));
        staging.output_files.clear();
    }
    let root = sh.layout.root().to_path_buf();
    let (outputs, env, wd) = (staging.output_files.clone(), environment(sup, &info), paths.working_dir.clone());
    let (root2, who2) = (root.clone(), who.clone());
    let planned =
        tokio::task::spawn_blocking(move || crate::staging::plan(&root2, &wd, &outputs, success, &env, &who2)).await;
    let (planned, errors) = planned.unwrap_or_else(|e| (vec![], vec![format!("matching the patterns failed: {e}")]));
    for e in errors {
        log.failed(&e);
        first_error.get_or_insert(StagingError::User(e));
    }
    let done = info.uploads.clone().unwrap_or_default().done;
    let tracked = transfers.track(&key, true);
    let todo: Vec<_> = planned.into_iter().filter(|p| !done.contains(&p.id)).collect();
    tracked.tx.send_modify(|p| p.files_total = u32::try_from(todo.len()).unwrap_or(u32::MAX));
    if todo.is_empty() && done.is_empty() && first_error.is_none() {
        log.note("no file matched the output file patterns (nothing to upload)");
    }
    for p in &todo {
        match crate::staging::upload(&transfers, &root, p, &who).await {
            Ok(bytes) => {
                log.uploaded(p, bytes);
                tracked.tx.send_modify(|pr| {
                    pr.files_done += 1;
                    pr.bytes_done += bytes;
                });
                info.uploads.get_or_insert_with(Uploads::default).done.push(p.id.clone());
                if let Err(e) = sh.store.amend(info.clone()).await {
                    tracing::warn!(job_id = %key.job, task_id = %key.task, error = %e, "cannot record an upload");
                }
            }
            Err(e) => {
                log.failed(&e.to_string());
                tracing::warn!(job_id = %key.job, task_id = %key.task, error = %e, "output file upload failed");
                first_error.get_or_insert(e);
            }
        }
    }
    drop(tracked);
    if let Some(e) = first_error {
        let message = format!("{e} (see fileuploaderr.txt)");
        info.failure = Some(match e {
            StagingError::Server(_) => FailureInfo::on_the_node(FailureCode::FileUploadFailed, message),
            StagingError::User(_) => FailureInfo::new(FailureCode::FileUploadFailed, message),
        });
        info.result = Some(TaskResult::Failure);
    }
    info.state = TaskState::Completed;
    info.completed_at = Some(SystemTime::now());
    info.uploads = None;
    save_durably(sup, info).await
}
