//! Fault tests: agent crashes, a containerd restart, a lost state database,
//! SIGTERM with running tasks, a full disk. They stop and start shared parts
//! (containerd) or fill the shared small file system, so they are `#[ignore]`d
//! in the main pass and run one at a time by scripts/test
//! (`cargo test --test faults -- --ignored --test-threads=1`).

use berth_tests::{containerd, failure_code, task, task_on, v1 as pb, Agent, AgentOptions};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Follows WatchTasks across agent restarts, resuming from the last sequence it
/// saw; keeps every event.
fn spawn_watcher(addr: String, done_after: usize) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<pb::TaskEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::<pb::TaskEvent>::new()));
    let out = seen.clone();
    let handle = tokio::spawn(async move {
        let completed = |v: &Vec<pb::TaskEvent>| {
            v.iter().filter(|e| e.task.as_ref().is_some_and(|t| t.state == pb::TaskState::Completed as i32)).count()
        };
        loop {
            let last = out.lock().unwrap().last().map(|e| e.sequence).unwrap_or(0);
            if let Ok(ch) = berth_proto::connect(&addr).await {
                let mut client = pb::node_agent_client::NodeAgentClient::new(ch);
                if let Ok(stream) = client.watch_tasks(pb::WatchTasksRequest { from_sequence: last }).await {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(ev)) = stream.message().await {
                        let mut v = out.lock().unwrap();
                        v.push(ev);
                        if completed(&v) >= done_after {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (handle, seen)
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn agent_killed_ten_times_loses_nothing_and_reruns_nothing() {
    let mut agent = Agent::start(AgentOptions { task_slots: 8, ..Default::default() }).await;
    let mut c = agent.client().await;
    let n = 30;
    let durations = ["0", "0.3", "1", "2"];
    let mut want = HashMap::new();
    for i in 0..n {
        let code = i % 4;
        let cmd = format!(
            "/bin/sh -c 'echo task-{i} >> $AZ_BATCH_NODE_SHARED_DIR/runs.txt; echo out-{i}; sleep {}; exit {code}'",
            durations[i % durations.len()]
        );
        c.run(task("crashjob", &format!("t{i}"), &cmd)).await.unwrap();
        want.insert(format!("t{i}"), code as i32);
    }
    let (watcher, seen) = spawn_watcher(agent.addr(), n);
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(300 + 60 * round)).await;
        agent.stop_with(Signal::SIGKILL);
        agent.spawn().await;
    }
    let mut c = agent.client().await;
    for i in 0..n {
        let t = c.wait_done("crashjob", &format!("t{i}")).await;
        assert_eq!(t.exit_code, Some(want[&format!("t{i}")]), "{t:?}");
        assert_eq!(c.read("crashjob", &format!("t{i}"), "stdout.txt").await.unwrap(), format!("out-{i}\n"));
    }
    // Every task ran exactly once.
    let runs = std::fs::read_to_string(agent.root().join("shared/runs.txt")).unwrap();
    let mut lines: Vec<&str> = runs.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
    expected.sort();
    assert_eq!(lines, expected);

    // The watcher, resuming after every crash, saw each transition once, in order.
    tokio::time::timeout(Duration::from_secs(60), watcher).await.expect("watcher saw every completion").unwrap();
    let events = seen.lock().unwrap().clone();
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences not strictly increasing: {seqs:?}");
    let mut per_task: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in &events {
        let t = e.task.as_ref().unwrap();
        per_task.entry(t.task_id.clone()).or_default().push(t.state);
    }
    let all_states =
        [pb::TaskState::Active, pb::TaskState::Preparing, pb::TaskState::Running, pb::TaskState::Completed]
            .map(|s| s as i32)
            .to_vec();
    assert_eq!(per_task.len(), n);
    for (task, states) in per_task {
        assert_eq!(states, all_states, "{task}");
    }
}

/// Starts containerd again if a test stopped it and then failed.
struct RestartContainerd;

impl Drop for RestartContainerd {
    fn drop(&mut self) {
        let sock = berth_tests::env("BERTH_TEST_CONTAINERD_SOCKET");
        let up = std::process::Command::new("ctr").args(["--address", &sock, "version"]).output();
        if !up.is_ok_and(|o| o.status.success()) {
            containerd("start");
        }
    }
}

async fn health(addr: &str) -> i32 {
    let ch = berth_proto::connect(addr).await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: "berth.v1.NodeAgent".into() };
    h.check(req).await.unwrap().into_inner().status
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn containerd_restart_keeps_tasks_and_their_exits() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    c.run(task("cdjob", "early", "/bin/sh -c 'sleep 4; exit 4'")).await.unwrap();
    c.run(task("cdjob", "late", "/bin/sh -c 'sleep 14; echo done; exit 5'")).await.unwrap();
    for t in ["early", "late"] {
        c.wait_state("cdjob", t, pb::TaskState::Running, Duration::from_secs(60)).await;
    }
    let _restart = RestartContainerd;
    containerd("stop");
    let stopped_at = std::time::SystemTime::now();
    // The node says containerd is gone, and health says NOT_SERVING.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node().await.containerd_reachable {
        assert!(Instant::now() < deadline, "GetNode still says containerd is reachable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = c.node().await;
    assert_eq!((n.state, n.state_reason.as_str()), (pb::NodeState::Unusable as i32, "containerd is unreachable"));
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(health(&agent.addr()).await, ServingStatus::NotServing as i32);
    // "early" exits while containerd is down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    containerd("start");

    let early = c.wait_done("cdjob", "early").await;
    // containerd 1.7 and 2.x, starting again, delete the shim of a task that
    // exited while they were down ("cleaning leaked shim process"), and the
    // exit status with it: nothing is left to ask (docs/containerd-matrix.md).
    let version = std::env::var("BERTH_TEST_CONTAINERD_VERSION").unwrap_or_else(|_| "1.6".into());
    if version == "1.6" {
        assert_eq!((early.exit_code, failure_code(&early).as_str()), (Some(4), "FailureExitCode"), "{early:?}");
        let exited = early.completed_at.unwrap();
        let stopped = stopped_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(exited.seconds >= stopped, "the exit being tested happened while containerd was down");
    } else {
        assert_eq!((early.exit_code, failure_code(&early).as_str()), (None, "ContainerLost"), "{version}: {early:?}");
    }
    let late = c.wait_done("cdjob", "late").await;
    assert_eq!(late.exit_code, Some(5), "{late:?}");
    assert_eq!(c.read("cdjob", "late", "stdout.txt").await.unwrap(), "done\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&agent.addr()).await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.node().await.containerd_reachable);
    // And new tasks run again.
    let t = c.run_done(task("cdjob", "after", "/bin/true")).await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn lost_database_is_rebuilt_from_containerd_and_task_dirs() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let done = c.run_done(task("dbjob", "finished", "/bin/sh -c 'exit 3'")).await;
    assert_eq!(done.exit_code, Some(3));
    c.wait_container_deleted("dbjob", "finished").await;
    c.run(task("dbjob", "running", "/bin/sh -c 'sleep 8; exit 6'")).await.unwrap();
    c.run(task("dbjob", "exits-while-down", "/bin/sh -c 'sleep 3; exit 9'")).await.unwrap();
    for t in ["running", "exits-while-down"] {
        c.wait_state("dbjob", t, pb::TaskState::Running, Duration::from_secs(60)).await;
    }
    let status = agent.stop_with(Signal::SIGTERM);
    assert!(status.is_some_and(|s| s.success()));
    std::fs::remove_dir_all(agent.state_dir()).unwrap();
    // "exits-while-down" exits while no agent runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.spawn().await;
    let mut c = agent.client().await;

    let t = c.wait_done("dbjob", "exits-while-down").await;
    assert_eq!(t.exit_code, Some(9), "{t:?}");
    let t = c.wait_done("dbjob", "running").await;
    assert_eq!(t.exit_code, Some(6), "{t:?}");
    let t = c.get("dbjob", "finished").await.unwrap();
    assert_eq!((t.state, failure_code(&t).as_str()), (pb::TaskState::Completed as i32, "TaskRecordLost"));
    let notes = c.node().await.notes;
    assert!(notes.iter().any(|n| n.contains("rebuilt")), "{notes:?}");
    assert!(agent.log().contains("adopting a container"), "the log says what was adopted");
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn host_tasks_are_adopted_when_only_the_database_is_lost() {
    let opts = AgentOptions { extra_config: "[policy]\nallow_host_tasks = true\n".into(), ..Default::default() };
    let mut agent = Agent::start(opts).await;
    let mut c = agent.client().await;
    let mut spec = berth_tests::host_task("dbhost", "running", "/bin/sh -c 'sleep 4; echo out; exit 6'");
    spec.environment.insert("SECRET_TOKEN".into(), "s3cr3t-value".into());
    c.run(spec).await.unwrap();
    // It exits once the agent is gone (the test makes the marker then).
    let marker = agent.root().join("shared/agent-gone");
    let cmd = format!("/bin/sh -c 'while [ ! -e {} ]; do sleep 0.05; done; exit 9'", marker.display());
    c.run(berth_tests::host_task("dbhost", "exits-while-down", &cmd)).await.unwrap();
    for t in ["running", "exits-while-down"] {
        c.wait_state("dbhost", t, pb::TaskState::Running, Duration::from_secs(60)).await;
    }
    agent.stop_with(Signal::SIGKILL);
    // The database alone is lost; the shims and their files are not.
    for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        let _ = std::fs::remove_file(agent.state_dir().join(f));
    }
    std::fs::write(&marker, "").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.spawn().await;
    let mut c = agent.client().await;
    let t = c.wait_done("dbhost", "exits-while-down").await;
    assert_eq!(t.exit_code, Some(9), "{t:?}");
    let t = c.wait_done("dbhost", "running").await;
    assert_eq!(t.exit_code, Some(6), "{t:?}");
    assert_eq!(c.read("dbhost", "running", "stdout.txt").await.unwrap(), "out\n");
    // The adopted record keeps no environment (it may hold secrets).
    assert!(t.spec.unwrap().environment.is_empty());
    assert!(agent.log().contains("adopting a host task"), "the log says what was adopted");
    let db = std::fs::read(agent.state_dir().join("berth.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains("s3cr3t-value"));
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn sigterm_leaves_tasks_running_and_the_next_agent_picks_them_up() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let cmd =
        "/bin/sh -c 'for i in $(seq 1 30); do echo $i >> $AZ_BATCH_TASK_WORKING_DIR/ticks; sleep 0.1; done; exit 2'";
    c.run(task("termjob", "ticker", cmd)).await.unwrap();
    c.wait_state("termjob", "ticker", pb::TaskState::Running, Duration::from_secs(60)).await;
    let start = Instant::now();
    let status = agent.stop_with(Signal::SIGTERM);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "the agent took {:?} to stop", start.elapsed());
    let ticks = agent.task_path("termjob", "ticker", "wd/ticks");
    let before = std::fs::read_to_string(&ticks).unwrap_or_default().lines().count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = std::fs::read_to_string(&ticks).unwrap().lines().count();
    assert!(after > before, "the task stopped with the agent ({before} → {after} ticks)");
    agent.spawn().await;
    let mut c = agent.client().await;
    let t = c.wait_done("termjob", "ticker").await;
    assert_eq!(t.exit_code, Some(2), "{t:?}");
    assert_eq!(std::fs::read_to_string(&ticks).unwrap().lines().count(), 30);
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn full_disk_fails_new_tasks_clearly_and_disturbs_nothing_else() {
    let small = std::path::PathBuf::from(berth_tests::env("BERTH_TEST_SMALL_FS"));
    let root = small.join(format!("node-{}", std::process::id()));
    let agent = Agent::start(AgentOptions { root_dir: Some(root.clone()), min_free_mb: 4, ..Default::default() }).await;
    let mut c = agent.client().await;
    c.run(task("diskjob", "running", "/bin/sh -c 'sleep 2; echo fine'")).await.unwrap();
    c.wait_state("diskjob", "running", pb::TaskState::Running, Duration::from_secs(60)).await;

    // Fill the file system to less than min_free_mb.
    let filler = small.join("filler");
    let stat = nix::sys::statvfs::statvfs(&small).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    std::fs::write(&filler, vec![0u8; (free - (1 << 20)) as usize]).unwrap();

    let t = c.run_done(task("diskjob", "refused", "/bin/true")).await;
    let f = t.failure_info.clone().unwrap();
    assert_eq!((f.code.as_str(), f.category), ("DiskFull", pb::FailureCategory::ServerError as i32), "{t:?}");
    assert!(f.message.contains("MiB free"), "{f:?}");
    let t = c.wait_done("diskjob", "running").await;
    assert_eq!(t.exit_code, Some(0), "the running task carries on: {t:?}");
    assert!(c.node().await.containerd_reachable);

    std::fs::remove_file(&filler).unwrap();
    let t = c.run_done(task("diskjob", "after", "/bin/true")).await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(root);
}

/// Stops (`stop`) or starts (`start`) the plain registry.
fn registry(action: &str) {
    let script = format!(
        ". {}; berth_registry_{action} {}",
        berth_tests::env("BERTH_TEST_LIB"),
        berth_tests::env("BERTH_TEST_DIR")
    );
    let out = std::process::Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "registry {action}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the plain registry again if a test stopped it and then failed.
struct RestartRegistry;

impl Drop for RestartRegistry {
    fn drop(&mut self) {
        registry("start");
    }
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn registry_outage_is_retried_then_reported_and_recovered_from() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let _guard = RestartRegistry;
    registry("stop");
    // Down for good: retried, then a clear failure.
    let spec = task_on("regjob", "down", "/bin/true", berth_tests::image("layers_b"));
    let done = c.run_done(spec).await;
    let f = done.failure_info.clone().unwrap();
    assert_eq!(f.code, "ImagePullFailed", "{done:?}");
    assert!(f.message.contains("cannot reach registry"), "{f:?}");
    assert!(agent.log().contains("transient pull error; retrying"));
    // Back within the retries: the pull goes through.
    let spec = task_on("regjob", "back", "/bin/true", berth_tests::image("layers_b"));
    c.run(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    registry("start");
    let done = c.wait_done("regjob", "back").await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn corrupted_blob_fails_on_its_digest_and_leaves_no_image() {
    let img = berth_tests::image("user");
    // The config blob of the `user` image: pulled by no other test, so neither
    // the agent nor containerd has it yet.
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{img}")])
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest JSON");
    let digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let hex = digest.trim_start_matches("sha256:");
    let blob = std::path::PathBuf::from(berth_tests::env("BERTH_TEST_REGISTRY_STORAGE"))
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let original = std::fs::read(&blob).unwrap();
    let mut tampered = original.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x20;
    std::fs::write(&blob, &tampered).unwrap();

    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = task_on("corruptjob", "bad", "/bin/true", img.clone());
    let done = c.run_done(spec).await;
    std::fs::write(&blob, &original).unwrap();
    let f = done.failure_info.clone().unwrap();
    assert_eq!(f.code, "ImagePullFailed", "{done:?}");
    assert!(f.message.to_lowercase().contains("digest"), "{f:?}");
    let images = std::process::Command::new("ctr")
        .args(["--address", &berth_tests::env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace", &agent.namespace()])
        .args(["images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&images.stdout).contains("berth-test/user"), "an image record was left");

    // Restored: the same image pulls and runs.
    let spec = task_on("corruptjob", "good", "", img);
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
}

/// Unmounts a test mount when dropped (also when the test fails).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str]) {
    let status = std::process::Command::new("mount").args(args).status().unwrap();
    assert!(status.success(), "mount {args:?}");
}

#[tokio::test]
#[ignore = "fault test: run by scripts/test with --ignored --test-threads=1"]
async fn a_node_root_that_takes_no_write_makes_the_node_unusable_until_it_does() {
    // The node root on a file system of its own with few inodes: space is
    // left, permission bits say nothing to root, yet nothing can be created.
    let fs = tempfile::tempdir().unwrap();
    let fs_path = fs.path().to_str().unwrap().to_owned();
    mount(&["-n", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64,mode=755", "berth-inodes", &fs_path]);
    let _unmount = Unmount(fs.path().to_owned());
    let root = fs.path().join("node");
    let agent = Agent::start(AgentOptions { root_dir: Some(root.clone()), ..Default::default() }).await;
    let mut c = agent.client().await;
    c.wait_node_state(pb::NodeState::Idle).await;

    let mut fillers = Vec::new();
    for i in 0.. {
        let f = fs.path().join(format!("filler-{i}"));
        if std::fs::write(&f, b"").is_err() {
            break;
        }
        fillers.push(f);
    }
    let n = c.wait_node_state(pb::NodeState::Unusable).await;
    assert!(n.state_reason.contains("is not writable"), "{}", n.state_reason);
    assert!(n.state_reason.contains(&root.display().to_string()), "{}", n.state_reason);
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    c.wait_node_state(pb::NodeState::Idle).await;

    // A read-only node root (a bind mount of it made read-only).
    let root_s = root.to_str().unwrap();
    mount(&["-n", "--bind", root_s, root_s]);
    let ro = Unmount(root.clone());
    mount(&["-n", "-o", "remount,bind,ro", root_s]);
    let n = c.wait_node_state(pb::NodeState::Unusable).await;
    assert!(n.state_reason.contains("read-only"), "{}", n.state_reason);
    drop(ro);
    // (containerd, started before these mounts, does not see them: no
    // container task is run on this node root.)
    c.wait_node_state(pb::NodeState::Idle).await;
    drop(agent);
}
