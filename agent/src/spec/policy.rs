//! The node's policy (`[policy]` in the config) applied to a task's run options
//! and identity. Pure: paths are compared as written here; the supervisor
//! resolves symlinks in bind sources and checks the result again with
//! [`bind_allowed`] before the container is made.

use super::run_options::{MountOpt, Namespace, RunOptions};
use super::SpecError;
use crate::model::RunAs;
use std::path::{Component, Path, PathBuf};

/// `[policy]`. Every permission defaults to refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `--privileged` and `--security-opt no-new-privileges=false`.
    pub allow_privileged: bool,
    /// `--pid host`, `--ipc host`.
    pub allow_host_namespaces: bool,
    /// `--cap-add`.
    pub allow_added_capabilities: bool,
    /// Host paths a bind mount may come from (after symlinks are resolved).
    pub bind_mount_prefixes: Vec<PathBuf>,
    /// Host devices `--device` may pass in.
    pub allowed_devices: Vec<PathBuf>,
    /// Run every task as root of a user namespace mapped to its identity's uid.
    pub user_namespaces: bool,
    /// Static init process for `--init` (tini), bind-mounted into the container.
    pub init_binary: PathBuf,
    /// Tasks without container settings may run on the host. Start, job
    /// preparation and release tasks always may.
    pub allow_host_tasks: bool,
    /// `--security-opt seccomp=unconfined`.
    pub allow_unconfined_seccomp: bool,
    /// `--network host` (Batch's container tasks have the node's network;
    /// MPI and RDMA tasks need it).
    pub allow_host_network: bool,
    /// Host ports no task may publish: the agent's own API and metrics ports
    /// (a published port takes the node's traffic to it).
    pub reserved_host_ports: Vec<u16>,
    /// `--oom-kill-disable`.
    pub allow_oom_kill_disable: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_privileged: false,
            allow_host_namespaces: false,
            allow_added_capabilities: false,
            bind_mount_prefixes: Vec::new(),
            allowed_devices: Vec::new(),
            user_namespaces: false,
            init_binary: PathBuf::from("/usr/bin/tini-static"),
            allow_host_tasks: false,
            allow_unconfined_seccomp: false,
            allow_host_network: true,
            reserved_host_ports: Vec::new(),
            allow_oom_kill_disable: false,
        }
    }
}

fn refused(flag: &str, reason: impl Into<String>) -> SpecError {
    SpecError::RunOption { flag: flag.to_owned(), reason: reason.into() }
}

/// A user or group name as pool accounts and images use them.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid user name"))
    }
}

/// Whether `path` (absolute, no `..`) lies under one of `prefixes`.
pub fn bind_allowed(path: &Path, prefixes: &[PathBuf]) -> bool {
    let normal = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    normal && prefixes.iter().any(|p| path.starts_with(p))
}

/// Applies the policy to parsed run options for a task running as `who` on a
/// node whose root (bind-mounted into every container) is `node_root`.
pub fn check(o: &RunOptions, policy: &Policy, who: &RunAs, node_root: &Path) -> Result<(), SpecError> {
    let admin_only = "needs an admin identity (elevation admin); this task's is non-admin";
    if o.privileged {
        if !policy.allow_privileged {
            return Err(refused("--privileged", "refused by this node's policy (policy.allow_privileged)"));
        }
        if !who.admin {
            return Err(refused("--privileged", admin_only));
        }
        if policy.user_namespaces {
            return Err(refused("--privileged", "cannot be combined with user namespaces (policy.user_namespaces)"));
        }
    }
    if o.allow_new_privileges {
        if !policy.allow_privileged {
            return Err(refused(
                "--security-opt",
                "no-new-privileges=false is refused by this node's policy (policy.allow_privileged)",
            ));
        }
        if !who.admin {
            return Err(refused("--security-opt", format!("no-new-privileges=false {admin_only}")));
        }
    }
    match &o.seccomp {
        super::Seccomp::Unconfined if !policy.allow_unconfined_seccomp => {
            return Err(refused(
                "--security-opt",
                "seccomp=unconfined is refused by this node's policy (policy.allow_unconfined_seccomp)",
            ));
        }
        super::Seccomp::Profile(path) if !bind_allowed(Path::new(path), &policy.bind_mount_prefixes) => {
            return Err(refused(
                "--security-opt",
                format!(
                    "seccomp profile {path} is not under a host path this node allows (policy.bind_mount_prefixes)"
                ),
            ));
        }
        _ => {}
    }
    if o.network.mode == crate::model::NetworkMode::Host && !policy.allow_host_network {
        return Err(refused("--network", "host is refused by this node's policy (policy.allow_host_network)"));
    }
    for p in &o.network.publish {
        if policy.reserved_host_ports.contains(&p.host_port) {
            return Err(refused("--publish", format!("{p}: host port {} is the agent's own", p.host_port)));
        }
        // A published port takes the node's traffic to it (ssh on 22, say):
        // below 1024, as with binding such a port, only an admin may.
        if p.host_port < 1024 && !who.admin {
            return Err(refused("--publish", format!("{p}: a host port below 1024 {admin_only}")));
        }
    }
    if o.oom_kill_disable && !policy.allow_oom_kill_disable {
        return Err(refused("--oom-kill-disable", "refused by this node's policy (policy.allow_oom_kill_disable)"));
    }
    // A process the OOM killer spares takes the node's memory from the others.
    if o.oom_score_adj.is_some_and(|n| n < 0) && !who.admin {
        return Err(refused("--oom-score-adj", format!("below 0 {admin_only}")));
    }
    for (flag, ns) in [("--pid", o.pid), ("--ipc", o.ipc), ("--uts", o.uts), ("--cgroupns", o.cgroupns)] {
        if ns == Namespace::Host && !policy.allow_host_namespaces {
            return Err(refused(
                flag,
                "host namespaces are refused by this node's policy (policy.allow_host_namespaces)",
            ));
        }
    }
    if o.cap_add.all || !o.cap_add.caps.is_empty() {
        if !policy.allow_added_capabilities {
            return Err(refused("--cap-add", "refused by this node's policy (policy.allow_added_capabilities)"));
        }
        if !who.admin {
            return Err(refused("--cap-add", admin_only));
        }
    }
    if !o.group_add.is_empty() && (!who.admin || policy.user_namespaces) {
        return Err(refused(
            "--group-add",
            "only an admin identity without user namespaces may add groups (a non-admin task has its identity's)",
        ));
    }
    if !who.admin {
        use oci_spec::runtime::PosixRlimitType as R;
        if let Some((t, _, _)) =
            o.ulimits.iter().find(|(t, _, _)| matches!(t, R::RlimitRtprio | R::RlimitRttime | R::RlimitNice))
        {
            return Err(refused(
                "--ulimit",
                format!("{t:?} (real-time or raised priority) {admin_only}: it could starve the node"),
            ));
        }
    }
    for m in &o.mounts {
        let target = Path::new(m.target());
        if target.starts_with(node_root) || node_root.starts_with(target) {
            return Err(refused(
                "--mount",
                format!("{} is or holds the node root {}, which every task shares", m.target(), node_root.display()),
            ));
        }
    }
    if o.user.is_some() && !who.admin {
        return Err(refused(
            "--user",
            "a non-admin task runs as its identity's uid; only an admin identity may choose a user of the image",
        ));
    }
    if policy.user_namespaces {
        if let Some(u) = &o.user {
            if u.user != super::run_options::IdRef::Id(0)
                || u.group.as_ref().is_some_and(|g| *g != super::run_options::IdRef::Id(0))
            {
                return Err(refused("--user", "with user namespaces a task runs as root of its namespace only"));
            }
        }
    }
    for m in &o.mounts {
        if let MountOpt::Bind { source, .. } = m {
            if !bind_allowed(Path::new(source), &policy.bind_mount_prefixes) {
                return Err(refused(
                    "--volume",
                    format!("{source} is not under a host path this node allows (policy.bind_mount_prefixes)"),
                ));
            }
        }
    }
    for d in &o.devices {
        if !policy.allowed_devices.iter().any(|a| a == Path::new(&d.host)) {
            return Err(refused(
                "--device",
                format!("{} is not allowed on this node (policy.allowed_devices)", d.host),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::run_options::parse;

    fn admin() -> RunAs {
        RunAs { uid: 1000, gid: 1000, groups: vec![], admin: true }
    }
    fn plain() -> RunAs {
        RunAs { admin: false, ..admin() }
    }

    fn refusal(opts: &str, policy: &Policy, who: &RunAs) -> String {
        match check(&parse(opts).unwrap(), policy, who, Path::new("/node")) {
            Err(SpecError::RunOption { flag, .. }) => flag,
            other => panic!("{opts}: {other:?}"),
        }
    }

    #[test]
    fn default_policy_refuses_escalations() {
        let p = Policy::default();
        for (opts, flag) in [
            ("--privileged", "--privileged"),
            ("--security-opt no-new-privileges=false", "--security-opt"),
            ("--pid host", "--pid"),
            ("--ipc=host", "--ipc"),
            ("--cap-add SYS_ADMIN", "--cap-add"),
            ("--cap-add ALL", "--cap-add"),
            ("-v /:/host", "--volume"),
            ("--mount type=bind,source=/data,target=/d", "--volume"),
            ("--device /dev/fuse", "--device"),
            ("--security-opt seccomp=unconfined", "--security-opt"),
            ("--security-opt seccomp=/etc/profile.json", "--security-opt"),
        ] {
            assert_eq!(refusal(opts, &p, &admin()), flag, "{opts}");
        }
        for ok in ["--rm", "--cap-drop ALL", "--network none", "--tmpfs /t", "-m 64m", "--read-only", "-u 0"] {
            check(&parse(ok).unwrap(), &p, &admin(), Path::new("/node")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn oom_and_namespace_flags_follow_the_policy() {
        let p = Policy::default();
        let ok = |o: &str, p: &Policy, w: &RunAs| check(&parse(o).unwrap(), p, w, Path::new("/node")).is_ok();
        assert_eq!(refusal("-m 64m --oom-kill-disable", &p, &admin()), "--oom-kill-disable");
        let open = Policy { allow_oom_kill_disable: true, allow_host_namespaces: true, ..Policy::default() };
        assert!(ok("-m 64m --oom-kill-disable", &open, &plain()));
        assert_eq!(refusal("--oom-score-adj -500", &p, &plain()), "--oom-score-adj", "below 0: admin only");
        assert!(ok("--oom-score-adj -500", &p, &admin()) && ok("--oom-score-adj 500", &p, &plain()));
        for (opts, flag) in [("--uts host", "--uts"), ("--cgroupns host", "--cgroupns")] {
            assert_eq!(refusal(opts, &p, &admin()), flag);
            assert!(ok(opts, &open, &plain()));
        }
        assert!(ok("--uts private --cgroupns private", &p, &plain()));
    }

    #[test]
    fn network_policy() {
        let p = Policy { reserved_host_ports: vec![7443], ..Policy::default() };
        let ok = |o: &str, p: &Policy, w: &RunAs| check(&parse(o).unwrap(), p, w, Path::new("/node")).is_ok();
        assert!(ok("--network host", &p, &plain()), "host network is allowed by default (Batch's)");
        let closed = Policy { allow_host_network: false, ..p.clone() };
        assert_eq!(refusal("--network host", &closed, &admin()), "--network");
        assert!(ok("--network bridge", &closed, &plain()) && ok("--network none", &closed, &plain()));
        assert!(ok("-p 8080:80", &p, &plain()));
        assert_eq!(refusal("-p 7443:80", &p, &admin()), "--publish", "the agent's own port");
        assert_eq!(refusal("-p 22:22", &p, &plain()), "--publish", "below 1024 needs admin");
        assert!(ok("-p 22:22", &p, &admin()));
    }

    #[test]
    fn permissions_open_what_they_name() {
        let p = Policy {
            allow_privileged: true,
            allow_host_namespaces: true,
            allow_added_capabilities: true,
            bind_mount_prefixes: vec!["/data".into()],
            allowed_devices: vec!["/dev/fuse".into()],
            ..Policy::default()
        };
        let p = Policy { allow_unconfined_seccomp: true, ..p };
        for ok in [
            "--privileged",
            "--pid host --ipc host",
            "--cap-add NET_ADMIN",
            "-v /data/x:/x:ro",
            "--device /dev/fuse",
            "--security-opt seccomp=unconfined",
            "--security-opt seccomp=/data/profile.json",
        ] {
            check(&parse(ok).unwrap(), &p, &admin(), Path::new("/node")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(refusal("-v /database:/x", &p, &admin()), "--volume", "a prefix matches whole components");
        assert_eq!(refusal("-v /:/x", &p, &admin()), "--volume");
        // Non-admin identities never escalate, whatever the policy.
        assert_eq!(refusal("--privileged", &p, &plain()), "--privileged");
        assert_eq!(refusal("--cap-add NET_ADMIN", &p, &plain()), "--cap-add");
        assert_eq!(refusal("-u 0", &p, &plain()), "--user");
        assert_eq!(refusal("--security-opt no-new-privileges=false", &p, &plain()), "--security-opt");
        assert_eq!(refusal("--group-add 0", &p, &plain()), "--group-add");
        assert_eq!(refusal("--ulimit rtprio=99", &p, &plain()), "--ulimit");
        check(&parse("--ulimit memlock=-1").unwrap(), &p, &plain(), Path::new("/node")).unwrap();
        assert_eq!(refusal("--tmpfs /node/shared", &p, &admin()), "--mount");
        assert_eq!(refusal("--tmpfs /node", &p, &admin()), "--mount");
        let userns = Policy { user_namespaces: true, ..p };
        assert_eq!(refusal("-u 1000", &userns, &admin()), "--user");
        assert_eq!(refusal("--privileged", &userns, &admin()), "--privileged");
    }

    #[test]
    fn bind_prefixes_are_whole_components() {
        let prefixes = [PathBuf::from("/data")];
        assert!(bind_allowed(Path::new("/data"), &prefixes));
        assert!(bind_allowed(Path::new("/data/a/b"), &prefixes));
        assert!(!bind_allowed(Path::new("/data2"), &prefixes));
        assert!(!bind_allowed(Path::new("/"), &prefixes));
        assert!(!bind_allowed(Path::new("/data/../etc"), &prefixes));
    }
}
