//! Harness for berth's integration tests: a real `berth-agent` process, started
//! with its own node root and state directory, talking to the real containerd and
//! registry that `scripts/test` started (their addresses come in `BERTH_TEST_*`
//! environment variables). Tests drive the agent over gRPC, as a scheduler does.

use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub use berth_proto::v1;

pub mod archive;
pub mod blob;
mod http;
pub mod token;

/// A variable set by `scripts/test`; panics with a clear message when missing,
/// so a run outside the test environment fails instead of passing vacuously.
/// `[node] account_url` of every test agent (`AZ_BATCH_ACCOUNT_URL`).
pub const ACCOUNT_URL: &str = "https://testaccount.batch.example";

/// The variables issue 18 added, printed one per line by `/bin/sh -c` (the
/// certificates directory also says whether it exists, is the task's and
/// private), and what each must be for a task of `agent` (`min_free_mb` 0).
pub const MORE_BATCH_VARS_SCRIPT: &str = "echo $AZ_BATCH_ACCOUNT_URL; echo $AZ_BATCH_NODE_MOUNTS_DIR; \
     echo $AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES; echo $AZ_BATCH_CERTIFICATES_DIR; \
     stat -c '%u %a' $AZ_BATCH_CERTIFICATES_DIR; touch $AZ_BATCH_CERTIFICATES_DIR/own && echo writable";

/// The `AZ_BATCH_*` lines of `env`'s output, as a map.
pub fn batch_vars_of(env_output: &str) -> std::collections::BTreeMap<String, String> {
    env_output
        .lines()
        .filter(|l| l.starts_with("AZ_BATCH_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test, which starts containerd and the registries")
    })
}

pub fn image(kind: &str) -> String {
    env(&format!("BERTH_TEST_IMAGE_{}", kind.to_uppercase()))
}

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

/// A built binary of the workspace (`berth-agent`, `berthctl`).
pub fn binary(name: &str) -> PathBuf {
    let dir =
        std::env::var_os("BERTH_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_dir().join("target/debug"));
    let path = dir.join(name);
    assert!(path.exists(), "{} not found: build it first (scripts/test does)", path.display());
    path
}

/// Agent settings a test may change.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub task_slots: u32,
    pub terminate_grace_seconds: u64,
    /// Node root; default: `node/` in the agent's temp dir.
    pub root_dir: Option<PathBuf>,
    pub min_free_mb: u64,
    /// `[images]` garbage collection: (high, low) percent, checked every second.
    pub image_gc: Option<(u8, u8)>,
    /// Node-wide credentials for the TLS test registry in the config file.
    pub tls_registry_credentials: bool,
    /// `[images] prefetch` in the config file.
    pub prefetch: Vec<String>,
    /// More TOML appended to the config file (`[[users]]`, `[policy]`, ...).
    pub extra_config: String,
    /// `[api] listen` instead of the agent's unix socket (readiness is then a TCP connect).
    pub listen: Option<String>,
    /// More keys of the `[api]` table (`tls_cert = ...`).
    pub api_extra: String,
    /// More keys of the `[registries]` table (`max_layer_bytes = ...`).
    pub registries_extra: String,
    /// Environment of the agent process.
    pub env: Vec<(String, String)>,
    /// More keys of the `[staging]` table (`max_task_bytes = ...`).
    pub staging_extra: String,
    /// The `[network]` table instead of the harness's (a bridge and a /24 of
    /// the agent's own, so agents running at once do not share addresses).
    pub network: Option<String>,
    /// More `[registries] insecure` hosts (plain HTTP), besides the plain test registry.
    pub insecure: Vec<String>,
    /// More keys of the `[containerd]` table (`shim_group = ...`).
    pub containerd_extra: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            task_slots: 4,
            terminate_grace_seconds: 2,
            root_dir: None,
            min_free_mb: 0,
            image_gc: None,
            tls_registry_credentials: false,
            prefetch: vec![],
            extra_config: String::new(),
            listen: None,
            api_extra: String::new(),
            registries_extra: String::new(),
            env: vec![],
            staging_extra: String::new(),
            network: None,
            insecure: vec![],
            containerd_extra: String::new(),
        }
    }
}

/// A running agent with its own temporary node root, state dir and socket.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub opts: AgentOptions,
    child: Option<Child>,
}

impl Agent {
    pub async fn start(opts: AgentOptions) -> Agent {
        let dir = tempfile::Builder::new().prefix("berth-it-").tempdir().expect("tempdir");
        let mut agent = Agent { dir, opts, child: None };
        agent.write_config();
        agent.spawn().await;
        agent
    }

    pub fn root(&self) -> PathBuf {
        self.opts.root_dir.clone().unwrap_or_else(|| self.dir.path().join("node"))
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Each agent has a containerd namespace of its own (so it pulls its images
    /// itself, as a fresh node does).
    pub fn namespace(&self) -> String {
        self.node_id()
    }

    /// Unique per agent: each cleans up only what carries its own node id.
    pub fn node_id(&self) -> String {
        let name = self.dir.path().file_name().unwrap_or_default().to_string_lossy().to_lowercase();
        format!("test-{}", name.trim_start_matches("berth-it-"))
    }
    /// `[network] run_dir`: under the test environment's shared mount, so
    /// that containerd (in a mount namespace of its own) sees the namespaces.
    pub fn network_run_dir(&self) -> PathBuf {
        PathBuf::from(env("BERTH_TEST_NETNS_DIR")).join(self.node_id())
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_config(&self) {
        let cfg = format!(
            r#"[node]
root_dir = "{root}"
state_dir = "{state}"
id = "{id}"
pool_id = "test-pool"
account_url = "{account_url}"
task_slots = {slots}
min_free_mb = {min_free}

[api]
listen = "{addr}"
{api_extra}

[containerd]
socket = "{sock}"
namespace = "{ns}"
{containerd_extra}

[registries]
insecure = ["{registry}"{more_insecure}]
ca_files = ["{ca}"]
{registries_extra}

[tasks]
terminate_grace_seconds = {grace}

[staging]
secrets_dir = "{secrets}"
retry_backoff_ms = 50
{staging_extra}

[network]
run_dir = "{network_run}"
{network}
"#,
            network_run = self.network_run_dir().display(),
            network = self.opts.network.clone().unwrap_or_else(|| {
                let (bridge, subnet) = test_network();
                format!("bridge = \"{bridge}\"\nsubnet = \"{subnet}\"")
            }),
            secrets = self.dir.path().join("secrets").display(),
            more_insecure = self.opts.insecure.iter().map(|h| format!(", \"{h}\"")).collect::<String>(),
            staging_extra = self.opts.staging_extra,
            root = self.root().display(),
            state = self.state_dir().display(),
            id = self.node_id(),
            min_free = self.opts.min_free_mb,
            account_url = ACCOUNT_URL,
            slots = self.opts.task_slots,
            addr = self.opts.listen.clone().unwrap_or_else(|| self.addr()),
            api_extra = self.opts.api_extra,
            registries_extra = self.opts.registries_extra,
            containerd_extra = self.opts.containerd_extra,
            sock = env("BERTH_TEST_CONTAINERD_SOCKET"),
            ns = self.namespace(),
            registry = env("BERTH_TEST_REGISTRY"),
            ca = env("BERTH_TEST_TLS_CA"),
            grace = self.opts.terminate_grace_seconds,
        );
        let cfg = match self.opts.image_gc {
            Some((high, low)) => format!(
                "{cfg}\n[images]\ngc_high_percent = {high}\ngc_low_percent = {low}\ngc_interval_seconds = 1\nfilesystem = \"{}\"\n",
                env("BERTH_TEST_DIR")
            ),
            None => cfg,
        };
        let cfg = match (&self.opts.prefetch, self.opts.image_gc) {
            (p, None) if !p.is_empty() => format!("{cfg}\n[images]\nprefetch = {p:?}\n"),
            (p, Some(_)) if !p.is_empty() => panic!("prefetch and image_gc together are not supported by the harness"),
            _ => cfg,
        };
        let cfg = if self.opts.tls_registry_credentials {
            let password = std::fs::read_to_string(env("BERTH_TEST_REGISTRY_PASSWORD_FILE")).expect("password file");
            format!(
                "{cfg}\n[[registries.credentials]]\nserver = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
                env("BERTH_TEST_TLS_REGISTRY"),
                env("BERTH_TEST_REGISTRY_USER"),
                password.trim_end()
            )
        } else {
            cfg
        };
        let cfg = format!("{cfg}\n{}\n", self.opts.extra_config);
        std::fs::write(self.config_path(), cfg).expect("write config");
        // A config holding credentials must not be world-readable.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.config_path(), std::fs::Permissions::from_mode(0o600)).expect("chmod config");
    }

    /// Starts the agent process and waits until it answers.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(binary("berth-agent"))
            .arg("--config")
            .arg(self.config_path())
            .env("BERTH_LOG", "debug,h2=info,tower=info,hyper=info")
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berth-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(tcp) = &self.opts.listen {
                if tokio::net::TcpStream::connect(tcp.as_str()).await.is_ok() {
                    return;
                }
            } else if let Ok(ch) = berth_proto::connect(&self.addr()).await {
                if NodeAgentClient::new(ch).get_node(pb::GetNodeRequest {}).await.is_ok() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("berth-agent exited with {status} at start:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "berth-agent did not answer within 20 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to the agent process and waits for it to exit; SIGKILL
    /// after 10 s. Returns how the process ended.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("agent running")
    }

    pub async fn client(&self) -> Client {
        let ch = berth_proto::connect(&self.addr()).await.expect("connect to agent");
        Client { inner: NodeAgentClient::new(ch) }
    }

    /// Path of a task's file on the host.
    /// What [`MORE_BATCH_VARS_SCRIPT`] prints for the task `job`/`task` run as `uid`.
    pub fn more_batch_vars(&self, job: &str, task: &str, uid: u32) -> String {
        let certs = self.task_path(job, task, "certs");
        format!(
            "{ACCOUNT_URL}\n{}\n{}\n{}\n{uid} 700\nwritable\n",
            self.root().join("fsmounts").display(),
            self.opts.min_free_mb << 20,
            certs.display()
        )
    }

    /// Every `AZ_BATCH_*` variable a task `job`/`task` of this agent gets (no
    /// job preparation task, no application package, the whole node root):
    /// Batch's table of node-side variables, but the multi-instance ones.
    pub fn batch_vars(&self, job: &str, task: &str) -> std::collections::BTreeMap<String, String> {
        let root = self.root();
        let dir = |p: PathBuf| p.display().to_string().trim_end_matches('/').to_string();
        [
            ("ACCOUNT_NAME", "berth".to_string()),
            ("ACCOUNT_URL", ACCOUNT_URL.into()),
            ("CERTIFICATES_DIR", dir(self.task_path(job, task, "certs"))),
            ("JOB_ID", job.into()),
            ("NODE_ID", self.node_id()),
            ("NODE_IS_DEDICATED", "true".into()),
            ("NODE_MOUNTS_DIR", dir(root.join("fsmounts"))),
            ("NODE_ROOT_DIR", dir(root.clone())),
            ("NODE_SHARED_DIR", dir(root.join("shared"))),
            ("NODE_STARTUP_DIR", dir(root.join("startup"))),
            ("NODE_STARTUP_WORKING_DIR", dir(root.join("startup/wd"))),
            ("POOL_ID", "test-pool".into()),
            ("TASK_DIR", dir(self.task_path(job, task, ""))),
            ("TASK_ID", task.into()),
            ("TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES", (self.opts.min_free_mb << 20).to_string()),
            ("TASK_WORKING_DIR", dir(self.task_path(job, task, "wd"))),
        ]
        .into_iter()
        .map(|(k, v)| (format!("AZ_BATCH_{k}"), v))
        .collect()
    }

    pub fn task_path(&self, job: &str, task: &str, rel: &str) -> PathBuf {
        self.root().join("workitems").join(job).join("job-1").join(task).join(rel)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let status = self.stop_with(nix::sys::signal::Signal::SIGTERM);
        assert!(
            std::thread::panicking() || status.is_some_and(|s| s.success()),
            "berth-agent did not exit cleanly on SIGTERM ({status:?}):\n{}",
            self.log()
        );
        if std::thread::panicking() {
            eprintln!("---- agent log ({}) ----\n{}", self.log_path().display(), self.log());
        }
        kill_host_tasks(&self.namespace());
        release_namespaces(&self.network_run_dir().join("netns"));
    }
}

/// A bridge name and a /24 of this test process's own for the next agent
/// (`bt<N>`, `10.201.<N>.0/24`); test binaries run one after the other, so
/// the same names in the next one are the same networks.
pub fn test_network() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
    (format!("bt{n}"), format!("10.201.{n}.0/24"))
}

/// Unmounts the network namespaces an agent left (tasks still running when
/// it was stopped), so that its directory can go.
fn release_namespaces(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    if let Some(run_dir) = dir.parent() {
        let _ = std::fs::remove_dir_all(run_dir);
    }
}

/// Kills what host tasks of an agent's namespace left running (their shims
/// then end): every process in a cgroup under `<hierarchy>/<namespace>/`.
fn kill_host_tasks(namespace: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join(namespace)];
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        parents.push(h.path().join(namespace));
    }
    for parent in parents {
        for cg in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let procs = std::fs::read_to_string(cg.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Stops (`stop`) or starts (`start`) the test environment's containerd, through
/// the functions of scripts/lib.sh. Its shims and their tasks keep running.
pub fn containerd(action: &str) {
    let script =
        format!(". {lib}; berth_containerd_{action} {dir}", lib = env("BERTH_TEST_LIB"), dir = env("BERTH_TEST_DIR"));
    let out = Command::new("bash").arg("-c").arg(script).output().expect("run bash");
    assert!(out.status.success(), "containerd {action} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A task spec with the usual defaults: busybox image, task working directory.
pub fn task(job: &str, task: &str, command_line: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        job_id: job.into(),
        task_id: task.into(),
        command_line: command_line.into(),
        container: Some(pb::ContainerSettings {
            image: image("busybox"),
            run_options: String::new(),
            working_directory: pb::WorkingDirectory::TaskWorkingDir as i32,
            registry: None,
            pull_policy: pb::PullPolicy::Missing as i32,
            devices: vec![],
            ..Default::default()
        }),
        environment: HashMap::new(),
        user: None,
        constraints: None,
        required_slots: 1,
        job_preparation: None,
        resource_files: vec![],
        output_files: vec![],
        application_packages: vec![],
    }
}

/// A host task's spec (no container settings).
pub fn host_task(job: &str, task_id: &str, command_line: &str) -> pb::TaskSpec {
    pb::TaskSpec { container: None, ..task(job, task_id, command_line) }
}

/// A task spec on another image.
pub fn task_on(job: &str, task_id: &str, command_line: &str, image: impl Into<String>) -> pb::TaskSpec {
    let mut spec = task(job, task_id, command_line);
    if let Some(c) = spec.container.as_mut() {
        c.image = image.into();
    }
    spec
}

/// The same spec with these run options.
pub fn with_options(mut spec: pb::TaskSpec, run_options: &str) -> pb::TaskSpec {
    if let Some(c) = spec.container.as_mut() {
        c.run_options = run_options.into();
    }
    spec
}

/// The same spec, run as the pool user account `name`.
pub fn as_user(mut spec: pb::TaskSpec, name: &str) -> pb::TaskSpec {
    spec.user = Some(pb::UserIdentity { user_name: name.into(), auto_user: None });
    spec
}

/// The same spec, run as an auto-user.
pub fn as_auto_user(mut spec: pb::TaskSpec, scope: pb::AutoUserScope, admin: bool) -> pb::TaskSpec {
    let elevation = if admin { pb::ElevationLevel::Admin } else { pb::ElevationLevel::NonAdmin };
    spec.user = Some(pb::UserIdentity {
        user_name: String::new(),
        auto_user: Some(pb::AutoUserSpecification { scope: scope as i32, elevation_level: elevation as i32 }),
    });
    spec
}

/// A thin client with the calls tests repeat.
#[derive(Clone)]
pub struct Client {
    pub inner: NodeAgentClient<Channel>,
}

impl Client {
    pub async fn run(&mut self, spec: pb::TaskSpec) -> Result<pb::TaskInfo, tonic::Status> {
        self.inner.run_task(pb::RunTaskRequest { task: Some(spec) }).await.map(|r| r.into_inner())
    }

    pub async fn get(&mut self, job: &str, task: &str) -> Result<pb::TaskInfo, tonic::Status> {
        let req = pb::GetTaskRequest { job_id: job.into(), task_id: task.into() };
        self.inner.get_task(req).await.map(|r| r.into_inner())
    }

    /// Polls until the task reaches `state` (or panics after `timeout`).
    pub async fn wait_state(&mut self, job: &str, task: &str, state: pb::TaskState, timeout: Duration) -> pb::TaskInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.get(job, task).await.expect("get task");
            if t.state == state as i32 {
                return t;
            }
            assert!(
                t.state != pb::TaskState::Completed as i32 || state == pb::TaskState::Completed,
                "{job}/{task} completed before reaching {state:?}: {t:?}"
            );
            assert!(Instant::now() < deadline, "{job}/{task} not {state:?} after {timeout:?}: {t:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the completed task's container is removed from containerd.
    pub async fn wait_container_deleted(&mut self, job: &str, task: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.get(job, task).await.expect("get task");
            if t.container_info.as_ref().is_some_and(|c| c.state == "deleted") {
                return;
            }
            assert!(Instant::now() < deadline, "container of {job}/{task} not removed: {t:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_done(&mut self, job: &str, task: &str) -> pb::TaskInfo {
        self.wait_state(job, task, pb::TaskState::Completed, Duration::from_secs(90)).await
    }

    /// Runs a task to completion.
    /// Terminates a task (1 s grace) and waits for it to complete.
    pub async fn terminate(&mut self, job: &str, task: &str) -> pb::TaskInfo {
        let req = pb::TerminateTaskRequest { job_id: job.into(), task_id: task.into(), grace_period: Some(secs(1)) };
        self.inner.terminate_task(req).await.expect("terminate");
        self.wait_done(job, task).await
    }

    pub async fn run_done(&mut self, spec: pb::TaskSpec) -> pb::TaskInfo {
        let (job, task) = (spec.job_id.clone(), spec.task_id.clone());
        self.run(spec).await.expect("run task");
        self.wait_done(&job, &task).await
    }

    pub async fn node(&mut self) -> pb::NodeInfo {
        self.inner.get_node(pb::GetNodeRequest {}).await.expect("get node").into_inner()
    }

    /// Polls GetNode until the node is in `state` (or panics after a minute).
    pub async fn wait_node_state(&mut self, state: pb::NodeState) -> pb::NodeInfo {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.node().await;
            if n.state == state as i32 {
                return n;
            }
            assert!(Instant::now() < deadline, "node not {state:?}: {:?} {}", n.state, n.state_reason);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn read(&mut self, job: &str, task: &str, path: &str) -> Result<String, tonic::Status> {
        let req = pb::ReadTaskFileRequest {
            job_id: job.into(),
            task_id: task.into(),
            path: path.into(),
            offset: 0,
            length: 0,
        };
        let r = self.inner.read_task_file(req).await?.into_inner();
        Ok(String::from_utf8_lossy(&r.data).into_owned())
    }
}

/// A root-owned host file no task may write, in the agent's state dir, and
/// the command line of a task that waits for `job/task`'s `stdout.txt` to
/// exist and then swaps it for a symlink to that file (the job's preparation
/// task, run as the same identity while the task waits for it).
pub fn stdout_swap(agent: &Agent, job: &str, task: &str) -> (PathBuf, String) {
    let target = agent.state_dir().join("planted-target");
    std::fs::write(&target, "root's own\n").unwrap();
    let victim = agent.task_path(job, task, "stdout.txt");
    let plant = format!(
        "/bin/sh -c 'while [ ! -e {v} ]; do sleep 1; done; rm {v}; ln -s {t} {v}'",
        v = victim.display(),
        t = target.display()
    );
    (target, plant)
}

pub fn failure_code(t: &pb::TaskInfo) -> String {
    t.failure_info.as_ref().map(|f| f.code.clone()).unwrap_or_default()
}

/// Seconds as a protobuf duration.
pub fn secs(s: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: s as i64, nanos: 0 }
}

/// Lists the files directly under `dir` (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `GET /metrics` of the agent's metrics endpoint on 127.0.0.1:`port`, over a plain TCP connection.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}
