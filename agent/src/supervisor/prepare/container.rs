//! The container: a new id per attempt, recorded before it is made; then
//! created with the task's output files and labels.

use super::{Failure, Task};
use crate::containerd::{CreateRequest, ResolvedImage, LABEL_JOB, LABEL_KEY, LABEL_NODE, LABEL_TASK};
use crate::model::{ContainerInfo, TaskKey};
use crate::supervisor::Supervisor;
use oci_spec::runtime::Spec;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// A new container id per attempt, recorded before the container is made so
/// that recovery knows which to look for; what an interrupted attempt left goes first.
pub(super) async fn record_attempt(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    let sh = &sup.shared;
    if t.info.attempt > 0 {
        let old = t.info.container_id();
        let _ = sh.runtime.remove(&old).await;
        if let Err(e) = sh.settings.network.detach(&old).await {
            tracing::warn!(container_id = %old, error = %e, "cannot remove an earlier attempt's network");
        }
    }
    t.info.attempt += 1;
    sh.store.amend(t.info.clone()).await.map(drop).map_err(|e| Failure::Store(e.to_string()))
}

/// Where `--name` is kept (berth names the container itself).
pub(super) const LABEL_NAME: &str = "berth.name";

/// The labels of a task's container: the task's own (`--label`, `--name`), then berth's.
fn labels(own: &[(String, String)], name: Option<&str>, key: &TaskKey, node_id: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = own.iter().cloned().collect();
    if let Some(name) = name {
        labels.insert(LABEL_NAME.to_string(), name.to_owned());
    }
    labels.extend([
        (LABEL_JOB.to_string(), key.job.to_string()),
        (LABEL_TASK.to_string(), key.task.to_string()),
        (LABEL_KEY.to_string(), key.to_string()),
        (LABEL_NODE.to_string(), node_id.to_owned()),
    ]);
    labels
}

pub(super) async fn create(
    sup: &Supervisor,
    t: &mut Task<'_>,
    image: ResolvedImage,
    spec: Spec,
) -> Result<(), Failure> {
    let sh = &sup.shared;
    let key = t.info.key().clone();
    let cid = t.info.container_id();
    let o = &t.checked.run_options;
    let mut labels = labels(&o.labels, o.name.as_deref(), &key, &sh.node.node_id);
    // The spec's annotation makes the shim shared; the label shows it (`ctr c ls`).
    if let Some(group) = sh.settings.shim_group.group_of(key.job.as_str()) {
        labels.insert(crate::containerd::SHIM_GROUP_LABEL.to_owned(), group);
    }
    // containerd's shim (root on the host) opens the output files by the
    // paths it is given, and the task's identity owns their directory: it
    // could have swapped them for links to host files by now. The shim is
    // given the files the agent opens here without following links, by the
    // /proc paths of their descriptors, held until the task is created.
    let output = sh
        .layout
        .open_task_output(&key)
        .map_err(|error| Failure::Output { task_dir: sh.layout.task(&key).task_dir, error })?;
    let by_fd = |f: &std::fs::File| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()));
    let (stdout, stderr) = (by_fd(&output.0), by_fd(&output.1));
    let req = CreateRequest { id: cid.clone(), image, spec, labels, stdout, stderr };
    let created = sh.runtime.create(req).await;
    drop(output);
    created.map_err(Failure::Create)?;
    t.info.container = Some(ContainerInfo {
        container_id: cid,
        state: "created".into(),
        error: String::new(),
        ip_address: t.ip.map(|ip| ip.to_string()).unwrap_or_default(),
    });
    // Written with the next record change (the "may have started" mark, just
    // before Start): recovery finds the container by its id anyway, so one
    // synchronous write fewer on every task's critical path.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berths_labels_win_over_the_tasks() {
        let key = TaskKey::new("job", "t1").unwrap();
        let own = vec![("team".to_owned(), "a".to_owned()), (LABEL_JOB.to_owned(), "forged".to_owned())];
        let l = labels(&own, None, &key, "node-1");
        assert_eq!(l["team"], "a");
        assert_eq!(l[LABEL_JOB], "job");
        assert_eq!(l[LABEL_TASK], "t1");
        assert_eq!(l[LABEL_NODE], "node-1");
        assert_eq!(l.len(), 5);
        let named = labels(&own, Some("web-1"), &key, "node-1");
        assert_eq!((named[LABEL_NAME].as_str(), named.len()), ("web-1", 6), "--name is kept as a label");
    }
}
