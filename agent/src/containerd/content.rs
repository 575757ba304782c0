//! Writing a pulled image into containerd, as containerd's own client does it
//! (containerd `client/pull.go`, `unpacker`): blobs streamed into the Content
//! service under a lease, digest and size verified by containerd at commit;
//! the gc labels that tie index → manifest → config/layers → snapshot; layers
//! unpacked with Diff.Apply onto snapshots committed by chain ID; the image
//! record last.

use super::client::Containerd;
use super::{BlobRef, ImageStore, RuntimeError, UnpackTimes, LABEL_BOOT, LABEL_NODE};
use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::WriteAction;
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, Image, InfoRequest, Resource, UpdateImageRequest, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tonic::Code;

/// Bytes sent per Write message.
const CHUNK: usize = 1 << 20;

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn descriptor(b: &BlobRef) -> Descriptor {
    Descriptor { media_type: b.media_type.clone(), digest: b.digest.clone(), size: b.size, ..Default::default() }
}

impl Containerd {
    async fn add_to_lease(&self, lease: &str, id: &str, kind: &str) {
        let req = AddResourceRequest {
            id: lease.to_owned(),
            resource: Some(Resource { id: id.to_owned(), r#type: kind.to_owned() }),
        };
        if let Err(s) = self.leases().add_resource(self.request(req)).await {
            tracing::warn!(lease, resource = id, error = %s.message(), "cannot add to lease");
        }
    }
}

#[async_trait]
impl ImageStore for Containerd {
    async fn create_lease(&self, node_id: &str) -> Result<String, RuntimeError> {
        let id = unique("berth-pull");
        let expire = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(6 * 3600)).to_string();
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), node_id.to_string()),
            (LABEL_BOOT.to_string(), self.boot_id().to_string()),
            ("containerd.io/gc.expire".to_string(), expire),
        ]);
        self.leases()
            .create(self.request(CreateLeaseRequest { id: id.clone(), labels }))
            .await
            .map_err(|s| self.status_error("create lease", "lease", s))?;
        Ok(id)
    }

    async fn delete_lease(&self, id: &str) {
        let _ = self.leases().delete(self.request(DeleteLeaseRequest { id: id.to_owned(), sync: false })).await;
    }

    async fn lease_blob(&self, lease: &str, digest: &str) {
        self.add_to_lease(lease, digest, "content").await;
    }

    async fn lease_snapshot(&self, lease: &str, chain_id: &str) {
        self.add_to_lease(lease, chain_id, &format!("snapshots/{}", self.snapshotter())).await;
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, RuntimeError> {
        match self.content().info(self.request(InfoRequest { digest: digest.to_owned() })).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.status_error("content info", digest, s)),
        }
    }

    async fn write_blob(
        &self,
        lease: &str,
        blob: &BlobRef,
        labels: HashMap<String, String>,
        mut data: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<u64, RuntimeError> {
        let base = WriteContentRequest {
            r#ref: format!("berth-{}", blob.digest),
            total: blob.size,
            expected: blob.digest.clone(),
            ..Default::default()
        };
        // The requests are produced by their own task: containerd answers the
        // call only once it has a first message.
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let mut producer = tokio::spawn(async move {
            let mut offset: i64 = 0;
            let mut pending = Vec::with_capacity(CHUNK);
            while let Some(chunk) = data.next().await {
                // On a failed download the stream ends without a commit: nothing is stored.
                let chunk = chunk.map_err(|e| (e.kind(), e.to_string()))?;
                pending.extend_from_slice(&chunk);
                if pending.len() >= CHUNK {
                    let data = std::mem::take(&mut pending);
                    let len = data.len() as i64;
                    let req = WriteContentRequest { action: WriteAction::Write as i32, offset, data, ..base.clone() };
                    offset += len;
                    if tx.send(req).await.is_err() {
                        return Ok(offset as u64);
                    }
                }
            }
            let len = pending.len() as i64;
            let commit =
                WriteContentRequest { action: WriteAction::Commit as i32, offset, data: pending, labels, ..base };
            let _ = tx.send(commit).await;
            Ok::<u64, (std::io::ErrorKind, String)>((offset + len) as u64)
        });
        let call = self.content().write(self.leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease)).await;
        let answer = async {
            let mut resp = call?.into_inner();
            while resp.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        }
        .await;
        match answer {
            Err(s) if s.code() == Code::AlreadyExists => {
                producer.abort();
                Ok(0)
            }
            Err(s) => {
                // containerd may answer first for a stream cut off on purpose:
                // the producer's own end says whether it was.
                let produced = match tokio::time::timeout(std::time::Duration::from_secs(2), &mut producer).await {
                    Ok(r) => r.ok(),
                    Err(_) => {
                        producer.abort();
                        None
                    }
                };
                match produced {
                    Some(Err((std::io::ErrorKind::InvalidData, message))) => {
                        let abort =
                            containerd_client::services::v1::AbortRequest { r#ref: format!("berth-{}", blob.digest) };
                        let _ = self.content().abort(self.request(abort)).await;
                        Err(RuntimeError::Refused { message })
                    }
                    _ => Err(self.status_error("write content", &blob.digest, s)),
                }
            }
            Ok(()) => match producer.await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err((kind, message))) => {
                    // What was written of it goes now, not with the lease.
                    let abort =
                        containerd_client::services::v1::AbortRequest { r#ref: format!("berth-{}", blob.digest) };
                    let _ = self.content().abort(self.request(abort)).await;
                    match kind {
                        std::io::ErrorKind::InvalidData => Err(RuntimeError::Refused { message }),
                        _ => Err(RuntimeError::Source { message }),
                    }
                }
                Err(e) => Err(RuntimeError::Failed { op: "write content", message: e.to_string() }),
            },
        }
    }

    async fn put_image(&self, name: &str, target: &BlobRef) -> Result<(), RuntimeError> {
        let image = Image { name: name.to_owned(), target: Some(descriptor(target)), ..Default::default() };
        let created = self
            .images()
            .create(self.request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let req = UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None };
                self.images()
                    .update(self.request(req))
                    .await
                    .map_err(|s| self.status_error("update image", name, s))?;
                Ok(())
            }
            Err(s) => Err(self.status_error("create image", name, s)),
        }
    }

    async fn has_snapshot(&self, chain_id: &str) -> Result<bool, RuntimeError> {
        let req = StatSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key: chain_id.to_owned() };
        match self.snapshots().stat(self.request(req)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.status_error("stat snapshot", chain_id, s)),
        }
    }

    async fn unpack_layer(
        &self,
        lease: &str,
        layer: &BlobRef,
        parent: Option<&str>,
        chain_id: &str,
        diff_id: &str,
    ) -> Result<UnpackTimes, RuntimeError> {
        let mut times = UnpackTimes::default();
        let clock = Instant::now();
        let key = unique(&format!("extract-{chain_id}"));
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.clone(),
            parent: parent.unwrap_or_default().to_owned(),
            labels: Default::default(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.leased(prepare, lease))
            .await
            .map_err(|s| self.status_error("prepare snapshot", chain_id, s))?
            .into_inner()
            .mounts;
        times.snapshots += clock.elapsed();
        let result = async {
            let clock = Instant::now();
            let apply =
                ApplyRequest { diff: Some(descriptor(layer)), mounts, payloads: Default::default(), sync_fs: false };
            let applied = DiffClient::new(self.channel())
                .apply(self.leased(apply, lease))
                .await
                .map_err(|s| self.status_error("apply layer", &layer.digest, s))?
                .into_inner()
                .applied
                .map(|d| d.digest)
                .unwrap_or_default();
            times.apply = clock.elapsed();
            if applied != diff_id {
                return Err(RuntimeError::Failed {
                    op: "apply layer",
                    message: format!("layer {} unpacked to {applied}, the image config says {diff_id}", layer.digest),
                });
            }
            let commit = CommitSnapshotRequest {
                snapshotter: self.snapshotter().to_owned(),
                name: chain_id.to_owned(),
                key: key.clone(),
                labels: Default::default(),
            };
            let clock = Instant::now();
            let committed = self.snapshots().commit(self.leased(commit, lease)).await;
            times.snapshots += clock.elapsed();
            match committed {
                Ok(_) => Ok(true),
                Err(s) if s.code() == Code::AlreadyExists => Ok(false),
                Err(s) => Err(self.status_error("commit snapshot", chain_id, s)),
            }
        }
        .await;
        if !matches!(result, Ok(true)) {
            let rm = RemoveSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key };
            let _ = self.snapshots().remove(self.request(rm)).await;
        }
        result.map(|_| times)
    }
}
