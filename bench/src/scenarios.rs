//! The measurements. Each returns rows for the report; none asserts a time.

use crate::agent::{cpu_of, machine_busy, Agent};
use crate::ctr::Ctr;
use crate::report::Row;
use crate::watch::Watcher;
use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = NodeAgentClient<Channel>;

pub(crate) fn spec(job: &str, task: &str, image: &str, command_line: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        job_id: job.into(),
        task_id: task.into(),
        command_line: command_line.into(),
        container: Some(pb::ContainerSettings {
            image: image.into(),
            run_options: String::new(),
            working_directory: pb::WorkingDirectory::TaskWorkingDir as i32,
            registry: None,
            pull_policy: pb::PullPolicy::Missing as i32,
            devices: vec![],
            ..Default::default()
        }),
        environment: Default::default(),
        user: None,
        constraints: None,
        required_slots: 1,
        job_preparation: None,
        resource_files: vec![],
        output_files: vec![],
        application_packages: vec![],
    }
}

pub(crate) async fn run(c: &mut Client, spec: pb::TaskSpec) {
    c.run_task(pb::RunTaskRequest { task: Some(spec) }).await.expect("RunTask");
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The q-quantile (nearest rank) of `v`, in ms.
fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    ms(v[i])
}

/// Latency: sequential trivial tasks, RunTask → RUNNING and → COMPLETED (seen
/// on WatchTasks), against sequential `ctr run --rm`.
/// The tasks are `job`'s (one job per run).
/// Then where the bridge tasks' time went, from the agent's log (`agent`).
pub(crate) async fn latency(
    (c, agent): (&mut Client, &Agent),
    w: &Watcher,
    ctr: &Ctr,
    image: &str,
    (n, job): (usize, &str),
) -> Vec<Row> {
    // One of each first: the first container of a namespace pays one-off costs.
    run(c, spec(job, "warm-up", image, "/bin/true")).await;
    w.wait_all(&[format!("{job}/warm-up")], |s| s.completed.is_some()).await;
    ctr.run(image, "bench-lat-warm-up");
    run(c, host_network(spec(job, "warm-up-host", image, "/bin/true"))).await;
    w.wait_all(&[format!("{job}/warm-up-host")], |s| s.completed.is_some()).await;
    // Bridge (the default network) and host tasks in turn, so both see the same machine.
    let (mut running, mut done, mut host_running, mut bridge) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        for host in [false, true] {
            let task = if host { format!("h{i}") } else { format!("t{i}") };
            let key = format!("{job}/{task}");
            let start = Instant::now();
            let s = spec(job, &task, image, "/bin/true");
            run(c, if host { host_network(s) } else { s }).await;
            w.wait_all(std::slice::from_ref(&key), |s| s.completed.is_some()).await;
            let seen = w.get(&key);
            assert_eq!(seen.exit_code, Some(0), "{key} failed");
            if host {
                host_running.push(seen.running.unwrap_or(start) - start);
            } else {
                running.push(seen.running.unwrap_or(start) - start);
                done.push(seen.completed.unwrap_or(start) - start);
                bridge.push((task, seen.running.unwrap_or(start) - start));
            }
        }
    }
    let mut base: Vec<Duration> = (0..n).map(|i| ctr.run(image, &format!("bench-lat-{i}"))).collect();
    let (b50, b99) = (quantile(&mut base, 0.5), quantile(&mut base, 0.99));
    let (h50, h99) = (quantile(&mut host_running, 0.5), quantile(&mut host_running, 0.99));
    let r50 = quantile(&mut running, 0.5);
    vec![
        Row::new("latency p50: RunTask → COMPLETED (ms)", quantile(&mut done, 0.5), Some(b50), "≤ 0.8× ctr run"),
        Row::new("latency p99: RunTask → COMPLETED (ms)", quantile(&mut done, 0.99), Some(b99), ""),
        Row::new("latency p50: RunTask → RUNNING, bridge vs --network host (ms)", r50, Some(h50), "≤ host + 20 ms"),
        Row::new(
            "latency p99: RunTask → RUNNING, bridge vs --network host (ms)",
            quantile(&mut running, 0.99),
            Some(h99),
            "",
        ),
        Row::new("latency p50: bridge network set-up, added (ms)", r50 - h50, None, "≤ 20"),
    ]
    .into_iter()
    .chain(crate::tail::rows(&agent.log(), job, &bridge))
    .collect()
}

fn host_network(mut s: pb::TaskSpec) -> pb::TaskSpec {
    if let Some(c) = s.container.as_mut() {
        c.run_options = "--network host".into();
    }
    s
}

/// berth's side of the throughput row: `n` trivial tasks of `job`, all
/// submitted at once, the agent's slots (8) running them.
pub(crate) struct Tput {
    pub per_s: f64,
    pub failed: usize,
    /// Per task (ms): the agent's CPU, containerd's, the whole machine's.
    pub agent_cpu: f64,
    pub containerd_cpu: f64,
    pub busy: f64,
}

pub(crate) async fn berth_throughput(c: &Client, w: &Watcher, image: &str, n: usize, pids: Pids, job: &str) -> Tput {
    let tasks: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let keys: Vec<String> = tasks.iter().map(|t| format!("{job}/{t}")).collect();
    let (agent_cpu, containerd_cpu, busy) = (cpu_of(pids.agent), cpu_of(pids.containerd), machine_busy());
    let start = Instant::now();
    let mut submits = tokio::task::JoinSet::new();
    for task in &tasks {
        let (mut c, s) = (c.clone(), spec(job, task, image, "/bin/true"));
        submits.spawn(async move { run(&mut c, s).await });
    }
    while submits.join_next().await.is_some() {}
    w.wait_all(&keys, |s| s.completed.is_some()).await;
    let elapsed = start.elapsed();
    let per_task = |d: Duration| ms(d) / n as f64;
    let failed: Vec<usize> = (0..n).filter(|i| w.get(&keys[*i]).exit_code != Some(0)).collect();
    // Why each failed, on stderr: the table's count alone cannot be looked into.
    for i in failed.iter().take(5) {
        let req = pb::GetTaskRequest { job_id: job.into(), task_id: tasks[*i].clone() };
        match c.clone().get_task(req).await {
            Ok(t) => {
                let t = t.into_inner();
                eprintln!("{} failed: exit {:?}, {:?}", keys[*i], t.exit_code, t.failure_info);
            }
            Err(e) => eprintln!("{} failed; GetTask: {e}", keys[*i]),
        }
    }
    Tput {
        per_s: n as f64 / elapsed.as_secs_f64(),
        failed: failed.len(),
        agent_cpu: per_task(cpu_of(pids.agent) - agent_cpu),
        containerd_cpu: per_task(cpu_of(pids.containerd) - containerd_cpu),
        busy: per_task(machine_busy() - busy),
    }
}

/// The throughput rows: `n` trivial tasks of `job` submitted at once to berth
/// (8 slots, `shim_group = "none"`) against `n` `ctr run --rm`, 8 at a time.
pub(crate) async fn throughput(
    c: &Client,
    w: &Watcher,
    ctr: &Ctr,
    image: &str,
    (n, job): (usize, &str),
    pids: Pids,
) -> (Vec<Row>, Tput) {
    let t = berth_throughput(c, w, image, n, pids, job).await;
    let per_task = |d: Duration| ms(d) / n as f64;
    let (containerd_cpu, busy, me) = (cpu_of(pids.containerd), machine_busy(), cpu_of(std::process::id()));

    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                ctr.run(image, &format!("bench-tput-{i}"));
            });
        }
    });
    let base = n as f64 / start.elapsed().as_secs_f64();
    let ctr_containerd_cpu = per_task(cpu_of(pids.containerd) - containerd_cpu);
    let ctr_busy = per_task(machine_busy() - busy);
    let ctr_cpu = per_task(cpu_of(std::process::id()) - me);
    let rows = vec![
        Row::new(&format!("throughput: {n} tasks, 8 at a time (tasks/s)"), t.per_s, Some(base), "≥ 1.5× ctr run -P 8"),
        Row::count("throughput: failed tasks", t.failed as f64, None, "0"),
        Row::new("throughput: containerd CPU per task (ms)", t.containerd_cpu, Some(ctr_containerd_cpu), ""),
        Row::new("throughput: agent CPU per task (ms; baseline: the ctr processes)", t.agent_cpu, Some(ctr_cpu), ""),
        Row::new("throughput: whole-machine CPU per task (ms)", t.busy, Some(ctr_busy), ""),
    ];
    (rows, t)
}

/// The throughput row again with shared shims, against `"none"` (`unshared`).
pub(crate) fn shim_group_rows(group: &str, t: &Tput, unshared: &Tput) -> Vec<Row> {
    let name = |what: &str| format!("throughput: shim_group = \"{group}\", {what} (baseline: \"none\")");
    vec![
        Row::new(&name("tasks/s"), t.per_s, Some(unshared.per_s), ""),
        Row::count(&name("failed tasks"), t.failed as f64, None, "0"),
        Row::new(&name("whole-machine CPU per task (ms)"), t.busy, Some(unshared.busy), ""),
    ]
}

/// Density: `n` concurrent `sleep` tasks until all run. Recovery: then the
/// agent is killed and restarted; the time until it has re-attached them all.
pub(crate) async fn density_and_recovery(agent: &mut Agent, image: &str, n: usize) -> Vec<Row> {
    let mut c = agent.start().await;
    let (idle, _) = agent.memory_kib();
    let w = Watcher::start(&c).await;
    let keys: Vec<String> = (0..n).map(|i| format!("dense/t{i}")).collect();
    let start = Instant::now();
    for i in 0..n {
        run(&mut c, spec("dense", &format!("t{i}"), image, "sleep 600")).await;
    }
    w.wait_all(&keys, |s| s.running.is_some() || s.completed.is_some()).await;
    let all_running = start.elapsed();
    let failed = keys.iter().filter(|k| w.get(k).completed.is_some()).count();
    let (rss, peak) = agent.memory_kib();

    agent.stop(nix::sys::signal::Signal::SIGKILL);
    let log_before = agent.log().matches("recovery done").count();
    let start = Instant::now();
    let mut c = agent.start().await;
    while agent.log().matches("recovery done").count() == log_before {
        assert!(start.elapsed() < Duration::from_secs(120), "no recovery:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered = start.elapsed();
    let list = c.list_tasks(pb::ListTasksRequest { job_id: "dense".into(), ..Default::default() }).await.expect("list");
    let still_running = list.into_inner().tasks.iter().filter(|t| t.state == pb::TaskState::Running as i32).count();
    for i in 0..n {
        let req = pb::TerminateTaskRequest { job_id: "dense".into(), task_id: format!("t{i}"), grace_period: None };
        c.terminate_task(req).await.expect("terminate");
    }
    vec![
        Row::new(&format!("density: {n} sleep tasks, time to all RUNNING (ms)"), ms(all_running), None, ""),
        Row::count(&format!("density: {n} sleep tasks, failed"), failed as f64, None, "0"),
        Row::new(&format!("density: agent RSS with {n} running (MiB)"), rss as f64 / 1024.0, None, ""),
        Row::new("footprint: agent RSS idle (MiB)", idle as f64 / 1024.0, None, "≤ 12"),
        Row::new("footprint: agent peak RSS, density (MiB)", peak as f64 / 1024.0, None, "≤ 40"),
        Row::new(&format!("recovery: restart → {n} tasks re-attached (ms)"), ms(recovered), None, "≤ 2000"),
        Row::count("recovery: tasks still RUNNING after restart", still_running as f64, Some(n as f64), "all"),
    ]
}

/// Processes whose CPU time is counted.
#[derive(Clone, Copy)]
pub(crate) struct Pids {
    pub agent: u32,
    pub containerd: u32,
}
