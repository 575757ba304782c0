//! Task statistics against a real agent, containerd and runc: what a task's
//! cgroup says it used, at completion and while it runs, for container and
//! host tasks; berthctl get and top; the node's figures and metric totals.

use berth_tests::v1 as pb;
use berth_tests::{host_task, task, Agent, AgentOptions};
use std::time::Duration;

/// About 2 s of CPU, 64 MiB held, 8 MiB written.
const BURN: &str = "/bin/sh -c 'x=$(head -c 67108864 /dev/zero | tr \"\\0\" a); \
    end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done; \
    dd if=/dev/zero of=$AZ_BATCH_TASK_WORKING_DIR/f bs=1M count=8 conv=fsync 2>/dev/null; echo ${#x}'";

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9).unwrap_or(0.0)
}

/// The figures of a task that burned CPU and held 64 MiB are within sensible bounds.
fn check(name: &str, s: &pb::TaskStatistics) {
    let (user, kernel, wall) = (secs(&s.user_cpu_time), secs(&s.kernel_cpu_time), secs(&s.wall_clock_time));
    assert!((2.0..60.0).contains(&wall), "{name}: wall {wall} {s:?}");
    assert!(user + kernel >= 0.5, "{name}: it burned CPU: {s:?}");
    assert!(user + kernel <= wall * 2.5 + 0.5, "{name}: no more CPU than 2 CPUs give: {s:?}");
    assert!(s.peak_memory_bytes >= 60 << 20 && s.peak_memory_bytes < 2 << 30, "{name}: peak {s:?}");
}

#[tokio::test]
async fn tasks_report_what_they_used() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("[policy]\nallow_host_tasks = true\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    for (name, spec) in [("container", task("stats", "container", BURN)), ("host", host_task("stats", "host", BURN))] {
        c.run(spec).await.unwrap();
        c.wait_state("stats", name, pb::TaskState::Running, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Live while it runs.
        let live = c.get("stats", name).await.unwrap();
        if live.state == pb::TaskState::Running as i32 {
            let s = live.stats.expect("live figures while RUNNING");
            assert!(secs(&s.wall_clock_time) >= 1.0, "{name}: {s:?}");
            assert!(s.memory_bytes > 0, "{name}: memory in use now: {s:?}");
            if name == "container" {
                // berthctl top lists it, with its figures.
                let out = std::process::Command::new(berth_tests::binary("berthctl"))
                    .args(["--addr", &agent.addr(), "top", "--count", "1"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success() && text.contains("stats  container"), "{text}");
                assert!(text.contains("CPU%") && text.contains("load"), "{text}");
            }
        }
        let done = c.wait_done("stats", name).await;
        assert_eq!(done.exit_code, Some(0), "{name}: {done:?} {}", c.read("stats", name, "stderr.txt").await.unwrap());
        let s = done.stats.expect("figures at completion");
        check(name, &s);
        assert_eq!(s.memory_bytes, 0, "{name}: no memory in use once completed");
        // Kept with the record.
        assert_eq!(c.get("stats", name).await.unwrap().stats, Some(s));
    }
    // berthctl get shows them.
    let out = std::process::Command::new(berth_tests::binary("berthctl"))
        .args(["--addr", &agent.addr(), "get", "--job", "stats", "--task", "container"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cpu ") && text.contains("peak memory"), "{text}");
    // The node's figures, and the totals of completed tasks in the metrics.
    let node = c.node().await;
    assert!((0.0..=100.0).contains(&node.cpu_used_percent), "{}", node.cpu_used_percent);
    assert!(node.memory_used_bytes > 0 && node.memory_available_bytes > 0);
    assert!(node.load_average_1m >= 0.0);
    let m = berth_tests::scrape(port);
    let cpu: f64 = m
        .lines()
        .filter(|l| l.starts_with("berth_task_cpu_seconds_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(cpu >= 1.0, "node-level CPU totals: {m}");
    assert!(m.contains("berth_task_wall_clock_seconds_total"), "{m}");
}
