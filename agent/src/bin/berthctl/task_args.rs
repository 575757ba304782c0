//! The flags that describe one task, shared by `run` and `explain`.

use super::{identity, parse_env, stdin_credentials, Identity, TaskRef};
use berth_proto::v1 as pb;
use clap::ValueEnum;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Workdir {
    Task,
    Image,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Pull {
    Missing,
    Always,
    Never,
}

/// A task: in a container with --image, else on the host.
#[derive(clap::Args)]
pub(crate) struct TaskArgs {
    #[command(flatten)]
    pub id: TaskRef,
    #[arg(long)]
    image: Option<String>,
    /// Empty: the image's ENTRYPOINT + CMD. Split with shell-word rules; no shell runs it.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    command_line: String,
    /// `docker create` flags, e.g. "--rm --workdir /app".
    #[arg(long, default_value = "", allow_hyphen_values = true, requires = "image")]
    run_options: String,
    #[arg(long, value_enum, default_value_t = Workdir::Task)]
    workdir: Workdir,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[command(flatten)]
    who: Identity,
    /// e.g. "30s", "2h".
    #[arg(long, value_parser = humantime::parse_duration)]
    max_wall_clock: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Run the task again after a failed attempt, up to N times (-1: no limit).
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    max_retries: i32,
    /// When to pull the image.
    #[arg(long, value_enum, default_value_t = Pull::Missing)]
    pull: Pull,
    /// Registry user for this task's image (the password is read from stdin).
    #[arg(long, requires_all = ["registry_password_stdin", "image"])]
    registry_username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, requires = "registry_username")]
    registry_password_stdin: bool,
    /// A CDI device for the task (vendor.com/class=name); repeatable.
    #[arg(long, value_name = "NAME", requires = "image")]
    device: Vec<String>,
    /// Downloaded before the task runs; repeatable: `url=URL,path=PATH[,mode=0755]`
    /// or `container=URL[,prefix=P][,path=DIR]` (a comma in a URL as %2C).
    #[arg(long = "resource-file", value_name = "ITEMS", value_parser = super::staging_args::resource_file)]
    resource_file: Vec<pb::ResourceFile>,
    /// Uploaded after the task exits; repeatable:
    /// `pattern=P,container=URL[,path=P][,condition=success|failure|completion][,content-type=T]`.
    #[arg(long = "output-file", value_name = "ITEMS", value_parser = super::staging_args::output_file)]
    output_file: Vec<pb::OutputFile>,
    /// An application package for this task; repeatable: `id=ID,version=V,url=URL`.
    #[arg(long = "app-package", value_name = "ITEMS", value_parser = super::staging_args::app_package)]
    app_package: Vec<pb::ApplicationPackageReference>,
    /// A node directory for the container, instead of the whole node root;
    /// repeatable: Shared, Startup, VfsMounts, Task, JobPrep or Applications,
    /// with `:ro` for read-only.
    #[arg(long = "host-mount", value_name = "SOURCE[:ro]", value_parser = host_mount, requires = "image")]
    host_mount: Vec<pb::HostMount>,
    /// No node directory at all (an empty host_mounts list).
    #[arg(long, requires = "image", conflicts_with = "host_mount")]
    no_host_mounts: bool,
}

/// `SOURCE[:ro]` (or `:rw`), Batch's names in any case.
fn host_mount(s: &str) -> Result<pb::HostMount, String> {
    let (name, mode) = s.split_once(':').unwrap_or((s, "rw"));
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => return Err(format!("{other:?}: the mode is ro or rw")),
    };
    let source = match name.to_ascii_lowercase().as_str() {
        "shared" => pb::HostMountSource::Shared,
        "startup" => pb::HostMountSource::Startup,
        "vfsmounts" => pb::HostMountSource::VfsMounts,
        "task" => pb::HostMountSource::Task,
        "jobprep" => pb::HostMountSource::JobPrep,
        "applications" => pb::HostMountSource::Applications,
        _ => return Err(format!("{name:?}: one of Shared, Startup, VfsMounts, Task, JobPrep, Applications")),
    };
    Ok(pb::HostMount { source: source as i32, read_only })
}

impl TaskArgs {
    /// The task spec (reads the registry password from stdin when asked to).
    pub(crate) fn spec(self) -> Result<pb::TaskSpec, String> {
        let registry = stdin_credentials(self.registry_username)?;
        let (workdir, pull) = (self.workdir, self.pull);
        let container = self.image.map(|image| pb::ContainerSettings {
            image,
            run_options: self.run_options,
            working_directory: match workdir {
                Workdir::Task => pb::WorkingDirectory::TaskWorkingDir,
                Workdir::Image => pb::WorkingDirectory::ImageDefault,
            } as i32,
            registry,
            pull_policy: match pull {
                Pull::Missing => pb::PullPolicy::Missing,
                Pull::Always => pb::PullPolicy::Always,
                Pull::Never => pb::PullPolicy::Never,
            } as i32,
            devices: self.device,
            host_mounts_set: self.no_host_mounts || !self.host_mount.is_empty(),
            host_mounts: self.host_mount,
        });
        Ok(pb::TaskSpec {
            job_id: self.id.job,
            task_id: self.id.task,
            command_line: self.command_line,
            container,
            job_preparation: None,
            environment: parse_env(&self.env)?,
            user: Some(identity(self.who.user, self.who.auto_user, self.who.elevation)),
            constraints: Some(pb::TaskConstraints {
                max_wall_clock_time: self.max_wall_clock.and_then(|d| d.try_into().ok()),
                retention_time: self.retention.and_then(|d| d.try_into().ok()),
                max_task_retry_count: self.max_retries,
            }),
            required_slots: self.slots,
            resource_files: self.resource_file,
            output_files: self.output_file,
            application_packages: self.app_package,
        })
    }
}
