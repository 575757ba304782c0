//! Serving the API: the NodeAgent service, gRPC health and reflection, on a unix
//! socket (mode 0660) or a TCP address, until `shutdown` resolves.

use super::Api;
use crate::config::Listen;
use berth_proto::v1::node_agent_server::NodeAgentServer;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use tonic::transport::server::Router;
use tonic::transport::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("API server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How long open calls (watch streams, long reads) get to finish after shutdown starts.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves until `shutdown` resolves, then drains open calls for at most [`DRAIN`]:
/// a scheduler's open `WatchTasks` stream must not keep the agent from stopping.
pub async fn serve(api: Api, listen: &Listen, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
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
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router =
        Server::builder().add_service(health_service).add_service(reflection).add_service(NodeAgentServer::new(api));
    let server = serve_until(router, listen, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        () = shutdown => { let _ = stop_tx.send(true); }
    }
    let result = match tokio::time::timeout(DRAIN, server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!("open API calls did not finish within {DRAIN:?}; closing them");
            Ok(())
        }
    };
    if let Listen::Unix(path) = listen {
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn serve_until(
    router: Router,
    listen: &Listen,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(socket = %path.display(), "API listening");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr: addr.to_string(), source })?;
            tracing::info!(%addr, "API listening");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
    }
    Ok(())
}

fn bind_unix(path: &PathBuf) -> Result<tokio::net::UnixListener, ServeError> {
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
    Ok(listener)
}
