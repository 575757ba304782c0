//! berthctl against a real agent: `run --wait` exit codes, logs, list, node.

use berth_tests::{binary, image, Agent, AgentOptions};
use std::process::Command;

fn berthctl(agent: &Agent, args: &[&str]) -> std::process::Output {
    Command::new(binary("berthctl")).arg("--addr").arg(agent.addr()).args(args).output().expect("run berthctl")
}

#[tokio::test]
async fn run_wait_logs_list_node() {
    let agent = Agent::start(AgentOptions::default()).await;
    let img = image("busybox");
    let out = berthctl(
        &agent,
        &[
            "run",
            "--job",
            "clijob",
            "--task",
            "t1",
            "--image",
            &img,
            "--command-line",
            "/bin/sh -c 'echo hi; exit 3'",
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = berthctl(&agent, &["logs", "--job", "clijob", "--task", "t1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // A task that never ran exits 125.
    let missing = format!("{}/berth-test/nothing:here", berth_tests::env("BERTH_TEST_REGISTRY"));
    let out = berthctl(
        &agent,
        &["run", "--job", "clijob", "--task", "t2", "--image", &missing, "--wait", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failure_info"]["code"], "ImagePullFailed");

    let out = berthctl(&agent, &["list", "--job", "clijob", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["exit_code"], 3);

    // Registry credentials for one task, the password on stdin.
    let mut child = Command::new(binary("berthctl"))
        .args(["--addr", &agent.addr(), "run", "--job", "clijob", "--task", "tls", "--image"])
        .arg(berth_tests::env("BERTH_TEST_TLS_IMAGE_BUSYBOX"))
        .args(["--command-line", "/bin/true", "--pull", "always", "--wait"])
        .args(["--registry-username", &berth_tests::env("BERTH_TEST_REGISTRY_USER"), "--registry-password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let password = std::fs::read_to_string(berth_tests::env("BERTH_TEST_REGISTRY_PASSWORD_FILE")).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A password on the command line is not accepted.
    let out = berthctl(&agent, &["pull", "busybox", "--password", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = berthctl(&agent, &["node", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"], agent.node_id());

    // watch: one JSON object per line, replayed from the log.
    let out = Command::new("timeout")
        .args(["2"])
        .arg(binary("berthctl"))
        .args(["--addr", &agent.addr(), "watch", "--from", "0", "--output", "json"])
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.len() >= 6, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence"], i as u64 + 1);
        assert_eq!(e["job_id"], "clijob");
        assert!(e["task_id"].is_string() && e["state"].is_string() && e.get("exit_code").is_some(), "{e}");
    }
    assert!(events.iter().any(|e| e["state"] == "COMPLETED" && e["exit_code"] == 3));

    // Errors from the agent: status code and message, exit 1.
    let out = berthctl(&agent, &["get", "--job", "clijob", "--task", "none"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{out:?}");
}

#[tokio::test]
async fn run_as_accounts_and_auto_users() {
    let users = "[[users]]\nname = \"alice\"\nuid = 1500\ngid = 1500\n";
    let agent = Agent::start(AgentOptions { extra_config: users.into(), ..AgentOptions::default() }).await;
    let img = image("busybox");
    let run = |task: &str, who: &[&str]| {
        let mut args =
            vec!["run", "--job", "cliusers", "--task", task, "--image", &img, "--command-line", "id -u", "--wait"];
        args.extend_from_slice(who);
        let out = berthctl(&agent, &args);
        assert_eq!(out.status.code(), Some(0), "{task}: {out:?}");
        let out = berthctl(&agent, &["logs", "--job", "cliusers", "--task", task]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run("default", &[]), "20000");
    assert_eq!(run("alice", &["--user", "alice"]), "1500");
    assert_eq!(run("admin", &["--auto-user", "pool", "--elevation", "admin"]), "0");
    let task_uid: u32 = run("task", &["--auto-user", "task"]).parse().unwrap();
    assert!((20001..30000).contains(&task_uid), "{task_uid}");
    let out = berthctl(
        &agent,
        &["run", "--job", "cliusers", "--task", "x", "--image", &img, "--user", "alice", "--auto-user", "task"],
    );
    assert_eq!(out.status.code(), Some(2), "--user and --auto-user conflict: {out:?}");
}

#[tokio::test]
async fn logs_follow_and_completions() {
    let agent = Agent::start(AgentOptions::default()).await;
    let img = image("busybox");
    let out = berthctl(
        &agent,
        &[
            "run",
            "--job",
            "follow",
            "--task",
            "t",
            "--image",
            &img,
            "--command-line",
            "/bin/sh -c 'for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done'",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // Started while the task runs, it prints every line and ends when the task does.
    let out = berthctl(&agent, &["logs", "--job", "follow", "--task", "t", "--follow"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line 1\nline 2\nline 3\nline 4\nline 5\n");

    let out = Command::new(binary("berthctl")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("berthctl") && script.contains("--auto-user"), "{}", &script[..200.min(script.len())]);
}

fn node_json(agent: &Agent) -> serde_json::Value {
    let out = berthctl(agent, &["node", "--output", "json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `berthctl node` until `key` has `want`.
async fn wait_node(agent: &Agent, key: &str, want: serde_json::Value) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = node_json(agent);
        if v[key] == want {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "node {key} is not {want}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn host_tasks_start_task_jobs_and_scheduling() {
    let opts = AgentOptions { extra_config: "[policy]\nallow_host_tasks = true\n".into(), ..AgentOptions::default() };
    let agent = Agent::start(opts).await;
    assert_eq!(node_json(&agent)["state"], "IDLE");

    // `run` without --image runs on the host.
    let out = berthctl(
        &agent,
        &["run", "--job", "cli8", "--task", "host", "--command-line", "/bin/sh -c 'exit 4'", "--wait"],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let out = berthctl(&agent, &["run", "--job", "cli8", "--task", "bad", "--run-options", "--rm"]);
    assert_eq!(out.status.code(), Some(2), "run options without --image are a usage error: {out:?}");

    let out = berthctl(&agent, &["start-task", "--command-line", "/bin/sh -c 'exit 1'", "--wait-for-success"]);
    assert!(out.status.success(), "{out:?}");
    let v = wait_node(&agent, "state", "START_TASK_FAILED".into()).await;
    assert_eq!(v["start_task"]["kind"], "START_TASK");
    assert_eq!(v["start_task"]["exit_code"], 1);
    let img = image("busybox");
    let out =
        berthctl(&agent, &["run", "--job", "cli8", "--task", "refused", "--image", &img, "--command-line", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"), "{out:?}");
    let out = berthctl(&agent, &["start-task", "--command-line", "/bin/true", "--image", &img, "--wait-for-success"]);
    assert!(out.status.success(), "{out:?}");
    wait_node(&agent, "state", "IDLE".into()).await;

    let out = berthctl(
        &agent,
        &[
            "configure-job",
            "--job",
            "cli8",
            "--prep-command-line",
            "/bin/sh -c 'echo prep > $AZ_BATCH_NODE_SHARED_DIR/cli8-prep'",
            "--release-command-line",
            "/bin/sh -c 'echo release > $AZ_BATCH_NODE_SHARED_DIR/cli8-release'",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["job_id"].as_str(), v["released"].as_bool()), (Some("cli8"), Some(false)), "{v}");
    let out =
        berthctl(&agent, &["run", "--job", "cli8", "--task", "after-prep", "--command-line", "/bin/true", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read_to_string(agent.root().join("shared/cli8-prep")).unwrap(), "prep\n");
    let out = berthctl(&agent, &["release-job", "--job", "cli8"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !agent.root().join("shared/cli8-release").exists() {
        assert!(std::time::Instant::now() < deadline, "the release task did not run");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let out = berthctl(&agent, &["scheduling", "disable"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OFFLINE\n", "{out:?}");
    assert_eq!(node_json(&agent)["scheduling_enabled"], false);
    let out = berthctl(&agent, &["scheduling", "enable"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "IDLE\n", "{out:?}");
}
