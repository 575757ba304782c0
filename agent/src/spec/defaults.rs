//! The hardening every container gets, the same as containerd's default Unix
//! spec (`oci/spec.go`, `populateDefaultUnixSpec`) plus the read-only cgroup
//! mount that Docker and the CRI plugin add so a task can read its own limits.
//! See the OCI runtime spec, config-linux.md, for the meaning of each field.

use oci_spec::runtime::{
    Capability, LinuxDeviceCgroupBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount,
    MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
};
use oci_spec::OciSpecError;

/// containerd's default capability set (`oci.defaultUnixCaps`).
pub(super) const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub(super) const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

pub(super) const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

pub(super) fn rlimits() -> Result<Vec<PosixRlimit>, OciSpecError> {
    Ok(vec![PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).hard(1024u64).soft(1024u64).build()?])
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

pub(super) fn mounts() -> Result<Vec<Mount>, OciSpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"])?,
    ])
}

/// New pid, ipc, uts, mount and cgroup namespaces (the cgroup namespace makes
/// `/sys/fs/cgroup` show the task's own cgroup, as Docker and the CRI plugin do
/// on cgroup v2). The network namespace is the node's (as Batch container tasks
/// have it: MPI and RDMA need the host network).
pub(super) fn namespaces() -> Result<Vec<LinuxNamespace>, OciSpecError> {
    [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect()
}

/// Deny every device; runc then allows its default set (null, zero, full, tty,
/// random, urandom, pts, ptmx).
pub(super) fn device_rules() -> Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>, OciSpecError> {
    Ok(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
}
