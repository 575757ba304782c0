//! Pulling an image from a registry into containerd, client-side (containerd
//! 1.6 has no Transfer service): resolve the reference, pick the node's platform
//! from an index, stream every blob the content store lacks into it (layers in
//! parallel under a node-wide cap), label them for containerd's GC, unpack the
//! layers into snapshots, then write the image record.
//!
//! Concurrent pulls share work: the same image pulled by ten tasks at once is
//! pulled once, and a blob wanted by two pulls at once is downloaded once.

use super::layer_check::LayerCheck;
use super::{chain_id, Platform};
use crate::containerd::{BlobRef, ImageStore, RuntimeError};
use crate::registry::{Credentials, Registry, RegistryError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::Reference;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Configs are small; anything larger is refused before it is read into memory.
const MAX_CONFIG_BYTES: i64 = 8 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("image {image} has no entry for this node's platform {platform}; it has {available}")]
    PlatformMismatch { image: String, platform: String, available: String },
    #[error("image {image} is a Docker schema 1 image, which is not supported: push it again with a current docker or skopeo")]
    Schema1 { image: String },
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("blob {digest}: {reason}")]
    Blob { digest: String, reason: String },
    #[error("containerd: {0}")]
    Store(String),
    #[error("pull of {image} did not finish within {secs} s")]
    Timeout { image: String, secs: u64 },
}

impl From<RegistryError> for PullError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unauthorized { .. } => PullError::Unauthorized(e.to_string()),
            RegistryError::NotFound { .. } => PullError::NotFound(e.to_string()),
            other => PullError::Registry(other.to_string()),
        }
    }
}

impl From<RuntimeError> for PullError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Source { message } => PullError::Registry(message),
            other => PullError::Store(other.to_string()),
        }
    }
}

/// What pulls an image into the runtime (the supervisor is tested with a fake).
#[async_trait]
pub trait Pull: Send + Sync + 'static {
    async fn pull(&self, name: &str, creds: Option<&Credentials>) -> Result<PullReport, PullError>;
    /// Credentials configured for the registry of `name`, if any.
    fn configured_credentials(&self, name: &str) -> Option<Credentials>;
    /// Replaces the registry credentials set through the API.
    fn set_credentials(&self, creds: Vec<(String, Credentials)>);
    /// How far the pull of `name` under way is, if one is.
    fn progress(&self, name: &str) -> Option<tokio::sync::watch::Receiver<Progress>>;
}

/// How far a pull is, per layer: (digest, bytes done, bytes total).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub layers: Vec<(String, u64, u64)>,
}

impl Progress {
    pub fn done(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum()
    }
    pub fn total(&self) -> u64 {
        self.layers.iter().map(|l| l.2).sum()
    }
    fn add(&mut self, digest: &str, n: u64) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.0 == digest) {
            l.1 = (l.1 + n).min(l.2);
        }
    }
    fn finish(&mut self, digest: &str) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.0 == digest) {
            l.1 = l.2;
        }
    }
}

type ProgressTx = Arc<tokio::sync::watch::Sender<Progress>>;

/// What a pull's downloads report as they go.
struct Tally {
    progress: ProgressTx,
    /// Nanoseconds spent decompressing to count ([`PullTimes::check`]).
    check_ns: Arc<AtomicU64>,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Bytes downloaded by this pull (0 when everything was already there).
    pub bytes_fetched: u64,
    pub blobs_fetched: usize,
    /// The layers at the end of the pull.
    pub progress: Progress,
    pub times: PullTimes,
}

/// Where a pull's time went (logged with "image pulled"; `scripts/bench`
/// reports the split). Layers unpack while later ones download, so the
/// parts overlap and do not add up to the pull's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullTimes {
    /// From the first layer request until every layer is in the content
    /// store (containerd hashes each blob as it writes it).
    pub fetch: Duration,
    /// Decompressing layers on the way in, to count their size
    /// (`max_layer_bytes`), summed over the layers.
    pub check: Duration,
    /// In containerd's `Diff.Apply` (it decompresses, hashes and writes the
    /// files), summed over the layers.
    pub apply: Duration,
    /// Preparing and committing snapshots, summed over the layers.
    pub snapshots: Duration,
    /// From the last layer's arrival until the last layer is unpacked: what
    /// unpacking adds after the fetch.
    pub unpack_tail: Duration,
    /// Manifests, config and image record, written after the layers.
    pub records: Duration,
}

/// Limits of pulls.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Layers downloading at once, node-wide.
    pub max_concurrent_downloads: usize,
    /// A pull is abandoned after this long.
    pub timeout: Duration,
    /// A download that sends nothing for this long is abandoned (and retried).
    pub no_progress_timeout: Duration,
    /// Attempts for a transient registry error (connection reset, 5xx, 429).
    pub attempts: u32,
    /// Largest uncompressed size of one layer (a decompression bomb stops here).
    pub max_layer_bytes: u64,
    /// Where pull bytes and durations are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 3,
            timeout: Duration::from_secs(3600),
            no_progress_timeout: Duration::from_secs(60),
            attempts: 4,
            max_layer_bytes: 32 << 30,
            metrics: crate::metrics::Metrics::new(),
        }
    }
}

type Shared<T> = Arc<OnceCell<Result<T, PullError>>>;

pub struct Puller {
    registry: Registry,
    store: Arc<dyn ImageStore>,
    node_id: String,
    snapshotter: String,
    platform: Platform,
    settings: PullSettings,
    downloads: Semaphore,
    blobs: Mutex<HashMap<String, Shared<u64>>>,
    images: Mutex<HashMap<String, Shared<PullReport>>>,
    progress: Mutex<HashMap<String, ProgressTx>>,
}

/// Runs `f` once for `key` among concurrent callers; the entry is dropped when
/// done, so a later call (after a failure, or for a new tag) runs again.
async fn once<T: Clone, F>(map: &Mutex<HashMap<String, Shared<T>>>, key: &str, f: F) -> Result<T, PullError>
where
    F: std::future::Future<Output = Result<T, PullError>>,
{
    let cell = map.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone();
    let result = cell.get_or_init(|| f).await.clone();
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
        map.remove(key);
    }
    result
}

fn bytes_stream(b: Bytes) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    stream::once(async move { Ok(b) }).boxed()
}

impl Puller {
    pub fn new(
        registry: Registry,
        store: Arc<dyn ImageStore>,
        node_id: String,
        snapshotter: String,
        platform: Platform,
        settings: PullSettings,
    ) -> Self {
        let downloads = Semaphore::new(settings.max_concurrent_downloads.max(1));
        Self {
            registry,
            store,
            node_id,
            snapshotter,
            platform,
            settings,
            downloads,
            blobs: Mutex::default(),
            images: Mutex::default(),
            progress: Mutex::default(),
        }
    }

    /// Retries transient registry failures with backoff.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, PullError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RetryableError>>,
    {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(RetryableError { error, transient: true }) if attempt < self.settings.attempts => {
                    tracing::warn!(what, attempt, error = %error, "transient pull error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    async fn manifest(&self, r: &Reference, creds: Option<&Credentials>) -> Result<(Bytes, String, String), PullError> {
        self.retry("manifest", || async {
            self.registry.manifest(r, creds).await.map_err(|e| {
                let transient = e.is_transient();
                RetryableError { error: e.into(), transient }
            })
        })
        .await
    }

    /// Downloads a blob into the content store unless it is there already;
    /// concurrent requests for the same blob share one download.
    async fn blob(
        &self,
        lease: &str,
        r: &Reference,
        blob: &BlobRef,
        labels: HashMap<String, String>,
        creds: Option<&Credentials>,
        tally: &Tally,
    ) -> Result<u64, PullError> {
        let progress = &tally.progress;
        if self.store.has_blob(&blob.digest).await? {
            self.store.lease_blob(lease, &blob.digest).await;
            progress.send_modify(|p| p.finish(&blob.digest));
            return Ok(0);
        }
        let result =
            once(&self.blobs, &blob.digest, async {
                let _permit = self.downloads.acquire().await.map_err(|e| PullError::Store(e.to_string()))?;
                self.retry(&blob.digest, || async {
                    let data = self.registry.blob(r, &blob.digest, creds).await.map_err(|e| {
                        let transient = e.is_transient();
                        RetryableError { error: e.into(), transient }
                    })?;
                    let no_progress = self.settings.no_progress_timeout;
                    let (tx, digest) = (progress.clone(), blob.digest.clone());
                    let mut check = LayerCheck::new(blob, self.settings.max_layer_bytes, tally.check_ns.clone())
                        .map_err(|reason| RetryableError {
                            error: PullError::Blob { digest: blob.digest.clone(), reason },
                            transient: false,
                        })?;
                    let data = tokio_stream::StreamExt::timeout(data, no_progress)
                        .map(move |item| match item {
                            Ok(Ok(chunk)) => {
                                check.feed(&chunk)?;
                                tx.send_modify(|p| p.add(&digest, chunk.len() as u64));
                                Ok(chunk)
                            }
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no data for {} s", no_progress.as_secs()),
                            )),
                        })
                        .boxed();
                    self.store.write_blob(lease, blob, labels.clone(), data).await.map_err(|e| {
                        // A broken download is worth another try; a digest mismatch is not.
                        let transient = matches!(&e, RuntimeError::Source { message } if !message.contains("digest"));
                        let error = match e {
                            RuntimeError::Source { message } | RuntimeError::Refused { message } => {
                                PullError::Blob { digest: blob.digest.clone(), reason: message }
                            }
                            RuntimeError::Failed { message, .. } => {
                                PullError::Blob { digest: blob.digest.clone(), reason: message }
                            }
                            other => PullError::from(other),
                        };
                        RetryableError { error, transient }
                    })
                })
                .await
            })
            .await;
        // Also when another pull did the download (under its own lease) or
        // the blob turned out to be there already.
        if result.is_ok() {
            self.store.lease_blob(lease, &blob.digest).await;
            progress.send_modify(|p| p.finish(&blob.digest));
        }
        result
    }

    /// Writes a small blob held in memory; concurrent pulls of images sharing
    /// it (a config, a manifest) write it once.
    async fn small_write(
        &self,
        lease: &str,
        blob: &BlobRef,
        labels: HashMap<String, String>,
        data: Bytes,
    ) -> Result<u64, PullError> {
        let n = once(&self.blobs, &blob.digest, async {
            Ok(self.store.write_blob(lease, blob, labels, bytes_stream(data)).await?)
        })
        .await?;
        self.store.lease_blob(lease, &blob.digest).await;
        Ok(n)
    }

    async fn pull_inner(&self, name: &str, creds: Option<&Credentials>) -> Result<PullReport, PullError> {
        let r: Reference =
            name.parse().map_err(|e| PullError::Invalid { image: name.into(), reason: format!("{e}") })?;
        let (top_bytes, top_type, top_digest) = self.manifest(&r, creds).await?;
        if top_type == SCHEMA1 {
            return Err(PullError::Schema1 { image: name.into() });
        }
        let top = BlobRef { media_type: top_type.clone(), digest: top_digest.clone(), size: top_bytes.len() as i64 };
        let lease = self.store.create_lease(&self.node_id).await?;
        let progress: ProgressTx = Arc::new(tokio::sync::watch::channel(Progress::default()).0);
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), progress.clone());
        // Released however the pull ends: done, failed, timed out or cancelled.
        let _cleanup = Cleanup { puller: self, name: name.to_owned(), lease: lease.clone() };
        self.fetch_and_unpack(name, &r, &lease, (top, top_bytes), creds, &progress).await
    }

    async fn fetch_and_unpack(
        &self,
        name: &str,
        r: &Reference,
        lease: &str,
        (top, top_bytes): (BlobRef, Bytes),
        creds: Option<&Credentials>,
        progress: &ProgressTx,
    ) -> Result<PullReport, PullError> {
        let invalid = |reason: String| PullError::Invalid { image: name.into(), reason };
        let mut report = PullReport::default();
        // An index: the node's entry, by digest.
        let (manifest_ref, manifest_bytes, index) = if INDEX_TYPES.contains(&top.media_type.as_str()) {
            let index = ImageIndex::from_reader(top_bytes.as_ref()).map_err(|e| invalid(format!("bad index: {e}")))?;
            let entry = index.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    self.platform.matches(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref())
                })
            });
            let Some(entry) = entry else {
                let available: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref())
                    .map(|p| match p.variant() {
                        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                        None => format!("{}/{}", p.os(), p.architecture()),
                    })
                    .collect();
                return Err(PullError::PlatformMismatch {
                    image: name.into(),
                    platform: self.platform.describe(),
                    available: if available.is_empty() { "no platforms".into() } else { available.join(", ") },
                });
            };
            let digest = entry.digest().to_string();
            let mr = r.clone_with_digest(digest.clone());
            let (bytes, media_type, got) = self.manifest(&mr, creds).await?;
            if got != digest {
                return Err(PullError::Blob { digest, reason: format!("registry served {got}") });
            }
            let m = BlobRef { media_type, digest, size: bytes.len() as i64 };
            (m, bytes, Some((top.clone(), top_bytes)))
        } else {
            (top.clone(), top_bytes, None)
        };
        if manifest_ref.media_type == SCHEMA1 {
            return Err(PullError::Schema1 { image: name.into() });
        }
        if !MANIFEST_TYPES.contains(&manifest_ref.media_type.as_str()) {
            return Err(invalid(format!("unsupported manifest media type {:?}", manifest_ref.media_type)));
        }
        let manifest =
            ImageManifest::from_reader(manifest_bytes.as_ref()).map_err(|e| invalid(format!("bad manifest: {e}")))?;

        // The config: small, read whole, written with the snapshot gc label.
        let cfg = manifest.config();
        let cfg_ref = BlobRef {
            media_type: cfg.media_type().to_string(),
            digest: cfg.digest().to_string(),
            size: cfg.size() as i64,
        };
        if cfg_ref.size > MAX_CONFIG_BYTES {
            return Err(invalid(format!("config of {} bytes", cfg_ref.size)));
        }
        let cfg_bytes = self.small_blob(r, &cfg_ref, creds).await?;
        let config =
            ImageConfiguration::from_reader(cfg_bytes.as_ref()).map_err(|e| invalid(format!("bad config: {e}")))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        let layers: Vec<BlobRef> = manifest
            .layers()
            .iter()
            .map(|l| BlobRef {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size() as i64,
            })
            .collect();
        if layers.is_empty() || layers.len() != diff_ids.len() {
            return Err(invalid(format!("{} layers but {} diff ids in the config", layers.len(), diff_ids.len())));
        }
        let chains: Vec<String> = (1..=diff_ids.len()).filter_map(|n| chain_id(&diff_ids[..n])).collect();

        // Layers download in parallel (bounded by the node-wide download cap)
        // while each is unpacked as soon as it and every layer below it are in.
        progress.send_replace(Progress {
            layers: layers.iter().map(|l| (l.digest.clone(), 0, l.size.max(0) as u64)).collect(),
        });
        let start = Instant::now();
        let tally = Tally { progress: progress.clone(), check_ns: Arc::default() };
        let (arrived_tx, arrived_rx) = tokio::sync::mpsc::unbounded_channel();
        let downloads = async {
            let fetched =
                futures_util::future::join_all(layers.iter().zip(&diff_ids).enumerate().map(|(i, (l, d))| {
                    let labels = HashMap::from([("containerd.io/uncompressed".to_string(), d.clone())]);
                    let (tally, arrived) = (&tally, arrived_tx.clone());
                    async move {
                        let r = self.blob(lease, r, l, labels, creds, tally).await;
                        let _ = arrived.send((i, r.is_ok()));
                        r
                    }
                }))
                .await;
            drop(arrived_tx);
            (fetched, start.elapsed())
        };
        let ((fetched, fetch), unpacked) =
            futures_util::future::join(downloads, self.unpack(lease, &layers, &diff_ids, &chains, arrived_rx)).await;
        for f in fetched {
            let n = f?;
            report.bytes_fetched += n;
            report.blobs_fetched += usize::from(n > 0);
        }
        let unpack = unpacked?;
        let t = &mut report.times;
        (t.fetch, t.check, t.apply, t.snapshots) =
            (fetch, Duration::from_nanos(tally.check_ns.load(Ordering::Relaxed)), unpack.apply, unpack.snapshots);
        t.unpack_tail = start.elapsed().saturating_sub(fetch);

        // Children before parents, so every gc reference points at stored content.
        let records = Instant::now();
        let snapshot_label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
        let Some(top_chain) = chains.last().cloned() else { return Err(invalid("no layers".into())) };
        let cfg_labels = HashMap::from([(snapshot_label, top_chain)]);
        report.bytes_fetched += self.small_write(lease, &cfg_ref, cfg_labels, cfg_bytes).await?;
        let mut m_labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), cfg_ref.digest.clone())]);
        for (i, l) in layers.iter().enumerate() {
            m_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        self.small_write(lease, &manifest_ref, m_labels, manifest_bytes).await?;
        if let Some((index_ref, index_bytes)) = index {
            let labels = HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), manifest_ref.digest.clone())]);
            self.small_write(lease, &index_ref, labels, index_bytes).await?;
        }
        self.store.put_image(name, &top).await?;
        report.times.records = records.elapsed();
        report.progress = progress.borrow().clone();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let t = report.times;
        tracing::info!(
            image = %name,
            bytes = report.bytes_fetched,
            blobs = report.blobs_fetched,
            fetch_ms = ms(t.fetch),
            check_ms = ms(t.check),
            apply_ms = ms(t.apply),
            snapshots_ms = ms(t.snapshots),
            unpack_tail_ms = ms(t.unpack_tail),
            records_ms = ms(t.records),
            "image pulled"
        );
        Ok(report)
    }

    /// Unpacks the layers bottom first, each once `arrived` says it and every
    /// layer below it are in the content store; what is already unpacked is
    /// skipped. Stops (with nothing more to do) when a download fails: that
    /// download's error is the pull's.
    async fn unpack(
        &self,
        lease: &str,
        layers: &[BlobRef],
        diff_ids: &[String],
        chains: &[String],
        mut arrived: tokio::sync::mpsc::UnboundedReceiver<(usize, bool)>,
    ) -> Result<crate::containerd::UnpackTimes, PullError> {
        let mut times = crate::containerd::UnpackTimes::default();
        let mut here = vec![false; layers.len()];
        let mut parent: Option<&str> = None;
        for (i, ((layer, diff), chain)) in layers.iter().zip(diff_ids).zip(chains).enumerate() {
            while !here[i] {
                match arrived.recv().await {
                    Some((j, true)) => here[j] = true,
                    Some((_, false)) | None => return Ok(times),
                }
            }
            if self.store.has_snapshot(chain).await? {
                self.store.lease_snapshot(lease, chain).await;
            } else {
                let t = self.store.unpack_layer(lease, layer, parent, chain, diff).await?;
                times.apply += t.apply;
                times.snapshots += t.snapshots;
            }
            parent = Some(chain);
        }
        Ok(times)
    }

    async fn small_blob(&self, r: &Reference, blob: &BlobRef, creds: Option<&Credentials>) -> Result<Bytes, PullError> {
        self.retry(&blob.digest, || async {
            let map = |e: RegistryError| {
                let transient = e.is_transient();
                RetryableError { error: e.into(), transient }
            };
            let mut data = self.registry.blob(r, &blob.digest, creds).await.map_err(map)?;
            let mut out = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
            let refuse = |reason: String| RetryableError {
                error: PullError::Blob { digest: blob.digest.clone(), reason },
                transient: false,
            };
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(|e| refuse(e.to_string()))?;
                // Cut off at the size the descriptor declares.
                if (out.len() + chunk.len()) as i64 > blob.size {
                    return Err(refuse(format!("the registry sent more than the {} bytes declared", blob.size)));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(out))
        })
        .await
    }
}

/// Deletes a pull's lease and progress entry when the pull ends, however it ends.
struct Cleanup<'a> {
    puller: &'a Puller,
    name: String,
    lease: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.puller.progress.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
        let (store, lease) = (self.puller.store.clone(), std::mem::take(&mut self.lease));
        tokio::spawn(async move { store.delete_lease(&lease).await });
    }
}

/// An error with whether trying again may help.
struct RetryableError {
    error: PullError,
    transient: bool,
}

#[async_trait]
impl Pull for Puller {
    async fn pull(&self, name: &str, creds: Option<&Credentials>) -> Result<PullReport, PullError> {
        // Concurrent pulls of one image (with the same user) share one pull.
        let key = format!("{name}\u{0}{}", crate::registry::client_key(creds));
        let secs = self.settings.timeout.as_secs();
        once(&self.images, &key, async {
            let start = std::time::Instant::now();
            let r = match tokio::time::timeout(self.settings.timeout, self.pull_inner(name, creds)).await {
                Ok(r) => r,
                Err(_) => Err(PullError::Timeout { image: name.into(), secs }),
            };
            let m = &self.settings.metrics;
            m.pull_seconds.observe(start.elapsed().as_secs_f64());
            if let Ok(report) = &r {
                m.pull_bytes.inc_by(report.bytes_fetched);
            }
            r
        })
        .await
    }

    fn configured_credentials(&self, name: &str) -> Option<Credentials> {
        let r: Reference = name.parse().ok()?;
        self.registry.configured(r.registry()).or_else(|| self.registry.configured(r.resolve_registry()))
    }

    fn set_credentials(&self, creds: Vec<(String, Credentials)>) {
        self.registry.set_api_credentials(creds);
    }

    fn progress(&self, name: &str) -> Option<tokio::sync::watch::Receiver<Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|tx| tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_shares_a_result_among_concurrent_callers() {
        let map: Mutex<HashMap<String, Shared<u32>>> = Mutex::default();
        let runs = std::sync::atomic::AtomicU32::new(0);
        let work = || async {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(7)
        };
        let (a, b, c) = tokio::join!(once(&map, "k", work()), once(&map, "k", work()), once(&map, "k", work()));
        assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (7, 7, 7));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(map.lock().unwrap().is_empty(), "done entries are dropped");
        // A later call runs again.
        once(&map, "k", work()).await.unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
