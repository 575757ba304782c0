//! Prometheus metrics (text format on `[metrics] listen`, off by default):
//! tasks by state, task start latency (RunTask → RUNNING), image pull bytes and
//! durations, slots used, containerd reconnects, RPCs by method and code.
//! Labels are method names, codes and states only: never a task's values, so
//! nothing a scheduler sends (a registry password, say) can reach a label.
//! One `Metrics` is made by `main` and handed to what counts (the supervisor,
//! the puller, the API layer): there is no global.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

pub struct Metrics {
    /// CPU time of completed tasks, by mode (user, kernel).
    pub task_cpu_seconds: Family<ModeLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Block I/O bytes of completed tasks, by direction (read, write).
    pub task_io_bytes: Family<DirectionLabels, Counter>,
    /// Wall-clock time of completed tasks.
    pub task_wall_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub rpcs: Family<RpcLabels, Counter>,
    pub task_start_seconds: Histogram,
    pub pull_bytes: Counter,
    pub pull_seconds: Histogram,
    pub containerd_reconnects: Counter,
    pub tasks: Family<StateLabels, Gauge>,
    pub slots_used: Gauge,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A new set of metrics, all zero.
    pub fn new() -> Arc<Metrics> {
        Arc::new(build())
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a completed task's usage into the node-wide totals.
    pub fn count_completed(&self, u: &crate::model::TaskStats, wall_clock: std::time::Duration) {
        let cpu = |mode: &str| self.task_cpu_seconds.get_or_create(&ModeLabels { mode: mode.into() }).clone();
        cpu("user").inc_by(u.user_cpu.as_secs_f64());
        cpu("kernel").inc_by(u.kernel_cpu.as_secs_f64());
        let io = |direction: &str| {
            self.task_io_bytes.get_or_create(&DirectionLabels { direction: direction.into() }).clone()
        };
        io("read").inc_by(u.read_bytes);
        io("write").inc_by(u.write_bytes);
        self.task_wall_seconds.inc_by(wall_clock.as_secs_f64());
    }
}

fn build() -> Metrics {
    let mut registry = Registry::with_prefix("berth");
    let m = Metrics {
        task_cpu_seconds: Family::default(),
        task_io_bytes: Family::default(),
        task_wall_seconds: Counter::default(),
        rpcs: Family::default(),
        task_start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        pull_bytes: Counter::default(),
        pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
        containerd_reconnects: Counter::default(),
        tasks: Family::default(),
        slots_used: Gauge::default(),
        registry: Registry::default(),
    };
    registry.register("rpc_requests", "API calls by method and gRPC status code", m.rpcs.clone());
    registry.register(
        "task_start_latency_seconds",
        "From RunTask to the task RUNNING (queueing and image pull included)",
        m.task_start_seconds.clone(),
    );
    registry.register("image_pull_bytes", "Bytes fetched from registries", m.pull_bytes.clone());
    registry.register("image_pull_duration_seconds", "Duration of image pulls", m.pull_seconds.clone());
    registry.register(
        "containerd_reconnects",
        "Times containerd answered again after being unreachable",
        m.containerd_reconnects.clone(),
    );
    registry.register("tasks", "Task records by state", m.tasks.clone());
    registry.register("slots_used", "Task slots in use", m.slots_used.clone());
    registry.register("task_cpu_seconds", "CPU time of completed tasks, by mode", m.task_cpu_seconds.clone());
    registry.register("task_io_bytes", "Block I/O of completed tasks, by direction", m.task_io_bytes.clone());
    registry.register("task_wall_clock_seconds", "Wall-clock time of completed tasks", m.task_wall_seconds.clone());
    Metrics { registry, ..m }
}

/// Serves `GET /metrics` on `addr` until the process ends; `refresh` updates
/// the gauges before each scrape.
pub async fn serve<F, Fut>(addr: std::net::SocketAddr, metrics: Arc<Metrics>, refresh: F) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use hyper::{Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let (refresh, metrics) = (refresh.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (refresh, metrics) = (refresh.clone(), metrics.clone());
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        refresh().await;
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(metrics.encode())
                    } else {
                        Response::builder().status(StatusCode::NOT_FOUND).body("not found: try /metrics\n".into())
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap_or_default())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that sends its headers slowly is dropped, so idle
            // connections cannot pile up.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}
