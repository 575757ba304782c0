//! `berth-bench`: run by `scripts/bench` against the test environment's
//! containerd and registry. Starts release agents itself, measures berth and
//! the `ctr` baseline in the same run, prints a Markdown table. Asserts nothing
//! about times (only that the work itself succeeded).

mod agent;
mod ctr;
mod report;
mod scale;
mod scenarios;
mod transfer;
mod watch;

use clap::Parser;
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
    /// The image 10 tasks start on at once, and the size of its blobs.
    #[arg(long)]
    shared: String,
    #[arg(long)]
    shared_bytes: u64,
    /// Few tasks of each kind: keeps the script working, measures little.
    #[arg(long)]
    quick: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let (n_lat, n_tput, n_dense) = if a.quick { (5, 16, 8) } else { (50, 300, 100) };
    let ctr = ctr::Ctr { socket: a.containerd.clone(), namespace: "bench-ctr".into(), fifo_dir: a.fifo_dir.clone() };
    ctr.pull(&a.image);
    let settings = |ns: &'static str, slots| agent::Settings {
        containerd: &a.containerd,
        namespace: ns,
        registry: &a.registry,
        slots,
        extra: "",
        containerd_extra: "",
    };
    let mut rows = Vec::new();

    // Latency, throughput, pulls: 8 slots.
    let mut first = agent::Agent::new(&a.agent, &a.dir.join("agent-8"), &settings("bench-8", 8));
    let mut c = first.start().await;
    let w = watch::Watcher::start(&c).await;
    scenarios::pull(&mut c, &a.image).await;
    eprintln!("berth-bench: latency ({n_lat} tasks)");
    rows.extend(scenarios::latency(&mut c, &w, &ctr, &a.image, n_lat).await);
    eprintln!("berth-bench: throughput ({n_tput} tasks)");
    let pids = scenarios::Pids { agent: first.pid(), containerd: a.containerd_pid };
    let (tput_rows, unshared) = scenarios::throughput(&c, &w, &ctr, &a.image, n_tput, pids).await;
    rows.extend(tput_rows);
    let (_, peak) = first.memory_kib();
    rows.push(report::Row::new("footprint: agent peak RSS, throughput (MiB)", peak as f64 / 1024.0, None, "≤ 60"));
    eprintln!("berth-bench: pulls");
    let images = scenarios::PullImages {
        big_berth: &a.big_berth,
        big_ctr: &a.big_ctr,
        shared: &a.shared,
        shared_bytes: a.shared_bytes,
        registry_log: &a.registry_log,
    };
    rows.extend(scenarios::pulls(&mut c, &w, &ctr, &images).await);
    first.stop(nix::sys::signal::Signal::SIGTERM);

    // Throughput again with shared shims (`[containerd] shim_group`), against "none".
    for group in ["job", "node"] {
        eprintln!("berth-bench: throughput with shim_group = {group} ({n_tput} tasks)");
        let extra = format!("shim_group = \"{group}\"");
        let ns: &'static str = if group == "job" { "bench-shim-job" } else { "bench-shim-node" };
        let s = agent::Settings { containerd_extra: &extra, ..settings(ns, 8) };
        let mut grouped = agent::Agent::new(&a.agent, &a.dir.join(ns), &s);
        let mut c = grouped.start().await;
        let w = watch::Watcher::start(&c).await;
        scenarios::pull(&mut c, &a.image).await;
        let pids = scenarios::Pids { agent: grouped.pid(), containerd: a.containerd_pid };
        let t = scenarios::berth_throughput(&c, &w, &a.image, n_tput, pids, "tput").await;
        rows.extend(scenarios::shim_group_rows(group, &t, &unshared));
        grouped.stop(nix::sys::signal::Signal::SIGTERM);
    }

    // Density and recovery: a slot per task.
    eprintln!("berth-bench: density and recovery ({n_dense} tasks)");
    let mut second = agent::Agent::new(&a.agent, &a.dir.join("agent-dense"), &settings("bench-dense", n_dense as u32));
    {
        let mut c = second.start().await;
        scenarios::pull(&mut c, &a.image).await;
        second.stop(nix::sys::signal::Signal::SIGTERM);
    }
    rows.extend(scenarios::density_and_recovery(&mut second, &a.image, n_dense).await);
    second.stop(nix::sys::signal::Signal::SIGTERM);

    // Data staging: a fresh agent, so its peak RSS is the transfers'.
    let (mib, runs) = if a.quick { (16, 3) } else { (512, 5) };
    eprintln!("berth-bench: transfers ({runs} × {mib} MiB each way)");
    let extra = format!(
        "[policy]\nallow_host_tasks = true\n[staging]\nsecrets_dir = \"{}/secrets\"\n",
        a.dir.join("agent-staging").display()
    );
    let s = agent::Settings { extra: &extra, ..settings("bench-staging", 1) };
    let mut third = agent::Agent::new(&a.agent, &a.dir.join("agent-staging"), &s);
    let c = third.start().await;
    rows.extend(transfer::transfers(c, &third, &a.dir.join("transfer"), mib << 20, runs).await);
    third.stop(nix::sys::signal::Signal::SIGTERM);

    // Scale: one slot held, the rest queued (the default event log keeps 100,000).
    let (queued, events) = if a.quick { (300, 2_000) } else { (10_000, 100_000) };
    eprintln!("berth-bench: scale ({queued} queued, {events} events)");
    let s = settings("bench-scale", 1);
    let mut fourth = agent::Agent::new(&a.agent, &a.dir.join("agent-scale"), &s);
    rows.extend(scale::scale(&mut fourth, &a.image, queued, events).await);
    fourth.stop(nix::sys::signal::Signal::SIGTERM);

    print!("{}", report::markdown(&rows));
}
