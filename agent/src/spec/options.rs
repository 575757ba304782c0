//! The parts of the spec that run options shape: capabilities, mounts,
//! namespaces, cgroup resources, devices, rlimits and sysctls. Pure.

use super::defaults;
use super::run_options::{MountOpt, Namespace, RunOptions};
use super::SpecError;
use crate::model::NetworkMode;
use oci_spec::runtime::{
    Capability, LinuxBlockIoBuilder, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
    Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
};
use oci_spec::OciSpecError;
use std::collections::HashSet;
use std::path::PathBuf;

/// Where `--init` puts the init binary in the container.
pub const INIT_PATH: &str = "/sbin/berth-init";

/// Every capability the kernels berth runs on know (capability.h).
const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn all_caps() -> HashSet<Capability> {
    ALL_CAPS.iter().filter_map(|n| n.parse().ok()).collect()
}

/// The capability set, as docker computes it: all for `--privileged`; all less
/// `--cap-drop` for `--cap-add ALL`; otherwise the default set less `--cap-drop`
/// (`ALL` empties it) plus `--cap-add`. It is the bounding set; effective and
/// permitted only when the process is root, so a task running as another uid
/// has no privilege over files it does not own. Never inheritable or ambient.
/// A non-admin identity's bounding set is empty: not even a setuid-root binary
/// in its image can give it a capability.
pub(super) fn capabilities(o: &RunOptions, root: bool, admin: bool) -> Result<LinuxCapabilities, OciSpecError> {
    let mut set: HashSet<Capability> =
        if o.privileged || o.cap_add.all { all_caps() } else { defaults::DEFAULT_CAPS.into() };
    if !o.privileged {
        if o.cap_drop.all && !o.cap_add.all {
            set.clear();
        }
        for c in &o.cap_drop.caps {
            set.remove(c);
        }
        set.extend(o.cap_add.caps.iter().copied());
    }
    if !admin {
        set.clear();
    }
    let active = if root { set.clone() } else { HashSet::new() };
    LinuxCapabilitiesBuilder::default()
        .bounding(set)
        .effective(active.clone())
        .permitted(active)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
}

/// The default rlimits with `--ulimit` values over them.
pub(super) fn rlimits(o: &RunOptions) -> Result<Vec<PosixRlimit>, OciSpecError> {
    let mut out: Vec<PosixRlimit> =
        defaults::rlimits()?.into_iter().filter(|r| !o.ulimits.iter().any(|(t, _, _)| *t == r.typ())).collect();
    for (typ, soft, hard) in &o.ulimits {
        out.push(PosixRlimitBuilder::default().typ(*typ).soft(*soft).hard(*hard).build()?);
    }
    Ok(out)
}

fn mount(dest: &str, typ: &str, source: &str, options: Vec<String>) -> Result<Mount, OciSpecError> {
    MountBuilder::default().destination(dest).typ(typ).source(source).options(options).build()
}

/// The default mounts, adjusted by the run options. In a user namespace, as
/// rootless runtimes do: `/dev/pts` without `gid=5` (not mapped there), and
/// `/sys` bound from the host when the task shares the node's network (sysfs
/// cannot be mounted fresh without a network namespace of the task's own).
pub(super) fn default_mounts(o: &RunOptions, user_namespace: bool) -> Result<Vec<Mount>, SpecError> {
    let mut out = Vec::new();
    for m in defaults::mounts()? {
        let dest = m.destination().to_string_lossy().into_owned();
        match dest.as_str() {
            "/dev/shm" if o.ipc == Namespace::Host => {
                out.push(mount("/dev/shm", "bind", "/dev/shm", vec!["rbind".into(), "rprivate".into(), "rw".into()])?)
            }
            "/dev/mqueue" if o.ipc == Namespace::Host => {}
            "/dev/shm" if o.shm_size.is_some() => {
                let mut opts: Vec<String> = m.options().clone().unwrap_or_default();
                opts.retain(|x| !x.starts_with("size="));
                opts.push(format!("size={}", o.shm_size.unwrap_or_default()));
                out.push(mount("/dev/shm", "tmpfs", "shm", opts)?);
            }
            "/dev/pts" if user_namespace => {
                let mut opts: Vec<String> = m.options().clone().unwrap_or_default();
                opts.retain(|x| x != "gid=5");
                out.push(mount("/dev/pts", "devpts", "devpts", opts)?);
            }
            // A bridge task joins a network namespace the agent made (owned
            // by the node's user namespace): sysfs cannot be mounted there either.
            "/sys" if user_namespace && o.network.mode != NetworkMode::None => out.push(mount(
                "/sys",
                "bind",
                "/sys",
                vec!["rbind".into(), "nosuid".into(), "noexec".into(), "nodev".into(), "ro".into()],
            )?),
            "/sys" if o.privileged => out.push(mount(
                "/sys",
                "sysfs",
                "sysfs",
                vec!["nosuid".into(), "noexec".into(), "nodev".into(), "rw".into()],
            )?),
            _ => out.push(m),
        }
    }
    Ok(out)
}

/// The task's own mounts (and the init binary's). `bind_sources` are the
/// resolved host paths of the bind mounts, in order.
pub(super) fn task_mounts(
    o: &RunOptions,
    bind_sources: &[String],
    init: Option<&PathBuf>,
) -> Result<Vec<Mount>, SpecError> {
    let mut out = Vec::new();
    let mut binds = bind_sources.iter();
    for m in &o.mounts {
        match m {
            MountOpt::Bind { target, readonly, propagation, .. } => {
                let source = binds.next().ok_or_else(|| SpecError::RunOption {
                    flag: "--volume".into(),
                    reason: "bind source was not resolved".into(),
                })?;
                let opts = vec![
                    "rbind".to_string(),
                    propagation.clone().unwrap_or_else(|| "rprivate".into()),
                    if *readonly { "ro" } else { "rw" }.into(),
                    "nosuid".into(),
                    "nodev".into(),
                ];
                out.push(mount(target, "bind", source, opts)?);
            }
            MountOpt::Tmpfs { target, options } => {
                let mut opts = vec!["nosuid".to_string(), "nodev".into(), "noexec".into()];
                opts.extend(options.iter().cloned());
                out.push(mount(target, "tmpfs", "tmpfs", opts)?);
            }
        }
    }
    if let Some(init) = init {
        out.push(mount(
            INIT_PATH,
            "bind",
            &init.to_string_lossy(),
            vec!["rbind".into(), "rprivate".into(), "ro".into(), "nosuid".into(), "nodev".into()],
        )?);
    }
    Ok(out)
}

/// The default namespaces, less those shared with the host, plus a network
/// namespace for `--network none` and a user namespace when configured.
/// `netns`: the path of the network namespace a bridge task joins.
pub(super) fn namespaces(
    o: &RunOptions,
    user_namespace: bool,
    netns: Option<&str>,
) -> Result<Vec<LinuxNamespace>, OciSpecError> {
    let mut out: Vec<LinuxNamespace> = defaults::namespaces()?
        .into_iter()
        .filter(|n| match n.typ() {
            LinuxNamespaceType::Pid => o.pid == Namespace::Private,
            LinuxNamespaceType::Ipc => o.ipc == Namespace::Private,
            LinuxNamespaceType::Uts => o.uts == Namespace::Private,
            LinuxNamespaceType::Cgroup => o.cgroupns == Namespace::Private,
            _ => true,
        })
        .collect();
    match (o.network.mode, netns) {
        (NetworkMode::Host, _) => {}
        (NetworkMode::Bridge, Some(path)) => {
            out.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(path).build()?)
        }
        // A new namespace with only `lo` (a bridge task's is made by the agent).
        (NetworkMode::None | NetworkMode::Bridge, _) => {
            out.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).build()?)
        }
    }
    if user_namespace {
        out.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).build()?);
    }
    Ok(out)
}

/// uid and gid maps of a user namespace: root of the namespace is the task's
/// host uid and gid; the pool group keeps its id so `shared/` stays writable.
pub(super) fn id_mappings(
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> Result<(Vec<oci_spec::runtime::LinuxIdMapping>, Vec<oci_spec::runtime::LinuxIdMapping>), OciSpecError> {
    let one = |c: u32, h: u32| LinuxIdMappingBuilder::default().container_id(c).host_id(h).size(1u32).build();
    let uids = vec![one(0, uid)?];
    let mut gids = vec![one(0, gid)?];
    for g in groups {
        if *g != 0 && *g != gid {
            gids.push(one(*g, *g)?);
        }
    }
    Ok((uids, gids))
}

/// cgroup limits and the device rules: deny all, then allow each passed device
/// (or everything for `--privileged`).
pub(super) fn resources(
    o: &RunOptions,
    devices: &[LinuxDevice],
    access: &[String],
) -> Result<LinuxResources, OciSpecError> {
    let mut rules: Vec<LinuxDeviceCgroup> = defaults::device_rules()?;
    if o.privileged {
        rules = vec![LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build()?];
    }
    for (d, a) in devices.iter().zip(access) {
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(if d.typ() == LinuxDeviceType::B { LinuxDeviceType::B } else { LinuxDeviceType::C })
                .major(d.major())
                .minor(d.minor())
                .access(a.clone())
                .build()?,
        );
    }
    let r = &o.resources;
    let mut b = LinuxResourcesBuilder::default().devices(rules);
    if r.memory.is_some() || r.memory_reservation.is_some() || o.oom_kill_disable {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(limit) = r.memory {
            // Memory plus swap; unset means as much swap as memory (docker's default).
            let swap = r.memory_swap.unwrap_or(limit.saturating_mul(2));
            m = m.limit(limit).swap(swap);
        }
        if let Some(soft) = r.memory_reservation {
            m = m.reservation(soft);
        }
        if o.oom_kill_disable {
            m = m.disable_oom_killer(true);
        }
        b = b.memory(m.build()?);
    }
    if r.cpu_quota.is_some()
        || r.cpu_period.is_some()
        || r.cpu_shares.is_some()
        || r.cpuset_cpus.is_some()
        || r.cpuset_mems.is_some()
    {
        let mut c = LinuxCpuBuilder::default();
        if let Some(q) = r.cpu_quota {
            c = c.quota(q);
        }
        // `--cpus` is a quota per 100 ms, as is a `--cpu-quota` without a period.
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            c = c.period(r.cpu_period.unwrap_or(100_000));
        }
        if let Some(mems) = &r.cpuset_mems {
            c = c.mems(mems.clone());
        }
        if let Some(s) = r.cpu_shares {
            c = c.shares(s);
        }
        if let Some(set) = &r.cpuset_cpus {
            c = c.cpus(set.clone());
        }
        b = b.cpu(c.build()?);
    }
    if let Some(limit) = r.pids_limit {
        b = b.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    if let Some(w) = r.blkio_weight {
        b = b.block_io(LinuxBlockIoBuilder::default().weight(w).build()?);
    }
    b.build()
}
