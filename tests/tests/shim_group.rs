//! `[containerd] shim_group`: containers of one job (or of the node) share
//! one containerd shim process; what a crash of that shim ends, with the agent
//! running and with the agent down (recovery). Only this agent's namespace's
//! shims are looked at or killed.

use berth_tests::{failure_code, task, v1 as pb, Agent, AgentOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

fn grouped(group: &str) -> AgentOptions {
    AgentOptions { containerd_extra: format!("shim_group = \"{group}\""), ..AgentOptions::default() }
}

fn cmdline(pid: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

fn pids() -> Vec<String> {
    let dir = std::fs::read_dir("/proc").unwrap();
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// The processes that look like containerd shims of `namespace`, sorted.
/// Besides the shim daemons this can catch, for a moment, a shim's child
/// between fork and exec, or a `start`/`delete` invocation of the shim binary.
fn shim_like(namespace: &str) -> Vec<i32> {
    let mut found: Vec<i32> = pids()
        .into_iter()
        .filter(|p| {
            let argv = cmdline(p);
            argv.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && argv.windows(2).any(|w| w[0] == "-namespace" && w[1] == namespace)
        })
        .filter_map(|p| p.parse().ok())
        .collect();
    found.sort();
    found
}

/// Asserts that the shims of `namespace` settle to exactly `want` (within
/// 10 s: transient shim-like processes come and go); a leaked or a missing
/// shim daemon stays and fails, naming each process's argv and parent.
fn assert_shims(namespace: &str, mut want: Vec<i32>) {
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = shim_like(namespace);
        if found == want {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> =
                found.iter().map(|p| format!("{p} (parent {}): {:?}", parent(*p), cmdline(&p.to_string()))).collect();
            panic!("shims of {namespace}: want {want:?}, found {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the process `sleep <marker>` (a task's container init), if it runs.
fn sleeper(marker: &str) -> Option<i32> {
    pids().into_iter().find(|p| cmdline(p) == ["sleep", marker]).and_then(|p| p.parse().ok())
}

/// The parent of `pid` (a container's init: its shim).
fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The shim of the running task `sleep <marker>`.
fn shim_of(marker: &str) -> i32 {
    parent(sleeper(marker).unwrap_or_else(|| panic!("sleep {marker} does not run")))
}

async fn run_sleepers(c: &mut berth_tests::Client, tasks: &[(&str, &str, &str)]) {
    for (job, t, marker) in tasks {
        c.run(task(job, t, &format!("sleep {marker}"))).await.unwrap();
    }
    for (job, t, _) in tasks {
        c.wait_state(job, t, pb::TaskState::Running, Duration::from_secs(60)).await;
    }
}

fn wait_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sleeper(marker).is_some() {
        assert!(Instant::now() < deadline, "sleep {marker} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn without_a_group_every_container_has_a_shim_of_its_own() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    run_sleepers(&mut c, &[("sg0", "a", "3101"), ("sg0", "b", "3102")]).await;
    let (a, b) = (shim_of("3101"), shim_of("3102"));
    assert_ne!(a, b);
    assert_shims(&agent.namespace(), vec![a, b]);
    for t in ["a", "b"] {
        c.terminate("sg0", t).await;
    }
}

#[tokio::test]
async fn a_jobs_tasks_share_a_shim_whose_crash_ends_them_and_no_other() {
    let agent = Agent::start(grouped("job")).await;
    let mut c = agent.client().await;
    run_sleepers(&mut c, &[("sga", "a1", "3201"), ("sga", "a2", "3202"), ("sgb", "b1", "3203")]).await;
    let (shim_a, shim_b) = (shim_of("3201"), shim_of("3203"));
    assert_eq!(shim_of("3202"), shim_a, "one shim for the job's tasks");
    assert_ne!(shim_a, shim_b, "another job has its own");
    assert_shims(&agent.namespace(), vec![shim_a, shim_b]);

    kill(Pid::from_raw(shim_a), Signal::SIGKILL).unwrap();
    for t in ["a1", "a2"] {
        let done = c.wait_done("sga", t).await;
        assert_eq!(done.state, pb::TaskState::Completed as i32);
        assert_eq!(failure_code(&done), "ContainerLost", "{done:?}");
        assert_eq!((done.exit_code, done.retry_count), (None, 0), "{done:?}");
    }
    wait_gone("3201");
    wait_gone("3202");
    // The other job's task and shim are untouched.
    assert_eq!(c.get("sgb", "b1").await.unwrap().state, pb::TaskState::Running as i32);
    assert_eq!(shim_of("3203"), shim_b);
    // The job's next task gets a new shim.
    let next = c.run_done(task("sga", "a3", "/bin/sh -c 'exit 3'")).await;
    assert_eq!(next.exit_code, Some(3), "{next:?}");
    let b1 = c.terminate("sgb", "b1").await;
    assert_eq!(failure_code(&b1), "TaskTerminated", "{b1:?}");
    // A finished task was not run again.
    for t in ["a1", "a2"] {
        assert_eq!(c.get("sga", t).await.unwrap().retry_count, 0);
    }
}

#[tokio::test]
async fn a_node_shim_that_dies_while_the_agent_is_down_ends_its_tasks_as_lost() {
    let mut agent = Agent::start(grouped("node")).await;
    let mut c = agent.client().await;
    run_sleepers(&mut c, &[("sgn1", "t", "3301"), ("sgn2", "t", "3302")]).await;
    let shim = shim_of("3301");
    assert_eq!(shim_of("3302"), shim, "one shim for the node");
    assert_shims(&agent.namespace(), vec![shim]);

    agent.stop_with(Signal::SIGKILL);
    kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    wait_gone("3301");
    wait_gone("3302");
    agent.spawn().await;
    let mut c = agent.client().await;
    for job in ["sgn1", "sgn2"] {
        let done = c.wait_done(job, "t").await;
        assert_eq!((failure_code(&done).as_str(), done.exit_code), ("ContainerLost", None), "{done:?}");
    }
    let next = c.run_done(task("sgn1", "after", "/bin/true")).await;
    assert_eq!(next.exit_code, Some(0), "{next:?}");
}
