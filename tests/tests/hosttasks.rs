//! Host tasks and the node's lifecycle against a real agent, containerd and
//! runc: tasks without container settings run as processes on the node (their
//! identity, their process tree, an agent crash), the start task, job
//! preparation and release tasks, node states and the scheduling switch.

use berth_tests::v1 as pb;
use berth_tests::{as_auto_user, as_user, failure_code, host_task, secs, task, Agent, AgentOptions, Client};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use tonic::Code;

const HOST_POLICY: &str = r#"
[[users]]
name = "alice"
uid = 1500
gid = 1500
groups = [2000]
[policy]
allow_host_tasks = true
"#;

/// In the agent's own environment: no host task may see it.
const AGENT_ONLY_VAR: &str = "BERTH_AGENT_ONLY_MARKER";

fn host_agent() -> AgentOptions {
    AgentOptions {
        extra_config: HOST_POLICY.into(),
        env: vec![(AGENT_ONLY_VAR.into(), "agent-secret".into())],
        ..AgentOptions::default()
    }
}

/// Pids of the processes whose command line holds `word` (a marker argument).
fn procs_with(word: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')));
        if !zombie && cmdline.split(|b| *b == 0).any(|a| a == word.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Waits until a process holding each marker argument runs.
async fn wait_procs(words: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while words.iter().any(|w| procs_with(w).is_empty()) {
        assert!(Instant::now() < deadline, "the process tree did not start: {words:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_task(c: &mut Client, spec: pb::TaskSpec, wait_for_success: bool) -> Result<pb::TaskInfo, tonic::Status> {
    let req = pb::ConfigureStartTaskRequest { task: Some(spec), wait_for_success };
    c.inner.configure_start_task(req).await.map(|r| r.into_inner())
}

async fn wait_start_task(c: &mut Client) -> pb::TaskInfo {
    c.wait_done("@node", "starttask").await
}

fn admin(spec: pb::TaskSpec) -> pb::TaskSpec {
    as_auto_user(spec, pb::AutoUserScope::Pool, true)
}

async fn get_job(c: &mut Client, job: &str) -> pb::JobInfo {
    c.inner.get_job(pb::GetJobRequest { job_id: job.into() }).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_host_task_gets_the_account_url_certificates_dir_and_the_rest() {
    let agent = Agent::start(AgentOptions { min_free_mb: 1, ..host_agent() }).await;
    let mut c = agent.client().await;
    let script = format!("/bin/sh -c \"{}\"", berth_tests::MORE_BATCH_VARS_SCRIPT);
    let done = c.run_done(as_user(host_task("hvars", "alice", &script), "alice")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {:?}", c.read("hvars", "alice", "stderr.txt").await);
    let out = c.read("hvars", "alice", "stdout.txt").await.unwrap();
    assert_eq!(out, agent.more_batch_vars("hvars", "alice", 1500));
}

#[tokio::test]
async fn host_task_runs_as_its_identity_with_the_task_rules() {
    let agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    let script = "id -u; id -g; id -G; echo $AZ_BATCH_TASK_ID; pwd; echo $HOME; echo $MINE; \
                  echo out > $AZ_BATCH_TASK_WORKING_DIR/f; echo to-stderr >&2";
    let mut spec = as_user(host_task("hjob", "alice", &format!("/bin/sh -c '{script}'")), "alice");
    spec.environment.insert("MINE".into(), "$NOT_EXPANDED".into());
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, done.kind), (Some(0), pb::TaskKind::Task as i32), "{done:?}");
    assert!(done.container_info.is_none(), "{done:?}");
    let (started, completed) = (done.started_at.unwrap(), done.completed_at.unwrap());
    assert!((completed.seconds, completed.nanos) >= (started.seconds, started.nanos), "{done:?}");
    let wd = agent.task_path("hjob", "alice", "wd");
    let out = c.read("hjob", "alice", "stdout.txt").await.unwrap();
    // The pool group (20000 by default) is among every identity's groups.
    let want = format!("1500\n1500\n1500 2000 20000\nalice\n{wd}\n{wd}\n$NOT_EXPANDED\n", wd = wd.display());
    assert_eq!(out, want);
    assert_eq!(c.read("hjob", "alice", "stderr.txt").await.unwrap(), "to-stderr\n");
    let meta = std::fs::metadata(wd.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1500, 1500));

    // An admin identity is root on the host; the command line is not run by a shell.
    let done = c.run_done(admin(host_task("hjob", "root", "/bin/echo $HOME 'two words'"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("hjob", "root", "stdout.txt").await.unwrap(), "$HOME two words\n");
    let done = c.run_done(admin(host_task("hjob", "rootid", "id -u"))).await;
    assert_eq!((done.exit_code, c.read("hjob", "rootid", "stdout.txt").await.unwrap()), (Some(0), "0\n".into()));

    // Its own session and process group, its own cgroup, only its own
    // environment and no descriptor but stdin, stdout and stderr.
    let probe = "/bin/sh -c 'cat /proc/$$/stat; echo; cat /proc/$$/cgroup; echo ENV; env; echo FDS; ls /proc/$$/fd'";
    let done = c.run_done(as_user(host_task("hjob", "probe", probe), "alice")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("hjob", "probe", "stdout.txt").await.unwrap();
    let (stat, rest) = out.split_once('\n').unwrap();
    let (pid, after) = stat.split_once(" (").unwrap();
    let fields: Vec<&str> = after.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    // Fields 5 and 6 of /proc/<pid>/stat: process group and session.
    assert_eq!((fields[2], fields[3]), (pid, pid), "not a session leader of its own: {stat}");
    let (cgroups, rest) = rest.split_once("ENV\n").unwrap();
    let own = format!("/{}/berth-", agent.namespace());
    // cgroup v1: the pids and memory hierarchies; v2 (no v1 pids line): the unified one.
    let v1: Vec<&str> = cgroups.lines().filter(|l| l.contains(":pids:") || l.contains(":memory:")).collect();
    let checked = if v1.is_empty() { cgroups.lines().filter(|l| l.starts_with("0::")).collect() } else { v1 };
    assert!(!checked.is_empty(), "{cgroups}");
    for line in checked {
        assert!(line.contains(&own), "not in a cgroup of its own: {line}");
    }
    let (env, fds) = rest.split_once("FDS\n").unwrap();
    assert!(!env.contains(AGENT_ONLY_VAR), "the agent's environment leaked: {env}");
    for line in env.lines() {
        let name = line.split_once('=').map_or(line, |(n, _)| n);
        let expected = ["PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"].contains(&name) || name.starts_with("AZ_BATCH_");
        assert!(expected, "unexpected variable {line:?} in a host task");
    }
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2"], "descriptors leaked into the task");

    // A missing executable is the task's failure, not a hang.
    let done = c.run_done(host_task("hjob", "missing", "/no/such/program")).await;
    assert_eq!((done.exit_code, failure_code(&done)), (None, "HostProcessStartFailed".to_string()), "{done:?}");
    // Killed by a signal: 128+N, and the failure names it.
    let done = c.run_done(host_task("hjob", "sig", "/bin/sh -c 'kill -9 $$'")).await;
    assert_eq!((done.exit_code, failure_code(&done)), (Some(137), "TaskKilledBySignal".to_string()), "{done:?}");
    // Nothing of the finished tasks is left in the agent's state dir.
    let host_dir = agent.state_dir().join("host");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&host_dir).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "host task files left: {:?}", berth_tests::entries(&host_dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn terminate_and_wall_clock_kill_the_whole_process_tree() {
    let agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    // A shell that started background sleeps and a child shell of its own.
    let tree = "/bin/sh -c 'sleep 7101 & sleep 7102 & /bin/sh -c \"sleep 7103\" & echo started; wait'";
    c.run(host_task("tree", "term", tree)).await.unwrap();
    c.wait_state("tree", "term", pb::TaskState::Running, Duration::from_secs(30)).await;
    wait_procs(&["7101", "7103"]).await;
    let req = pb::TerminateTaskRequest { job_id: "tree".into(), task_id: "term".into(), grace_period: Some(secs(1)) };
    c.inner.terminate_task(req).await.unwrap();
    let done = c.wait_done("tree", "term").await;
    assert_eq!(failure_code(&done), "TaskTerminated", "{done:?}");
    for word in ["7101", "7102", "7103"] {
        assert!(procs_with(word).is_empty(), "sleep {word} outlived its terminated task");
    }

    // The main process ends: what it left behind in the background goes too.
    let done = c.run_done(host_task("tree", "leaves", "/bin/sh -c 'sleep 7104 & exit 0'")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert!(procs_with("7104").is_empty(), "a background process outlived its task");

    let mut spec = host_task("tree", "wall", "/bin/sh -c 'sleep 7105 & sleep 7106'");
    spec.constraints = Some(pb::TaskConstraints { max_wall_clock_time: Some(secs(1)), ..Default::default() });
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "MaxWallClockTimeExpiry", "{done:?}");
    assert!(procs_with("7105").is_empty() && procs_with("7106").is_empty());
}

#[tokio::test]
async fn a_swapped_output_file_never_makes_the_shim_write_a_host_file() {
    let agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    // The shim runs as root: it must not follow the link the preparation task plants.
    let (target, plant) = berth_tests::stdout_swap(&agent, "swap", "victim");
    let mut spec = as_user(host_task("swap", "victim", "/bin/echo written-as-root"), "alice");
    spec.job_preparation = Some(Box::new(as_user(host_task("", "", &plant), "alice")));
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done)), (None, "HostProcessStartFailed".to_string()), "{done:?}");
    assert!(done.failure_info.clone().unwrap().message.contains("stdout.txt"), "{done:?}");
    assert_eq!(c.get("swap", "jobpreparation").await.unwrap().exit_code, Some(0));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's own\n");
}

#[tokio::test]
async fn terminate_kills_a_tree_that_ignores_sigterm_after_the_grace_period() {
    let agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    // Every process of it ignores SIGTERM (an ignored signal stays ignored across exec).
    let tree = r#"/bin/sh -c "trap '' TERM; sleep 7301 & /bin/sh -c 'trap \"\" TERM; sleep 7302' & wait""#;
    c.run(host_task("deaf", "t", tree)).await.unwrap();
    c.wait_state("deaf", "t", pb::TaskState::Running, Duration::from_secs(30)).await;
    wait_procs(&["7301", "7302"]).await;
    let req = pb::TerminateTaskRequest { job_id: "deaf".into(), task_id: "t".into(), grace_period: Some(secs(1)) };
    c.inner.terminate_task(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Within the grace period the task is still there: it ignores SIGTERM.
    assert_eq!(c.get("deaf", "t").await.unwrap().state, pb::TaskState::Running as i32);
    let done = c.wait_done("deaf", "t").await;
    assert_eq!((done.exit_code, failure_code(&done)), (Some(137), "TaskTerminated".to_string()), "{done:?}");
    for word in ["7301", "7302"] {
        assert!(procs_with(word).is_empty(), "sleep {word} outlived its terminated task");
    }
}

#[tokio::test]
async fn host_tasks_and_reserved_ids_are_refused_with_nothing_created() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let err = c.run(host_task("deny", "t", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("allow_host_tasks"), "{}", err.message());
    assert_eq!(c.get("deny", "t").await.unwrap_err().code(), Code::NotFound);
    assert!(!agent.task_path("deny", "t", "").exists());

    for reserved in ["jobpreparation", "jobrelease"] {
        let err = c.run(task("deny", reserved, "/bin/true")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("reserved"), "{}", err.message());
    }
    let err = c.run(task("@node", "starttask", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Start, preparation and release tasks may run on the host even so; a
    // host task without a command line cannot.
    let err = start_task(&mut c, host_task("", "", "  "), false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(c.node().await.start_task.is_none());
    let info = start_task(&mut c, host_task("", "", "/bin/true"), false).await.unwrap();
    assert_eq!((info.job_id.as_str(), info.task_id.as_str()), ("@node", "starttask"));
    assert_eq!(wait_start_task(&mut c).await.exit_code, Some(0));
}

#[tokio::test]
async fn start_task_on_the_host_prepares_what_container_tasks_read() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let script = "echo from-start > $AZ_BATCH_NODE_SHARED_DIR/mounted.txt; pwd; \
                  echo task=${AZ_BATCH_TASK_ID:-unset} job=${AZ_BATCH_JOB_ID:-unset}; echo $AZ_BATCH_NODE_STARTUP_WORKING_DIR";
    let spec = admin(host_task("", "", &format!("/bin/sh -c '{script}'")));
    let accepted = start_task(&mut c, spec, true).await.unwrap();
    assert_eq!(accepted.kind, pb::TaskKind::StartTask as i32);
    let done = wait_start_task(&mut c).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let wd = agent.root().join("startup/wd");
    assert_eq!(done.working_dir, wd.display().to_string());
    let out = c.read("@node", "starttask", "stdout.txt").await.unwrap();
    assert_eq!(out, format!("{wd}\ntask=unset job=unset\n{wd}\n", wd = wd.display()));
    let n = c.wait_node_state(pb::NodeState::Idle).await;
    assert!(n.start_task_wait_for_success);
    assert_eq!(n.start_task.map(|t| t.exit_code), Some(Some(0)));

    let shared = agent.root().join("shared/mounted.txt");
    let done = c.run_done(task("after", "reads", &format!("cat {}", shared.display()))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("after", "reads", "stdout.txt").await.unwrap(), "from-start\n");
}

#[tokio::test]
async fn failing_start_task_with_wait_for_success_keeps_tasks_off_the_node() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    // The agent answers while it still re-attaches (STARTING); a loaded
    // machine may still be there.
    c.wait_node_state(pb::NodeState::Idle).await;
    let mut watch = c.inner.watch_node(pb::WatchNodeRequest {}).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().state, pb::NodeState::Idle as i32);

    // While it runs, the node waits for it and takes no task.
    start_task(&mut c, host_task("", "", "/bin/sh -c 'sleep 1; exit 3'"), true).await.unwrap();
    let n = c.node().await;
    assert_eq!(n.state, pb::NodeState::WaitingForStartTask as i32, "{}", n.state_reason);
    let err = c.run(task("blocked", "t1", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("WAITING_FOR_START_TASK"), "{}", err.message());
    // A second start task is refused while the first one runs.
    let err = start_task(&mut c, host_task("", "", "/bin/true"), true).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let done = wait_start_task(&mut c).await;
    assert_eq!((done.exit_code, failure_code(&done)), (Some(3), "FailureExitCode".to_string()));
    let n = c.wait_node_state(pb::NodeState::StartTaskFailed).await;
    assert!(n.state_reason.contains("FailureExitCode"), "{}", n.state_reason);
    let err = c.run(task("blocked", "t2", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for t in ["t1", "t2"] {
        assert_eq!(c.get("blocked", t).await.unwrap_err().code(), Code::NotFound);
    }
    // Watchers saw each state.
    let mut seen = vec![];
    while seen.last() != Some(&(pb::NodeState::StartTaskFailed as i32)) {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        seen.push(ev.state);
    }
    assert!(seen.contains(&(pb::NodeState::WaitingForStartTask as i32)), "{seen:?}");

    // A start task that succeeds opens the node, also for the agent that restarts.
    start_task(&mut c, host_task("", "", "/bin/true"), true).await.unwrap();
    c.wait_node_state(pb::NodeState::Idle).await;
    assert_eq!(c.run_done(task("blocked", "t3", "/bin/true")).await.exit_code, Some(0));
}

#[tokio::test]
async fn job_preparation_runs_once_per_job_and_release_after_release_job() {
    let agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    let prep = "echo prepared >> $AZ_BATCH_NODE_SHARED_DIR/prep-jp.log; echo $AZ_BATCH_TASK_ID > staged; sleep 2";
    // It fails unless the job's last task had finished (its marker is there).
    let release = "test -e $AZ_BATCH_NODE_SHARED_DIR/late-done || exit 9; \
                   echo released > $AZ_BATCH_TASK_WORKING_DIR/done; echo $AZ_BATCH_JOB_PREP_DIR";
    let req = pb::ConfigureJobRequest {
        job_id: "jp".into(),
        preparation: Some(host_task("", "", &format!("/bin/sh -c '{prep}'"))),
        release: Some(host_task("", "", &format!("/bin/sh -c '{release}'"))),
    };
    c.inner.configure_job(req).await.unwrap();
    let read_staged = "/bin/sh -c 'cat $AZ_BATCH_JOB_PREP_WORKING_DIR/staged; echo $AZ_BATCH_JOB_PREP_DIR'";
    for t in ["a", "b", "c"] {
        c.run(task("jp", t, read_staged)).await.unwrap();
    }
    // While the preparation task runs, the job's tasks wait in PREPARING.
    c.wait_state("jp", "jobpreparation", pb::TaskState::Running, Duration::from_secs(30)).await;
    for t in ["a", "b", "c"] {
        let info = c.get("jp", t).await.unwrap();
        assert_eq!(info.state, pb::TaskState::Preparing as i32, "{t}: {info:?}");
    }
    let prep_dir = agent.root().join("workitems/jp/job-1/jobpreparation");
    for t in ["a", "b", "c"] {
        let done = c.wait_done("jp", t).await;
        assert_eq!(done.exit_code, Some(0), "{done:?}");
        let out = c.read("jp", t, "stdout.txt").await.unwrap();
        assert_eq!(out, format!("jobpreparation\n{}\n", prep_dir.display()));
    }
    let log = std::fs::read_to_string(agent.root().join("shared/prep-jp.log")).unwrap();
    assert_eq!(log, "prepared\n", "the preparation task ran more than once");
    let job = get_job(&mut c, "jp").await;
    let prep_task = job.preparation_task.expect("preparation record");
    assert_eq!((prep_task.kind, prep_task.exit_code), (pb::TaskKind::JobPreparation as i32, Some(0)));
    assert!(job.release_task.is_none(), "release ran before ReleaseJob");

    // A task still running when the job is released finishes before the release task runs.
    c.run(task("jp", "late", "/bin/sh -c 'sleep 1; touch $AZ_BATCH_NODE_SHARED_DIR/late-done'")).await.unwrap();
    let r = c.inner.release_job(pb::ReleaseJobRequest { job_id: "jp".into(), terminate_tasks: false }).await;
    assert!(r.unwrap().into_inner().released);
    let err = c.run(task("jp", "after", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // The release task's record appears once the job's tasks have ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_job(&mut c, "jp").await.release_task.is_none() {
        assert!(Instant::now() < deadline, "no release task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = c.wait_done("jp", "jobrelease").await;
    assert_eq!((done.exit_code, done.kind), (Some(0), pb::TaskKind::JobRelease as i32), "{done:?}");
    let late = c.get("jp", "late").await.unwrap();
    assert_eq!(late.exit_code, Some(0));
    let done_file = agent.root().join("workitems/jp/job-1/jobrelease/wd/done");
    assert_eq!(std::fs::read_to_string(done_file).unwrap(), "released\n");
    // The release task is not told the preparation directory.
    assert_eq!(c.read("jp", "jobrelease", "stdout.txt").await.unwrap(), "\n");
}

#[tokio::test]
async fn a_task_can_carry_its_jobs_preparation_and_a_failing_one_fails_the_jobs_tasks() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut first = task("jf", "a", "/bin/sh -c 'echo ran'");
    // This preparation task runs in a container.
    first.job_preparation = Some(Box::new(task("", "", "/bin/sh -c 'echo staging failed >&2; exit 2'")));
    c.run(first).await.unwrap();
    c.run(task("jf", "b", "/bin/sh -c 'echo ran'")).await.unwrap();
    for t in ["a", "b"] {
        let done = c.wait_done("jf", t).await;
        assert_eq!((done.exit_code, failure_code(&done)), (None, "JobPreparationFailed".to_string()), "{done:?}");
        assert!(done.started_at.is_none(), "{done:?}");
        assert!(done.failure_info.unwrap().message.contains("FailureExitCode"));
        assert_eq!(c.read("jf", t, "stdout.txt").await.unwrap(), "", "{t} ran");
    }
    assert_eq!(c.read("jf", "jobpreparation", "stderr.txt").await.unwrap(), "staging failed\n");
    // It ran once for both.
    assert_eq!(c.get("jf", "jobpreparation").await.unwrap().exit_code, Some(2));
    // A failing preparation task on the host does the same.
    let mut first = task("jfh", "a", "/bin/sh -c 'echo ran'");
    first.job_preparation = Some(Box::new(host_task("", "", "/bin/sh -c 'exit 5'")));
    let done = c.run_done(first).await;
    assert_eq!((done.exit_code, failure_code(&done)), (None, "JobPreparationFailed".to_string()), "{done:?}");
    assert_eq!(c.read("jfh", "a", "stdout.txt").await.unwrap(), "", "the task ran");
    assert_eq!(c.get("jfh", "jobpreparation").await.unwrap().exit_code, Some(5));
    // A different preparation task for the same job is refused.
    let mut other = task("jf", "c", "/bin/true");
    other.job_preparation = Some(Box::new(host_task("", "", "/bin/true")));
    let err = c.run(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(c.get("jf", "c").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn an_unusable_node_says_why() {
    // Far more free space asked for than any disk here has.
    let agent = Agent::start(AgentOptions { min_free_mb: 1 << 40, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let n = c.wait_node_state(pb::NodeState::Unusable).await;
    assert!(n.state_reason.contains("MiB free"), "{}", n.state_reason);
    // It still accepts tasks: they fail with the reason.
    let done = c.run_done(task("unusable", "t", "/bin/true")).await;
    assert_eq!(failure_code(&done), "DiskFull", "{done:?}");
}

#[tokio::test]
async fn scheduling_off_refuses_new_tasks_and_lets_running_ones_finish() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    c.run(task("sched", "running", "/bin/sh -c 'sleep 2; echo finished'")).await.unwrap();
    c.wait_state("sched", "running", pb::TaskState::Running, Duration::from_secs(60)).await;
    // A task runs: the node is RUNNING (then IDLE again).
    c.wait_node_state(pb::NodeState::Running).await;
    let r = c.inner.set_node_scheduling(pb::SetNodeSchedulingRequest { enabled: false }).await.unwrap().into_inner();
    assert_eq!(r.state, pb::NodeState::Offline as i32);
    let err = c.run(task("sched", "new", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("OFFLINE"), "{}", err.message());
    let done = c.wait_done("sched", "running").await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("sched", "running", "stdout.txt").await.unwrap(), "finished\n");
    // Disabled and idle: still OFFLINE.
    assert_eq!(c.node().await.state, pb::NodeState::Offline as i32);

    // The switch survives an agent restart.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    agent.spawn().await;
    let mut c = agent.client().await;
    let n = c.wait_node_state(pb::NodeState::Offline).await;
    assert!(!n.scheduling_enabled);
    assert_eq!(c.run(task("sched", "new", "/bin/true")).await.unwrap_err().code(), Code::FailedPrecondition);
    c.inner.set_node_scheduling(pb::SetNodeSchedulingRequest { enabled: true }).await.unwrap();
    assert_eq!(c.run_done(task("sched", "new", "/bin/true")).await.exit_code, Some(0));
}

#[tokio::test]
async fn host_task_survives_an_agent_crash_and_a_lost_one_says_so() {
    let mut agent = Agent::start(host_agent()).await;
    let mut c = agent.client().await;
    c.run(host_task("crash", "survives", "/bin/sh -c 'sleep 2; echo after >&2; exit 7'")).await.unwrap();
    c.run(host_task("crash", "lost", "/bin/sh -c 'sleep 7201'")).await.unwrap();
    for t in ["survives", "lost"] {
        c.wait_state("crash", t, pb::TaskState::Running, Duration::from_secs(30)).await;
    }
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    // While the agent is down, the shim of "lost" is killed: its exit status can no longer be known.
    let host_dir = agent.state_dir().join("host");
    let lost = c_id_of(&host_dir, "7201");
    let shim: i32 = std::fs::read_to_string(host_dir.join(&lost).join("shim.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("crash", "survives").await;
    assert_eq!((done.exit_code, failure_code(&done)), (Some(7), "FailureExitCode".to_string()), "{done:?}");
    assert_eq!(c.read("crash", "survives", "stderr.txt").await.unwrap(), "after\n");
    let done = c.wait_done("crash", "lost").await;
    assert_eq!((done.exit_code, failure_code(&done)), (None, "HostProcessLost".to_string()), "{done:?}");
    // What the lost task left running is killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs_with("7201").is_empty() {
        assert!(Instant::now() < deadline, "the lost task's process is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id (state dir entry) of the host task whose spec holds `marker`.
fn c_id_of(host_dir: &std::path::Path, marker: &str) -> String {
    for e in std::fs::read_dir(host_dir).unwrap().flatten() {
        let spec = std::fs::read_to_string(e.path().join("spec.json")).unwrap_or_default();
        if spec.contains(marker) {
            return e.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no host task with {marker} in {}", host_dir.display());
}
