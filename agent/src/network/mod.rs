//! Task networks through CNI. A bridge task gets a network namespace of its
//! own (`netns`, its loopback up), attached to the node's bridge by the
//! standard plugins (Debian's `containernetworking-plugins`) as a CNI
//! configuration list (`cni`) says: the agent's own, from `[network]
//! subnet`, `bridge` and `mtu` (`bridge` with `host-local` addresses, and
//! `portmap` for a task that publishes ports; masquerading and forwarding
//! are node-wide rules the agent makes when it starts, `node_rules`), or the
//! first `*.conflist` of `[network] cni_conf_dir`, used as it is.
//!
//! Every attachment is recorded before its ADD (`<state>/network/attachments`),
//! with the list it was made with, the runtime config and then the result, so
//! that its DEL (after the task, or by recovery after a crash or a reboot) is
//! given exactly what the ADD was. DEL is idempotent; `host-local` keeps its
//! reservations under the state directory, so they survive agent restarts.

mod cni;
mod files;
mod netns;
mod node_rules;

pub use cni::CniError;
pub use files::{hosts, resolv_conf};

use crate::model::PortMapping;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The interface a bridge task sees.
const IFNAME: &str = "eth0";
/// How long a task waits for a host port another task holds.
const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `[network]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub subnet: ipnet::Ipv4Net,
    pub bridge: String,
    pub mtu: u32,
    /// A directory whose first `*.conflist` replaces the agent's own list.
    pub cni_conf_dir: Option<PathBuf>,
    /// Where the plugins are (`CNI_PATH`).
    pub cni_bin_dir: PathBuf,
    /// Namespaces (`netns/`) and per-task files (`files/`); gone with a reboot.
    pub run_dir: PathBuf,
    /// Attachments and address reservations; kept across reboots.
    pub state_dir: PathBuf,
}

impl NetworkConfig {
    pub fn defaults(state_dir: &Path) -> Self {
        Self {
            subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_default(),
            bridge: "berth0".into(),
            mtu: 1500,
            cni_conf_dir: None,
            cni_bin_dir: "/usr/lib/cni".into(),
            run_dir: "/run/berth/network".into(),
            state_dir: state_dir.join("network"),
        }
    }

    /// The agent's own configuration list.
    pub fn own_list(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "berth",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    // Node-wide, made once (node_rules).
                    "ipMasq": false,
                    "hairpinMode": true,
                    "mtu": self.mtu,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.state_dir.join("ipam"),
                    },
                },
                // Left out for a task that publishes no port (`list_for`).
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("host port {port} is already published by container {by}")]
    PortInUse { port: PortMapping, by: String },
    #[error("network configuration {path}: {reason}")]
    ConfList { path: String, reason: String },
    #[error("the CNI result has no IPv4 address")]
    NoAddress,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// One task's attachment, as recorded (JSON, one file per container).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    container_id: String,
    netns: PathBuf,
    list: Value,
    runtime: Value,
    #[serde(default)]
    ports: Vec<PortMapping>,
    /// The final ADD result; None while (or if) the ADD did not finish.
    result: Option<Value>,
}

/// What a task's spec needs of its network.
#[derive(Debug, Clone)]
pub struct Paths {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

/// What the supervisor does with task networks (`Networks`; a fake in the
/// supervisor's unit tests).
#[async_trait::async_trait]
pub trait TaskNetworks: Send + Sync + std::fmt::Debug {
    /// Where a container's namespace and files are.
    fn paths(&self, cid: &str) -> Paths;
    /// The containers with a recorded attachment.
    fn attachments(&self) -> Vec<String>;
    /// Attaches a bridge task's new namespace; returns its address.
    async fn attach(&self, cid: &str, ports: &[PortMapping]) -> Result<Ipv4Addr, NetworkError>;
    /// Removes whatever a container has of a network (idempotent).
    async fn detach(&self, cid: &str) -> Result<(), NetworkError>;
    /// Writes a container's `resolv.conf` and `hosts`.
    fn write_files(&self, cid: &str, resolv_conf: &str, hosts: &str) -> Result<(), NetworkError>;
}

#[async_trait::async_trait]
impl TaskNetworks for Networks {
    fn paths(&self, cid: &str) -> Paths {
        Networks::paths(self, cid)
    }
    fn attachments(&self) -> Vec<String> {
        Networks::attachments(self)
    }
    async fn attach(&self, cid: &str, ports: &[PortMapping]) -> Result<Ipv4Addr, NetworkError> {
        Networks::attach(self, cid, ports).await
    }
    async fn detach(&self, cid: &str) -> Result<(), NetworkError> {
        Networks::detach(self, cid).await
    }
    fn write_files(&self, cid: &str, resolv_conf: &str, hosts: &str) -> Result<(), NetworkError> {
        Networks::write_files(self, cid, resolv_conf, hosts)
    }
}

/// The node's task networks.
pub struct Networks {
    cfg: NetworkConfig,
    /// The configuration list new attachments are made with.
    list: Value,
    /// It is the agent's own (not an operator's).
    own: bool,
    /// The node-wide rules are made (`node_rules`); held while they are being made.
    rules_made: tokio::sync::Mutex<bool>,
    /// Published host ports by container id.
    ports: Mutex<HashMap<String, Vec<PortMapping>>>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Networks {
    /// Reads the operator's configuration list (if `cni_conf_dir` is set) and
    /// the recorded attachments' published ports.
    pub fn new(cfg: NetworkConfig) -> Result<Self, NetworkError> {
        let list = match &cfg.cni_conf_dir {
            Some(dir) => read_conf_dir(dir)?,
            None => cfg.own_list(),
        };
        let own = cfg.cni_conf_dir.is_none();
        let n =
            Networks { cfg, list, own, rules_made: tokio::sync::Mutex::new(!own), ports: Mutex::new(HashMap::new()) };
        let recorded: HashMap<String, Vec<PortMapping>> =
            n.attachments().into_iter().filter_map(|cid| n.read(&cid).map(|a| (cid, a.ports))).collect();
        *n.lock_ports() = recorded;
        Ok(n)
    }

    /// The node-wide rules of the agent's own network (`node_rules`); an
    /// operator's list needs none. Tried when the agent starts, and again
    /// before the next bridge task until they are made: a node where they
    /// cannot be made (no iptables, no CAP_NET_ADMIN) still runs host-network
    /// tasks, and its bridge tasks fail with the reason.
    pub async fn prepare_node(&self) -> Result<(), NetworkError> {
        let mut made = self.rules_made.lock().await;
        if !*made {
            node_rules::ensure(&self.cfg.bridge, &self.cfg.subnet.to_string()).await?;
            *made = true;
        }
        Ok(())
    }

    /// For tests with fake plugins: the node's iptables are left alone.
    #[cfg(test)]
    fn without_node_rules(self) -> Self {
        Networks { rules_made: tokio::sync::Mutex::new(true), ..self }
    }

    /// The list a task is attached with: the agent's own without `portmap`
    /// when it publishes no port (one plugin run less on its way to RUNNING).
    fn list_for(&self, ports: &[PortMapping]) -> Value {
        let mut list = self.list.clone();
        if self.own && ports.is_empty() {
            if let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) {
                plugins.retain(|p| p["type"] != "portmap");
            }
        }
        list
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The network's name (`name` of its configuration list).
    pub fn name(&self) -> &str {
        self.list.get("name").and_then(Value::as_str).unwrap_or_default()
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<PortMapping>>> {
        self.ports.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn attachments_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("attachments")
    }

    fn record_path(&self, cid: &str) -> PathBuf {
        self.attachments_dir().join(format!("{cid}.json"))
    }

    /// Where a container's namespace and files are (made by `attach` and
    /// `write_files`).
    pub fn paths(&self, cid: &str) -> Paths {
        let files = self.cfg.run_dir.join("files").join(cid);
        Paths {
            netns: self.cfg.run_dir.join("netns").join(cid),
            resolv_conf: files.join("resolv.conf"),
            hosts: files.join("hosts"),
        }
    }

    /// The containers with a recorded attachment.
    pub fn attachments(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.attachments_dir()) else { return vec![] };
        let mut out: Vec<String> =
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned)).collect();
        out.sort();
        out
    }

    fn read(&self, cid: &str) -> Option<Attachment> {
        let text = std::fs::read(self.record_path(cid)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write(&self, a: &Attachment) -> Result<(), NetworkError> {
        let path = self.record_path(&a.container_id);
        let dir = self.attachments_dir();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(a).unwrap_or_default();
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &body)?;
            f.sync_all()
        });
        written.map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))
    }

    /// Reserves the task's host ports, makes its namespace and adds it to the
    /// network. Returns its address. On failure nothing is left.
    pub async fn attach(&self, cid: &str, ports: &[PortMapping]) -> Result<Ipv4Addr, NetworkError> {
        // A task that just completed holds its ports until its network is
        // deleted, moments later: the next task waits for that, a while.
        let deadline = tokio::time::Instant::now() + PORT_WAIT;
        loop {
            let clash = {
                let mut held = self.lock_ports();
                let clash = held.iter().filter(|(by, _)| by.as_str() != cid).find_map(|(by, theirs)| {
                    ports.iter().find(|p| theirs.iter().any(|t| t.collides(p))).map(|p| (*p, by.clone()))
                });
                if clash.is_none() {
                    held.insert(cid.to_owned(), ports.to_vec());
                }
                clash
            };
            match clash {
                None => break,
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Some((port, by)) => return Err(NetworkError::PortInUse { port, by }),
            }
        }
        let attached = self.try_attach(cid, ports).await;
        if attached.is_err() {
            if let Err(e) = self.detach(cid).await {
                tracing::warn!(container_id = cid, error = %e, "cleaning up a failed network attachment failed");
            }
        }
        attached
    }

    async fn try_attach(&self, cid: &str, ports: &[PortMapping]) -> Result<Ipv4Addr, NetworkError> {
        let paths = self.paths(cid);
        let mut a = Attachment {
            container_id: cid.to_owned(),
            netns: paths.netns.clone(),
            list: self.list_for(ports),
            runtime: cni::runtime_config(ports),
            ports: ports.to_vec(),
            result: None,
        };
        self.prepare_node().await?;
        // Recorded first: a crash from here on leaves something recovery deletes.
        self.write(&a)?;
        // With its loopback up (no `loopback` plugin run).
        on_namespace(&paths.netns, "making the network namespace", netns::create).await?;
        let netns = paths.netns.to_string_lossy().into_owned();
        let bin = &self.cfg.cni_bin_dir;
        let call = cni::Call { container_id: cid, netns: &netns, ifname: IFNAME, bin_dir: bin };
        let result = cni::add_list(&a.list, &a.runtime, call).await?;
        let ip = cni::first_ipv4(&result);
        a.result = Some(result);
        self.write(&a)?;
        ip.ok_or(NetworkError::NoAddress)
    }

    /// Removes a container's attachment: DEL with what the ADD was given,
    /// then its namespace, files and record. Nothing recorded: nothing to
    /// do. A failed DEL keeps the record (recovery tries again at the next
    /// start); the namespace goes anyway, and with it the task's veth.
    pub async fn detach(&self, cid: &str) -> Result<(), NetworkError> {
        let paths = self.paths(cid);
        let mut deleted = Ok(());
        if let Some(a) = self.read(cid) {
            let ns = a.netns.clone();
            let alive = tokio::task::spawn_blocking(move || netns::exists(&ns)).await.unwrap_or(false);
            // A namespace gone with a reboot: the plugins release what is
            // outside it (addresses, iptables rules) given no namespace.
            let netns = if alive { a.netns.to_string_lossy().into_owned() } else { String::new() };
            let call = cni::Call { container_id: cid, netns: &netns, ifname: IFNAME, bin_dir: &self.cfg.cni_bin_dir };
            deleted = match cni::del_list(&a.list, &a.runtime, a.result.as_ref(), call).await {
                // A plugin that is not there added nothing this agent could delete.
                Err(CniError::Missing { plugin, dir }) if a.result.is_none() => {
                    tracing::warn!(container_id = cid, plugin, dir, "CNI plugin missing for DEL of a failed ADD");
                    Ok(())
                }
                r => r,
            };
        }
        self.lock_ports().remove(cid);
        on_namespace(&paths.netns, "removing the network namespace", netns::remove).await?;
        if let Some(dir) = paths.hosts.parent() {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing {}", dir.display()))(e));
                }
                _ => {}
            }
        }
        deleted?;
        match std::fs::remove_file(self.record_path(cid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing the attachment record")(e)),
            _ => Ok(()),
        }
    }

    /// Writes a container's `resolv.conf` and `hosts` (root's, world-readable).
    pub fn write_files(&self, cid: &str, resolv_conf: &str, hosts: &str) -> Result<(), NetworkError> {
        let p = self.paths(cid);
        let dir = p.hosts.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        for (path, text) in [(&p.resolv_conf, resolv_conf), (&p.hosts, hosts)] {
            std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }
}

/// Runs a (blocking) namespace operation on `path` off the async threads.
async fn on_namespace(path: &Path, what: &str, op: fn(&Path) -> std::io::Result<()>) -> Result<(), NetworkError> {
    let p = path.to_owned();
    let done = tokio::task::spawn_blocking(move || op(&p)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    done.map_err(io(format!("{what} {}", path.display())))
}

/// The node's resolv.conf as a task on its own network should see it: the
/// upstream servers of systemd-resolved when the node's file points at its
/// stub (127.0.0.53, unreachable from another namespace), as docker does.
pub fn node_resolv_conf() -> String {
    let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let stub_only = node
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .all(|s| s.trim().parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if stub_only {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    node
}

/// The first `*.conflist` of `dir`, by name (containerd's rule).
fn read_conf_dir(dir: &Path) -> Result<Value, NetworkError> {
    let conf = |reason: String| NetworkError::ConfList { path: dir.display().to_string(), reason };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| conf(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let path = files.first().ok_or_else(|| conf("holds no *.conflist file".into()))?;
    let err = |reason: String| NetworkError::ConfList { path: path.display().to_string(), reason };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let list: Value = serde_json::from_slice(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    cni::check_list(&list).map_err(|e| err(e.to_string()))?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_list_follows_the_config() {
        let mut c = NetworkConfig::defaults(Path::new("/var/lib/berth/state"));
        c.bridge = "br9".into();
        c.mtu = 9000;
        c.subnet = "10.9.0.0/24".parse().unwrap();
        let l = c.own_list();
        assert!(cni::check_list(&l).is_ok());
        let b = &l["plugins"][0];
        assert_eq!(
            (b["type"].as_str(), b["bridge"].as_str(), b["mtu"].as_u64()),
            (Some("bridge"), Some("br9"), Some(9000))
        );
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.9.0.0/24");
        assert_eq!(b["ipam"]["dataDir"], "/var/lib/berth/state/network/ipam");
        let types: Vec<&str> = l["plugins"].as_array().unwrap().iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(b["ipMasq"], false, "masquerading is node-wide (node_rules)");
    }

    #[test]
    fn portmap_runs_only_for_a_task_that_publishes_ports() {
        let dir = tempfile::tempdir().unwrap();
        let n = Networks::new(NetworkConfig::defaults(dir.path())).unwrap();
        let types = |l: Value| -> Vec<String> {
            l["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(types(n.list_for(&[])), ["bridge"]);
        let p =
            PortMapping { host_ip: None, host_port: 8080, container_port: 80, protocol: crate::model::Protocol::Tcp };
        assert_eq!(types(n.list_for(&[p])), ["bridge", "portmap"]);
        // An operator's list is used as it is.
        let mut c = NetworkConfig::defaults(dir.path());
        c.cni_conf_dir = Some(dir.path().to_owned());
        std::fs::write(
            dir.path().join("a.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "mine", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}"#,
        )
        .unwrap();
        assert_eq!(types(Networks::new(c).unwrap().list_for(&[])), ["bridge", "portmap"]);
    }

    #[test]
    fn an_operators_list_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = NetworkConfig::defaults(dir.path());
        c.cni_conf_dir = Some(dir.path().to_owned());
        assert!(Networks::new(c.clone()).unwrap_err().to_string().contains("no *.conflist"));
        std::fs::write(dir.path().join("20-b.conflist"), "{}").unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "mine", "plugins": [{"type": "bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(Networks::new(c.clone()).unwrap().name(), "mine", "the first by name");
        std::fs::write(dir.path().join("05-bad.conflist"), "{").unwrap();
        assert!(Networks::new(c).unwrap_err().to_string().contains("05-bad.conflist"));
    }

    /// Plugins that log their calls (`NAME COMMAND NETNS`); `bridge`'s DEL
    /// fails while `dir/fail-del` exists.
    fn fake_plugins(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["bridge", "portmap"] {
            let p = bin.join(name);
            let body = format!(
                "#!/bin/sh\ncat >/dev/null\necho \"{name} $CNI_COMMAND $CNI_NETNS\" >> {d}/log\n\
                 if [ \"$CNI_COMMAND\" = DEL ] && [ {name} = bridge ] && [ -e {d}/fail-del ]; then \
                 echo '{{\"code\":999,\"msg\":\"busy\"}}'; exit 1; fi\n\
                 [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.88.0.9/16\"}}]}}'\n\
                 exit 0\n",
                d = dir.display()
            );
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }

    #[tokio::test]
    async fn an_attachment_is_recorded_and_its_delete_is_idempotent() {
        if !nix::unistd::geteuid().is_root() {
            return; // namespaces need root; the tests run as root
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = NetworkConfig::defaults(&dir.path().join("state"));
        c.cni_bin_dir = fake_plugins(dir.path());
        c.run_dir = dir.path().join("run");
        let n = Networks::new(c.clone()).unwrap().without_node_rules();
        let ip = n.attach("c1", &[]).await.unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 88, 0, 9));
        assert_eq!(n.attachments(), ["c1"]);
        assert!(n.read("c1").unwrap().result.is_some(), "the result is recorded for the DEL");
        let ns = n.paths("c1").netns;
        assert!(netns::exists(&ns));

        // A DEL that fails keeps the record (recovery tries again); the namespace goes.
        std::fs::write(dir.path().join("fail-del"), "").unwrap();
        assert!(n.detach("c1").await.unwrap_err().to_string().contains("busy"));
        assert_eq!(n.attachments(), ["c1"]);
        assert!(!ns.exists());
        std::fs::remove_file(dir.path().join("fail-del")).unwrap();
        n.detach("c1").await.unwrap();
        assert!(n.attachments().is_empty());
        n.detach("c1").await.unwrap();

        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let nsp = ns.display();
        let want = format!("bridge ADD {nsp}\nbridge DEL {nsp}\nbridge DEL \n");
        assert_eq!(log, want, "the retried DEL is given no namespace (it is gone); the third finds nothing");

        // Published ports are recorded: an agent started anew still holds them.
        let p =
            PortMapping { host_ip: None, host_port: 8080, container_port: 80, protocol: crate::model::Protocol::Udp };
        n.attach("c2", &[p]).await.unwrap();
        let again = Networks::new(c).unwrap().without_node_rules();
        assert_eq!(again.lock_ports().get("c2").map(Vec::as_slice), Some(&[p][..]));
        again.detach("c2").await.unwrap();
    }

    #[tokio::test]
    async fn ports_held_by_one_container_are_refused_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = NetworkConfig::defaults(dir.path());
        c.cni_bin_dir = dir.path().join("no-plugins");
        c.run_dir = dir.path().join("run");
        let n = Networks::new(c).unwrap().without_node_rules();
        let p: PortMapping =
            PortMapping { host_ip: None, host_port: 8080, container_port: 80, protocol: crate::model::Protocol::Tcp };
        n.lock_ports().insert("c1".into(), vec![p]);
        let e = n.attach("c2", &[p]).await.unwrap_err();
        assert!(matches!(&e, NetworkError::PortInUse { by, .. } if by == "c1"), "{e}");
        // A failed attachment leaves no record, and holds no port.
        let e = n.attach("c3", &[PortMapping { host_port: 9090, ..p }]).await.unwrap_err();
        assert!(matches!(e, NetworkError::Cni(CniError::Missing { .. }) | NetworkError::Io { .. }), "{e}");
        assert!(n.attachments().is_empty());
        assert!(!n.lock_ports().contains_key("c3"));
    }
}
