//! Costs that grow with the work (issue 23): an agent with one slot, held by
//! a sleeping task, so that everything submitted after it stays queued.
//! RunTask's tail with none and with `n` tasks queued, the agent's memory per
//! queued task, ListTasks pages over the records, TerminateTask of every
//! queued task, and the replay of the whole event log to a new WatchTasks.

use crate::agent::Agent;
use crate::report::Row;
use crate::scenarios::spec;
use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = NodeAgentClient<Channel>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The 99th percentile (nearest rank) of `v`, in ms.
fn p99(v: &mut [Duration]) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    ms(v[i])
}

/// RunTask calls for `job`/`<prefix><i>`, each timed.
async fn submit(c: &mut Client, image: &str, job: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<Duration> {
    let mut times = Vec::with_capacity(range.len());
    for i in range {
        let s = spec(job, &format!("{prefix}{i}"), image, "/bin/true");
        let start = Instant::now();
        c.run_task(pb::RunTaskRequest { task: Some(s) }).await.expect("RunTask");
        times.push(start.elapsed());
    }
    times
}

/// `events` more events: tasks queued and terminated at once, 8 clients at
/// a time. Returns the newest event's sequence.
async fn more_events(c: &Client, image: &str, events: usize) -> u64 {
    let per = events / 2 / 8;
    let mut joins = Vec::new();
    for w in 0..8 {
        let mut c = c.clone();
        let image = image.to_owned();
        joins.push(tokio::spawn(async move {
            let mut newest = 0;
            for i in 0..per {
                let id = format!("w{w}-{i}");
                let s = spec("scale-events", &id, &image, "/bin/true");
                c.run_task(pb::RunTaskRequest { task: Some(s) }).await.expect("RunTask");
                let req = pb::TerminateTaskRequest { job_id: "scale-events".into(), task_id: id, grace_period: None };
                newest = newest.max(c.terminate_task(req).await.expect("TerminateTask").into_inner().sequence);
            }
            newest
        }));
    }
    let mut newest = 0;
    for j in joins {
        newest = newest.max(j.await.expect("event writer"));
    }
    newest
}

/// TerminateTask of every task of `ids` (job "scale"), 8 calls in flight.
/// Returns the newest event's sequence.
async fn terminate_all(c: &Client, mut ids: Vec<String>) -> u64 {
    ids.reverse(); // taken from the end: the first queued go first
    let ids = std::sync::Arc::new(std::sync::Mutex::new(ids));
    let mut joins = Vec::new();
    for _ in 0..8 {
        let (mut c, ids) = (c.clone(), ids.clone());
        joins.push(tokio::spawn(async move {
            let mut newest = 0;
            loop {
                let Some(id) = ids.lock().expect("ids").pop() else { break };
                let req = pb::TerminateTaskRequest { job_id: "scale".into(), task_id: id, grace_period: None };
                newest = newest.max(c.terminate_task(req).await.expect("TerminateTask").into_inner().sequence);
            }
            newest
        }));
    }
    let mut newest = 0;
    for j in joins {
        newest = newest.max(j.await.expect("terminator"));
    }
    newest
}

pub(crate) async fn scale(agent: &mut Agent, image: &str, queued: usize, events: usize) -> Vec<Row> {
    let mut c = agent.start().await;
    crate::pulls::pull(&mut c, image).await;
    // The one slot, held.
    let blocker = spec("scale", "blocker", image, "/bin/sleep 3600");
    c.run_task(pb::RunTaskRequest { task: Some(blocker) }).await.expect("RunTask");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_before, _) = agent.memory_kib();
    let sample = 200.min(queued / 10).max(10);
    let mut none_queued = submit(&mut c, image, "scale", "first", 0..sample).await;
    submit(&mut c, image, "scale", "t", 0..queued).await;
    let mut many_queued = submit(&mut c, image, "scale", "last", 0..sample).await;
    let (rss_after, _) = agent.memory_kib();
    let total = queued + 2 * sample;
    let per_task_kib = rss_after.saturating_sub(rss_before) as f64 / total as f64;

    // ListTasks, page by page (the default page size).
    let mut pages = Vec::new();
    let mut page_token = String::new();
    let mut listed = 0;
    loop {
        let req = pb::ListTasksRequest { job_id: "scale".into(), page_token, ..Default::default() };
        let start = Instant::now();
        let page = c.list_tasks(req).await.expect("ListTasks").into_inner();
        pages.push(ms(start.elapsed()));
        listed += page.tasks.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, total + 1, "ListTasks missed tasks");

    // One call after the other on the `sample` tasks queued first and last:
    // GetTask (the round trip with a read) and TerminateTask (with a durable
    // write), per call. Then TerminateTask of the `queued` ones in between,
    // 8 calls in flight, as a scheduler ending a job sends them.
    let keys = |prefix: &'static str, n: usize| (0..n).map(move |i| format!("{prefix}{i}"));
    let ends: Vec<String> = keys("first", sample).chain(keys("last", sample)).collect();
    let start = Instant::now();
    for id in &ends {
        c.get_task(pb::GetTaskRequest { job_id: "scale".into(), task_id: id.clone() }).await.expect("GetTask");
    }
    let get_each = ms(start.elapsed()) / ends.len() as f64;
    let start = Instant::now();
    let mut newest = 0;
    for id in ends {
        let req = pb::TerminateTaskRequest { job_id: "scale".into(), task_id: id, grace_period: None };
        newest = newest.max(c.terminate_task(req).await.expect("TerminateTask").into_inner().sequence);
    }
    let terminate_each = ms(start.elapsed()) / (2 * sample) as f64;
    let start = Instant::now();
    newest = newest.max(terminate_all(&c, keys("t", queued).collect()).await);
    let terminated = start.elapsed();

    // The event log up to `events`, then its replay to a new stream.
    let have = 2 * total + 2;
    if events > have {
        newest = newest.max(more_events(&c, image, events - have).await);
    }
    let start = Instant::now();
    let mut stream = c.watch_tasks(pb::WatchTasksRequest { from_sequence: 0 }).await.expect("watch").into_inner();
    let mut replayed = 0usize;
    while let Some(ev) = stream.message().await.expect("events") {
        replayed += 1;
        if ev.sequence >= newest {
            break;
        }
    }
    let replay = start.elapsed();
    eprintln!("berth-bench: a new WatchTasks replayed {replayed} events in {:.0} ms", ms(replay));
    let req = pb::TerminateTaskRequest { job_id: "scale".into(), task_id: "blocker".into(), grace_period: None };
    c.terminate_task(req).await.expect("TerminateTask");

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    vec![
        Row::new(
            &format!("scale: RunTask p99, {queued} queued vs none ({sample} calls each; ms)"),
            p99(&mut many_queued),
            Some(p99(&mut none_queued)),
            "unchanged within noise",
        ),
        Row::new(&format!("scale: agent RSS per queued task, {total} queued (KiB)"), per_task_kib, None, "≤ 1"),
        Row::new(
            &format!("scale: ListTasks over {} records, a page of 1000 (ms; the median page)", total + 1),
            median(&mut pages),
            None,
            "≤ 50",
        ),
        Row::new(
            &format!("scale: WatchTasks replay of the whole log, ~{events} events (ms)"),
            ms(replay),
            None,
            "≤ 2000 for 100,000",
        ),
        Row::new(
            &format!("scale: TerminateTask of {queued} queued tasks, 8 calls in flight (ms)"),
            ms(terminated),
            None,
            "≤ 10000 for 10,000",
        ),
        Row::new(
            &format!("scale: TerminateTask, one call after the other, {total} queued (ms per call; baseline: GetTask)"),
            terminate_each,
            Some(get_each),
            "",
        ),
    ]
}
