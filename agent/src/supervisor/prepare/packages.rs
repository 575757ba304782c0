//! Application packages: the node's and the task's own, installed (each
//! once per node; a package another task is installing is waited for)
//! after the directories are made and before the resource files.

use super::{Failure, Task};
use crate::supervisor::Supervisor;

pub(super) async fn install(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    let sh = &sup.shared;
    let transfers = sh.settings.staging.clone();
    let mut staging = t.info.spec.staging.clone();
    if staging.application_packages.is_empty() && sh.packages.node_level().is_empty() {
        return Ok(());
    }
    // A package already installed needs no query; one that is not says so.
    let _ = transfers.secrets().restore(t.info.key(), &mut staging);
    let mut spec = t.info.spec.clone();
    spec.staging = staging;
    let packages = sup.task_packages(&spec);
    let mut stop = t.stop.clone();
    let all = async {
        for p in &packages {
            sh.packages.installed.ensure(&transfers, p).await?;
        }
        Ok(())
    };
    tokio::select! {
        r = all => r.map_err(Failure::Package),
        // A terminate while installing ends the task at once.
        () = async { let _ = stop.wait_for(Option::is_some).await; } => {
            let stopped = t.check_stop(" while its application packages were installed").err();
            Err(stopped.unwrap_or_else(|| Failure::Internal("a stop request vanished".into())))
        }
    }
}
