//! Reading an image that is already in containerd: image record → (index →)
//! manifest → config, all from the Content service (OCI image spec:
//! image-index.md, manifest.md, config.md; Docker schema 2 is read the same way).

use super::client::{Containerd, Resolved};
use super::{ResolvedImage, RuntimeError};
use crate::model::{chain_id, ImageConfig, Platform};
use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Manifests and configs are small; refuse anything absurd before reading it.
const MAX_METADATA_BYTES: i64 = 16 << 20;

/// Entries kept in the resolved-image cache (it is emptied when full).
const CACHE_ENTRIES: usize = 256;

fn bad(image: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BadImage { image: image.to_owned(), reason: reason.into() }
}

impl Containerd {
    async fn read_blob(&self, digest: &str, size: i64) -> Result<Vec<u8>, RuntimeError> {
        if size > MAX_METADATA_BYTES {
            return Err(RuntimeError::Failed { op: "read content", message: format!("{digest} is {size} bytes") });
        }
        let req = self.request(ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 });
        let mut stream = self
            .content()
            .read(req)
            .await
            .map_err(|s| self.status_error("read content", &format!("content {digest}"), s))?
            .into_inner();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) =
            stream.message().await.map_err(|s| self.status_error("read content", &format!("content {digest}"), s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    pub(super) async fn resolve(&self, name: &str, platform: &Platform) -> Result<ResolvedImage, RuntimeError> {
        let image = self
            .images()
            .get(self.request(GetImageRequest { name: name.to_owned() }))
            .await
            .map_err(|s| self.status_error("get image", &format!("image {name}"), s))?
            .into_inner()
            .image
            .ok_or_else(|| RuntimeError::NotFound { what: format!("image {name}") })?;
        let desc = image.target.ok_or_else(|| bad(name, "image record has no target"))?;
        let cached = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&desc.digest).cloned();
        let resolved = match cached {
            Some(r) => r,
            None => {
                let target = desc.digest.clone();
                let r = self.read_image(name, desc, platform).await?;
                let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(target, r.clone());
                r
            }
        };
        let chain = resolved.chain_id;

        // The image must be unpacked for our snapshotter.
        let stat = StatSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key: chain.clone() };
        self.snapshots().stat(self.request(stat)).await.map_err(|s| {
            self.status_error(
                "stat snapshot",
                &format!(
                    "image {name} is in the content store but not unpacked for snapshotter {}; unpacked layers",
                    self.snapshotter()
                ),
                s,
            )
        })?;
        Ok(ResolvedImage { name: name.to_owned(), config: resolved.config, chain_id: chain })
    }

    /// (Index →) manifest → config, from the content store.
    async fn read_image(
        &self,
        name: &str,
        mut desc: containerd_client::types::Descriptor,
        platform: &Platform,
    ) -> Result<Resolved, RuntimeError> {
        // At most one level of index, as registries serve them.
        if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            let bytes = self.read_blob(&desc.digest, desc.size).await?;
            let index = ImageIndex::from_reader(bytes.as_slice()).map_err(|e| bad(name, format!("bad index: {e}")))?;
            let mut available = Vec::new();
            let entry = index.manifests().iter().find(|m| {
                let Some(p) = m.platform() else { return false };
                available.push(format!("{}/{}", p.os(), p.architecture()));
                platform.matches(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref())
            });
            let entry = entry.ok_or_else(|| RuntimeError::PlatformMismatch {
                image: name.to_owned(),
                reason: format!("no entry for {} (the image has {})", platform.describe(), available.join(", ")),
            })?;
            desc = containerd_client::types::Descriptor {
                media_type: entry.media_type().to_string(),
                digest: entry.digest().to_string(),
                size: entry.size() as i64,
                ..Default::default()
            };
        }
        if !MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
            return Err(bad(name, format!("unsupported manifest media type {:?}", desc.media_type)));
        }
        let bytes = self.read_blob(&desc.digest, desc.size).await?;
        let manifest =
            ImageManifest::from_reader(bytes.as_slice()).map_err(|e| bad(name, format!("bad manifest: {e}")))?;
        let cfg_desc = manifest.config();
        let bytes = self.read_blob(cfg_desc.digest().as_ref(), cfg_desc.size() as i64).await?;
        let config =
            ImageConfiguration::from_reader(bytes.as_slice()).map_err(|e| bad(name, format!("bad config: {e}")))?;
        let chain_id = chain_id(config.rootfs().diff_ids()).ok_or_else(|| bad(name, "image has no layers"))?;
        Ok(Resolved { config: ImageConfig::from(&config), chain_id })
    }
}
