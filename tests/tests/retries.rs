//! Retries (`constraints.max_task_retry_count`) against a real agent,
//! containerd and runc: every attempt is a new container, the event stream
//! shows each one, the earlier attempts' output is kept.

use berth_tests::{binary, failure_code, image, task, v1 as pb, Agent, AgentOptions};
use std::time::Duration;

/// Fails twice, then succeeds: the working directory (kept between attempts) counts them.
const THIRD_TIME_LUCKY: &str = "/bin/sh -c 'echo x >> $AZ_BATCH_TASK_WORKING_DIR/count; \
     n=$(wc -l < $AZ_BATCH_TASK_WORKING_DIR/count); echo out-$n; echo err-$n >&2; [ $n -ge 3 ]'";

fn with_retries(mut spec: pb::TaskSpec, n: i32) -> pb::TaskSpec {
    spec.constraints = Some(pb::TaskConstraints { max_task_retry_count: n, ..Default::default() });
    spec
}

/// The events of `job`/`id` in the replayed log, until it is COMPLETED.
async fn events_of(c: &mut berth_tests::Client, job: &str, id: &str) -> Vec<pb::TaskInfo> {
    let mut stream = c.inner.watch_tasks(pb::WatchTasksRequest { from_sequence: 0 }).await.unwrap().into_inner();
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("event in time");
        let t = ev.unwrap().expect("stream open").task.unwrap();
        if t.job_id == job && t.task_id == id {
            let done = t.state == pb::TaskState::Completed as i32;
            out.push(t);
            if done {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn a_failing_task_runs_again_in_new_containers_until_it_succeeds() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let done = c.run_done(with_retries(task("retry", "lucky", THIRD_TIME_LUCKY), 5)).await;
    assert_eq!((done.exit_code, done.retry_count), (Some(0), 2), "{done:?}");
    assert_eq!(done.result, pb::TaskResult::Success as i32);
    assert!(done.failure_info.is_none());
    let prev = done.previous_attempt.clone().unwrap();
    assert_eq!(prev.exit_code, Some(1));
    assert_eq!(prev.failure_info.unwrap().code, "FailureExitCode");
    assert!(done.last_retry_at.is_some());
    assert_eq!(done.spec.unwrap().constraints.unwrap().max_task_retry_count, 5);

    // Each attempt's output is kept; the last one's is stdout.txt.
    let file = |name: &str| std::fs::read_to_string(agent.task_path("retry", "lucky", name)).unwrap();
    assert_eq!((file("stdout.0.txt"), file("stderr.0.txt")), ("out-1\n".into(), "err-1\n".into()));
    assert_eq!((file("stdout.1.txt"), file("stderr.1.txt")), ("out-2\n".into(), "err-2\n".into()));
    assert_eq!((file("stdout.txt"), file("stderr.txt")), ("out-3\n".into(), "err-3\n".into()));

    // The event stream shows every attempt, each in a container of its own.
    let events = events_of(&mut c, "retry", "lucky").await;
    let running: Vec<(u32, String)> = events
        .iter()
        .filter(|t| t.state == pb::TaskState::Running as i32)
        .map(|t| (t.retry_count, t.container_info.as_ref().unwrap().container_id.clone()))
        .collect();
    assert_eq!(running.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2], "{running:?}");
    let mut ids: Vec<&String> = running.iter().map(|r| &r.1).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "a new container per attempt: {running:?}");
    let retried: Vec<u32> = events
        .iter()
        .filter(|t| t.state == pb::TaskState::Preparing as i32 && t.previous_attempt.is_some())
        .map(|t| t.retry_count)
        .collect();
    assert_eq!(retried, [1, 2], "each retry is an event, with how the attempt before it ended");
    c.wait_container_deleted("retry", "lucky").await;
}

#[tokio::test]
async fn the_limit_ends_the_task_with_the_last_attempts_result_and_wrong_counts_are_refused() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let done = c.run_done(with_retries(task("retry", "limit", THIRD_TIME_LUCKY), 1)).await;
    assert_eq!((done.exit_code, done.retry_count, failure_code(&done).as_str()), (Some(1), 1, "FailureExitCode"));
    assert_eq!(c.read("retry", "limit", "stdout.txt").await.unwrap(), "out-2\n");
    assert_eq!(c.read("retry", "limit", "stdout.0.txt").await.unwrap(), "out-1\n");

    // No retries unless asked for.
    let done = c.run_done(task("retry", "once", "/bin/sh -c 'exit 7'")).await;
    assert_eq!((done.exit_code, done.retry_count), (Some(7), 0));

    // A missing image is the task's mistake: not retried.
    let missing = format!("{}/berth-test/nothing:here", berth_tests::env("BERTH_TEST_REGISTRY"));
    let mut spec = with_retries(task("retry", "noimage", "/bin/true"), 3);
    spec.container.as_mut().unwrap().image = missing;
    let done = c.run_done(spec).await;
    assert_eq!(done.retry_count, 0, "{done:?}");

    let err = c.run(with_retries(task("retry", "bad", "/bin/true"), -2)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("max_task_retry_count"), "{err:?}");
}

#[tokio::test]
async fn berthctl_max_retries() {
    let agent = Agent::start(AgentOptions::default()).await;
    let img = image("busybox");
    let out = std::process::Command::new(binary("berthctl"))
        .args(["--addr", &agent.addr(), "run", "--job", "retry", "--task", "ctl", "--image", &img])
        .args(["--command-line", THIRD_TIME_LUCKY, "--max-retries", "2", "--wait", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retry_count"], 2, "{v}");
}

#[tokio::test]
async fn a_host_task_is_retried_too() {
    let policy = "[[users]]\nname = \"alice\"\nuid = 1500\ngid = 1500\n[policy]\nallow_host_tasks = true\n";
    let agent = Agent::start(AgentOptions { extra_config: policy.into(), ..Default::default() }).await;
    let mut c = agent.client().await;
    let spec = berth_tests::as_user(berth_tests::host_task("hretry", "lucky", THIRD_TIME_LUCKY), "alice");
    let done = c.run_done(with_retries(spec, 3)).await;
    assert_eq!((done.exit_code, done.retry_count), (Some(0), 2), "{done:?}");
    assert_eq!(c.read("hretry", "lucky", "stdout.1.txt").await.unwrap(), "out-2\n");
    assert_eq!(c.read("hretry", "lucky", "stdout.txt").await.unwrap(), "out-3\n");
}
