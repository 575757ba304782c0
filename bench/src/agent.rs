//! A release `berth-agent` run by the benchmark: config, start, stop, memory.

use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub(crate) struct Agent {
    pub dir: PathBuf,
    pub binary: PathBuf,
    /// Its containerd namespace.
    pub namespace: String,
    child: Option<Child>,
}

pub(crate) struct Settings<'a> {
    pub containerd: &'a str,
    pub namespace: &'a str,
    pub registry: &'a str,
    pub slots: u32,
    /// More TOML for the config file.
    pub extra: &'a str,
    /// More keys of its `[containerd]` table.
    pub containerd_extra: &'a str,
}

/// A bridge and subnet per agent (`bb<N>`, `10.203.<N>.0/24`).
static NEXT_NETWORK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Agent {
    /// Writes the config in `dir` (node root, state, socket all under it).
    /// It logs JSON lines (the pull split is read from them).
    pub(crate) fn new(binary: &Path, dir: &Path, s: &Settings<'_>) -> Agent {
        std::fs::create_dir_all(dir).expect("agent dir");
        let cfg = format!(
            "[node]\nroot_dir = \"{d}/node\"\nstate_dir = \"{d}/state\"\nid = \"{ns}\"\ntask_slots = {slots}\nmin_free_mb = 0\n\
             [api]\nlisten = \"unix://{d}/agent.sock\"\n\
             [containerd]\nsocket = \"{sock}\"\nnamespace = \"{ns}\"\n{containerd_extra}\n\
             [registries]\ninsecure = [\"{reg}\"]\n\
             [tasks]\nterminate_grace_seconds = 1\n\
             [log]\nformat = \"json\"\n\
             [network]\nrun_dir = \"{netns}\"\nbridge = \"bb{n}\"\nsubnet = \"10.203.{n}.0/24\"\n{extra}",
            // Under the test environment's shared mount (seen by its containerd).
            netns = std::path::Path::new(&std::env::var("BERTH_TEST_NETNS_DIR").unwrap_or_else(|_| "/run/berth".into()))
                .join(format!("bench-{}", s.namespace))
                .display(),
            n = NEXT_NETWORK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250,
            d = dir.display(),
            ns = s.namespace,
            slots = s.slots,
            sock = s.containerd,
            reg = s.registry,
            extra = s.extra,
            containerd_extra = s.containerd_extra,
        );
        std::fs::write(dir.join("agent.toml"), cfg).expect("write config");
        Agent { dir: dir.to_owned(), binary: binary.to_owned(), namespace: s.namespace.to_owned(), child: None }
    }

    pub(crate) fn addr(&self) -> String {
        format!("unix://{}", self.dir.join("agent.sock").display())
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Starts the agent; returns once its socket answers.
    pub(crate) async fn start(&mut self) -> NodeAgentClient<Channel> {
        let _ = std::fs::remove_file(self.dir.join("agent.sock"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).expect("log");
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berth-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = berth_proto::connect(&self.addr()).await {
                let mut c = NodeAgentClient::new(ch);
                if c.get_node(berth_proto::v1::GetNodeRequest {}).await.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "agent did not answer:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("agent running")
    }

    /// `VmRSS` and `VmHWM` (peak) of the agent process, in KiB.
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Stops the agent with `signal` and waits for it.
    pub(crate) fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}

/// User plus system CPU time of process `pid` (and its waited-for children), from `/proc/PID/stat`.
pub(crate) fn cpu_of(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime, stime, cutime, cstime are fields 14..17 of stat; 12..15 after the name and state.
    let ticks: u64 = f.get(11..15).map_or(0, |v| v.iter().sum());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    std::time::Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// CPU time the whole machine spent busy (all CPUs), from `/proc/stat`.
pub(crate) fn machine_busy() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    std::time::Duration::from_millis(busy * 1000 / hz.max(1))
}
