//! `berth-agent`: config → build → spawn → wait for a signal → exit.
//! Running tasks live in containerd shims and keep running when the agent stops;
//! the next start re-attaches to them.

use berth_agent::api::{self, Api};
use berth_agent::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
use berth_agent::containerd::Containerd;
use berth_agent::images::{Platform, PullSettings, Puller};
use berth_agent::layout::Layout;
use berth_agent::registry::{Registry, RegistrySettings};
use berth_agent::store::Store;
use berth_agent::supervisor::{Settings, Supervisor};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Parser)]
#[command(name = "berth-agent", version, about = "berth node agent: runs batch tasks in containers through containerd")]
struct Args {
    /// Config file (TOML). Without it, /etc/berth/agent.toml if present, else the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit.
    #[arg(long)]
    check_config: bool,
}

fn load_config(args: &Args) -> Result<Config, String> {
    let host = berth_agent::node::hostname();
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    match path {
        Some(p) => Config::load(&p, &host).map_err(|e| e.to_string()),
        None => Config::parse("", &host).map_err(|e| e.to_string()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down; tasks keep running"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down; tasks keep running"),
    }
}

/// Recovers what the previous agent left, retrying while containerd is unreachable.
async fn recover(sup: Supervisor, rebuild: bool) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match sup.recover(rebuild).await {
            Ok(report) => {
                tracing::info!(?report, "recovery done");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn sweep_retention(sup: Supervisor, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = sup.sweep_retention(SystemTime::now()).await {
            tracing::warn!(error = %e, "retention sweep failed");
        }
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    let platform = Platform::host();
    let node = berth_agent::node::facts(&cfg, &platform);
    let layout = Layout::new(&cfg.root_dir);
    layout.create_node_dirs().map_err(|e| e.to_string())?;
    let opened = Store::open(&cfg.state_dir).map_err(|e| e.to_string())?;
    let containerd = Arc::new(Containerd::new(&cfg.containerd_socket, &cfg.namespace, &cfg.snapshotter, &cfg.runtime));
    let mut staging_cas = Vec::new();
    for f in &cfg.staging.ca_files {
        staging_cas.push(std::fs::read(f).map_err(|e| format!("staging.ca_files: cannot read {}: {e}", f.display()))?);
    }
    let mut ca_pems = Vec::new();
    for f in &cfg.registries.ca_files {
        ca_pems.push(std::fs::read(f).map_err(|e| format!("registries.ca_files: cannot read {}: {e}", f.display()))?);
    }
    let registry = Registry::new(RegistrySettings {
        insecure: cfg.registries.insecure.clone(),
        ca_pems,
        credentials: cfg.registries.credentials.clone(),
        max_manifest_bytes: cfg.registries.max_manifest_bytes,
    });
    let metrics = berth_agent::metrics::Metrics::new();
    let pull_settings = PullSettings {
        max_concurrent_downloads: cfg.registries.max_concurrent_downloads,
        timeout: cfg.registries.pull_timeout,
        no_progress_timeout: cfg.registries.no_progress_timeout,
        max_layer_bytes: cfg.registries.max_layer_bytes,
        metrics: metrics.clone(),
        ..PullSettings::default()
    };
    let puller = Arc::new(Puller::new(
        registry,
        containerd.clone(),
        cfg.node_id.clone(),
        cfg.snapshotter.clone(),
        platform.clone(),
        pull_settings,
    ));
    let networks =
        Arc::new(berth_agent::network::Networks::new(cfg.network.clone()).map_err(|e| format!("[network]: {e}"))?);
    // Masquerading and forwarding for the bridge; tried again before the next
    // bridge task when they cannot be made now (which then fails with why).
    if let Err(e) = networks.prepare_node().await {
        tracing::error!(error = %e, "[network]: cannot make the bridge's node-wide rules; bridge tasks fail until they can be made");
    }
    let settings = Settings {
        namespace: cfg.namespace.clone(),
        task_slots: cfg.task_slots,
        terminate_grace: cfg.terminate_grace,
        platform,
        min_free_bytes: cfg.min_free_bytes,
        history_limit: cfg.history_limit,
        event_log_keep: cfg.event_log_keep,
        identities: cfg.identities.clone(),
        image_filesystem: Some(cfg.image_gc.filesystem.clone()),
        devices: Some(Arc::new(berth_agent::devices::Registry::start(cfg.devices.clone()))),
        policy: cfg.policy.clone(),
        host: berth_agent::host::HostRuntime::new(
            &cfg.state_dir,
            &cfg.namespace,
            std::env::current_exe().map_err(|e| format!("cannot find the agent's own executable: {e}"))?,
        ),
        rerun_start_task_after_reboot: cfg.rerun_start_task_after_reboot,
        requeue_after_reboot: cfg.requeue_after_reboot,
        shim_group: cfg.shim_group,
        boot_id: berth_agent::supervisor::boot_id(),
        metrics: metrics.clone(),
        staging: Arc::new(berth_agent::staging::Transfers::new(
            cfg.staging.limits.clone(),
            cfg.staging.secrets_dir.clone(),
            &staging_cas,
        )?),
        app_packages: cfg.staging.app_packages.clone(),
        network: networks,
    };
    tracing::info!(node_id = %node.node_id, root = %cfg.root_dir.display(), slots = cfg.task_slots,
        containerd = %cfg.containerd_socket.display(), namespace = %cfg.namespace, "berth-agent starting");
    // A database created anew on a node that has run tasks before: continue the
    // sequence numbers above any a scheduler may have seen (milliseconds since the epoch).
    if opened.fresh && !layout.list_task_dirs().is_empty() {
        let floor = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        opened.store.seed_sequence(floor).await.map_err(|e| e.to_string())?;
    }
    let sup = Supervisor::new(settings, node, layout.clone(), opened.store, containerd, puller);
    if let Some(note) = opened.note {
        sup.note(note);
    }
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.follow_exits().await }
    });
    // Know whether containerd answers before serving, then keep watching it.
    sup.check_containerd().await;
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.monitor_containerd().await }
    });
    // The scheduling switch, the start task and the jobs are known before
    // the API serves: no task is accepted past them while recovery runs.
    sup.load_lifecycle().await.map_err(|e| format!("cannot read the node's lifecycle state: {e}"))?;
    tokio::spawn(recover(sup.clone(), opened.fresh));
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.install_config_packages().await }
    });
    tokio::spawn(sweep_retention(sup.clone(), cfg.retention_sweep));
    tokio::spawn({
        let (sup, gc) = (sup.clone(), cfg.image_gc.clone());
        async move { sup.gc_images(gc).await }
    });
    if !cfg.prefetch.is_empty() {
        let names = cfg.prefetch.iter().filter_map(|p| berth_agent::images::normalize(p).ok()).collect();
        sup.set_prefetch(names);
    }
    if let Some(addr) = cfg.metrics_listen {
        let (sup, m) = (sup.clone(), metrics.clone());
        let refresh = move || {
            let (sup, m) = (sup.clone(), m.clone());
            async move {
                let (states, used) = sup.gauges().await;
                for s in ["ACTIVE", "PREPARING", "RUNNING", "COMPLETED"] {
                    let n = states.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
                    m.tasks.get_or_create(&berth_agent::metrics::StateLabels { state: s.into() }).set(n as i64);
                }
                m.slots_used.set(i64::from(used));
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = berth_agent::metrics::serve(addr, metrics, refresh).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    watchdog();
    let opts = api::ServeOptions {
        listen: cfg.listen.clone(),
        tls: cfg.tls.clone(),
        socket_group: cfg.socket_group.clone(),
        max_message_bytes: cfg.max_message_bytes,
        metrics,
    };
    api::serve(Api::new(sup, layout), &opts, shutdown_signal()).await.map_err(|e| e.to_string())
}

/// WATCHDOG=1 to systemd at half the interval it asks for (`WATCHDOG_USEC`),
/// for as long as the async runtime runs: a wedged runtime stops the pings
/// and systemd restarts the agent (tasks keep running in containerd).
fn watchdog() {
    if let Some(usec) = berth_agent::sdnotify::watchdog_usec() {
        let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
        tracing::info!(interval_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX), "systemd watchdog enabled");
        tokio::spawn(async move {
            loop {
                berth_agent::sdnotify::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        });
    }
}

fn main() -> ExitCode {
    // The agent's executable is also the shim of each host task.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "host-shim" {
        let status = berth_agent::host::shim::main(std::path::Path::new(&argv[2]));
        return ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX));
    }
    berth_agent::sys::memory::limit_malloc_arenas();
    let args = Args::parse();
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    init_logging(cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cfg));
    // Waits in flight (one per running task) are dropped; the tasks go on in containerd.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berth-agent failed");
            eprintln!("berth-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
