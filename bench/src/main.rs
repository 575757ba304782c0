//! `berth-bench`: run by `scripts/bench` against the test environment's
//! containerd and registry. Starts release agents itself, measures berth and
//! the `ctr` baseline in the same run, prints a Markdown table. Asserts nothing
//! about times (only that the work itself succeeded).

mod agent;
mod ctr;
mod pulls;
mod report;
mod scale;
mod scenarios;
mod tail;
mod transfer;
mod watch;

use berth_proto::v1 as pb;
use clap::Parser;
use nix::sys::signal::Signal;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// The release berth-agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// Scratch directory (agents' roots, state, logs).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    containerd: String,
    /// containerd's pid (its CPU time is counted).
    #[arg(long)]
    containerd_pid: u32,
    /// Plain-HTTP registry `host:port`.
    #[arg(long)]
    registry: String,
    #[arg(long)]
    registry_log: String,
    /// Directory for `ctr run`'s IO FIFOs.
    #[arg(long)]
    fifo_dir: String,
    /// The small image of the trivial tasks.
    #[arg(long)]
    image: String,
    /// Images of one shape, each with blobs of its own (repeat the flag):
    /// berth pulls the `--big-berth` ones, ctr the `--big-ctr` ones, one of each per run.
    #[arg(long, required = true)]
    big_berth: Vec<String>,
    #[arg(long, required = true)]
    big_ctr: Vec<String>,
    /// What the big images are ("8 layers, 200 MiB").
    #[arg(long)]
    big_label: String,
    /// The same for the huge images (the 1 GiB, 10-layer row).
    #[arg(long, required = true)]
    huge_berth: Vec<String>,
    #[arg(long, required = true)]
    huge_ctr: Vec<String>,
    #[arg(long)]
    huge_label: String,
    /// The image 10 tasks start on at once, and the size of its blobs.
    #[arg(long)]
    shared: String,
    #[arg(long)]
    shared_bytes: u64,
    /// Runs of each phase whose rows are medians (or totals, or peaks) of runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Few tasks of each kind: keeps the script working, measures little.
    #[arg(long)]
    quick: bool,
}

fn settings<'a>(a: &'a Args, namespace: &'a str, slots: u32) -> agent::Settings<'a> {
    agent::Settings {
        containerd: &a.containerd,
        namespace,
        registry: &a.registry,
        slots,
        extra: "",
        containerd_extra: "",
    }
}

/// An agent of its own in `dir`/`name`, in namespace `name`, with the task image pulled.
async fn agent_with_image(
    a: &Args,
    s: &agent::Settings<'_>,
) -> (agent::Agent, pb::node_agent_client::NodeAgentClient<tonic::transport::Channel>) {
    let mut agent = agent::Agent::new(&a.agent, &a.dir.join(s.namespace), s);
    let mut c = agent.start().await;
    pulls::pull(&mut c, &a.image).await;
    (agent, c)
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let (n_lat, n_tput, n_dense) = if a.quick { (5, 16, 8) } else { (50, 300, 100) };
    let runs = a.runs.max(1);
    let ctr = ctr::Ctr { socket: a.containerd.clone(), namespace: "bench-ctr".into(), fifo_dir: a.fifo_dir.clone() };
    ctr.pull(&a.image);
    let mut rows = Vec::new();

    // Latency and throughput, `runs` times: one agent with 8 slots (a job per
    // run), and two more with shared shims (`[containerd] shim_group`), whose
    // throughput is set against the first's in the same run.
    let (mut first, mut c) = agent_with_image(&a, &settings(&a, "bench-8", 8)).await;
    let w = watch::Watcher::start(&c).await;
    let mut grouped = Vec::new();
    for group in ["job", "node"] {
        let extra = format!("shim_group = \"{group}\"");
        let ns = format!("bench-shim-{group}");
        let (agent, c) =
            agent_with_image(&a, &agent::Settings { containerd_extra: &extra, ..settings(&a, &ns, 8) }).await;
        let w = watch::Watcher::start(&c).await;
        grouped.push((group, agent, c, w));
    }
    let mut per_run = Vec::new();
    for r in 0..runs {
        let mut run = Vec::new();
        eprintln!("berth-bench: run {}/{runs}: latency ({n_lat} tasks)", r + 1);
        run.extend(scenarios::latency((&mut c, &first), &w, &ctr, &a.image, (n_lat, &format!("lat{r}"))).await);
        eprintln!("berth-bench: run {}/{runs}: throughput ({n_tput} tasks, shim_group none, job, node)", r + 1);
        let pids = scenarios::Pids { agent: first.pid(), containerd: a.containerd_pid };
        let job = format!("tput{r}");
        let (tput_rows, unshared) = scenarios::throughput(&c, &w, &ctr, &a.image, (n_tput, &job), pids).await;
        run.extend(tput_rows);
        run.push(report::Row::peak(
            "footprint: agent peak RSS, throughput (MiB)",
            first.memory_kib().1 as f64 / 1024.0,
            "≤ 40",
        ));
        for (group, agent, c, w) in &grouped {
            let pids = scenarios::Pids { agent: agent.pid(), containerd: a.containerd_pid };
            let t = scenarios::berth_throughput(c, w, &a.image, n_tput, pids, &job).await;
            run.extend(scenarios::shim_group_rows(group, &t, &unshared));
        }
        per_run.push(run);
    }
    rows.extend(report::across_runs(&per_run));
    for (_, mut agent, _, _) in grouped {
        agent.stop(Signal::SIGTERM);
    }

    // Pulls: each row is already `runs` pulls of fresh images.
    eprintln!("berth-bench: pulls");
    let images = pulls::PullImages {
        shapes: vec![
            pulls::Shape { label: a.big_label.clone(), berth: &a.big_berth, ctr: &a.big_ctr },
            pulls::Shape { label: a.huge_label.clone(), berth: &a.huge_berth, ctr: &a.huge_ctr },
        ],
        shared: &a.shared,
        shared_bytes: a.shared_bytes,
        registry_log: &a.registry_log,
    };
    rows.extend(pulls::pulls(&mut c, &first, &w, &ctr, &images).await);
    first.stop(Signal::SIGTERM);

    // Density and recovery: a slot per task, a fresh agent per run (its idle RSS is the footprint row).
    let mut per_run = Vec::new();
    for r in 0..runs {
        eprintln!("berth-bench: run {}/{runs}: density and recovery ({n_dense} tasks)", r + 1);
        let ns = format!("bench-dense-{r}");
        let (mut agent, _) = agent_with_image(&a, &settings(&a, &ns, n_dense as u32)).await;
        agent.stop(Signal::SIGTERM);
        per_run.push(scenarios::density_and_recovery(&mut agent, &a.image, n_dense).await);
        agent.stop(Signal::SIGTERM);
    }
    rows.extend(report::across_runs(&per_run));

    // Data staging: a fresh agent, so its peak RSS is the transfers'; the rows are medians of `runs` transfers.
    let mib = if a.quick { 16 } else { 512 };
    eprintln!("berth-bench: transfers ({runs} × {mib} MiB each way)");
    let extra = format!(
        "[policy]\nallow_host_tasks = true\n[staging]\nsecrets_dir = \"{}/secrets\"\n",
        a.dir.join("bench-staging").display()
    );
    let s = agent::Settings { extra: &extra, ..settings(&a, "bench-staging", 1) };
    let mut third = agent::Agent::new(&a.agent, &a.dir.join("bench-staging"), &s);
    let c = third.start().await;
    rows.extend(transfer::transfers(c, &third, &a.dir.join("transfer"), mib << 20, runs).await);
    third.stop(Signal::SIGTERM);

    // Scale: one slot held, the rest queued (the default event log keeps 100,000); a fresh agent per run.
    let (queued, events) = if a.quick { (300, 2_000) } else { (10_000, 100_000) };
    let mut per_run = Vec::new();
    for r in 0..runs {
        eprintln!("berth-bench: run {}/{runs}: scale ({queued} queued, {events} events)", r + 1);
        let ns = format!("bench-scale-{r}");
        let mut agent = agent::Agent::new(&a.agent, &a.dir.join(&ns), &settings(&a, &ns, 1));
        per_run.push(scale::scale(&mut agent, &a.image, queued, events).await);
        agent.stop(Signal::SIGTERM);
    }
    rows.extend(report::across_runs(&per_run));

    print!("{}", report::markdown(&rows));
}
