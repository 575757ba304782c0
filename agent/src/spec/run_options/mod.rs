//! The task's `run_options`: a string of `docker create` flags, parsed with
//! shell-word rules into [`RunOptions`]. Every flag is either honoured or refused
//! by name; none is silently ignored. `docs/run-options.md` lists each flag, what
//! it maps to in the OCI spec and what is refused and why.
//!
//! Forms accepted, as docker's flag parser does: `--flag value`, `--flag=value`,
//! `-f value`, `-f=value`, `-fvalue`, and clusters of the boolean short flags
//! (`-it`, `-dit`).
//!
//! Parsing is pure and checks each value; [`super::policy`] then decides what the
//! node allows.

mod mounts;
mod network;
mod refused;
mod values;

pub(super) use values::id_number;

use super::env::check_name;
use super::SpecError;
use crate::model::NetworkMode;
use oci_spec::runtime::{Capability, PosixRlimitType};

/// A user or group given by number or by name (resolved in the image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

/// `-u user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOpt {
    pub user: IdRef,
    pub group: Option<IdRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOpt {
    /// A host path: `-v /src:/dst[:ro]` or `--mount type=bind,...`.
    Bind { source: String, target: String, readonly: bool, propagation: Option<String> },
    /// `--tmpfs /dst[:opts]` or `--mount type=tmpfs,...`.
    Tmpfs { target: String, options: Vec<String> },
}

impl MountOpt {
    pub fn target(&self) -> &str {
        match self {
            MountOpt::Bind { target, .. } | MountOpt::Tmpfs { target, .. } => target,
        }
    }
}

/// `--device /dev/x[:/dev/y[:rwm]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOpt {
    pub host: String,
    pub container: String,
    pub access: String,
}

/// Capability names given to `--cap-add`/`--cap-drop`; `all` is `ALL`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapList {
    pub all: bool,
    pub caps: Vec<Capability>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Namespace {
    /// A namespace of the container's own (the default).
    #[default]
    Private,
    /// The node's (`--pid host`, `--ipc host`).
    Host,
}

/// `--security-opt seccomp=...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// berth's default profile.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`; policy `allow_unconfined_seccomp`).
    Unconfined,
    /// An OCI `linux.seccomp` object in this host file (under the bind prefixes).
    Profile(String),
}

/// cgroup limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory: Option<i64>,
    /// Memory plus swap; -1 is unlimited swap.
    pub memory_swap: Option<i64>,
    /// CFS quota per 100 ms period, from `--cpus`.
    pub cpu_quota: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub pids_limit: Option<i64>,
    /// `--memory-reservation`: the soft limit.
    pub memory_reservation: Option<i64>,
    /// `--cpu-period` in microseconds (with `--cpu-quota`).
    pub cpu_period: Option<u64>,
    /// `--cpus` was given (neither `--cpu-quota` nor `--cpu-period` may join it).
    pub cpus_flag: bool,
    /// `--cpu-quota` was given.
    pub quota_flag: bool,
    pub cpuset_mems: Option<String>,
    /// `--blkio-weight`, 10..=1000.
    pub blkio_weight: Option<u16>,
}

/// Run options after parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub remove: bool,
    pub workdir: Option<String>,
    /// `KEY=VALUE` from `-e`, in order.
    pub env: Vec<(String, String)>,
    /// `--env-file`: paths relative to the task directory, read when the task starts.
    pub env_files: Vec<String>,
    pub user: Option<UserOpt>,
    pub group_add: Vec<IdRef>,
    /// `--entrypoint`: replaces the image's ENTRYPOINT; `""` clears it.
    pub entrypoint: Option<String>,
    pub hostname: Option<String>,
    pub cap_add: CapList,
    pub cap_drop: CapList,
    pub privileged: bool,
    /// `--security-opt no-new-privileges=false`; berth sets it by default.
    pub allow_new_privileges: bool,
    pub seccomp: Seccomp,
    pub read_only: bool,
    pub mounts: Vec<MountOpt>,
    pub devices: Vec<DeviceOpt>,
    pub shm_size: Option<u64>,
    pub ulimits: Vec<(PosixRlimitType, u64, u64)>,
    pub resources: Resources,
    pub ipc: Namespace,
    pub pid: Namespace,
    /// `--network`, `-p`, `--dns*`, `--add-host`.
    pub network: crate::model::NetworkRequest,
    pub sysctls: Vec<(String, String)>,
    pub init: bool,
    pub stop_signal: Option<i32>,
    pub stop_timeout: Option<u32>,
    pub labels: Vec<(String, String)>,
    /// `--gpus`: mapped to CDI device names of the node's GPU classes.
    pub gpus: Option<crate::devices::gpus::GpuRequest>,
    /// `--oom-score-adj`, -1000..=1000 (below 0: admin identities only).
    pub oom_score_adj: Option<i32>,
    /// `--oom-kill-disable` (policy `allow_oom_kill_disable`, with `--memory`, cgroup v1).
    pub oom_kill_disable: bool,
    /// `--cgroupns`: a cgroup namespace of its own (the default) or the node's.
    pub cgroupns: Namespace,
    /// `--uts`: a UTS namespace of its own (the default) or the node's.
    pub uts: Namespace,
    pub domainname: Option<String>,
    /// `--platform`: the image index entry to run (it must be one the node runs).
    pub platform: Option<crate::model::Platform>,
    /// `--pull`: wins over the container settings' pull policy.
    pub pull: Option<crate::model::PullPolicy>,
    /// `--name`: kept as the container's `berth.name` label.
    pub name: Option<String>,
}

/// Longest `--stop-timeout` accepted, in seconds.
pub(super) const MAX_STOP_TIMEOUT: u32 = 600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Rm,
    Workdir,
    Env,
    EnvFile,
    User,
    GroupAdd,
    Entrypoint,
    Hostname,
    CapAdd,
    CapDrop,
    Privileged,
    SecurityOpt,
    ReadOnly,
    Tmpfs,
    Volume,
    Mount,
    Device,
    Gpus,
    ShmSize,
    Ulimit,
    Memory,
    MemorySwap,
    Cpus,
    CpuShares,
    CpusetCpus,
    PidsLimit,
    Ipc,
    Network,
    Publish,
    Dns,
    DnsSearch,
    DnsOption,
    AddHost,
    Pid,
    Sysctl,
    Init,
    StopSignal,
    StopTimeout,
    Label,
    MemoryReservation,
    CpuQuota,
    CpuPeriod,
    CpusetMems,
    BlkioWeight,
    OomScoreAdj,
    OomKillDisable,
    Cgroupns,
    Uts,
    Domainname,
    Platform,
    Pull,
    Name,
    Tty,
    Interactive,
    Detach,
    Runtime,
    Expose,
}

impl Flag {
    fn lookup(name: &str) -> Option<Self> {
        Some(match name {
            "--rm" => Flag::Rm,
            "-w" | "--workdir" => Flag::Workdir,
            "-e" | "--env" => Flag::Env,
            "--env-file" => Flag::EnvFile,
            "-u" | "--user" => Flag::User,
            "--group-add" => Flag::GroupAdd,
            "--entrypoint" => Flag::Entrypoint,
            "-h" | "--hostname" => Flag::Hostname,
            "--cap-add" => Flag::CapAdd,
            "--cap-drop" => Flag::CapDrop,
            "--privileged" => Flag::Privileged,
            "--security-opt" => Flag::SecurityOpt,
            "--read-only" => Flag::ReadOnly,
            "--tmpfs" => Flag::Tmpfs,
            "-v" | "--volume" => Flag::Volume,
            "--mount" => Flag::Mount,
            "--device" => Flag::Device,
            "--gpus" => Flag::Gpus,
            "--shm-size" => Flag::ShmSize,
            "--ulimit" => Flag::Ulimit,
            "-m" | "--memory" => Flag::Memory,
            "--memory-swap" => Flag::MemorySwap,
            "--cpus" => Flag::Cpus,
            "-c" | "--cpu-shares" => Flag::CpuShares,
            "--cpuset-cpus" => Flag::CpusetCpus,
            "--pids-limit" => Flag::PidsLimit,
            "--ipc" => Flag::Ipc,
            "--network" | "--net" => Flag::Network,
            "-p" | "--publish" => Flag::Publish,
            "--dns" => Flag::Dns,
            "--dns-search" => Flag::DnsSearch,
            "--dns-option" | "--dns-opt" => Flag::DnsOption,
            "--add-host" => Flag::AddHost,
            "--pid" => Flag::Pid,
            "--sysctl" => Flag::Sysctl,
            "--init" => Flag::Init,
            "--stop-signal" => Flag::StopSignal,
            "--stop-timeout" => Flag::StopTimeout,
            "-l" | "--label" => Flag::Label,
            "--memory-reservation" => Flag::MemoryReservation,
            "--cpu-quota" => Flag::CpuQuota,
            "--cpu-period" => Flag::CpuPeriod,
            "--cpuset-mems" => Flag::CpusetMems,
            "--blkio-weight" => Flag::BlkioWeight,
            "--oom-score-adj" => Flag::OomScoreAdj,
            "--oom-kill-disable" => Flag::OomKillDisable,
            "--cgroupns" => Flag::Cgroupns,
            "--uts" => Flag::Uts,
            "--domainname" => Flag::Domainname,
            "--platform" => Flag::Platform,
            "--pull" => Flag::Pull,
            "--name" => Flag::Name,
            "-t" | "--tty" => Flag::Tty,
            "-i" | "--interactive" => Flag::Interactive,
            "-d" | "--detach" => Flag::Detach,
            "--runtime" => Flag::Runtime,
            "--expose" => Flag::Expose,
            _ => return None,
        })
    }

    /// Boolean flags take no value, or `=true`/`=false` inline (docker's rule).
    fn boolean(self) -> bool {
        matches!(
            self,
            Flag::Rm
                | Flag::Privileged
                | Flag::ReadOnly
                | Flag::Init
                | Flag::OomKillDisable
                | Flag::Tty
                | Flag::Interactive
                | Flag::Detach
        )
    }
}

fn bad(flag: &str, reason: impl Into<String>) -> SpecError {
    SpecError::RunOption { flag: flag.to_owned(), reason: reason.into() }
}

/// Splits `name=value` / `-xvalue` forms into the flag name and an inline value.
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    if let Some(long) = arg.strip_prefix("--") {
        return match long.split_once('=') {
            Some((n, v)) => (&arg[..n.len() + 2], Some(v)),
            None => (arg, None),
        };
    }
    // A short flag: "-w", "-w=/x", "-w/x".
    if arg.len() > 2 && arg.is_char_boundary(2) {
        let rest = &arg[2..];
        return (&arg[..2], Some(rest.strip_prefix('=').unwrap_or(rest)));
    }
    (arg, None)
}

pub(super) fn parse(text: &str) -> Result<RunOptions, SpecError> {
    let words = shell_words::split(text).map_err(|e| bad("run_options", e.to_string()))?;
    let mut out = RunOptions::default();
    let mut iter = words.iter();
    while let Some(arg) = iter.next() {
        if !arg.starts_with('-') || arg == "-" || arg == "--" {
            return Err(bad(
                arg,
                "unexpected argument: run options take only flags (the command goes in the command line)",
            ));
        }
        if arg.contains('\0') {
            return Err(bad("run_options", "contains NUL"));
        }
        // `-it`, `-dit`: each a boolean short flag.
        if arg.len() > 2 && !arg.starts_with("--") && arg[1..].chars().all(|c| refused::CLUSTERABLE.contains(c)) {
            for c in arg[1..].chars() {
                let name = format!("-{c}");
                let flag = Flag::lookup(&name).ok_or_else(|| bad(&name, "unknown or unsupported run option"))?;
                apply(&mut out, flag, "true").map_err(|reason| bad(&name, reason))?;
            }
            continue;
        }
        let (name, inline) = split_flag(arg);
        if let Some(reason) = refused::reason(name) {
            return Err(bad(name, reason));
        }
        let flag = Flag::lookup(name).ok_or_else(|| bad(name, "unknown or unsupported run option"))?;
        let value = match (flag.boolean(), inline) {
            (true, None) => "true".to_owned(),
            (true, Some(v)) => v.to_owned(),
            (false, Some(v)) => v.to_owned(),
            (false, None) => iter.next().cloned().ok_or_else(|| bad(name, "needs a value"))?,
        };
        apply(&mut out, flag, &value).map_err(|reason| bad(name, reason))?;
    }
    check_combinations(&out)?;
    Ok(out)
}

/// Records one flag's value.
fn apply(out: &mut RunOptions, flag: Flag, value: &str) -> Result<(), String> {
    use values::*;
    match flag {
        Flag::Rm => out.remove = boolean(value)?,
        Flag::Privileged => out.privileged = boolean(value)?,
        Flag::ReadOnly => out.read_only = boolean(value)?,
        Flag::Init => out.init = boolean(value)?,
        Flag::OomKillDisable => out.oom_kill_disable = boolean(value)?,
        // A batch task has no terminal, no one attached, and is always detached.
        Flag::Tty | Flag::Interactive | Flag::Detach => {
            boolean(value)?;
        }
        Flag::Workdir => {
            let dir = container_path(value)?;
            if under_proc(&dir) {
                return Err(format!("{dir:?} is under /proc, which a task may not start in"));
            }
            out.workdir = Some(dir);
        }
        Flag::Env => {
            let (k, v) = value.split_once('=').ok_or_else(|| {
                format!("{value:?} is not KEY=VALUE (taking values from the agent's environment is not supported)")
            })?;
            check_name(k).map_err(|e| e.to_string())?;
            out.env.push((k.to_owned(), v.to_owned()));
        }
        Flag::EnvFile => {
            if value.starts_with('/') || value.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(format!("{value:?} must be a relative path under the task directory, without '..'"));
            }
            out.env_files.push(value.to_owned());
        }
        Flag::User => {
            let (u, g) = match value.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (value, None),
            };
            out.user = Some(UserOpt { user: id_ref(u)?, group: g.map(id_ref).transpose()? });
        }
        Flag::GroupAdd => out.group_add.push(id_ref(value)?),
        // One executable, as docker takes it (not split into words).
        Flag::Entrypoint => out.entrypoint = Some(value.to_owned()),
        Flag::Hostname => out.hostname = Some(hostname(value)?),
        Flag::CapAdd => cap_list(&mut out.cap_add, value)?,
        Flag::CapDrop => cap_list(&mut out.cap_drop, value)?,
        Flag::SecurityOpt => security_opt(out, value)?,
        Flag::Tmpfs => {
            let (target, opts) = value.split_once(':').unwrap_or((value, ""));
            out.mounts.push(MountOpt::Tmpfs { target: container_path(target)?, options: tmpfs_options(opts)? });
        }
        Flag::Volume => out.mounts.push(mounts::volume(value)?),
        Flag::Mount => out.mounts.push(mounts::mount(value)?),
        Flag::Device => out.devices.push(mounts::device(value)?),
        // After `--runtime nvidia` too: the named GPUs, not all.
        Flag::Gpus => out.gpus = Some(crate::devices::gpus::parse(value)?),
        Flag::ShmSize => out.shm_size = Some(positive(size(value)?)?),
        Flag::Ulimit => {
            let (typ, soft, hard) = ulimit(value)?;
            out.ulimits.retain(|(t, _, _)| *t != typ);
            out.ulimits.push((typ, soft, hard));
        }
        Flag::Memory => out.resources.memory = Some(memory(value)?),
        Flag::MemorySwap => {
            out.resources.memory_swap = match value.trim() {
                "-1" => Some(-1),
                "0" => None, // docker: unset
                v => Some(memory(v)?),
            };
        }
        Flag::Cpus => {
            out.resources.cpu_quota = Some(cpus_quota(value)?);
            out.resources.cpus_flag = true;
        }
        Flag::CpuQuota => {
            let n: i64 = integer(value)?;
            out.resources.quota_flag = true;
            out.resources.cpu_quota = match n {
                -1 | 0 => None,
                n if n >= 1000 => Some(n),
                n => return Err(format!("{n}: a quota is at least 1000 microseconds (-1 or 0: none)")),
            };
        }
        Flag::CpuPeriod => {
            let n: u64 = integer(value)?;
            if n != 0 && !(1000..=1_000_000).contains(&n) {
                return Err(format!("{n}: a period is 1000 to 1000000 microseconds (0: the default)"));
            }
            out.resources.cpu_period = (n != 0).then_some(n);
        }
        Flag::CpusetMems => out.resources.cpuset_mems = Some(cpuset(value)?),
        Flag::MemoryReservation => out.resources.memory_reservation = Some(memory(value)?),
        Flag::BlkioWeight => {
            let n: u16 = integer(value)?;
            if n != 0 && !(10..=1000).contains(&n) {
                return Err(format!("{n}: a weight is 10 to 1000 (0: unset)"));
            }
            out.resources.blkio_weight = (n != 0).then_some(n);
        }
        Flag::OomScoreAdj => {
            let n: i32 = integer(value)?;
            if !(-1000..=1000).contains(&n) {
                return Err(format!("{n} is not from -1000 to 1000"));
            }
            out.oom_score_adj = Some(n);
        }
        Flag::Cgroupns => out.cgroupns = private_or_host(value)?,
        Flag::Uts => {
            out.uts = match value {
                "host" => Namespace::Host,
                // docker's default, written out.
                "" | "private" => Namespace::Private,
                _ => return Err(format!("{value:?}: host (or private, the default)")),
            }
        }
        Flag::Domainname => out.domainname = Some(hostname(value)?),
        Flag::Platform => out.platform = Some(platform(value)?),
        Flag::Pull => {
            use crate::model::PullPolicy as P;
            out.pull = Some(match value {
                "missing" => P::Missing,
                "always" => P::Always,
                "never" => P::Never,
                _ => return Err(format!("{value:?}: always, missing or never")),
            });
        }
        Flag::Name => out.name = Some(container_name(value)?),
        Flag::Runtime => match value {
            // containerd's runc shim is what every task runs with.
            "runc" | "io.containerd.runc.v2" => {}
            // The NVIDIA images' docs say `--runtime nvidia`: the node's GPUs through CDI.
            "nvidia" => {
                if out.gpus.is_none() {
                    out.gpus = Some(crate::devices::gpus::parse("all")?);
                }
            }
            _ => return Err(format!("{value:?}: tasks run with runc (nvidia: the GPUs through CDI, as --gpus all)")),
        },
        Flag::Expose => {
            expose(value)?;
        }
        Flag::CpuShares => {
            let n: u64 = integer(value)?;
            if n != 0 && !(2..=262_144).contains(&n) {
                return Err(format!("{n} must be between 2 and 262144 (0: unset)"));
            }
            out.resources.cpu_shares = (n != 0).then_some(n);
        }
        Flag::CpusetCpus => out.resources.cpuset_cpus = Some(cpuset(value)?),
        Flag::PidsLimit => {
            let n: i64 = integer(value)?;
            // 0 and -1 mean unlimited, as with docker.
            out.resources.pids_limit = (n > 0).then_some(n);
            if n < -1 {
                return Err(format!("{n} is not a limit (a positive number, or -1 for none)"));
            }
        }
        Flag::Ipc => {
            out.ipc = match value {
                "private" | "shareable" => Namespace::Private,
                "host" => Namespace::Host,
                _ => return Err(format!("{value:?}: only private and host are supported")),
            }
        }
        Flag::Pid => {
            out.pid = match value {
                "host" => Namespace::Host,
                "private" => Namespace::Private,
                _ => return Err(format!("{value:?}: only host is supported")),
            }
        }
        Flag::Network => out.network.mode = network::mode(value)?,
        Flag::Publish => {
            let m = network::publish(value, out.network.publish.len())?;
            if let Some(other) = out.network.publish.iter().find(|o| o.collides(&m)) {
                return Err(format!("{m} and {other} publish the same host port"));
            }
            out.network.publish.push(m);
        }
        Flag::Dns => {
            let ip = network::dns_server(value, out.network.dns.servers.len())?;
            out.network.dns.servers.push(ip);
        }
        Flag::DnsSearch => {
            let d = network::dns_search(value, out.network.dns.search.len())?;
            out.network.dns.search.push(d);
        }
        Flag::DnsOption => out.network.dns.options.push(network::dns_option(value)?),
        Flag::AddHost => {
            let h = network::add_host(value, out.network.extra_hosts.len())?;
            out.network.extra_hosts.push(h);
        }
        Flag::Sysctl => out.sysctls.push(
            value
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{value:?} is not KEY=VALUE"))?,
        ),
        Flag::StopSignal => out.stop_signal = Some(signal(value)?),
        Flag::StopTimeout => {
            let n: i64 = integer(value)?;
            // Bounded: the grace also delays the kill at the wall-clock limit.
            if !(0..=i64::from(MAX_STOP_TIMEOUT)).contains(&n) {
                return Err(format!("{n} is not a number of seconds from 0 to {MAX_STOP_TIMEOUT}"));
            }
            out.stop_timeout = u32::try_from(n).ok();
        }
        Flag::Label => {
            let (k, v) = value.split_once('=').unwrap_or((value, ""));
            if k.is_empty() || k.starts_with("berth.") || k.starts_with("containerd.io") {
                return Err(format!("label {k:?}: the berth. and containerd.io prefixes are reserved"));
            }
            out.labels.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(())
}

fn positive(n: u64) -> Result<u64, String> {
    if n == 0 {
        Err("must be more than 0".into())
    } else {
        Ok(n)
    }
}

fn memory(value: &str) -> Result<i64, String> {
    let n = values::size(value)?;
    if n < 6 << 20 {
        return Err(format!("{value:?} is below the 6 MiB minimum"));
    }
    Ok(n as i64)
}

fn id_ref(text: &str) -> Result<IdRef, String> {
    if let Some(n) = values::id_number(text)? {
        return Ok(IdRef::Id(n));
    }
    values::id_name(text)?;
    Ok(IdRef::Name(text.to_owned()))
}

fn cap_list(list: &mut CapList, value: &str) -> Result<(), String> {
    for name in value.split(',') {
        match values::capability(name)? {
            None => list.all = true,
            Some(c) if !list.caps.contains(&c) => list.caps.push(c),
            Some(_) => {}
        }
    }
    Ok(())
}

fn security_opt(out: &mut RunOptions, value: &str) -> Result<(), String> {
    let (key, v) = value.split_once(['=', ':']).unwrap_or((value, "true"));
    match key {
        "no-new-privileges" => out.allow_new_privileges = !values::boolean(v)?,
        "seccomp" if v == "unconfined" => out.seccomp = Seccomp::Unconfined,
        "seccomp" => {
            let path = values::container_path(v).map_err(|e| format!("seccomp profile {e}"))?;
            out.seccomp = Seccomp::Profile(path);
        }
        _ => {
            return Err(format!(
                "{key:?} is not supported (only no-new-privileges and seccomp; no AppArmor or SELinux)"
            ))
        }
    }
    Ok(())
}

/// Whether `path` is `/proc` or below it (after `.` and `..` are resolved
/// lexically, as the kernel would walk them from `/`).
pub(super) fn under_proc(path: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.first() == Some(&"proc")
}

/// Mount targets a task may not use: the root, and what holds the container's
/// own kernel interfaces (`/dev/shm` excepted, as docker allows it).
pub(super) fn reserved_target(target: &str) -> bool {
    target == "/"
        || (["/proc", "/sys", "/dev"].iter().any(|r| target == *r || target.starts_with(&format!("{r}/")))
            && target != "/dev/shm")
}

/// Checks across flags, after all are read.
fn check_combinations(o: &RunOptions) -> Result<(), SpecError> {
    let r = &o.resources;
    if let Some(swap) = r.memory_swap {
        match r.memory {
            None => return Err(bad("--memory-swap", "needs --memory")),
            Some(m) if swap != -1 && swap < m => {
                return Err(bad("--memory-swap", "is memory plus swap: it must be at least --memory"))
            }
            _ => {}
        }
    }
    if r.cpus_flag && (r.quota_flag || r.cpu_period.is_some()) {
        return Err(bad("--cpus", "cannot be combined with --cpu-quota or --cpu-period (as with docker)"));
    }
    if let (Some(reservation), Some(limit)) = (r.memory_reservation, r.memory) {
        if reservation > limit {
            return Err(bad("--memory-reservation", "must be at most --memory"));
        }
    }
    if o.oom_kill_disable && r.memory.is_none() {
        return Err(bad(
            "--oom-kill-disable",
            "needs --memory (without a limit the task could take the node's memory)",
        ));
    }
    if o.uts == Namespace::Host && (o.hostname.is_some() || o.domainname.is_some()) {
        return Err(bad("--uts", "host shares the node's host name: --hostname and --domainname cannot be set"));
    }
    if o.shm_size.is_some() && o.ipc == Namespace::Host {
        return Err(bad("--shm-size", "cannot be set with --ipc host"));
    }
    if o.ipc == Namespace::Host && o.sysctls.iter().any(|(k, _)| !k.starts_with("net.")) {
        return Err(bad("--sysctl", "IPC sysctls cannot be set with --ipc host (they would change the node's)"));
    }
    if !o.network.publish.is_empty() && o.network.mode != NetworkMode::Bridge {
        return Err(bad("--publish", format!("needs --network bridge (this task's is {})", o.network.mode.as_str())));
    }
    for m in &o.mounts {
        if reserved_target(m.target()) {
            return Err(bad(
                "--mount",
                format!("{} is / or holds the container's kernel interfaces; it cannot be mounted over", m.target()),
            ));
        }
    }
    for (k, v) in &o.sysctls {
        values::sysctl(&format!("{k}={v}"), o.network.mode != NetworkMode::Host).map_err(|e| bad("--sysctl", e))?;
    }
    let mut targets: Vec<&str> = o.mounts.iter().map(MountOpt::target).collect();
    targets.sort_unstable();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad("--mount", format!("{} is mounted twice", w[0])));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
