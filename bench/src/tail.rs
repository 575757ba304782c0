//! The latency tail taken apart (issue 23, point 3): the agent logs each
//! task's phases from acceptance to RUNNING with "task running"
//! (`queued=0.41 dirs=0.12 …`, ms); for each phase, its p99 over the run's
//! bridge tasks beside its p50, and what lies outside the agent's phases
//! (the RunTask call before acceptance, the event's way to the watcher).

use crate::report::Row;
use std::collections::HashMap;
use std::time::Duration;

/// The phases of `job`'s tasks, from the agent's JSON log: task → [(phase, ms)].
fn logged(log: &str, job: &str) -> HashMap<String, Vec<(String, f64)>> {
    let mut out = HashMap::new();
    for v in log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        let Some(f) = v.get("fields") else { continue };
        let field = |k: &str| f.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        if field("message") != "task running" || field("job_id") != job {
            continue;
        }
        let phases = field("phases")
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        out.insert(field("task_id"), phases);
    }
    out
}

/// The q-quantile (nearest rank) of `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v.get(i).copied().unwrap_or(0.0)
}

/// One row per phase (p99, beside its p50 in the baseline column), then the
/// rest of RunTask → RUNNING as the bench saw it (`seen`: task → time).
pub(crate) fn rows(log: &str, job: &str, seen: &[(String, Duration)]) -> Vec<Row> {
    let phases = logged(log, job);
    let Some(order) = seen.iter().find_map(|(t, _)| phases.get(t)) else {
        eprintln!("berth-bench: no \"task running\" phases in the agent's log for {job}");
        return Vec::new();
    };
    let names: Vec<String> = order.iter().map(|p| p.0.clone()).collect();
    let name = |what: &str| format!("latency tail: {what} (ms; p99, beside p50)");
    let mut rows = Vec::new();
    for n in &names {
        let mut v: Vec<f64> =
            seen.iter().filter_map(|(t, _)| phases.get(t)?.iter().find(|p| &p.0 == n).map(|p| p.1)).collect();
        rows.push(Row::new(&name(n), quantile(&mut v, 0.99), Some(quantile(&mut v, 0.5)), ""));
    }
    let mut outside: Vec<f64> = seen
        .iter()
        .filter_map(|(t, d)| Some(d.as_secs_f64() * 1000.0 - phases.get(t)?.iter().map(|p| p.1).sum::<f64>()))
        .collect();
    rows.push(Row::new(
        &name("outside the agent's phases: the call before acceptance, the event to the watcher"),
        quantile(&mut outside, 0.99),
        Some(quantile(&mut outside, 0.5)),
        "",
    ));
    // The slowest task, phase by phase, for a look at one tail.
    if let Some((t, d)) = seen.iter().max_by_key(|(_, d)| *d) {
        eprintln!("berth-bench: slowest of {job}: {t}, {:.1} ms: {:?}", d.as_secs_f64() * 1000.0, phases.get(t));
    }
    rows
}
