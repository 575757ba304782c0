//! `ExplainTask` and `berthctl explain` against a real agent and containerd:
//! the spec it shows is the one containerd stores for the same task, it has
//! no side effect, and it refuses what `RunTask` refuses with the same status.

use berth_tests::{
    as_auto_user, as_user, binary, env, image, task, v1 as pb, with_options, Agent, AgentOptions, Client,
};
use std::process::Command;
use std::time::Duration;

async fn explain(c: &mut Client, spec: pb::TaskSpec) -> Result<pb::TaskExplanation, tonic::Status> {
    c.inner.explain_task(pb::ExplainTaskRequest { task: Some(spec) }).await.map(|r| r.into_inner())
}

async fn pull(c: &mut Client, reference: String) {
    let req = pb::PullImageRequest { reference, credentials: None };
    let mut stream = c.inner.pull_image(req).await.unwrap().into_inner();
    while let Some(m) = stream.message().await.unwrap() {
        if m.done {
            return;
        }
    }
    panic!("the pull ended without a done message");
}

/// The OCI spec containerd holds for a container: the bytes the agent sent,
/// read back with containerd's own API.
async fn stored_spec(agent: &Agent, id: &str) -> serde_json::Value {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::GetContainerRequest;
    let channel = containerd_client::connect(env("BERTH_TEST_CONTAINERD_SOCKET")).await.unwrap();
    let mut req = tonic::Request::new(GetContainerRequest { id: id.into() });
    req.metadata_mut().insert("containerd-namespace", agent.namespace().parse().unwrap());
    let container = ContainersClient::new(channel).get(req).await.unwrap().into_inner().container.unwrap();
    serde_json::from_slice(&container.spec.unwrap().value).unwrap()
}

#[tokio::test]
async fn explained_spec_is_the_one_containerd_stores() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = with_options(
        task("expjob", "t1", "/bin/sh -c 'sleep 30'"),
        "--env FOO=bar --stop-signal SIGUSR1 --stop-timeout 7 --memory 64m --label team=a",
    );

    // The image is not on the node yet: the decisions, and why there is no spec.
    let e = explain(&mut c, spec.clone()).await.unwrap();
    assert_eq!(e.image, image("busybox"));
    assert!(!e.admin);
    assert_eq!((e.stop_signal, e.stop_timeout.map(|d| d.seconds)), (10, Some(7)));
    assert!(e.oci_spec_json.is_empty());
    let failure = e.failure.expect("a failure without the image");
    assert_eq!(failure.code, "ImageNotFound", "{failure:?}");
    assert!(failure.message.contains("PullImage"), "{failure:?}");

    // No side effect: no record, no directory.
    assert_eq!(c.get("expjob", "t1").await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(!agent.task_path("expjob", "t1", "").exists());

    pull(&mut c, image("busybox")).await;
    let e = explain(&mut c, spec.clone()).await.unwrap();
    assert!(e.failure.is_none(), "{:?}", e.failure);
    let explained: serde_json::Value = serde_json::from_str(&e.oci_spec_json).unwrap();
    let process = &explained["process"];
    assert!(process["env"].as_array().unwrap().iter().any(|v| v == "FOO=bar"), "{process}");
    assert_eq!(process["user"]["uid"], e.uid);
    assert_eq!(explained["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert!(!agent.task_path("expjob", "t1", "").exists(), "explain made the task's directory");

    let info = c.run(spec).await.unwrap();
    c.wait_state("expjob", "t1", pb::TaskState::Running, Duration::from_secs(30)).await;
    let running = c.get("expjob", "t1").await.unwrap();
    let cid = running.container_info.as_ref().unwrap().container_id.clone();
    assert_eq!(cid, e.container_id);
    assert_eq!(stored_spec(&agent, &cid).await, explained, "explain's spec differs from the container's");
    let req = pb::TerminateTaskRequest { job_id: info.job_id, task_id: info.task_id, grace_period: None };
    c.inner.terminate_task(req).await.unwrap();
    c.wait_done("expjob", "t1").await;
}

#[tokio::test]
async fn explain_refuses_what_run_task_refuses() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let bad = [
        with_options(task("expjob", "t1", "true"), "--no-such-flag"),
        with_options(task("expjob", "t2", "true"), "--privileged"),
        task("expjob", "jobpreparation", "true"),
        {
            let mut s = task("expjob", "t3", "true");
            s.container.as_mut().unwrap().image = "Not/A:Reference:".into();
            s
        },
        {
            let mut s = task("expjob", "t4", "true");
            s.environment.insert("AZ_BATCH_NODE_ID".into(), "x".into());
            s
        },
        as_user(task("expjob", "t5", "true"), "nobody-configured"),
    ];
    for spec in bad {
        let run = c.run(spec.clone()).await.expect_err("RunTask accepted a bad task");
        let explained = explain(&mut c, spec.clone()).await.expect_err("ExplainTask accepted a bad task");
        assert_eq!(explained.code(), tonic::Code::InvalidArgument, "{explained:?}");
        assert_eq!((explained.code(), explained.message()), (run.code(), run.message()), "{spec:?}");
    }
    // None of them left a record.
    let all = c.inner.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
    assert!(all.is_empty(), "{all:?}");
}

#[tokio::test]
async fn explain_shows_the_identity_of_an_admin_task() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    pull(&mut c, image("busybox")).await;
    let spec = as_auto_user(task("expjob", "admin", "id -u"), pb::AutoUserScope::Pool, true);
    let e = explain(&mut c, spec.clone()).await.unwrap();
    assert!(e.admin);
    let explained: serde_json::Value = serde_json::from_str(&e.oci_spec_json).unwrap();
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let id = c.read("expjob", "admin", "stdout.txt").await.unwrap();
    assert_eq!(id.trim(), explained["process"]["user"]["uid"].to_string(), "{explained}");
}

#[tokio::test]
async fn berthctl_explain_prints_the_decisions_and_the_spec() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    pull(&mut c, image("busybox")).await;
    let run = |args: &[&str]| {
        Command::new(binary("berthctl")).arg("--addr").arg(agent.addr()).args(args).output().expect("run berthctl")
    };
    let busybox = image("busybox");
    let args = ["explain", "--job", "cli", "--task", "t1", "--image", &busybox, "--command-line", "echo hi"];
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("image:      {busybox}")), "{text}");
    assert!(text.contains("\"ociVersion\""), "{text}");

    let out = run(&[&args[..], &["--output", "json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["oci_spec"]["process"]["args"], serde_json::json!(["echo", "hi"]), "{json}");
    assert_eq!(json["failure_info"], serde_json::Value::Null);

    // A refusal: berthctl exits 1 with the agent's status.
    let out = run(&[&args[..], &["--run-options", "--no-such-flag"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument") && err.contains("--no-such-flag"), "{err}");
    // Nothing was recorded.
    assert_eq!(c.get("cli", "t1").await.unwrap_err().code(), tonic::Code::NotFound);
}
