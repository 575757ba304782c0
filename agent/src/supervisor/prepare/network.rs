//! The task's network: a bridge task's namespace attached to the node's
//! bridge (CNI ADD; the DEL is the runner's, after the container is gone, or
//! recovery's), and the `/etc/resolv.conf` and `/etc/hosts` of every task
//! that does not simply share the node's.

use super::{Failure, Task};
use crate::model::{NetworkMode, NetworkRequest};
use crate::spec::NetworkSetup;
use crate::supervisor::Supervisor;

pub(super) async fn attach(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    let sh = &sup.shared;
    let req = &t.checked.run_options.network;
    let cid = t.info.container_id();
    let net = &sh.settings.network;
    if req.mode == NetworkMode::Bridge {
        let ip = net.attach(&cid, &req.publish).await.map_err(Failure::Network)?;
        t.ip = Some(ip);
    }
    if req.own_files() {
        let hostname = t.checked.run_options.hostname.clone().unwrap_or_else(|| sh.node.hostname.clone());
        let node_hosts = match req.mode {
            NetworkMode::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            NetworkMode::Bridge | NetworkMode::None => String::new(),
        };
        let node_resolv = match req.mode {
            NetworkMode::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            NetworkMode::Bridge | NetworkMode::None => crate::network::node_resolv_conf(),
        };
        let resolv = crate::network::resolv_conf(&node_resolv, req.mode, &req.dns);
        let hosts = crate::network::hosts(&node_hosts, req.mode, &hostname, t.ip, &req.extra_hosts);
        net.write_files(&cid, &resolv, &hosts).map_err(Failure::Network)?;
    }
    Ok(())
}

/// What the spec of container `cid` gets of its network (what `attach`
/// made, or will make: `ExplainTask` shows it beforehand).
pub(in crate::supervisor) fn setup(sup: &Supervisor, cid: &str, req: &NetworkRequest) -> NetworkSetup {
    let paths = sup.shared.settings.network.paths(cid);
    let path = |p: &std::path::Path| p.display().to_string();
    let netns = (req.mode == NetworkMode::Bridge).then(|| path(&paths.netns));
    let files = if req.own_files() {
        vec![(path(&paths.resolv_conf), "/etc/resolv.conf".into()), (path(&paths.hosts), "/etc/hosts".into())]
    } else {
        sup.shared.node.network_files.iter().map(|f| (path(f), path(f))).collect()
    };
    NetworkSetup { netns, files }
}
