//! Run options added for Batch users' `docker create` habits, against a real
//! agent, containerd and runc: each read back from inside the container, or
//! from containerd.

use berth_tests::{failure_code, task, v1 as pb, with_options, Agent, AgentOptions};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Reads a value inside the container from the cgroup v2 file, else the v1 one.
fn cg(v2: &str, v1: &str) -> String {
    format!("cat /sys/fs/cgroup/{v2} 2>/dev/null || cat /sys/fs/cgroup/{v1}")
}

#[tokio::test]
async fn resource_oom_and_name_flags_reach_the_kernel() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let script = format!(
        "cat /proc/self/oom_score_adj; cat /proc/sys/kernel/domainname; {}; {}; {}",
        cg("cpu.max", "cpu/cpu.cfs_quota_us"),
        if cgroup_v2() { "true".to_string() } else { "cat /sys/fs/cgroup/cpu/cpu.cfs_period_us".to_string() },
        cg("memory.low", "memory/memory.soft_limit_in_bytes"),
    );
    let opts = "-it -d --tty --interactive --detach --name web-1 --memory 64m --memory-reservation 32m \
                --cpu-quota 20000 --cpu-period 50000 --oom-score-adj 300 --domainname example.test --expose 80/tcp";
    let done = c.run_done(with_options(task("ropts", "kernel", &format!("/bin/sh -c '{script}'")), opts)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {:?}", c.read("ropts", "kernel", "stderr.txt").await);
    let out = c.read("ropts", "kernel", "stdout.txt").await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["300", "example.test"], "{out}");
    if cgroup_v2() {
        assert_eq!(lines[2..], ["20000 50000", &(32u64 << 20).to_string()], "{out}");
    } else {
        assert_eq!(lines[2..], ["20000", "50000", &(32u64 << 20).to_string()], "{out}");
    }

    // --name is kept as the container's berth.name label (berth names the container).
    c.run(with_options(task("ropts", "named", "/bin/sleep 60"), "--name web-1")).await.unwrap();
    let running = c.wait_state("ropts", "named", pb::TaskState::Running, Duration::from_secs(60)).await;
    let cid = running.container_info.unwrap().container_id;
    let info = std::process::Command::new("ctr")
        .args(["--address", &berth_tests::env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace"])
        .arg(agent.namespace())
        .args(["containers", "info", &cid])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("ctr containers info");
    assert_eq!(v["Labels"]["berth.name"], "web-1", "{v}");
    c.terminate("ropts", "named").await;
}

#[tokio::test]
async fn uts_and_cgroup_namespaces_of_the_node_by_policy() {
    let agent = Agent::start(AgentOptions {
        extra_config: "[policy]\nallow_host_namespaces = true\n".into(),
        ..AgentOptions::default()
    })
    .await;
    let mut c = agent.client().await;
    let script = "/bin/sh -c 'hostname; grep -c berth /proc/self/cgroup || true'";
    let done = c.run_done(with_options(task("ns", "host", script), "--uts host --cgroupns host")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let out = c.read("ns", "host", "stdout.txt").await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], node);
    assert_ne!(lines[1], "0", "the node's cgroup namespace shows the agent's cgroup path: {out}");
    let done = c.run_done(with_options(task("ns", "own", script), "--hostname inside")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("ns", "own", "stdout.txt").await.unwrap(), "inside\n0\n", "its own names and cgroup root");

    // Without the policy: refused at RunTask.
    let closed = Agent::start(AgentOptions::default()).await;
    let mut c = closed.client().await;
    let err = c.run(with_options(task("ns", "refused", "/bin/true"), "--uts host")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("allow_host_namespaces"), "{err:?}");
}

#[tokio::test]
async fn oom_kill_disable_is_policy_gated_and_needs_cgroup_v1() {
    let agent = Agent::start(AgentOptions {
        extra_config: "[policy]\nallow_oom_kill_disable = true\n".into(),
        ..AgentOptions::default()
    })
    .await;
    let mut c = agent.client().await;
    let spec = with_options(
        task("oom", "off", "/bin/sh -c 'grep oom_kill_disable /sys/fs/cgroup/memory/memory.oom_control'"),
        "--memory 64m --oom-kill-disable",
    );
    if cgroup_v2() {
        let err = c.run(spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("cgroup v2"), "{err:?}");
    } else {
        let done = c.run_done(spec).await;
        assert_eq!(done.exit_code, Some(0), "{done:?}");
        assert_eq!(c.read("oom", "off", "stdout.txt").await.unwrap(), "oom_kill_disable 1\n");
    }
    let closed = Agent::start(AgentOptions::default()).await;
    let err =
        closed.client().await.run(with_options(task("oom", "no", "/bin/true"), "-m 64m --oom-kill-disable")).await;
    assert!(err.unwrap_err().message().contains("allow_oom_kill_disable"));
}

#[tokio::test]
async fn pull_and_platform_choose_the_image() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let missing = format!("{}/berth-test/does-not-exist:1", berth_tests::env("BERTH_TEST_REGISTRY"));
    // --pull never wins over the settings' MISSING: nothing is pulled.
    let mut spec = with_options(task("pull", "never", "/bin/true"), "--pull never");
    spec.container.as_mut().unwrap().image = missing.clone();
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ImageNotFound", "{done:?}");
    let mut spec = with_options(task("pull", "missing", "/bin/true"), "--pull missing");
    spec.container.as_mut().unwrap().image = missing;
    assert_eq!(failure_code(&c.run_done(spec).await), "ImagePullFailed");
    let done = c.run_done(with_options(task("pull", "always", "/bin/true"), "--pull always")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");

    let (mine, other) = match std::env::consts::ARCH {
        "aarch64" => ("linux/arm64", "linux/amd64"),
        _ => ("linux/amd64", "linux/arm64"),
    };
    let done = c.run_done(with_options(task("plat", "mine", "/bin/true"), &format!("--platform {mine}"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let done = c.run_done(with_options(task("plat", "other", "/bin/true"), &format!("--platform {other}"))).await;
    assert_eq!(failure_code(&done), "ImagePlatformMismatch", "{done:?}");
    assert!(done.failure_info.unwrap().message.contains(other));
}

#[tokio::test]
async fn flags_refused_by_name_say_why_and_runtime_nvidia_needs_gpus() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    for (opts, words) in [
        ("--restart always", "max_task_retry_count"),
        ("--health-cmd true", "health checks"),
        ("--log-driver none", "stdout.txt"),
        ("--log-opt max-size=1m", "stdout.txt"),
    ] {
        let err = c.run(with_options(task("refused", "t", "/bin/true"), opts)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{opts}");
        assert!(err.message().contains(words), "{opts}: {}", err.message());
    }
    let err = c.run(with_options(task("refused", "t", "/bin/true"), "--runtime nvidia")).await.unwrap_err();
    assert!(err.message().contains("this node has no GPUs"), "{}", err.message());
    assert_eq!(c.get("refused", "t").await.unwrap_err().code(), Code::NotFound);
}
