//! What berth left in containerd: its labelled containers, and snapshots and
//! leases of interrupted work, found by this node's label.

use super::client::Containerd;
use super::{LabelledContainer, RuntimeError, LABEL_BOOT, LABEL_JOB, LABEL_NODE, LABEL_TASK};
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    DeleteRequest as DeleteLeaseRequest, ListContainersRequest, ListRequest as ListLeasesRequest,
};
use std::time::{Duration, SystemTime};

fn node_filter(node_id: &str) -> String {
    // containerd filter syntax (filters package): quoted value, label key in dotted form.
    format!("labels.\"{LABEL_NODE}\"=={node_id:?}")
}

impl Containerd {
    pub(super) async fn labelled(&self, node_id: &str) -> Result<Vec<LabelledContainer>, RuntimeError> {
        let req = ListContainersRequest { filters: vec![node_filter(node_id)] };
        let containers = self
            .containers()
            .list(self.request(req))
            .await
            .map_err(|s| self.status_error("list containers", "containers", s))?
            .into_inner()
            .containers;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let job = c.labels.get(LABEL_JOB)?.clone();
                let task = c.labels.get(LABEL_TASK)?.clone();
                let spec: Option<oci_spec::runtime::Spec> =
                    c.spec.as_ref().and_then(|any| serde_json::from_slice(&any.value).ok());
                let process = spec.as_ref().and_then(|s| s.process().clone());
                let created_at = c.created_at.and_then(|t| {
                    (t.seconds > 0)
                        .then(|| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.max(0) as u32))
                });
                Some(LabelledContainer {
                    id: c.id,
                    job,
                    task,
                    image: c.image,
                    created_at,
                    args: process.as_ref().and_then(|p| p.args().clone()).unwrap_or_default(),
                    uid: process.as_ref().map(|p| p.user().uid()).unwrap_or(0),
                    gid: process.as_ref().map(|p| p.user().gid()).unwrap_or(0),
                })
            })
            .collect())
    }

    pub(super) async fn leftovers(&self, node_id: &str, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        let req =
            ListSnapshotsRequest { snapshotter: self.snapshotter().to_owned(), filters: vec![node_filter(node_id)] };
        let mut stream = self
            .snapshots()
            .list(self.request(req))
            .await
            .map_err(|s| self.status_error("list snapshots", "snapshots", s))?
            .into_inner();
        let mut names = Vec::new();
        while let Some(page) =
            stream.message().await.map_err(|s| self.status_error("list snapshots", "snapshots", s))?
        {
            names.extend(page.info.into_iter().map(|i| i.name));
        }
        for name in names.into_iter().filter(|n| !keep.contains(n)) {
            let req = RemoveSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key: name.clone() };
            match self.snapshots().remove(self.request(req)).await {
                Ok(_) => removed.push(format!("snapshot {name}")),
                Err(s) => tracing::warn!(snapshot = %name, error = %s.message(), "cannot remove leftover snapshot"),
            }
        }
        let req = ListLeasesRequest { filters: vec![node_filter(node_id)] };
        let leases = self
            .leases()
            .list(self.request(req))
            .await
            .map_err(|s| self.status_error("list leases", "leases", s))?
            .into_inner()
            .leases;
        // Leases of this very process belong to work under way (a pull started
        // while recovery ran), not to interrupted work.
        for lease in leases.into_iter().filter(|l| l.labels.get(LABEL_BOOT).map(String::as_str) != Some(self.boot_id()))
        {
            let req = DeleteLeaseRequest { id: lease.id.clone(), sync: false };
            if self.leases().delete(self.request(req)).await.is_ok() {
                removed.push(format!("lease {}", lease.id));
            }
        }
        Ok(removed)
    }
}
