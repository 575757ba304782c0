//! Resource files: downloaded into the working directory (as the task's
//! identity owns it) after the directories are made and before the image
//! and the container, with progress on the task while PREPARING.

use super::{Failure, Task};
use crate::staging::StagingError;
use crate::supervisor::Supervisor;

pub(super) async fn download(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    if t.info.spec.staging.resource_files.is_empty() {
        return Ok(());
    }
    let sh = &sup.shared;
    let transfers = sh.settings.staging.clone();
    let key = t.info.key().clone();
    let mut staging = t.info.spec.staging.clone();
    if !transfers.secrets().restore(&key, &mut staging) {
        return Err(Failure::Download(StagingError::Server(
            "the resource files' SAS tokens were not kept across the node's reboot; submit the task again".into(),
        )));
    }
    let owner = t.checked.run_as.dir_owner(sh.settings.policy.user_namespaces);
    let wd = sh.layout.task(&key).working_dir;
    let tracked = transfers.track(&key, false);
    let files = &staging.resource_files;
    let mut stop = t.stop.clone();
    tokio::select! {
        r = crate::staging::download(&transfers, &wd, files, owner, &tracked.tx) => r.map_err(Failure::Download),
        // A terminate while downloading ends the task at once.
        () = async { let _ = stop.wait_for(Option::is_some).await; } => {
            let stopped = t.check_stop(" while its resource files downloaded").err();
            Err(stopped.unwrap_or_else(|| Failure::Internal("a stop request vanished".into())))
        }
    }
}
