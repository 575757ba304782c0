//! Privilege boundaries against a real agent, containerd and runc: a
//! non-admin task stays non-admin (seccomp, mount flags, no admin-owned
//! directory it can write), a task cannot make the agent (root) open what it
//! planted, the agent's state is private, and the API is refused where it
//! would be reachable by tasks.

use berth_tests::v1 as pb;
use berth_tests::{as_auto_user, failure_code, host_task, task, with_options, Agent, AgentOptions, Client};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const HOST_POLICY: &str = "[policy]\nallow_host_tasks = true\n";

fn admin(spec: pb::TaskSpec) -> pb::TaskSpec {
    as_auto_user(spec, pb::AutoUserScope::Pool, true)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn start_task(c: &mut Client, spec: pb::TaskSpec) -> Result<pb::TaskInfo, tonic::Status> {
    let req = pb::ConfigureStartTaskRequest { task: Some(spec), wait_for_success: false };
    c.inner.configure_start_task(req).await.map(|r| r.into_inner())
}

/// Waits for the start task's record to complete (panics after `timeout`).
async fn start_task_done(c: &mut Client, timeout: Duration) -> pb::TaskInfo {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(t) = c.get("@node", "starttask").await {
            if t.state == pb::TaskState::Completed as i32 {
                return t;
            }
        }
        assert!(Instant::now() < deadline, "the start task did not complete within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_non_admin_task_cannot_write_what_admin_tasks_run() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // An admin task of the job, and an admin start task on the host.
    let done =
        c.run_done(admin(task("own", "admin", "/bin/sh -c 'echo mine > $AZ_BATCH_TASK_WORKING_DIR/run.sh'"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    start_task(&mut c, admin(host_task("", "", "/bin/true"))).await.unwrap();
    assert_eq!(start_task_done(&mut c, Duration::from_secs(60)).await.exit_code, Some(0));
    let admin_wd = agent.task_path("own", "admin", "wd");
    let startup_wd = agent.root().join("startup/wd");
    for dir in [&admin_wd, &startup_wd] {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!((meta.uid(), meta.gid(), mode(dir)), (0, 0, 0o755), "{}", dir.display());
    }
    // The default identity (non-admin pool auto-user) of the same job.
    let plant = format!(
        "/bin/sh -c 'for d in {a} {s}; do touch $d/planted 2>/dev/null && echo planted || echo denied; done; \
         echo x >> {a}/run.sh 2>/dev/null && echo changed || echo kept; cat {a}/run.sh'",
        a = admin_wd.display(),
        s = startup_wd.display()
    );
    let done = c.run_done(task("own", "plain", &plant)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("own", "plain", "stdout.txt").await.unwrap();
    assert_eq!(out, "denied\ndenied\nkept\nmine\n", "a non-admin task changed an admin task's files");
    assert!(!admin_wd.join("planted").exists() && !startup_wd.join("planted").exists());
    // Its own directory is its own.
    let own = std::fs::metadata(agent.task_path("own", "plain", "wd")).unwrap();
    assert_eq!((own.uid(), own.gid()), (20000, 20000));
    let run_as = done.run_as.unwrap();
    assert!(!run_as.admin && run_as.uid == 20000);
    let admin_run_as = c.get("own", "admin").await.unwrap().run_as.unwrap();
    assert_ne!(admin_run_as.uid, run_as.uid, "the admin and non-admin pool auto-users are different accounts");
}

/// Builds the static syscall probe into the node's shared directory.
fn probe(agent: &Agent) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("probe/syscalls.c");
    let out = agent.root().join("shared/probe");
    let st = std::process::Command::new("cc")
        .args(["-static", "-pthread", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc -static failed (gcc and libc6-dev are needed)");
    out
}

#[tokio::test]
async fn every_container_task_gets_the_default_seccomp_profile() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let probe = probe(&agent);
    let cmd = format!("/bin/sh -c 'grep ^Seccomp: /proc/self/status; {}'", probe.display());
    let done = c.run_done(task("sec", "plain", &cmd)).await;
    let out = c.read("sec", "plain", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?} {out}");
    let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        lines,
        [
            "Seccomp: 2",
            "keyctl=EPERM",
            "add_key=EPERM",
            "unshare_user=EPERM",
            "kexec_load=EPERM",
            "open_by_handle_at=EPERM",
            "threads=ok"
        ],
        "a non-admin task runs filtered; busybox sh and threads still work"
    );
    // An admin task is filtered too (keyctl is never allowed).
    let done = c.run_done(admin(task("sec", "admin", &cmd))).await;
    let out = c.read("sec", "admin", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?} {out}");
    assert!(out.starts_with("Seccomp:\t2\nkeyctl=EPERM\n"), "{out}");
    // Unconfined only where the policy allows it.
    let err = c.run(with_options(task("sec", "unconfined", &cmd), "--security-opt seccomp=unconfined")).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("allow_unconfined_seccomp"), "{}", err.message());
    assert_eq!(c.get("sec", "unconfined").await.unwrap_err().code(), Code::NotFound, "nothing was created");
}

#[tokio::test]
async fn unconfined_and_profile_files_follow_the_policy() {
    let allowed = tempfile::tempdir().unwrap();
    let profile = allowed.path().join("allow-all.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#).unwrap();
    let docker = allowed.path().join("docker.json");
    std::fs::write(&docker, r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[],"syscalls":[]}"#).unwrap();
    let extra = format!(
        "[policy]\nallow_unconfined_seccomp = true\nbind_mount_prefixes = [\"{}\"]\n",
        allowed.path().display()
    );
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let probe = probe(&agent);
    let cmd = format!("/bin/sh -c 'grep ^Seccomp: /proc/self/status; {}'", probe.display());
    let done = c.run_done(with_options(task("sec2", "unconfined", &cmd), "--security-opt seccomp=unconfined")).await;
    let out = c.read("sec2", "unconfined", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert!(out.starts_with("Seccomp:\t0\n") && out.contains("threads=ok"), "{out}");
    let opts = format!("--security-opt seccomp={}", profile.display());
    let done = c.run_done(with_options(task("sec2", "file", &cmd), &opts)).await;
    let out = c.read("sec2", "file", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert!(out.starts_with("Seccomp:\t2\nkeyctl=ENOSYS\n"), "the file's profile: {out}");
    // A profile a task could have written (writable by others than root) is refused.
    let loose = allowed.path().join("loose.json");
    std::fs::write(&loose, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (file, want) in [
        (docker.display().to_string(), "docker's profile format"),
        ("/etc/passwd".into(), "bind_mount_prefixes"),
        (loose.display().to_string(), "writable by root only"),
    ] {
        let err = c.run(with_options(task("sec2", "bad", &cmd), &format!("--security-opt seccomp={file}"))).await;
        let err = err.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(want), "{file}: {}", err.message());
    }
}

#[tokio::test]
async fn the_node_root_and_binds_are_nosuid_and_nodev() {
    let data = tempfile::tempdir().unwrap();
    let extra = format!("[policy]\nbind_mount_prefixes = [\"{}\"]\n", data.path().display());
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let root = agent.root();
    let cmd = format!("/bin/sh -c 'grep -E \" ({}|/data) \" /proc/mounts'", root.display());
    let opts = format!("-v {}:/data:ro", data.path().display());
    let done = c.run_done(with_options(task("mnt", "t", &cmd), &opts)).await;
    let out = c.read("mnt", "t", "stdout.txt").await.unwrap();
    assert_eq!(done.exit_code, Some(0), "{done:?} {out}");
    let mounts: Vec<&str> = out.lines().collect();
    assert_eq!(mounts.len(), 2, "{out}");
    for m in mounts {
        let opts: Vec<&str> = m.split_whitespace().nth(3).unwrap().split(',').collect();
        assert!(opts.contains(&"nosuid") && opts.contains(&"nodev"), "{m}");
    }
}

#[tokio::test]
async fn the_state_directory_and_database_are_private() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    c.run_done(task("st", "t", "/bin/true")).await;
    let state = agent.state_dir();
    let check = |state: &Path| {
        assert_eq!(mode(state), 0o700);
        for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
            let p = state.join(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            }
        }
        assert_eq!(mode(&state.join("berth.db")), 0o600);
    };
    check(&state);
    // An installation of an earlier agent (0755, 0644) is fixed at start-up.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        if state.join(f).exists() {
            std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    agent.spawn().await;
    check(&state);
}

#[tokio::test]
async fn a_host_task_never_enters_a_swapped_working_directory() {
    let agent = Agent::start(AgentOptions { extra_config: HOST_POLICY.into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    // The job's preparation task (same identity) swaps the task's wd for a
    // link to a root-only directory once the agent has made it.
    let target = agent.state_dir();
    let wd = agent.task_path("swapwd", "t", "wd");
    let swap = format!(
        "/bin/sh -c 'while [ ! -d {w} ]; do sleep 0.1; done; rm -r {w}; ln -s {t} {w}'",
        w = wd.display(),
        t = target.display()
    );
    let req =
        pb::ConfigureJobRequest { job_id: "swapwd".into(), preparation: Some(host_task("", "", &swap)), release: None };
    c.inner.configure_job(req).await.unwrap();
    let done = c.run_done(host_task("swapwd", "t", "/bin/sh -c 'pwd; ls'")).await;
    let out = c.read("swapwd", "t", "stdout.txt").await.unwrap_or_default();
    assert_eq!(failure_code(&done), "HostProcessStartFailed", "{done:?} {out}");
    assert!(done.failure_info.unwrap().message.contains("working directory"));
    assert!(!out.contains(&target.display().to_string()), "the task ran in the link's target: {out}");
}

/// Watches `path` for opens (inotify IN_OPEN).
fn watch_opens(path: &Path) -> nix::sys::inotify::Inotify {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(path, AddWatchFlags::IN_OPEN).unwrap();
    ino
}

fn opened(ino: &nix::sys::inotify::Inotify) -> bool {
    ino.read_events().is_ok_and(|e| !e.is_empty())
}

#[tokio::test]
async fn planted_fifos_and_devices_are_never_opened() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let plant = "/bin/sh -c 'mkfifo $AZ_BATCH_TASK_WORKING_DIR/fifo && mknod $AZ_BATCH_TASK_WORKING_DIR/dev c 1 3'";
    let done = c.run_done(admin(task("plant", "t", plant))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {}", c.read("plant", "t", "stderr.txt").await.unwrap());
    let dev = agent.task_path("plant", "t", "wd/dev");
    let ino = watch_opens(&dev);
    for name in ["wd/fifo", "wd/dev"] {
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), c.read("plant", "t", name)).await;
        let err = err.expect("ReadTaskFile blocked").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(!opened(&ino), "the agent opened the device node");

    // The start task's stdout.txt swapped for a FIFO, then for a device
    // node: the next start task fails at once, nothing is opened.
    for (what, make) in [("fifo", "mkfifo"), ("device", "mknod")] {
        let args = if make == "mknod" { " c 1 3" } else { "" };
        let cmd = format!("/bin/sh -c 'rm $AZ_BATCH_TASK_DIR/stdout.txt; {make} $AZ_BATCH_TASK_DIR/stdout.txt{args}'");
        start_task(&mut c, admin(host_task("", "", &cmd))).await.unwrap();
        let first = start_task_done(&mut c, Duration::from_secs(60)).await;
        assert_eq!(first.exit_code, Some(0), "{what}: {first:?}");
        let out = agent.root().join("startup/stdout.txt");
        let ino = watch_opens(&out);
        start_task(&mut c, admin(host_task("", "", "/bin/true"))).await.unwrap();
        let again = start_task_done(&mut c, Duration::from_secs(20)).await;
        assert_eq!(failure_code(&again), "UnsafeTaskFile", "{what}: {again:?}");
        let f = again.failure_info.unwrap();
        assert_eq!(f.category, pb::FailureCategory::UserError as i32);
        assert!(f.message.contains("stdout.txt"), "{}", f.message);
        assert!(!opened(&ino), "{what}: the agent opened the planted stdout.txt");
        std::fs::remove_file(&out).unwrap();
    }
    // The node goes on: a start task runs again once the file is gone.
    start_task(&mut c, admin(host_task("", "", "/bin/true"))).await.unwrap();
    assert_eq!(start_task_done(&mut c, Duration::from_secs(60)).await.exit_code, Some(0));
}

#[tokio::test]
async fn requests_that_would_cross_a_boundary_are_refused() {
    let agent = Agent::start(AgentOptions { extra_config: HOST_POLICY.into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    for wd in ["/proc/self/fd/8", "/proc", "/proc/1/cwd"] {
        let err = c.run(with_options(task("cross", "wd", "/bin/true"), &format!("-w {wd}"))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{wd}");
        assert!(err.message().contains("/proc"), "{}", err.message());
    }
    // A host command line that names no program.
    for cmd in ["''", "\"\"", "\\\n"] {
        let err = c.run(host_task("cross", "empty", cmd)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{cmd:?}");
        assert!(err.message().contains("command_line"), "{}", err.message());
        let err = start_task(&mut c, host_task("", "", cmd)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "start task {cmd:?}");
    }
    assert_eq!(c.get("cross", "wd").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.get("cross", "empty").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.get("@node", "starttask").await.unwrap_err().code(), Code::NotFound, "no start task was made");
}

/// `berth-agent --check-config` on a config file: (exit code, stderr).
fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(berth_tests::binary("berth-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_agent_refuses_configs_that_let_tasks_reach_root() {
    // A plain loopback listener: tasks share the node's network.
    let (code, err) = check_config("[api]\nlisten = \"127.0.0.1:7999\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mutual TLS") && err.contains("insecure_loopback"), "{err}");
    let (code, err) = check_config("[api]\nlisten = \"127.0.0.1:7999\"\ninsecure_loopback = true\n");
    assert_eq!(code, Some(0), "on purpose: {err}");
    // Bind prefixes over system or agent directories, also through a link.
    let links = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", links.path().join("conf")).unwrap();
    for prefix in ["/", "/etc", "/run/containerd", "/proc", &links.path().join("conf").display().to_string()] {
        let (code, err) = check_config(&format!("[policy]\nbind_mount_prefixes = [\"{prefix}\"]\n"));
        assert_eq!(code, Some(2), "{prefix}: {err}");
        assert!(err.contains("policy.bind_mount_prefixes"), "{prefix}: {err}");
    }
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nstate_dir = \"{s}/state\"\n[policy]\nbind_mount_prefixes = [\"{s}\"]\n",
        s = state.path().display()
    );
    let (code, err) = check_config(&text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("state directory"), "{err}");
}
