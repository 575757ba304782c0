//! Task lifecycle against a real containerd: terminate, wall clock, slots,
//! WatchTasks resume, delete, and an agent restart while a task runs.

use berth_tests::{entries, failure_code, secs, task, v1 as pb, Agent, AgentOptions};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn terminate_stops_a_running_task() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    c.run(task("termjob", "sleeper", "/bin/sleep 300")).await.unwrap();
    c.wait_state("termjob", "sleeper", pb::TaskState::Running, Duration::from_secs(60)).await;
    let req =
        pb::TerminateTaskRequest { job_id: "termjob".into(), task_id: "sleeper".into(), grace_period: Some(secs(1)) };
    c.inner.terminate_task(req).await.unwrap();
    let done = c.wait_done("termjob", "sleeper").await;
    assert_eq!(failure_code(&done), "TaskTerminated", "{done:?}");
    // sleep is PID 1 and ignores SIGTERM, so SIGKILL follows the grace period.
    assert!(matches!(done.exit_code, Some(137) | Some(143)), "{done:?}");
}

#[tokio::test]
async fn wall_clock_expiry_stops_the_task() {
    let agent = Agent::start(AgentOptions { terminate_grace_seconds: 1, ..Default::default() }).await;
    let mut c = agent.client().await;
    let mut spec = task("wcjob", "long", "/bin/sleep 300");
    spec.constraints = Some(pb::TaskConstraints { max_wall_clock_time: Some(secs(2)), ..Default::default() });
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "MaxWallClockTimeExpiry", "{done:?}");
    let ran = done.completed_at.unwrap().seconds - done.started_at.unwrap().seconds;
    assert!((1..60).contains(&ran), "ran {ran} s");
}

#[tokio::test]
async fn one_slot_runs_tasks_one_at_a_time_in_order() {
    let agent = Agent::start(AgentOptions { task_slots: 1, ..Default::default() }).await;
    let mut c = agent.client().await;
    for i in 0..3 {
        c.run(task("slotjob", &format!("t{i}"), "/bin/sleep 1")).await.unwrap();
    }
    let mut spans = Vec::new();
    for i in 0..3 {
        let t = c.wait_done("slotjob", &format!("t{i}")).await;
        assert_eq!(t.exit_code, Some(0), "{t:?}");
        let ts = |x: &Option<prost_types::Timestamp>| {
            let x = x.as_ref().unwrap();
            x.seconds as f64 + x.nanos as f64 / 1e9
        };
        spans.push((ts(&t.started_at), ts(&t.completed_at)));
    }
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "tasks overlapped: {spans:?}");
    }
}

/// Reads `n` events from `from`.
async fn read_events(c: &mut berth_tests::Client, from: u64, n: usize) -> Vec<pb::TaskEvent> {
    let mut stream = c.inner.watch_tasks(pb::WatchTasksRequest { from_sequence: from }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(90), stream.message()).await.expect("event in time");
        out.push(ev.unwrap().expect("stream open"));
    }
    out
}

#[tokio::test]
async fn watch_resumes_without_loss_or_duplicates() {
    let agent = Agent::start(AgentOptions { task_slots: 2, ..Default::default() }).await;
    let mut c = agent.client().await;
    for i in 0..3 {
        c.run(task("watchjob", &format!("w{i}"), "/bin/sh -c 'sleep 0.3'")).await.unwrap();
    }
    // 3 tasks × ACTIVE, PREPARING, RUNNING, COMPLETED = 12 events; read them in two sessions.
    let first = read_events(&mut c, 0, 5).await;
    let last = first.last().unwrap().sequence;
    let rest = read_events(&mut c, last, 7).await;
    let all: Vec<pb::TaskEvent> = first.into_iter().chain(rest).collect();
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
    let mut per_task: HashMap<String, Vec<i32>> = HashMap::new();
    for e in &all {
        let t = e.task.as_ref().unwrap();
        assert_eq!(t.sequence, e.sequence);
        per_task.entry(t.task_id.clone()).or_default().push(t.state);
    }
    let want: Vec<i32> =
        [pb::TaskState::Active, pb::TaskState::Preparing, pb::TaskState::Running, pb::TaskState::Completed]
            .iter()
            .map(|s| *s as i32)
            .collect();
    for (task, states) in per_task {
        assert_eq!(states, want, "{task}");
    }
}

#[tokio::test]
async fn delete_removes_record_and_directory() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    c.run(task("deljob", "busy", "/bin/sleep 300")).await.unwrap();
    let del = pb::DeleteTaskRequest { job_id: "deljob".into(), task_id: "busy".into() };
    let err = c.inner.delete_task(del.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    c.run_done(task("deljob", "done", "/bin/true")).await;
    assert!(agent.task_path("deljob", "done", "").exists());
    c.inner.delete_task(pb::DeleteTaskRequest { job_id: "deljob".into(), task_id: "done".into() }).await.unwrap();
    assert!(!agent.task_path("deljob", "done", "").exists());
    assert_eq!(c.get("deljob", "done").await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(entries(&agent.root().join("workitems/deljob/job-1")).contains(&"busy".to_string()));
    let kill =
        pb::TerminateTaskRequest { job_id: "deljob".into(), task_id: "busy".into(), grace_period: Some(secs(0)) };
    c.inner.terminate_task(kill).await.unwrap();
    c.wait_done("deljob", "busy").await;
}

#[tokio::test]
async fn agent_restart_reattaches_and_never_reruns() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // Each run appends a line to a file in shared/: exactly one line proves one run.
    let cmd = "/bin/sh -c 'echo ran >> $AZ_BATCH_NODE_SHARED_DIR/runs.txt; sleep 3; exit 7'";
    c.run(task("restartjob", "t", cmd)).await.unwrap();
    c.wait_state("restartjob", "t", pb::TaskState::Running, Duration::from_secs(60)).await;
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("restartjob", "t").await;
    assert_eq!(done.exit_code, Some(7), "{done:?}");
    // A further restart must not start the completed task again.
    let status = agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.is_some_and(|s| s.success()), "agent exit on SIGTERM: {status:?}");
    agent.spawn().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = agent.client().await;
    assert_eq!(c.get("restartjob", "t").await.unwrap().exit_code, Some(7));
    assert_eq!(std::fs::read_to_string(agent.root().join("shared/runs.txt")).unwrap(), "ran\n");
}

#[tokio::test]
async fn node_info_and_health() {
    let agent = Agent::start(AgentOptions { task_slots: 3, ..Default::default() }).await;
    let mut c = agent.client().await;
    let n = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
    assert_eq!((n.node_id.as_str(), n.pool_id.as_str()), (agent.node_id().as_str(), "test-pool"));
    assert_eq!((n.task_slots_total, n.task_slots_free), (3, 3));
    assert!(n.containerd_reachable);
    assert!(n.containerd_version.starts_with('1') || n.containerd_version.starts_with('2'), "{n:?}");
    assert_eq!(n.os, "linux");
    assert!(n.cpus >= 1 && n.memory_bytes > 0);

    let ch = berth_proto::connect(&agent.addr()).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: "berth.v1.NodeAgent".into() };
    let resp = health.check(req).await.unwrap().into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Server reflection lists the API.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request, server_reflection_response,
        ServerReflectionRequest,
    };
    let ch = berth_proto::connect(&agent.addr()).await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        ServerReflectionClient::new(ch).server_reflection_info(tokio_stream_once(req)).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "berth.v1.NodeAgent"), "{list:?}");
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    tonic::codegen::tokio_stream::once(item)
}

fn ctr(namespace: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ctr")
        .args(["--address", &berth_tests::env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace", namespace])
        .args(args)
        .output()
        .expect("run ctr")
}

#[tokio::test]
async fn leftovers_of_interrupted_work_are_removed_at_start() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    let ns = agent.namespace();
    // What a crash in the middle of creating a container leaves: a snapshot and a
    // lease carrying this node's label; another node's are left alone.
    let node_label = format!("berth.node-id={}", agent.node_id());
    let mine = format!("berth-leftover-{}", agent.node_id());
    let theirs = format!("berth-other-{}", agent.node_id());
    for (key, label) in [(&mine, node_label.as_str()), (&theirs, "berth.node-id=someone-else")] {
        let out = ctr(&ns, &["snapshots", "--snapshotter", "overlayfs", "prepare", key]);
        assert!(out.status.success(), "{out:?}");
        let out = ctr(&ns, &["snapshots", "--snapshotter", "overlayfs", "label", key, label]);
        assert!(out.status.success(), "{out:?}");
        let out = ctr(&ns, &["leases", "create", "--id", key, label]);
        assert!(out.status.success(), "{out:?}");
    }
    agent.spawn().await;
    let listed = |what: &str, key: &str| {
        let out = ctr(&ns, &[what, "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(key))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while listed("snapshots", &mine) || listed("leases", &mine) {
        assert!(std::time::Instant::now() < deadline, "leftovers not removed:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed("snapshots", &theirs) && listed("leases", &theirs), "another node's objects were touched");
    let _ = ctr(&ns, &["snapshots", "--snapshotter", "overlayfs", "rm", &theirs]);
    let _ = ctr(&ns, &["leases", "rm", &theirs]);
}
