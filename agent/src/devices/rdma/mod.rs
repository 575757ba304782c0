//! InfiniBand / RDMA: HCAs and their ports found in sysfs
//! (`class/infiniband`, `class/infiniband_verbs`, `class/infiniband_mad`) and
//! their character devices under `<dev>/infiniband`, both roots configurable so
//! tests can use fixture trees; with the `rdma` feature, port state and link
//! layer are also asked of libibverbs (`rdma-sys`). A CDI spec of kind
//! `berth.dev/infiniband` (one device per HCA, and `all`) is written for them,
//! so they are injected the same way as any vendor's devices.

#[cfg(feature = "rdma")]
mod verbs;

use oci_spec::runtime::{Capability, PosixRlimitBuilder, PosixRlimitType, Spec};
use std::path::{Path, PathBuf};

/// The CDI kind of the specs berth writes for RDMA devices.
pub const KIND: &str = "berth.dev/infiniband";
/// File name of that spec in `cdi_output_dir`.
pub const SPEC_FILE: &str = "berth-infiniband.json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port: u32,
    /// `ACTIVE`, `DOWN`, `INIT`, ...
    pub state: String,
    /// `InfiniBand` or `Ethernet` (RoCE).
    pub link_layer: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hca {
    pub name: String,
    pub ports: Vec<Port>,
    /// Its device nodes under the dev root: uverbsN, umadN, issmN.
    pub nodes: Vec<PathBuf>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn sorted_dir(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// The `<class>/<prefix>N` entries whose `ibdev` names `hca`, as N.
fn indexes_of(sysfs: &Path, class: &str, prefix: &str, hca: &str) -> Vec<String> {
    sorted_dir(&sysfs.join("class").join(class))
        .into_iter()
        .filter(|p| read_trim(&p.join("ibdev")).as_deref() == Some(hca))
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

/// The HCAs under `sysfs` with their nodes under `dev`.
pub fn discover(sysfs: &Path, dev: &Path) -> Vec<Hca> {
    let mut out = Vec::new();
    for hca_dir in sorted_dir(&sysfs.join("class/infiniband")) {
        let Some(name) = hca_dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        let mut ports = Vec::new();
        for p in sorted_dir(&hca_dir.join("ports")) {
            let Some(port) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()) else { continue };
            // "4: ACTIVE"
            let state = read_trim(&p.join("state")).map(|s| s.rsplit(' ').next().unwrap_or("").to_owned());
            let link_layer = read_trim(&p.join("link_layer")).unwrap_or_default();
            ports.push(Port { port, state: state.unwrap_or_default(), link_layer });
        }
        let mut nodes = Vec::new();
        for n in indexes_of(sysfs, "infiniband_verbs", "uverbs", &name) {
            nodes.push(dev.join(format!("infiniband/uverbs{n}")));
        }
        for n in indexes_of(sysfs, "infiniband_mad", "umad", &name) {
            nodes.push(dev.join(format!("infiniband/umad{n}")));
            nodes.push(dev.join(format!("infiniband/issm{n}")));
        }
        nodes.retain(|n| n.exists());
        out.push(Hca { name, ports, nodes });
    }
    #[cfg(feature = "rdma")]
    verbs::refine(&mut out);
    out
}

/// A CDI spec (JSON) for `hcas`: one device per HCA and `all`; `rdma_cm` for every one.
pub fn cdi_spec(hcas: &[Hca], dev: &Path) -> serde_json::Value {
    let node = |host: &Path| {
        let rel = host.strip_prefix(dev).unwrap_or(host);
        serde_json::json!({"path": Path::new("/dev").join(rel), "hostPath": host})
    };
    let device = |name: &str, nodes: Vec<&PathBuf>| serde_json::json!({"name": name, "containerEdits": {"deviceNodes": nodes.into_iter().map(|n| node(n)).collect::<Vec<_>>()}});
    let mut devices: Vec<serde_json::Value> = hcas.iter().map(|h| device(&h.name, h.nodes.iter().collect())).collect();
    devices.push(device("all", hcas.iter().flat_map(|h| &h.nodes).collect()));
    let mut spec = serde_json::json!({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices});
    let cm = dev.join("infiniband/rdma_cm");
    if cm.exists() {
        spec["containerEdits"] = serde_json::json!({"deviceNodes": [node(&cm)]});
    }
    spec
}

/// Writes (or, without HCAs, removes) berth's RDMA spec in `dir`, atomically.
pub fn write_spec(dir: &Path, hcas: &[Hca], dev: &Path) -> std::io::Result<()> {
    let path = dir.join(SPEC_FILE);
    let usable: Vec<Hca> = hcas.iter().filter(|h| !h.nodes.is_empty()).cloned().collect();
    if usable.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{SPEC_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cdi_spec(&usable, dev)).unwrap_or_default())?;
    std::fs::rename(tmp, path)
}

/// The RLIMIT_MEMLOCK an RDMA task gets: unlimited when this host lets root
/// raise it (probed by raising the agent's own hard limit, which needs
/// CAP_SYS_RESOURCE, as runc will), else the current hard limit, since runc
/// could not set more and the container would fail to start.
pub fn memlock_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else { return u64::MAX };
    if hard == RLIM_INFINITY || setrlimit(Resource::RLIMIT_MEMLOCK, soft, RLIM_INFINITY).is_ok() {
        return u64::MAX;
    }
    tracing::warn!(
        hard,
        "RLIMIT_MEMLOCK cannot be raised (no CAP_SYS_RESOURCE): RDMA tasks get the current hard limit"
    );
    hard
}

/// What RDMA needs beyond its device nodes, which CDI edits cannot express:
/// locked memory without limit (verbs pin their buffers; `memlock`, see
/// [`memlock_limit`]), and CAP_IPC_LOCK for a task that has capabilities
/// (an admin one: bounding set, and effective and permitted when it runs as
/// root; never inheritable or ambient). A task without capabilities (a
/// non-admin one, whose bounding set is empty) gets none, unless
/// `ipc_lock_non_admin`: then CAP_IPC_LOCK in every set, as only the ambient
/// set keeps it across exec for a non-root process.
pub fn add_limits(spec: &mut Spec, memlock: u64, ipc_lock_non_admin: bool) {
    if let Some(process) = spec.process_mut() {
        let mut rlimits = process.rlimits().clone().unwrap_or_default();
        rlimits.retain(|r| r.typ() != PosixRlimitType::RlimitMemlock);
        if let Ok(r) =
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitMemlock).soft(memlock).hard(memlock).build()
        {
            rlimits.push(r);
        }
        process.set_rlimits(Some(rlimits));
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let add = |set: Option<&std::collections::HashSet<Capability>>| {
            let mut set = set.cloned().unwrap_or_default();
            set.insert(Capability::IpcLock);
            Some(set)
        };
        let none = |set: Option<&std::collections::HashSet<Capability>>| set.is_none_or(|s| s.is_empty());
        if !none(caps.bounding().as_ref()) {
            caps.set_bounding(add(caps.bounding().as_ref()));
            if !none(caps.effective().as_ref()) {
                caps.set_effective(add(caps.effective().as_ref()));
                caps.set_permitted(add(caps.permitted().as_ref()));
            }
        } else if ipc_lock_non_admin {
            caps.set_bounding(add(caps.bounding().as_ref()));
            caps.set_effective(add(caps.effective().as_ref()));
            caps.set_permitted(add(caps.permitted().as_ref()));
            caps.set_inheritable(add(caps.inheritable().as_ref()));
            caps.set_ambient(add(caps.ambient().as_ref()));
        }
        process.set_capabilities(Some(caps));
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A sysfs tree with two HCAs (mlx5_0: IB port ACTIVE; mlx5_1: RoCE port
    /// DOWN) and their nodes (regular files stand in for devices here).
    pub fn fixture(root: &Path) -> (PathBuf, PathBuf) {
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        for (i, (hca, state, ll)) in
            [("mlx5_0", "4: ACTIVE", "InfiniBand"), ("mlx5_1", "1: DOWN", "Ethernet")].iter().enumerate()
        {
            let port = sys.join(format!("class/infiniband/{hca}/ports/1"));
            std::fs::create_dir_all(&port).unwrap();
            std::fs::write(port.join("state"), format!("{state}\n")).unwrap();
            std::fs::write(port.join("link_layer"), format!("{ll}\n")).unwrap();
            for (class, prefix) in [("infiniband_verbs", "uverbs"), ("infiniband_mad", "umad")] {
                let d = sys.join(format!("class/{class}/{prefix}{i}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("ibdev"), format!("{hca}\n")).unwrap();
            }
            std::fs::create_dir_all(dev.join("infiniband")).unwrap();
            for n in ["uverbs", "umad", "issm"] {
                std::fs::write(dev.join(format!("infiniband/{n}{i}")), "").unwrap();
            }
        }
        std::fs::write(dev.join("infiniband/rdma_cm"), "").unwrap();
        (sys, dev)
    }

    #[test]
    fn discovers_hcas_ports_and_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev) = fixture(tmp.path());
        let hcas = discover(&sys, &dev);
        assert_eq!(hcas.len(), 2);
        assert_eq!(hcas[0].name, "mlx5_0");
        assert_eq!(hcas[0].ports, [Port { port: 1, state: "ACTIVE".into(), link_layer: "InfiniBand".into() }]);
        assert_eq!(hcas[1].ports[0].state, "DOWN");
        assert_eq!(
            hcas[0].nodes,
            [dev.join("infiniband/uverbs0"), dev.join("infiniband/umad0"), dev.join("infiniband/issm0")]
        );
        assert!(discover(&tmp.path().join("nothing"), &dev).is_empty());
    }

    #[test]
    fn limits_for_rdma() {
        use oci_spec::runtime::LinuxCapabilities;
        let has = |caps: &LinuxCapabilities| -> [bool; 5] {
            [caps.bounding(), caps.effective(), caps.permitted(), caps.inheritable(), caps.ambient()]
                .map(|s| s.as_ref().is_some_and(|s| s.contains(&Capability::IpcLock)))
        };
        // An admin task running as root (oci-spec's default process has caps).
        let mut spec = oci_spec::runtime::Spec::default();
        if let Some(p) = spec.process_mut() {
            let mut caps = p.capabilities().clone().unwrap();
            caps.set_inheritable(Some(Default::default()));
            caps.set_ambient(Some(Default::default()));
            p.set_capabilities(Some(caps));
        }
        add_limits(&mut spec, u64::MAX, false);
        let p = spec.process().as_ref().unwrap();
        let memlock = p.rlimits().as_ref().unwrap().iter().find(|r| r.typ() == PosixRlimitType::RlimitMemlock).unwrap();
        assert_eq!((memlock.soft(), memlock.hard()), (u64::MAX, u64::MAX));
        assert_eq!(
            has(p.capabilities().as_ref().unwrap()),
            [true, true, true, false, false],
            "never inheritable/ambient"
        );
        // A non-admin task: no capability at all, the memlock limit only; all of them with ipc_lock_non_admin.
        let empty = || {
            let mut spec = oci_spec::runtime::Spec::default();
            let mut caps = LinuxCapabilities::default();
            let set = Some(Default::default());
            caps.set_bounding(set.clone());
            caps.set_effective(set.clone());
            caps.set_permitted(set.clone());
            caps.set_inheritable(set.clone());
            caps.set_ambient(set);
            spec.process_mut().as_mut().unwrap().set_capabilities(Some(caps));
            spec
        };
        let mut spec = empty();
        add_limits(&mut spec, 64, false);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(has(p.capabilities().as_ref().unwrap()), [false; 5]);
        assert!(p
            .rlimits()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.typ() == PosixRlimitType::RlimitMemlock && r.soft() == 64));
        let mut spec = empty();
        add_limits(&mut spec, 64, true);
        assert_eq!(has(spec.process().as_ref().unwrap().capabilities().as_ref().unwrap()), [true; 5]);
    }
}
