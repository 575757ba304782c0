//! Builds a task's OCI runtime spec. PURE: values in, an
//! [`oci_spec::runtime::Spec`] out; no I/O, no clock, no environment. Every rule
//! of the task contract that shapes the container lives here (SEMANTICS.md):
//! command line, environment, working directory, node root bind, user, hostname,
//! run options, default hardening.
//!
//! Validation that can be done before anything is created (command line, run
//! options, environment names, the node's policy) is in [`check_task`], which
//! `RunTask` calls so that a bad request is refused with nothing left behind.
//! What needs the host or the image (resolved bind sources, device numbers,
//! env files, the image's `/etc/passwd`) the supervisor looks up and passes in
//! [`Lookups`].

mod command;
mod defaults;
mod env;
mod host;
mod host_mounts;
mod options;
mod policy;
mod run_options;
mod seccomp;
mod user;

pub use env::{batch_vars, parse_env_file, RESERVED_PREFIX};
pub use host::{host_process, HostProcess};
pub use options::INIT_PATH;
pub use policy::{bind_allowed, check as check_policy, check_user_name, Policy};
pub use run_options::{DeviceOpt, MountOpt, RunOptions, Seccomp};
pub use seccomp::parse_profile_file as parse_seccomp_profile;
pub use user::ImageAccounts;

use crate::images::ImageConfig;
use crate::layout::Layout;
use crate::model::{NodeFacts, RunAs, TaskSpec, WorkingDirMode};
use oci_spec::runtime::{
    LinuxBuilder, LinuxDevice, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("command line cannot be split into words: {reason}")]
    CommandLine { reason: String },
    #[error("the command line is empty and there is no image ENTRYPOINT or CMD to run")]
    NoCommand,
    #[error("run option {flag}: {reason}")]
    RunOption { flag: String, reason: String },
    #[error("environment variable {name:?}: {reason}")]
    EnvName { name: String, reason: String },
    #[error("{reason}")]
    User { reason: String },
    /// A working directory under `/proc` (`/proc/self/fd/N` reaches the
    /// host through a descriptor runc holds: CVE-2024-21626), whatever runc
    /// would make of it.
    #[error("working directory {path:?} is under /proc, which a task may not start in")]
    WorkingDir { path: String },
    #[error("seccomp: {reason}")]
    Seccomp { reason: String },
    #[error("building the OCI spec failed: {0}")]
    Oci(#[from] OciSpecError),
}

/// Checks what can be checked before the image is known; returns the parsed run options.
pub fn check_task(task: &TaskSpec) -> Result<RunOptions, SpecError> {
    if !task.command_line.trim().is_empty() {
        command::split(&task.command_line)?;
    }
    env::check_task_env(&task.environment)?;
    match &task.container {
        Some(c) => run_options::parse(&c.run_options),
        None => Ok(RunOptions::default()),
    }
}

/// What the supervisor found on the host and in the image for this task.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    /// The host path of each bind mount of the run options, symlinks resolved, in order.
    pub bind_sources: Vec<String>,
    /// Each `--device`, in order, as the container will see it.
    pub devices: Vec<LinuxDevice>,
    /// Variables from `--env-file` files, in order.
    pub env_files: Vec<(String, String)>,
    /// The image's `/etc/passwd` and `/etc/group`.
    pub accounts: ImageAccounts,
    /// The profile of `--security-opt seccomp=FILE`.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// Everything the spec is built from.
#[derive(Debug, Clone, Copy)]
pub struct SpecInputs<'a> {
    pub task: &'a TaskSpec,
    pub run_options: &'a RunOptions,
    pub run_as: &'a RunAs,
    pub policy: &'a Policy,
    pub lookups: &'a Lookups,
    pub image: &'a ImageConfig,
    pub node: &'a NodeFacts,
    pub layout: &'a Layout,
    /// `linux.cgroupsPath`, e.g. `/berth/<container id>`.
    pub cgroups_path: &'a str,
    /// The task's job has a preparation task (`AZ_BATCH_JOB_PREP_DIR` is set).
    pub job_prep: bool,
    /// The application packages it gets (installed under `applications/`).
    pub packages: &'a [crate::model::PackageId],
    /// Its network namespace and its `/etc/resolv.conf` and `/etc/hosts`.
    pub network: &'a NetworkSetup,
    /// The shim group of its container (`io.containerd.runc.v2.group`); None: a shim of its own.
    pub shim_group: Option<&'a str>,
}

/// The annotation (also a container label) by which containerd's runc shim
/// puts containers into one shim process: the shim's socket is derived from
/// its value instead of the container id, so containers that share a value
/// share a shim.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// What the agent made for a task's network (`network::Networks::setup`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSetup {
    /// The network namespace a bridge task joins.
    pub netns: Option<String>,
    /// Host files bound read-only into the container: (host path, container path).
    pub files: Vec<(String, String)>,
}

/// Builds the spec of a container task.
pub fn build(i: SpecInputs<'_>) -> Result<Spec, SpecError> {
    let key = &i.task.key;
    let o = i.run_options;
    let paths = i.layout.task(key);
    let mut args = command::argv(&i.task.command_line, i.image, o.entrypoint.as_deref())?;
    if o.init {
        args.splice(0..0, [INIT_PATH.to_string(), "--".into()]);
    }

    let mut batch = env::batch_vars(i.node, i.layout, key, &paths, i.job_prep, i.packages);
    host_mounts::visible_vars(i.task.container.as_ref(), &mut batch);
    let task_env: Vec<(String, String)> = i.task.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let env = env::merge(&i.image.env, &[&i.lookups.env_files, &o.env, &task_env, &batch]);

    let mode = i.task.container.as_ref().map(|c| c.working_directory).unwrap_or_default();
    let cwd = match (&o.workdir, mode) {
        (Some(w), _) => w.clone(),
        (None, WorkingDirMode::TaskWorkingDir) => paths.working_dir.display().to_string(),
        (None, WorkingDirMode::ImageDefault) => i.image.working_dir.clone().unwrap_or_else(|| "/".into()),
    };
    if run_options::under_proc(&cwd) {
        return Err(SpecError::WorkingDir { path: cwd });
    }

    let userns = i.policy.user_namespaces;
    let pu = user::process_user(i.run_as, o, i.image.user.as_deref(), &i.lookups.accounts, userns)?;
    let mut user = UserBuilder::default().uid(pu.uid).gid(pu.gid);
    if !pu.additional_gids.is_empty() {
        user = user.additional_gids(pu.additional_gids.clone());
    }
    let capabilities = options::capabilities(o, pu.uid == 0, i.run_as.admin || userns)?;
    let seccomp = match &o.seccomp {
        // As with docker, a privileged task has no filter.
        _ if o.privileged => None,
        run_options::Seccomp::Unconfined => None,
        run_options::Seccomp::Default => {
            let bounding = capabilities.bounding().clone().unwrap_or_default();
            Some(seccomp::default_profile(&i.node.arch, &bounding)?)
        }
        run_options::Seccomp::Profile(path) => Some(
            i.lookups
                .seccomp
                .clone()
                .ok_or_else(|| SpecError::Seccomp { reason: format!("the profile {path} was not read") })?,
        ),
    };
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(options::rlimits(o)?)
        .no_new_privileges(!o.allow_new_privileges)
        .build()?;
    process.set_oom_score_adj(o.oom_score_adj);

    let init = o.init.then_some(&i.policy.init_binary);
    let mut mounts = options::default_mounts(o, userns)?;
    // Tasks write the node root: no set-uid binary or device node planted
    // there is honoured, in this task or any other. Application packages are
    // shared: no task, not even an admin one, may change them.
    for b in host_mounts::node_binds(i.task.container.as_ref(), i.layout, &paths, i.job_prep) {
        let mode = if b.read_only { "ro" } else { "rw" };
        mounts.push(bind(b.path.display().to_string(), &["rbind", "rprivate", mode, "nosuid", "nodev"])?);
    }
    for (host, container) in &i.network.files {
        mounts.push(bind_at(host, container, &["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"])?);
    }
    mounts.extend(options::task_mounts(o, &i.lookups.bind_sources, init)?);

    let access: Vec<String> = o.devices.iter().map(|d| d.access.clone()).collect();
    let mut linux = LinuxBuilder::default()
        .namespaces(options::namespaces(o, userns, i.network.netns.as_deref())?)
        .resources(options::resources(o, &i.lookups.devices, &access)?)
        .cgroups_path(i.cgroups_path);
    // A privileged task sees /proc and /sys unmasked, as with docker.
    let (masked, readonly): (&[&str], &[&str]) =
        if o.privileged { (&[], &[]) } else { (&defaults::MASKED_PATHS, &defaults::READONLY_PATHS) };
    linux = linux
        .masked_paths(masked.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(readonly.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    if !i.lookups.devices.is_empty() {
        linux = linux.devices(i.lookups.devices.clone());
    }
    let mut sysctls: HashMap<String, String> = o.sysctls.iter().cloned().collect();
    // Also as the UTS namespace's sysctl: runc before 1.2 ignores `domainname`.
    if let (Some(d), run_options::Namespace::Private) = (&o.domainname, o.uts) {
        sysctls.insert("kernel.domainname".into(), d.clone());
    }
    if !sysctls.is_empty() {
        linux = linux.sysctl(sysctls);
    }
    if userns {
        let (uids, gids) = options::id_mappings(i.run_as.uid, i.run_as.gid, &i.run_as.groups)?;
        linux = linux.uid_mappings(uids).gid_mappings(gids);
    }
    if let Some(s) = seccomp {
        linux = linux.seccomp(s);
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(RootBuilder::default().path("rootfs").readonly(o.read_only).build()?)
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?;
    // With the node's UTS namespace (`--uts host`) the names are the node's:
    // runc refuses to set them there.
    if o.uts == run_options::Namespace::Private {
        spec.set_hostname(Some(o.hostname.clone().unwrap_or_else(|| i.node.hostname.clone())));
        spec.set_domainname(o.domainname.clone());
    } else {
        spec.set_hostname(None);
        spec.set_domainname(None);
    }
    if let Some(group) = i.shim_group {
        let annotations = HashMap::from([(SHIM_GROUP_ANNOTATION.to_owned(), group.to_owned())]);
        spec.set_annotations(Some(annotations));
    }
    Ok(spec)
}

/// A bind mount of a host path at the same path in the container.
fn bind(path: String, options: &[&str]) -> Result<Mount, OciSpecError> {
    bind_at(&path, &path, options)
}

fn bind_at(host: &str, container: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(container)
        .typ("bind")
        .source(host)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

#[cfg(test)]
mod tests;
