//! Builds a task's OCI runtime spec. PURE: values in, an
//! [`oci_spec::runtime::Spec`] out; no I/O, no clock, no environment. Every rule
//! of the task contract that shapes the container lives here (SEMANTICS.md):
//! command line, environment, working directory, node root bind, user, hostname,
//! default hardening.
//!
//! Validation that can be done before anything is created (command line, run
//! options, environment names) is in [`check_task`], which `RunTask` calls so that
//! a bad request is refused with nothing left behind.

mod command;
mod defaults;
mod env;
mod run_options;

pub use env::RESERVED_PREFIX;
pub use run_options::RunOptions;

use crate::images::ImageConfig;
use crate::layout::Layout;
use crate::model::{NodeFacts, TaskSpec, WorkingDirMode};
use oci_spec::runtime::{
    LinuxBuilder, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use oci_spec::OciSpecError;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("command line cannot be split into words: {reason}")]
    CommandLine { reason: String },
    #[error("the command line is empty and the image has neither ENTRYPOINT nor CMD")]
    NoCommand,
    #[error("run option {flag}: {reason}")]
    RunOption { flag: String, reason: String },
    #[error("environment variable {name:?}: {reason}")]
    EnvName { name: String, reason: String },
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

/// Everything the spec is built from.
#[derive(Debug, Clone, Copy)]
pub struct SpecInputs<'a> {
    pub task: &'a TaskSpec,
    pub run_options: &'a RunOptions,
    pub image: &'a ImageConfig,
    pub node: &'a NodeFacts,
    pub layout: &'a Layout,
    /// `linux.cgroupsPath`, e.g. `/berth/<container id>`.
    pub cgroups_path: &'a str,
}

/// Builds the spec of a container task.
pub fn build(i: SpecInputs<'_>) -> Result<Spec, SpecError> {
    let key = &i.task.key;
    let paths = i.layout.task(key);
    let args = command::argv(&i.task.command_line, i.image)?;

    let batch = env::batch_vars(i.node, i.layout, key, &paths);
    let task_env: Vec<(String, String)> = i.task.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let env = env::merge(&i.image.env, &[&i.run_options.env, &task_env, &batch]);

    let mode = i.task.container.as_ref().map(|c| c.working_directory).unwrap_or_default();
    let cwd = match (&i.run_options.workdir, mode) {
        (Some(w), _) => w.clone(),
        (None, WorkingDirMode::TaskWorkingDir) => paths.working_dir.display().to_string(),
        (None, WorkingDirMode::ImageDefault) => i.image.working_dir.clone().unwrap_or_else(|| "/".into()),
    };

    let uid = i.task.user.uid.unwrap_or(0);
    let user = UserBuilder::default().uid(uid).gid(i.task.user.gid.unwrap_or(0)).build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(defaults::capabilities(uid == 0)?)
        .rlimits(defaults::rlimits()?)
        .no_new_privileges(true)
        .build()?;

    let mut mounts = defaults::mounts()?;
    mounts.push(bind(i.layout.root().display().to_string(), &["rbind", "rprivate", "rw"])?);
    for f in &i.node.network_files {
        mounts.push(bind(f.display().to_string(), &["rbind", "rprivate", "ro"])?);
    }

    let linux = LinuxBuilder::default()
        .namespaces(defaults::namespaces()?)
        .masked_paths(defaults::MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(defaults::READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .resources(LinuxResourcesBuilder::default().devices(defaults::device_rules()?).build()?)
        .cgroups_path(i.cgroups_path)
        .build()?;

    Ok(SpecBuilder::default()
        .version("1.0.2-dev")
        .hostname(i.node.hostname.clone())
        .root(RootBuilder::default().path("rootfs").readonly(false).build()?)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

/// A bind mount of a host path at the same path in the container.
fn bind(path: String, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(&path)
        .typ("bind")
        .source(&path)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

#[cfg(test)]
mod tests;
