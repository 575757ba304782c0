//! A container task end to end: the seed example, command-line, working
//! directory and environment rules, output and exit codes. Real agent, real
//! containerd, real runc.

use berth_tests::{failure_code, image, task, task_on, v1 as pb, Agent, AgentOptions, MORE_BATCH_VARS_SCRIPT};
use std::os::unix::fs::MetadataExt;

#[tokio::test]
async fn seed_example_writes_hello_world_to_the_host() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec =
        task("seedjob", "seedtask", r#"/bin/sh -c "echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt""#);
    spec.container.as_mut().unwrap().run_options = "--rm --workdir /".into();
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(done.result, pb::TaskResult::Success as i32);
    assert!(done.failure_info.is_none());
    let out = std::fs::read_to_string(agent.task_path("seedjob", "seedtask", "wd/output.txt")).unwrap();
    assert_eq!(out, "hello world\n");
    assert_eq!(done.working_dir, agent.task_path("seedjob", "seedtask", "wd").display().to_string());
    // The container is gone; the task's files stay.
    c.wait_container_deleted("seedjob", "seedtask").await;
    assert!(agent.task_path("seedjob", "seedtask", "stdout.txt").is_file());
}

#[tokio::test]
async fn empty_command_line_runs_entrypoint_and_cmd() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = task_on("epjob", "t1", "", image("entrypoint"));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("epjob", "t1", "stdout.txt").await.unwrap(), "from-entrypoint default-cmd\n");

    // A command line replaces both ENTRYPOINT and CMD, and no shell expands it.
    let spec = task_on("epjob", "t2", "/bin/echo $HOME 'a  b'", image("entrypoint"));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(c.read("epjob", "t2", "stdout.txt").await.unwrap(), "$HOME a  b\n");
}

#[tokio::test]
async fn working_directory_rules() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let cases = [
        ("image", pb::WorkingDirectory::ImageDefault, "", "/app".to_string()),
        (
            "task",
            pb::WorkingDirectory::TaskWorkingDir,
            "",
            agent.task_path("wdjob", "task", "wd").display().to_string(),
        ),
        ("unset", pb::WorkingDirectory::Unspecified, "", agent.task_path("wdjob", "unset", "wd").display().to_string()),
        ("flag", pb::WorkingDirectory::ImageDefault, "-w /tmp", "/tmp".to_string()),
    ];
    for (id, mode, run_options, want) in cases {
        let mut spec = task("wdjob", id, "");
        let ct = spec.container.as_mut().unwrap();
        ct.image = image("workdir");
        ct.working_directory = mode as i32;
        ct.run_options = run_options.into();
        let done = c.run_done(spec).await;
        assert_eq!(done.exit_code, Some(0), "{id}: {done:?}");
        assert_eq!(c.read("wdjob", id, "stdout.txt").await.unwrap().trim_end(), want, "{id}");
    }
}

#[tokio::test]
async fn task_env_and_batch_variables_are_visible() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task_on(
        "envjob",
        "envtask",
        "/bin/sh -c 'echo $MY_VAR; echo $IMAGE_VAR; echo $AZ_BATCH_JOB_ID; echo $AZ_BATCH_TASK_ID; \
         echo $AZ_BATCH_NODE_ID; echo $AZ_BATCH_POOL_ID; echo $AZ_BATCH_NODE_SHARED_DIR; echo $AZ_BATCH_TASK_DIR; \
         echo $AZ_BATCH_NODE_ROOT_DIR; echo $AZ_BATCH_NODE_IS_DEDICATED'",
        image("workdir"),
    );
    spec.environment.insert("MY_VAR".into(), "my value".into());
    spec.environment.insert("IMAGE_VAR".into(), "from-task".into());
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("envjob", "envtask", "stdout.txt").await.unwrap();
    let root = agent.root().display().to_string();
    let want = [
        "my value".to_string(),
        "from-task".into(),
        "envjob".into(),
        "envtask".into(),
        agent.node_id(),
        "test-pool".into(),
        format!("{root}/shared"),
        agent.task_path("envjob", "envtask", "").display().to_string().trim_end_matches('/').to_string(),
        root.clone(),
        "true".into(),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

#[tokio::test]
async fn account_url_certificates_dir_mounts_dir_and_reserved_disk_space_are_set() {
    let agent = Agent::start(AgentOptions { min_free_mb: 1, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let script = format!("/bin/sh -c \"{MORE_BATCH_VARS_SCRIPT}\"");
    let done = c.run_done(task("morevars", "t1", &script)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {:?}", c.read("morevars", "t1", "stderr.txt").await);
    let out = c.read("morevars", "t1", "stdout.txt").await.unwrap();
    // The default identity: the pool's non-admin auto-user.
    let uid = std::fs::metadata(agent.task_path("morevars", "t1", "wd")).unwrap().uid();
    assert_eq!(out, agent.more_batch_vars("morevars", "t1", uid));
    assert!(agent.task_path("morevars", "t1", "certs/own").is_file());
}

#[tokio::test]
async fn node_root_is_shared_between_tasks() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let a =
        c.run_done(task("sharejob", "writer", "/bin/sh -c 'echo shared-data > $AZ_BATCH_NODE_SHARED_DIR/f.txt'")).await;
    assert_eq!(a.exit_code, Some(0), "{a:?}");
    let b = c.run_done(task("sharejob", "reader", "/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/f.txt'")).await;
    assert_eq!(b.exit_code, Some(0), "{b:?}");
    assert_eq!(c.read("sharejob", "reader", "stdout.txt").await.unwrap(), "shared-data\n");
    assert_eq!(std::fs::read_to_string(agent.root().join("shared/f.txt")).unwrap(), "shared-data\n");
}

#[tokio::test]
async fn exit_codes_signals_and_stderr() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let done = c.run_done(task("exitjob", "three", "/bin/sh -c 'echo oops >&2; exit 3'")).await;
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.result, pb::TaskResult::Failure as i32);
    assert_eq!(failure_code(&done), "FailureExitCode");
    assert_eq!(c.read("exitjob", "three", "stderr.txt").await.unwrap(), "oops\n");
    assert_eq!(c.read("exitjob", "three", "stdout.txt").await.unwrap(), "");

    // Killed from outside the agent (the OOM killer, an operator): 128+N and the signal named.
    c.run(task("exitjob", "killed", "/bin/sleep 300")).await.unwrap();
    let running = c.wait_state("exitjob", "killed", pb::TaskState::Running, std::time::Duration::from_secs(60)).await;
    let cid = running.container_info.unwrap().container_id;
    let out = std::process::Command::new("ctr")
        .args(["--address", &berth_tests::env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace"])
        .arg(agent.namespace())
        .args(["tasks", "kill", "--signal", "SIGKILL", &cid])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let done = c.wait_done("exitjob", "killed").await;
    assert_eq!(done.exit_code, Some(137), "{done:?}");
    assert_eq!(failure_code(&done), "TaskKilledBySignal");
    assert!(done.failure_info.as_ref().unwrap().message.contains("SIGKILL (9)"));
}

#[tokio::test]
async fn missing_image_fails_clearly() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let missing = format!("{}/berth-test/does-not-exist:1", berth_tests::env("BERTH_TEST_REGISTRY"));
    // Pulled (policy MISSING): the registry's answer, in words.
    let spec = task_on("imgjob", "missing", "/bin/true", missing.clone());
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let f = done.failure_info.unwrap();
    assert!(f.message.contains("not found"), "{f:?}");
    assert_eq!((done.exit_code, f.category), (None, pb::FailureCategory::UserError as i32));
    // Policy NEVER: not on the node.
    let mut spec = task_on("imgjob", "never", "/bin/true", missing);
    spec.container.as_mut().unwrap().pull_policy = pb::PullPolicy::Never as i32;
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ImageNotFound", "{done:?}");
}

#[tokio::test]
async fn hardening_is_in_place() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // No inheritable or ambient capabilities, no_new_privs set; the task's cgroup
    // hierarchy is readable (limits) but not writable, and in a cgroup namespace
    // it is the root the task sees; /dev/shm present.
    let cmd = r#"/bin/sh -c 'grep -E "^(CapInh|CapAmb|NoNewPrivs)" /proc/self/status;
        d=/sys/fs/cgroup; test -d $d/memory && d=$d/memory;
        touch $d/x 2>/dev/null && echo cgroup-writable || echo cgroup-ro;
        cat $d/memory.limit_in_bytes $d/memory.max 2>/dev/null | grep -qE "^([0-9]+|max)$" && echo limits-readable;
        test -d /dev/shm && echo shm;
        grep -qv ":/$" /proc/self/cgroup && echo sees-host-cgroups || echo own-cgroup-root'"#;
    let done = c.run_done(task("hardjob", "t", cmd)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("hardjob", "t", "stdout.txt").await.unwrap();
    let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let want = [
        "CapInh: 0000000000000000",
        "CapAmb: 0000000000000000",
        "NoNewPrivs: 1",
        "cgroup-ro",
        "limits-readable",
        "shm",
        "own-cgroup-root",
    ];
    assert_eq!(lines, want, "{out}");
}
