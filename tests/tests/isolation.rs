//! Task isolation against a real containerd and runc: run options become
//! limits and mounts the task sees from inside; the node's policy refuses what
//! it does not allow, with nothing created; identities decide uid, gid and
//! groups inside the container and the owner of what the task writes.

use berth_tests::v1 as pb;
use berth_tests::{
    as_auto_user, as_user, entries, failure_code, image, task, task_on, with_options, Agent, AgentOptions,
};
use std::os::unix::fs::MetadataExt;
use tonic::Code;

const USERS: &str = r#"
[[users]]
name = "alice"
uid = 1500
gid = 1500
groups = [2000]
[[users]]
name = "bob"
uid = 1501
gid = 1501
[[users]]
name = "root-ish"
uid = 1502
gid = 1502
elevation = "admin"
"#;

/// Task name, spec, expected `id -u`, `id -g`, `id -G` and CapEff lines, host owner of what it writes.
type IdCase = (&'static str, pb::TaskSpec, [&'static str; 4], (u32, u32));

fn words(out: &str) -> Vec<String> {
    out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

#[tokio::test]
async fn limits_and_mounts_are_seen_from_inside() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // cgroup v2 files first, v1 second: whichever the node has.
    let script = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                  cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; \
                  df -k /dev/shm | tail -1 | awk '{print $2}'; \
                  if touch /rootfs-write 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
                  grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo hi > /scratch/f && cat /scratch/f; \
                  echo wd > $AZ_BATCH_TASK_WORKING_DIR/w && echo wd-writable; \
                  pwd; echo $FROM_FLAG";
    let spec = with_options(
        task("limits", "t", &format!("/bin/sh -c \"{script}\"")),
        "--memory 64m --pids-limit 50 --shm-size 8m --read-only --tmpfs /scratch:size=1m -e FROM_FLAG=flag \
         -w /scratch",
    );
    let done = c.run_done(spec).await;
    let out = c.read("limits", "t", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?}\n{out}\n{}", c.read("limits", "t", "stderr.txt").await.unwrap());
    assert_eq!(
        words(&out),
        [&(64u64 << 20).to_string(), "50", "8192", "root-read-only", "tmpfs", "hi", "wd-writable", "/scratch", "flag"],
        "{out}"
    );
}

#[tokio::test]
async fn dropped_capabilities_and_init() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let caps = "grep -E 'Cap(Eff|Bnd)' /proc/self/status; cat /proc/1/comm";
    let admin = |spec| as_auto_user(spec, pb::AutoUserScope::Pool, true);
    let done = c
        .run_done(admin(with_options(task("caps", "drop", &format!("/bin/sh -c \"{caps}\"")), "--cap-drop ALL")))
        .await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("caps", "drop", "stdout.txt").await.unwrap();
    // Without --init the shell execs its last command as pid 1.
    assert_eq!(words(&out), ["CapEff: 0000000000000000", "CapBnd: 0000000000000000", "cat"], "{out}");

    let done = c.run_done(admin(with_options(task("caps", "init", &format!("/bin/sh -c \"{caps}\"")), "--init"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("caps", "init", "stdout.txt").await.unwrap();
    assert!(out.trim_end().ends_with("berth-init"), "pid 1 is the init process: {out}");
    assert!(!out.contains("CapEff: 0000000000000000"), "admin keeps the default set: {out}");
}

#[tokio::test]
async fn an_oom_killed_task_says_so() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // The shell holds 64 MiB in a variable; the limit is 16 MiB without swap.
    let spec = with_options(
        task("oom", "t", "/bin/sh -c 'x=$(head -c 67108864 /dev/zero | tr \"\\0\" a); echo ${#x}'"),
        "--memory 16m --memory-swap 16m",
    );
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "OOMKilled", "{done:?}");
    assert_ne!(done.exit_code, Some(0));
    // Without a limit the same task succeeds.
    let done =
        c.run_done(task("oom", "free", "/bin/sh -c 'x=$(head -c 1048576 /dev/zero | tr \"\\0\" a); echo ${#x}'")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
}

#[tokio::test]
async fn policy_refusals_create_nothing() {
    let outside = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("input.txt"), "data").unwrap();
    // A link inside the allowed tree that leads out of it.
    std::os::unix::fs::symlink(outside.path(), allowed.path().join("escape")).unwrap();
    let extra = format!("[policy]\nbind_mount_prefixes = [\"{}\"]\n", allowed.path().display());
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let admin = |spec| as_auto_user(spec, pb::AutoUserScope::Pool, true);
    let cases = [
        ("--privileged", "--privileged"),
        ("-v /:/host", "--volume"),
        (&*format!("-v {}:/x", outside.path().display()), "--volume"),
        (&*format!("-v {}/escape:/x", allowed.path().display()), "resolves to"),
        ("--pid host", "--pid"),
        ("--cap-add SYS_ADMIN", "--cap-add"),
        ("--device /dev/fuse", "--device"),
        ("--gpus all", "--gpus"),
        ("--network container:other", "--network"),
        ("-u 4294967295", "-u"),
    ];
    for (opts, want) in cases {
        let err = c.run(admin(with_options(task("policy", "t", "/bin/true"), opts))).await.expect_err(opts);
        assert_eq!(err.code(), Code::InvalidArgument, "{opts}: {err:?}");
        assert!(err.message().contains(want), "{opts}: {}", err.message());
    }
    let err = c.run(with_options(task("policy", "t", "/bin/true"), "-u 0")).await.unwrap_err();
    assert!(err.message().contains("non-admin"), "{}", err.message());
    let list = c.inner.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(list.tasks.is_empty(), "{:?}", list.tasks);
    assert!(entries(&agent.root().join("workitems")).is_empty());

    // An allowed bind mount works, read-only as asked.
    let opts = format!("-v {}:/in:ro", allowed.path().display());
    let spec =
        with_options(task("policy", "bind", "/bin/sh -c 'cat /in/input.txt; echo; touch /in/x || echo ro'"), &opts);
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(words(&c.read("policy", "bind", "stdout.txt").await.unwrap()), ["data", "ro"]);
}

#[tokio::test]
async fn identities_set_uid_gid_groups_and_owners() {
    let agent = Agent::start(AgentOptions { extra_config: USERS.into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let script =
        "/bin/sh -c 'id -u; id -g; id -G; grep CapEff /proc/self/status; echo x > $AZ_BATCH_TASK_WORKING_DIR/own.txt; \
                  echo s > $AZ_BATCH_NODE_SHARED_DIR/from-$AZ_BATCH_TASK_ID'";
    let cases: [IdCase; 5] = [
        (
            "pooluser",
            task("ids", "pooluser", script),
            ["20000", "20000", "20000", "CapEff: 0000000000000000"],
            (20000, 20000),
        ),
        (
            "admin",
            as_auto_user(task("ids", "admin", script), pb::AutoUserScope::Pool, true),
            ["0", "0", "0 20000", "CapEff: 00000000a80425fb"],
            (0, 0),
        ),
        (
            "alice",
            as_user(task("ids", "alice", script), "alice"),
            ["1500", "1500", "1500 2000 20000", "CapEff: 0000000000000000"],
            (1500, 1500),
        ),
        (
            "rootish",
            as_user(task("ids", "rootish", script), "root-ish"),
            ["0", "0", "0 20000", "CapEff: 00000000a80425fb"],
            (0, 0),
        ),
        (
            "taskuser",
            as_auto_user(task("ids", "taskuser", script), pb::AutoUserScope::Task, false),
            ["", "20000", "", "CapEff: 0000000000000000"],
            (0, 20000),
        ),
    ];
    for (name, spec, want, owner) in cases {
        let done = c.run_done(spec).await;
        let out = c.read("ids", name, "stdout.txt").await.unwrap();
        assert_eq!(done.exit_code, Some(0), "{name}: {done:?} {out}");
        let got = words(&out);
        let run_as = done.run_as.clone().expect("run_as reported");
        let meta = std::fs::metadata(agent.task_path("ids", name, "wd/own.txt")).unwrap();
        if name == "taskuser" {
            // A uid of its own from the task range, the pool group.
            assert!((20001..30000).contains(&run_as.uid), "{run_as:?}");
            assert_eq!(got[0], run_as.uid.to_string());
            assert_eq!(got[2], "20000", "{out}");
            assert_eq!((meta.uid(), meta.gid()), (run_as.uid, 20000));
        } else {
            assert_eq!(got, want, "{name}: {out}");
            assert_eq!((meta.uid(), meta.gid()), owner, "{name}: host owner of the file written in wd");
        }
        // The task directory belongs to the identity; an admin one's to root
        // (no non-admin identity shares its owner).
        let dir = std::fs::metadata(agent.task_path("ids", name, "wd")).unwrap();
        let dir_owner = if run_as.admin { (0, 0) } else { (run_as.uid, run_as.gid) };
        assert_eq!((dir.uid(), dir.gid()), dir_owner, "{name}: wd owner");
        assert!(agent.root().join(format!("shared/from-{name}")).exists(), "{name} wrote to shared/");
    }

    // What alice wrote cannot be changed by bob; alice herself can.
    let alice_file = agent.task_path("ids", "alice", "wd/own.txt");
    let cmd = format!("/bin/sh -c 'echo bob >> {} && echo changed || echo denied'", alice_file.display());
    let done = c.run_done(as_user(task("ids", "bob", &cmd), "bob")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(words(&c.read("ids", "bob", "stdout.txt").await.unwrap()), ["denied"]);
    assert_eq!(std::fs::read_to_string(&alice_file).unwrap(), "x\n");
    let done = c.run_done(as_user(task("ids", "alice2", &cmd), "alice")).await;
    assert_eq!(words(&c.read("ids", "alice2", "stdout.txt").await.unwrap()), ["changed"], "{done:?}");

    // An unknown account is refused at RunTask.
    let err = c.run(as_user(task("ids", "nobody", "/bin/true"), "mallory")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("mallory"), "{}", err.message());
}

#[tokio::test]
async fn image_users_resolve_through_the_image() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let admin = |spec| as_auto_user(spec, pb::AutoUserScope::Pool, true);
    // The image's USER names batchuser: an admin task runs as that user with its groups.
    let done =
        c.run_done(admin(task_on("imgusers", "named", "/bin/sh -c 'id -u; id -g; id -G'", image("nameduser")))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(words(&c.read("imgusers", "named", "stdout.txt").await.unwrap()), ["1000", "1000", "1000 2000 20000"]);
    // -u by name.
    let spec = with_options(task("imgusers", "flag", "/bin/sh -c 'id -u; id -g'"), "-u nobody:hpc");
    let done = c.run_done(admin(spec)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(words(&c.read("imgusers", "flag", "stdout.txt").await.unwrap()), ["65534", "2000"]);
    // A USER the image does not have: a clear failure, nothing run.
    let done = c.run_done(admin(task_on("imgusers", "ghost", "", image("ghostuser")))).await;
    assert_eq!(failure_code(&done), "ImageUserNotFound", "{done:?}");
    assert!(done.failure_info.as_ref().unwrap().message.contains("\"ghost\""), "{done:?}");
    assert_eq!(done.exit_code, None);
    // A non-admin task runs as its identity whatever the image says.
    let done = c.run_done(task_on("imgusers", "plain", "", image("ghostuser"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert!(c.read("imgusers", "plain", "stdout.txt").await.unwrap().starts_with("uid=20000"));
}

#[tokio::test]
async fn user_namespace_mode_maps_root_to_the_task_uid() {
    let extra = format!("{USERS}\n[policy]\nuser_namespaces = true\n");
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let spec = as_user(task("userns", "t", "/bin/sh -c 'id -u; echo x > $AZ_BATCH_TASK_WORKING_DIR/own.txt'"), "alice");
    let done = c.run_done(spec).await;
    let out = c.read("userns", "t", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?} {out} {}", c.read("userns", "t", "stderr.txt").await.unwrap());
    assert_eq!(words(&out), ["0"], "root inside");
    let meta = std::fs::metadata(agent.task_path("userns", "t", "wd/own.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1500, 1500), "the task's uid outside");
}

#[tokio::test]
async fn a_swapped_output_file_never_makes_containerds_shim_write_a_host_file() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // containerd's shim is root and opens what it is given: it must be given
    // the file the agent made, not the link the preparation task plants.
    let (target, plant) = berth_tests::stdout_swap(&agent, "cswap", "victim");
    let mut spec = task("cswap", "victim", "/bin/echo written-as-root");
    spec.job_preparation = Some(Box::new(task("", "", &plant)));
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ContainerCreateFailed", "{done:?}");
    assert!(done.failure_info.clone().unwrap().message.contains("stdout.txt"), "{done:?}");
    assert_eq!(c.get("cswap", "jobpreparation").await.unwrap().exit_code, Some(0));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's own\n");
}
