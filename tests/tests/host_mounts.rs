//! The node directories a container gets (Batch's
//! `containerHostBatchBindMounts`) and the `AZ_BATCH_*` variables that go with
//! them, against a real agent, containerd and runc.

use berth_tests::{
    as_auto_user, as_user, batch_vars_of, binary, host_task, image, task, v1 as pb, Agent, AgentOptions,
};
use std::collections::BTreeMap;
use std::process::Command;
use tonic::Code;

fn mount(source: pb::HostMountSource, read_only: bool) -> pb::HostMount {
    pb::HostMount { source: source as i32, read_only }
}

fn with_mounts(mut spec: pb::TaskSpec, list: Vec<pb::HostMount>) -> pb::TaskSpec {
    let c = spec.container.as_mut().unwrap();
    (c.host_mounts_set, c.host_mounts) = (true, list);
    spec
}

/// `vars` without the variables of these directories.
fn without(mut vars: BTreeMap<String, String>, names: &[&str]) -> BTreeMap<String, String> {
    for n in names {
        assert!(vars.remove(&format!("AZ_BATCH_{n}")).is_some(), "{n} was expected at first");
    }
    vars
}

const HOST_POLICY: &str = r#"
[[users]]
name = "alice"
uid = 1500
gid = 1500
[policy]
allow_host_tasks = true
"#;

/// Batch's whole table (but the multi-instance variables), read inside a
/// container and inside a host task.
#[tokio::test]
async fn every_batch_variable_is_set_in_a_container_and_on_the_host() {
    let agent =
        Agent::start(AgentOptions { min_free_mb: 1, extra_config: HOST_POLICY.into(), ..Default::default() }).await;
    let mut c = agent.client().await;
    let done = c.run_done(task("allvars", "ctr", "/bin/sh -c env")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let got = batch_vars_of(&c.read("allvars", "ctr", "stdout.txt").await.unwrap());
    assert_eq!(got, agent.batch_vars("allvars", "ctr"));

    let done = c.run_done(as_user(host_task("allvars", "host", "/usr/bin/env"), "alice")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let got = batch_vars_of(&c.read("allvars", "host", "stdout.txt").await.unwrap());
    assert_eq!(got, agent.batch_vars("allvars", "host"));
}

#[tokio::test]
async fn a_list_binds_exactly_those_directories_read_only_where_asked() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let root = agent.root().display().to_string();
    // Another task of the same job, with the whole root: its directory exists on the host.
    let done = c.run_done(task("hmjob", "other", "/bin/sh -c 'echo mine > $AZ_BATCH_TASK_WORKING_DIR/f'")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");

    // An admin task: root inside the container, so a refused write is the mount's doing.
    let script = "env; echo ---; echo x > $AZ_BATCH_TASK_WORKING_DIR/own && echo task-writable; \
                  touch $AZ_BATCH_NODE_SHARED_DIR/f 2>&1; touch $ROOT/applications/f 2>&1; \
                  for d in shared applications startup fsmounts workitems/hmjob/job-1/other; do \
                  test -e $ROOT/$d && echo $d present || echo $d absent; done";
    let mut spec = task("hmjob", "listed", &format!("/bin/sh -c '{script}'"));
    spec.environment.insert("ROOT".into(), root.clone());
    let spec = with_mounts(
        as_auto_user(spec, pb::AutoUserScope::Pool, true),
        vec![
            mount(pb::HostMountSource::Task, false),
            mount(pb::HostMountSource::Shared, true),
            // Asked read-write; packages stay read-only.
            mount(pb::HostMountSource::Applications, false),
        ],
    );
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {:?}", c.read("hmjob", "listed", "stderr.txt").await);
    let out = c.read("hmjob", "listed", "stdout.txt").await.unwrap();
    let (env, rest) = out.split_once("---\n").unwrap();
    let want = without(
        agent.batch_vars("hmjob", "listed"),
        &["NODE_ROOT_DIR", "NODE_STARTUP_DIR", "NODE_STARTUP_WORKING_DIR", "NODE_MOUNTS_DIR"],
    );
    assert_eq!(batch_vars_of(env), want);
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines[0], "task-writable");
    assert!(lines[1].contains("Read-only file system"), "{rest}");
    assert!(lines[2].contains("Read-only file system"), "{rest}");
    assert_eq!(
        lines[3..],
        [
            "shared present",
            "applications present",
            "startup absent",
            "fsmounts absent",
            "workitems/hmjob/job-1/other absent"
        ]
    );
    assert_eq!(std::fs::read_to_string(agent.task_path("hmjob", "listed", "wd/own")).unwrap(), "x\n");
    assert!(!agent.root().join("shared/f").exists());
}

fn berthctl(agent: &Agent, args: &[&str]) -> std::process::Output {
    Command::new(binary("berthctl")).arg("--addr").arg(agent.addr()).args(args).output().expect("run berthctl")
}

#[tokio::test]
async fn berthctl_no_host_mounts_binds_nothing_and_host_mount_picks_directories() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let root = format!("ROOT={}", agent.root().display());
    let img = image("busybox");
    let script = "/bin/sh -c 'env; echo ---; pwd; test -e $ROOT && echo root present || echo root absent'";
    let run = |task: &'static str, extra: &'static [&'static str]| {
        let mut args = vec!["run", "--job", "ctlmounts", "--task", task, "--image", &img, "--env", &root];
        args.extend(["--command-line", script, "--wait"]);
        args.extend(extra);
        berthctl(&agent, &args)
    };
    let out = run("none", &["--no-host-mounts", "--workdir", "image"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = c.read("ctlmounts", "none", "stdout.txt").await.unwrap();
    let (env, rest) = stdout.split_once("---\n").unwrap();
    let want = without(
        agent.batch_vars("ctlmounts", "none"),
        &[
            "NODE_ROOT_DIR",
            "NODE_SHARED_DIR",
            "NODE_STARTUP_DIR",
            "NODE_STARTUP_WORKING_DIR",
            "NODE_MOUNTS_DIR",
            "TASK_DIR",
            "TASK_WORKING_DIR",
            "CERTIFICATES_DIR",
        ],
    );
    assert_eq!(batch_vars_of(env), want);
    assert_eq!(rest, "/\nroot absent\n", "the image's WORKDIR, and no node directory at all");

    let out = run("some", &["--host-mount", "vfsmounts:ro", "--host-mount", "Task"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = c.read("ctlmounts", "some", "stdout.txt").await.unwrap();
    let (env, rest) = stdout.split_once("---\n").unwrap();
    let want = without(
        agent.batch_vars("ctlmounts", "some"),
        &["NODE_ROOT_DIR", "NODE_SHARED_DIR", "NODE_STARTUP_DIR", "NODE_STARTUP_WORKING_DIR"],
    );
    assert_eq!(batch_vars_of(env), want);
    assert_eq!(rest, format!("{}\nroot present\n", agent.task_path("ctlmounts", "some", "wd").display()));

    let out = run("bad", &["--host-mount", "everything"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of Shared, Startup"), "{out:?}");
}

#[tokio::test]
async fn without_the_task_directory_the_working_directory_must_be_the_images() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = with_mounts(task("hmbad", "t1", "/bin/true"), vec![mount(pb::HostMountSource::Shared, false)]);
    let err = c.run(spec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("IMAGE_DEFAULT"), "{err:?}");
    assert_eq!(c.get("hmbad", "t1").await.unwrap_err().code(), Code::NotFound);
    assert!(!agent.task_path("hmbad", "t1", "").exists(), "nothing is left behind");

    let twice = with_mounts(
        task("hmbad", "t2", "/bin/true"),
        vec![mount(pb::HostMountSource::Task, false), mount(pb::HostMountSource::Task, true)],
    );
    let err = c.run(twice).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Task is listed twice"), "{err:?}");
}
