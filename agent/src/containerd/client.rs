//! [`Runtime`] over containerd's gRPC API. One lazily connected channel, shared
//! by every call; tonic reconnects it when containerd restarts.

use super::{
    CreateRequest, ExitEvent, ExitStatus, ExitStream, LabelledContainer, ResolvedImage, Runtime, RuntimeError,
    TaskStatus, LABEL_BOOT, LABEL_NODE,
};
use crate::model::{ImageConfig, Platform};
use async_trait::async_trait;
use containerd_client::events::TaskExit;
use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcessStatus;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Type URL containerd expects for an OCI runtime spec in a container record.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// An image's config and chain ID, as read from its blobs (`image`), kept in
/// the client's resolved-image cache.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub(super) config: ImageConfig,
    pub(super) chain_id: String,
}

/// A containerd client bound to one namespace, snapshotter and runtime.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    snapshotter: String,
    runtime: String,
    /// Labels this process's leases, so start-up cleanup never removes the
    /// lease of work this very process has under way.
    boot_id: String,
    /// What an image's manifest and config say, by the digest its record
    /// points at (content-addressed, so never stale): a task on a known image
    /// costs one image lookup and one snapshot stat, not a read of each blob.
    pub(super) resolved: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Resolved>>>,
}

impl Containerd {
    pub(super) fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// A client for the containerd at `socket`. Connects on first use, so the agent
    /// starts even while containerd is down.
    pub fn new(socket: &Path, namespace: &str, snapshotter: &str, runtime: &str) -> Self {
        let path: PathBuf = socket.to_owned();
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let boot_id = format!("{:x}-{}", nanos, std::process::id());
        Self {
            channel,
            namespace: namespace.into(),
            snapshotter: snapshotter.into(),
            runtime: runtime.into(),
            boot_id,
            resolved: Default::default(),
        }
    }

    pub(super) fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// A request in our namespace (containerd's `containerd-namespace` header).
    pub(super) fn request<T>(&self, msg: T) -> Request<T> {
        self.with_header(msg, "containerd-namespace", &self.namespace)
    }

    fn with_header<T>(&self, msg: T, key: &'static str, value: &str) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = value.parse() {
            req.metadata_mut().insert(key, v);
        }
        req
    }

    /// A request under `lease`, so containerd's GC leaves what it creates alone.
    pub(super) fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.request(msg);
        if let Ok(v) = lease.parse() {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    pub(super) fn channel(&self) -> Channel {
        self.channel.clone()
    }
    pub(super) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub(super) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(super) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(super) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub(super) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// Maps a gRPC status from containerd into a [`RuntimeError`].
    pub(super) fn status_error(&self, op: &'static str, what: &str, s: Status) -> RuntimeError {
        runtime_error(op, what, s)
    }

    async fn create_inner(&self, req: &CreateRequest, lease: &str) -> Result<(), RuntimeError> {
        let id = &req.id;
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: id.clone(),
            parent: req.image.chain_id.clone(),
            labels: req.labels.clone(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.leased(prepare, lease))
            .await
            .map_err(|s| self.status_error("prepare snapshot", &format!("snapshot parent {}", req.image.chain_id), s))?
            .into_inner()
            .mounts;
        let user_namespace = req.spec.linux().as_ref().is_some_and(|l| l.uid_mappings().is_some());
        if user_namespace {
            let (m, spec) = (mounts.clone(), req.spec.clone());
            tokio::task::spawn_blocking(move || super::files::create_mount_points(&m, &spec))
                .await
                .map_err(|e| RuntimeError::Failed { op: "create mount points", message: e.to_string() })?
                .map_err(|e| RuntimeError::Failed { op: "create mount points", message: e.to_string() })?;
        }

        let spec = serde_json::to_vec(&req.spec)
            .map_err(|e| RuntimeError::Failed { op: "encode spec", message: e.to_string() })?;
        let container = Container {
            id: id.clone(),
            labels: req.labels.clone(),
            image: req.image.name.clone(),
            runtime: Some(ContainerRuntime { name: self.runtime.clone(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.leased(CreateContainerRequest { container: Some(container) }, lease))
            .await
            .map_err(|s| self.status_error("create container", &format!("container {id}"), s))?;

        let task = CreateTaskRequest {
            container_id: id.clone(),
            rootfs: mounts,
            stdout: req.stdout.display().to_string(),
            stderr: req.stderr.display().to_string(),
            ..Default::default()
        };
        // In a shim group (`io.containerd.runc.v2.group`), containerd 1.6's
        // runc shim hands a new container the group's shim when it answers,
        // even if that shim is exiting because its last container just went.
        // containerd then either cannot dial it (`ShimGone`) or loses it during
        // the create (`ShimLost`); either way it has removed the failed task.
        // The next try starts a new shim. A few tries, 20 ms apart and more.
        let grouped = req.labels.contains_key(super::SHIM_GROUP_LABEL);
        let mut tries = 0;
        loop {
            let error = match self.tasks().create(self.request(task.clone())).await {
                Ok(_) => return Ok(()),
                Err(s) => self.status_error("create task", &format!("container {id}"), s),
            };
            if !(grouped && tries < SHIM_RACE_TRIES && error.is_shim_failure()) {
                return Err(error);
            }
            tries += 1;
            tracing::warn!(container_id = %id, %error, "the group's shim went as this container joined it; trying again");
            tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
        }
    }
}

/// Grouped creates tried again after their shim went (see `create_inner`).
const SHIM_RACE_TRIES: u32 = 3;

/// A task create whose shim was gone by the time containerd dialled it.
fn shim_gone(m: &str) -> bool {
    m.contains("failed to start shim") && (m.contains("no such file or directory") || m.contains("connection refused"))
}

fn to_system_time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    if ts.seconds <= 0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos.max(0) as u32))
}

/// containerd's answer to a call into a shim whose connection closed: the
/// shim died. (containerd itself being unreachable is a transport failure.)
const SHIM_CLOSED: &str = "ttrpc: closed";

fn runtime_error(op: &'static str, what: &str, s: Status) -> RuntimeError {
    match s.code() {
        Code::NotFound => RuntimeError::NotFound { what: what.to_owned() },
        // Before the transport check: its message names a refused connection,
        // to the shim, not to containerd.
        _ if shim_gone(s.message()) => RuntimeError::ShimGone { op, message: s.message().to_owned() },
        _ if is_transport_failure(&s) => RuntimeError::Unavailable { message: s.message().to_owned() },
        _ if s.message().contains(SHIM_CLOSED) => RuntimeError::ShimLost { op, message: s.message().to_owned() },
        _ => RuntimeError::Failed { op, message: s.message().to_owned() },
    }
}

/// Whether a status means the connection to containerd failed (it is down or
/// restarting) rather than containerd answering with an error. tonic reports a
/// broken connection as Unavailable, Cancelled, or Unknown/Internal carrying the
/// transport's message.
fn is_transport_failure(s: &Status) -> bool {
    const TRANSPORT: [&str; 6] = [
        "transport error",
        "h2 protocol error",
        "connection",
        "broken pipe",
        "error trying to connect",
        "operation was canceled",
    ];
    match s.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown | Code::Internal => {
            let m = s.message().to_ascii_lowercase();
            m.is_empty() || TRANSPORT.iter().any(|t| m.contains(t))
        }
        _ => false,
    }
}

/// Ignores NotFound: used where a missing object is already the wanted outcome.
fn ignore_missing(r: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Decodes a `/tasks/exit` envelope; None for other events and exec processes.
fn exit_event(env: containerd_client::types::Envelope) -> Option<ExitEvent> {
    let mut any = env.event?;
    // containerd sends type URLs without the leading '/' that prost's Any expects.
    if !any.type_url.starts_with('/') {
        any.type_url.insert(0, '/');
    }
    let exit: TaskExit = any.to_msg().ok()?;
    // Exec'd processes have their own id; only the init process ends the task.
    (exit.id == exit.container_id).then(|| ExitEvent {
        container_id: exit.container_id,
        status: ExitStatus { code: exit.exit_status, exited_at: to_system_time(exit.exited_at) },
    })
}

#[async_trait]
impl Runtime for Containerd {
    async fn version(&self) -> Result<String, RuntimeError> {
        let v = VersionClient::new(self.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(|s| self.status_error("version", "version service", s))?
            .into_inner();
        Ok(v.version)
    }

    async fn resolve_image(&self, name: &str, platform: &Platform) -> Result<ResolvedImage, RuntimeError> {
        self.resolve(name, platform).await
    }

    async fn create(&self, req: CreateRequest) -> Result<(), RuntimeError> {
        // A lease keeps the new snapshot from containerd's GC until the container
        // record references it; it expires by itself if the agent dies meanwhile.
        let lease = format!("{}-create", req.id);
        let expire = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600)).to_string();
        let lease_req = CreateLeaseRequest {
            id: lease.clone(),
            labels: req
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() == LABEL_NODE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain([
                    ("containerd.io/gc.expire".to_string(), expire),
                    (LABEL_BOOT.to_string(), self.boot_id.clone()),
                ])
                .collect(),
        };
        match self.leases().create(self.request(lease_req)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(self.status_error("create lease", "lease", s)),
        }
        let result = self.create_inner(&req, &lease).await;
        if result.is_err() {
            let _ = self.remove(&req.id).await;
        }
        let _ = self.leases().delete(self.request(DeleteLeaseRequest { id: lease, sync: false })).await;
        result
    }

    async fn image_files(
        &self,
        node_id: &str,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        self.read_image_files(node_id, chain_id, paths).await
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let req = StartRequest { container_id: id.to_owned(), exec_id: String::new() };
        Ok(self
            .tasks()
            .start(self.request(req))
            .await
            .map_err(|s| self.status_error("start task", &format!("task {id}"), s))?
            .into_inner()
            .pid)
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let req = WaitRequest { container_id: id.to_owned(), exec_id: String::new() };
        let resp = self
            .tasks()
            .wait(self.request(req))
            .await
            .map_err(|s| self.status_error("wait task", &format!("task {id}"), s))?
            .into_inner();
        Ok(ExitStatus { code: resp.exit_status, exited_at: to_system_time(resp.exited_at) })
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        let req = KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all: true };
        self.tasks()
            .kill(self.request(req))
            .await
            .map_err(|s| self.status_error("kill task", &format!("task {id}"), s))?;
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<TaskStatus, RuntimeError> {
        let req = GetRequest { container_id: id.to_owned(), exec_id: String::new() };
        let p = self
            .tasks()
            .get(self.request(req))
            .await
            .map_err(|s| self.status_error("get task", &format!("task {id}"), s))?
            .into_inner()
            .process
            .ok_or_else(|| RuntimeError::NotFound { what: format!("task {id}") })?;
        Ok(match ProcessStatus::try_from(p.status) {
            Ok(ProcessStatus::Created) => TaskStatus::Created,
            Ok(ProcessStatus::Running) => TaskStatus::Running,
            Ok(ProcessStatus::Stopped) => {
                TaskStatus::Stopped(ExitStatus { code: p.exit_status, exited_at: to_system_time(p.exited_at) })
            }
            _ => TaskStatus::Other,
        })
    }

    async fn exit_events(&self) -> Result<ExitStream, RuntimeError> {
        let filters = vec![format!("topic==\"/tasks/exit\",namespace=={}", self.namespace)];
        let stream = EventsClient::new(self.channel.clone())
            .subscribe(Request::new(SubscribeRequest { filters }))
            .await
            .map_err(|s| self.status_error("subscribe to events", "events service", s))?
            .into_inner();
        let this = self.clone();
        let exits = stream.filter_map(move |env| match env {
            Ok(env) => exit_event(env).map(Ok),
            Err(s) => Some(Err(this.status_error("events", "events service", s))),
        });
        Ok(Box::pin(exits))
    }

    async fn list_images(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        let req = containerd_client::services::v1::ListImagesRequest { filters: vec![] };
        let images = self
            .images()
            .list(self.request(req))
            .await
            .map_err(|s| self.status_error("list images", "images", s))?
            .into_inner()
            .images;
        Ok(images.into_iter().map(|i| (i.name, i.target.map(|t| t.digest).unwrap_or_default())).collect())
    }

    async fn delete_image(&self, name: &str) -> Result<(), RuntimeError> {
        let req =
            containerd_client::services::v1::DeleteImageRequest { name: name.to_owned(), sync: true, target: None };
        self.images()
            .delete(self.request(req))
            .await
            .map_err(|s| self.status_error("delete image", &format!("image {name}"), s))?;
        Ok(())
    }

    async fn list_labelled(&self, node_id: &str) -> Result<Vec<LabelledContainer>, RuntimeError> {
        self.labelled(node_id).await
    }

    async fn remove_leftovers(&self, node_id: &str, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        self.leftovers(node_id, keep).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let task = self.tasks().delete(self.request(DeleteTaskRequest { container_id: id.to_owned() })).await;
        ignore_missing(task.map(drop).map_err(|s| self.status_error("delete task", &format!("task {id}"), s)))?;
        let container = self.containers().delete(self.request(DeleteContainerRequest { id: id.to_owned() })).await;
        ignore_missing(
            container.map(drop).map_err(|s| self.status_error("delete container", &format!("container {id}"), s)),
        )?;
        let snap = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: id.to_owned() };
        let snap = self.snapshots().remove(self.request(snap)).await;
        ignore_missing(snap.map(drop).map_err(|s| self.status_error("remove snapshot", &format!("snapshot {id}"), s)))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_transport_failure, runtime_error, RuntimeError};
    use tonic::{Code, Status};

    #[test]
    fn a_shim_gone_before_containerd_dialled_it_is_its_own_error() {
        let gone = |m: &str| runtime_error("create task", "container c", Status::unknown(m));
        // What containerd 1.6 answered in the bench (shim_group = "node").
        let e = gone(
            "failed to start shim: start failed: dial unix /run/containerd/s/18c2: connect: no such file or directory",
        );
        assert!(matches!(e, RuntimeError::ShimGone { op: "create task", .. }), "{e:?}");
        assert!(e.is_shim_failure());
        // A refused dial to the shim is not containerd being unreachable.
        let e = gone("failed to start shim: start failed: dial unix /x: connect: connection refused");
        assert!(matches!(e, RuntimeError::ShimGone { .. }), "{e:?}");
        // The other side of it: the exiting shim removed its socket between the new one's checks.
        let e = gone(
            "failed to start shim: start failed: io.containerd.runc.v2: remove pre-existing socket: remove \
             /run/containerd/s/5a30: no such file or directory: exit status 1",
        );
        assert!(matches!(e, RuntimeError::ShimGone { .. }), "{e:?}");
        // The third form (ci41): the shim closed under the create.
        let e = gone("failed to create shim task: ttrpc: closed: unknown");
        assert!(matches!(e, RuntimeError::ShimLost { .. }) && e.is_shim_failure(), "{e:?}");
        // A missing shim binary or runc refusing the container are not races.
        let e = gone("failed to start shim: exec: \"containerd-shim-runc-v2\": not found");
        assert!(matches!(e, RuntimeError::Failed { .. }) && !e.is_shim_failure(), "{e:?}");
        let e = gone("OCI runtime create failed: no such file or directory");
        assert!(matches!(e, RuntimeError::Failed { .. }) && !e.is_shim_failure(), "{e:?}");
    }

    #[test]
    fn a_closed_shim_connection_is_a_lost_shim() {
        // What containerd answers a Wait with when the task's shim is killed.
        let e = runtime_error("wait task", "task t", Status::unknown("ttrpc: closed"));
        assert!(matches!(e, RuntimeError::ShimLost { op: "wait task", .. }), "{e:?}");
        let e = runtime_error("wait task", "task t", Status::unknown("ttrpc: closed: unavailable"));
        assert!(matches!(e, RuntimeError::ShimLost { .. }), "{e:?}");
        // containerd unreachable, or the task gone, stay what they were.
        let e = runtime_error("wait task", "task t", Status::unavailable("connection refused"));
        assert!(matches!(e, RuntimeError::Unavailable { .. }), "{e:?}");
        let e = runtime_error("wait task", "task t", Status::not_found("no such task"));
        assert!(matches!(e, RuntimeError::NotFound { .. }), "{e:?}");
        let e = runtime_error("wait task", "task t", Status::unknown("OCI runtime failed"));
        assert!(matches!(e, RuntimeError::Failed { .. }), "{e:?}");
    }

    #[test]
    fn transport_failures() {
        let cases = [
            (Status::unavailable("connection refused"), true),
            (Status::cancelled(""), true),
            (Status::unknown("h2 protocol error: error reading a body from connection"), true),
            (Status::unknown("transport error"), true),
            (Status::internal(""), true),
            (Status::unknown("failed to create shim task: OCI runtime create failed: exec: \"x\": not found"), false),
            (Status::new(Code::FailedPrecondition, "task must be stopped"), false),
            (Status::not_found("container x"), false),
        ];
        for (s, want) in cases {
            assert_eq!(is_transport_failure(&s), want, "{s:?}");
        }
    }
}
