//! Counts API calls by method and gRPC status code (`berth_rpc_requests`). The
//! code is the `grpc-status` of a trailers-only response (how a call that fails
//! before answering ends), else OK: a stream that fails after it started
//! answering counts as OK.
//!
//! It also reports a request over `api.max_message_bytes` as RESOURCE_EXHAUSTED
//! (tonic's decoder says OUT_OF_RANGE, which a client would read as a bad
//! argument value rather than a limit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Method names a label may take; any other path counts as `other`, so a
/// client cannot grow the label set.
const METHODS: [&str; 20] = [
    "GetNode",
    "ConfigureApplicationPackages",
    "RunTask",
    "ExplainTask",
    "GetTask",
    "ListTasks",
    "WatchTasks",
    "TerminateTask",
    "DeleteTask",
    "ReadTaskFile",
    "PullImage",
    "ConfigureContainers",
    "ListImages",
    "RemoveImage",
    "ConfigureStartTask",
    "SetNodeScheduling",
    "WatchNode",
    "ConfigureJob",
    "GetJob",
    "ReleaseJob",
];

#[derive(Clone, Debug)]
pub(super) struct RpcMetricsLayer(pub std::sync::Arc<crate::metrics::Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub(super) struct RpcMetrics<S> {
    inner: S,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

fn method_of(path: &str) -> &'static str {
    match path.strip_prefix("/berth.v1.NodeAgent/") {
        Some(m) => METHODS.iter().find(|k| **k == m).copied().unwrap_or("other"),
        None if path.starts_with("/grpc.health.") => "health",
        None if path.starts_with("/grpc.reflection.") => "reflection",
        None => "other",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let mut result = fut.await;
            if let Ok(resp) = result.as_mut() {
                let h = resp.headers_mut();
                let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
                    && h.get("grpc-message")
                        .and_then(|m| m.to_str().ok())
                        .is_some_and(|m| m.contains("length%20too%20large") || m.contains("length too large"));
                if too_large {
                    h.insert("grpc-status", http::HeaderValue::from_static("8"));
                }
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let code = format!("{:?}", tonic::Code::from_i32(code));
                metrics.rpcs.get_or_create(&crate::metrics::RpcLabels { method: method.to_owned(), code }).inc();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_are_a_closed_set() {
        assert_eq!(super::method_of("/berth.v1.NodeAgent/RunTask"), "RunTask");
        assert_eq!(super::method_of("/berth.v1.NodeAgent/hunter2"), "other");
        assert_eq!(super::method_of("/grpc.health.v1.Health/Check"), "health");
        assert_eq!(super::method_of("/x"), "other");
    }

    #[test]
    fn every_rpc_of_the_api_has_its_label() {
        let proto = include_str!("../../../proto/berth/v1/agent.proto");
        let rpcs: Vec<&str> =
            proto.lines().filter_map(|l| l.trim().strip_prefix("rpc ")?.split('(').next()).map(str::trim).collect();
        assert_eq!(rpcs.len(), super::METHODS.len(), "{rpcs:?}");
        for rpc in rpcs {
            assert_eq!(super::method_of(&format!("/berth.v1.NodeAgent/{rpc}")), rpc);
        }
    }
}
