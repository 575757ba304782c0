//! Serving the API: the NodeAgent service, gRPC health and reflection, on a unix
//! socket (mode 0660, optionally group-owned) or a TCP address (TLS, mutual TLS
//! with a client CA), until `shutdown` resolves. On SIGHUP the TLS certificate,
//! key and client CA are read again and the TCP listener restarts with them:
//! running tasks live in containerd and are not touched; clients reconnect.
//! systemd is told READY=1 once the API listens and STOPPING=1 when it stops.

use super::{tls, Api};
use crate::config::{ApiTls, Listen};
use berth_proto::v1::node_agent_server::NodeAgentServer;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("API server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the API is served (from `[api]`).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: Listen,
    pub tls: Option<ApiTls>,
    pub socket_group: Option<String>,
    pub max_message_bytes: usize,
    /// Where calls are counted, by method and status.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// How long open calls (watch streams, long reads) get to finish after shutdown starts.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Serves until `shutdown` resolves, then drains open calls for at most [`DRAIN`]:
/// a scheduler's open `WatchTasks` stream must not keep the agent from stopping.
pub async fn serve(
    api: Api,
    opts: &ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING while containerd is unreachable, for the node service and the server as a whole.
    let mut containerd = api.sup.containerd_status();
    tokio::spawn(async move {
        loop {
            let up = containerd.borrow_and_update().is_some();
            if up {
                health.set_serving::<NodeAgentServer<Api>>().await;
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            } else {
                health.set_not_serving::<NodeAgentServer<Api>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
            if containerd.changed().await.is_err() {
                return;
            }
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|source| ServeError::Listen { addr: "SIGHUP".into(), source })?;
    let mut tls_config = opts.tls.as_ref().map(tls::load).transpose().map_err(ServeError::Tls)?;
    let mut first = true;
    loop {
        let router = router(api.clone(), health_service.clone(), opts, tls_config.clone())?;
        let (restart_tx, restart_rx) = watch::channel(false);
        let (mut stop, mut restart) = (stop_rx.clone(), restart_rx);
        let server = serve_until(router, opts, first, async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = restart.wait_for(|r| *r) => {}
            }
        });
        first = false;
        tokio::pin!(server);
        let mut stop = stop_rx.clone();
        let restarting = tokio::select! {
            r = &mut server => return r,
            _ = stop.wait_for(|s| *s) => false,
            _ = hangup.recv(), if opts.tls.is_some() => true,
        };
        if restarting {
            match opts.tls.as_ref().map(tls::load).transpose() {
                Ok(c) => {
                    tracing::info!("SIGHUP: TLS certificate, key and client CA read again; restarting the listener");
                    tls_config = c;
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: cannot read the TLS files; keeping the ones in use"),
            }
            let _ = restart_tx.send(true);
        } else {
            crate::sdnotify::notify("STOPPING=1");
        }
        let result = match tokio::time::timeout(DRAIN, server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::info!("open API calls did not finish within {DRAIN:?}; closing them");
                Ok(())
            }
        };
        if !restarting {
            if let Listen::Unix(path) = &opts.listen {
                let _ = std::fs::remove_file(path);
            }
            return result;
        }
        result?;
    }
}

type Layered = Router<tower::layer::util::Stack<super::metrics_layer::RpcMetricsLayer, tower::layer::util::Identity>>;

/// The services, with the message-size limit and the client-subject check.
fn router(
    api: Api,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    opts: &ServeOptions,
    tls_config: Option<ServerTlsConfig>,
) -> Result<Layered, ServeError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // Every service, health and reflection too, answers allowed subjects only.
    let check = tls::SubjectCheck::new(opts.tls.as_ref().map(|t| t.allowed_subjects.clone()).unwrap_or_default());
    let node = InterceptedService::new(
        NodeAgentServer::new(api).max_decoding_message_size(opts.max_message_bytes),
        check.clone(),
    );
    let health = InterceptedService::new(health, check.clone());
    let reflection = InterceptedService::new(reflection, check);
    let mut builder = Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    if let Some(cfg) = tls_config {
        builder = builder.tls_config(cfg).map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    Ok(builder
        .layer(super::metrics_layer::RpcMetricsLayer(opts.metrics.clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(node))
}

async fn serve_until(
    router: Layered,
    opts: &ServeOptions,
    first: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match &opts.listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path, opts.socket_group.as_deref())?;
            tracing::info!(socket = %path.display(), "API listening");
            ready(first);
            // Stock grpcio, grpc-java, grpcurl: their `:authority` made acceptable (see `authority`).
            let incoming =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |c| {
                    c.map(super::authority::AuthorityFix::new)
                });
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr: addr.to_string(), source })?;
            tracing::info!(%addr, tls = opts.tls.is_some(), mutual_tls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "API listening");
            ready(first);
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
    }
    Ok(())
}

/// READY=1 to systemd (a no-op without `NOTIFY_SOCKET`), once.
fn ready(first: bool) {
    if first {
        crate::sdnotify::notify("READY=1");
    }
}

fn bind_unix(path: &PathBuf, group: Option<&str>) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |source| ServeError::Listen { addr: format!("unix://{}", path.display()), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // A socket left by an agent that died is in the way; anything else is not ours to remove.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(group) = group {
        let gid = match group.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .ok_or_else(|| err(std::io::Error::other(format!("api.socket_group: no group {group:?}"))))?,
        };
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}
