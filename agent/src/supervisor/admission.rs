//! Admission: every check a task gets, made once. `check` turns a `TaskSpec`
//! into a [`CheckedTask`] (the normalised image reference, the parsed run
//! options, the resolved identity, the device request and what the policy
//! granted), or the precise refusal. The runner, `TerminateTask` and
//! `ExplainTask` use what it decided; nothing is parsed or checked again.

use super::gpus::Want;
use super::stop::StopSettings;
use super::{Error, Supervisor};
use crate::devices::Registry;
use crate::model::{HostMountSource, RunAs, TaskKind, TaskSpec, WorkingDirMode};
use crate::spec::{Policy, RunOptions, SpecError};
use std::sync::Arc;

/// A task as admission left it.
#[derive(Debug, Clone)]
pub struct CheckedTask {
    /// The normalised image reference (`busybox` → `docker.io/library/busybox:latest`);
    /// None for a host task.
    pub image: Option<String>,
    /// Shared by every task without run options: a queued task costs the
    /// agent little memory (issue 23: ≤ 1 KiB per queued task).
    pub run_options: Arc<RunOptions>,
    /// The identity it runs as. For a task-scope auto-user, the uid is picked
    /// when the task is recorded (its sequence number): see `Supervisor::admit`.
    pub run_as: RunAs,
    pub devices: DeviceRequest,
    /// What the node's policy let this task have, in words (`ExplainTask`).
    pub granted: Vec<String>,
}

/// The CDI devices a task gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Injected as they are (shared with other tasks).
    pub shared: Vec<String>,
    /// GPUs held exclusively while the task runs, waited for while others hold them.
    pub exclusive: Option<Want>,
}

impl CheckedTask {
    pub fn stop(&self) -> StopSettings {
        StopSettings::of(&self.run_options)
    }
}

/// Why admission refused a task. Each kind has its failure code (see
/// `failure`) for a task refused after it was accepted (re-checked after an
/// agent restart), and becomes INVALID_ARGUMENT at `RunTask`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("user: {0}")]
    Identity(String),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    RunOption(#[from] SpecError),
    #[error("container.devices: {0}")]
    Devices(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Identity(reason) => Error::Invalid { field: "user", reason },
            Refusal::Image(e) => Error::Image(e),
            Refusal::RunOption(e) => Error::Spec(e),
            Refusal::Devices(reason) => Error::Invalid { field: "container.devices", reason },
            Refusal::Invalid { field, reason } => Error::Invalid { field, reason },
        }
    }
}

impl Supervisor {
    /// Admission: checks a task before anything is created (ids are already
    /// typed): image reference, command line, run options, environment,
    /// identity, policy, devices, slots. `ticket` picks a task-scope
    /// auto-user's uid. Start, preparation and release tasks may always run on
    /// the host; other tasks only if the policy allows it.
    pub(crate) fn admit_check(&self, spec: &TaskSpec, ticket: u64) -> Result<CheckedTask, Refusal> {
        let settings = &self.shared.settings;
        let run_as = settings.identities.resolve(&spec.user, ticket).map_err(|e| Refusal::Identity(e.to_string()));
        check(
            spec,
            run_as,
            &settings.policy,
            self.shared.layout.root(),
            settings.devices.as_deref(),
            settings.task_slots,
        )
    }
}

/// The checks, on plain values (unit-tested below), in the order `RunTask`
/// has always made them: image, host-task rules, run options, then the
/// identity (`run_as`, resolved by the caller), policy, devices, slots.
pub(crate) fn check(
    spec: &TaskSpec,
    run_as: Result<RunAs, Refusal>,
    policy: &Policy,
    node_root: &std::path::Path,
    devices: Option<&Registry>,
    task_slots: u32,
) -> Result<CheckedTask, Refusal> {
    let special = spec.key.kind() != TaskKind::Task;
    let mut granted = Vec::new();
    let image = match &spec.container {
        Some(container) => Some(crate::images::normalize(&container.image)?),
        None if !special && !policy.allow_host_tasks => {
            return Err(Refusal::Invalid {
                field: "container",
                reason: "container settings are required: this node's policy does not allow host tasks \
                         ([policy] allow_host_tasks)"
                    .into(),
            });
        }
        // Words, and a program to run: `''` or a lone line continuation
        // split into no program at all.
        None if shell_words::split(&spec.command_line).is_ok_and(|w| w.first().is_none_or(String::is_empty)) => {
            return Err(Refusal::Invalid {
                field: "command_line",
                reason: "a task without container settings runs on the host and needs a command line naming a \
                         program (it splits into no words, or an empty first word)"
                    .into(),
            });
        }
        None => {
            granted.push(if special {
                "runs on the host (start, preparation and release tasks may)".to_owned()
            } else {
                "runs on the host (policy.allow_host_tasks)".to_owned()
            });
            None
        }
    };
    if let Some(c) = spec.container.as_ref().filter(|c| !c.mounts(HostMountSource::Task)) {
        if c.working_directory != WorkingDirMode::ImageDefault {
            return Err(Refusal::Invalid {
                field: "container.working_directory",
                reason: "the task directory is not among container.host_mounts, so the task cannot start in its \
                         working directory: use IMAGE_DEFAULT, or list Task"
                    .into(),
            });
        }
    }
    let run_options = crate::spec::check_task(spec)?;
    let run_as = run_as?;
    crate::spec::check_policy(&run_options, policy, &run_as, node_root)?;
    granted.extend(grants(&run_options, &run_as));
    let devices = devices_for(spec, &run_options, devices)?;
    if !special && (spec.required_slots == 0 || spec.required_slots > task_slots) {
        return Err(Refusal::Invalid {
            field: "required_slots",
            reason: format!("{} slots requested; this node has {task_slots}", spec.required_slots),
        });
    }
    Ok(CheckedTask { image, run_options: shared(run_options), run_as, devices, granted })
}

/// `o` in an `Arc`: the one shared by all tasks when it is the default (most
/// tasks give no run options), a new one otherwise.
fn shared(o: RunOptions) -> Arc<RunOptions> {
    static DEFAULT: std::sync::LazyLock<Arc<RunOptions>> = std::sync::LazyLock::new(Arc::default);
    if o == **DEFAULT {
        DEFAULT.clone()
    } else {
        Arc::new(o)
    }
}

/// The policy-gated things a task that passed the policy uses, in words.
fn grants(o: &RunOptions, who: &RunAs) -> Vec<String> {
    let mut out = Vec::new();
    if who.admin {
        out.push("admin identity (elevation admin)".to_owned());
    }
    if o.privileged {
        out.push("--privileged (policy.allow_privileged)".to_owned());
    }
    if o.allow_new_privileges {
        out.push("no-new-privileges=false (policy.allow_privileged)".to_owned());
    }
    match &o.seccomp {
        crate::spec::Seccomp::Unconfined => {
            out.push("seccomp=unconfined (policy.allow_unconfined_seccomp)".to_owned());
        }
        crate::spec::Seccomp::Profile(p) => out.push(format!("seccomp profile {p} (policy.bind_mount_prefixes)")),
        _ => {}
    }
    if o.cap_add.all || !o.cap_add.caps.is_empty() {
        out.push("--cap-add (capabilities beyond the default set)".to_owned());
    }
    for m in &o.mounts {
        if let crate::spec::MountOpt::Bind { source, .. } = m {
            out.push(format!("bind mount of {source} (policy.bind_mount_prefixes)"));
        }
    }
    for d in &o.devices {
        out.push(format!("device {} (policy)", d.host));
    }
    out
}

/// The CDI devices a task gets: the non-GPU devices it names and the RDMA
/// devices (`inject_rdma`); on a GPU node every GPU, shared, when it asks for
/// none (`inject_all_gpus`); else the GPUs of `--gpus` and those it names,
/// held exclusively while it runs (see `gpus`), or shared with `share_gpus`.
/// Unknown names and more GPUs than the node has are errors.
pub(in crate::supervisor) fn devices_for(
    spec: &TaskSpec,
    o: &RunOptions,
    reg: Option<&Registry>,
) -> Result<DeviceRequest, Refusal> {
    let asked: Vec<String> = spec.container.as_ref().map(|c| c.devices.clone()).unwrap_or_default();
    let Some(reg) = reg else {
        if asked.is_empty() && o.gpus.is_none() {
            return Ok(DeviceRequest::default());
        }
        return Err(Refusal::Devices("this node has no CDI devices".into()));
    };
    reg.check(&asked).map_err(|e| Refusal::Devices(e.to_string()))?;
    let gpus = reg.gpus();
    let classes = &reg.config.gpu_classes;
    let is_gpu = |n: &String| n.split_once('=').is_some_and(|(k, _)| classes.iter().any(|c| c == k));
    let (named_gpus, mut names): (Vec<String>, Vec<String>) = asked.iter().cloned().partition(is_gpu);
    if let Some(req) = &o.gpus {
        crate::devices::gpus::select(req, &gpus)
            .map_err(|reason| SpecError::RunOption { flag: "--gpus".into(), reason })?;
    }
    let want = match Want::of(o.gpus.as_ref(), named_gpus, &gpus) {
        None if reg.config.inject_all_gpus => {
            names.extend(gpus.iter().cloned());
            None
        }
        // Shared: the first N, or the named ones, without holding them.
        Some(w) if reg.config.share_gpus => {
            names.extend(match w {
                Want::Count(n) => gpus.iter().take(n).cloned().collect(),
                Want::Named(v) => v,
            });
            None
        }
        w => w,
    };
    let rdma_kind = format!("{}=", crate::devices::rdma::KIND);
    if reg.config.inject_rdma && !asked.iter().any(|n| n.starts_with(&rdma_kind)) {
        names.extend(reg.rdma_all());
    }
    names.dedup();
    Ok(DeviceRequest { shared: names, exclusive: want })
}

#[cfg(test)]
pub(in crate::supervisor) mod tests {
    use super::*;
    use crate::model::{ContainerSettings, PullPolicy, TaskConstraints, TaskKey, UserIdentity};
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub(in crate::supervisor) fn spec(image: Option<&str>, run_options: &str) -> TaskSpec {
        TaskSpec {
            key: TaskKey::new("job", "t1").unwrap(),
            command_line: "/bin/true".into(),
            container: image.map(|i| ContainerSettings {
                image: i.to_owned(),
                run_options: run_options.to_owned(),
                working_directory: WorkingDirMode::TaskWorkingDir,
                pull_policy: PullPolicy::Missing,
                credentials: None,
                devices: vec![],
                host_mounts: None,
            }),
            environment: BTreeMap::new(),
            user: UserIdentity::default(),
            constraints: TaskConstraints::default(),
            required_slots: 1,
            staging: Default::default(),
        }
    }

    fn who(admin: bool) -> RunAs {
        RunAs { uid: if admin { 0 } else { 1000 }, gid: 1000, groups: vec![], admin }
    }

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn normalises_the_image_and_parses_the_options_once() {
        let c = check(
            &spec(Some("busybox"), "--stop-signal SIGUSR1 --stop-timeout 7"),
            Ok(who(false)),
            &policy(),
            "/mnt/batch".as_ref(),
            None,
            4,
        )
        .unwrap();
        assert_eq!(c.image.as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(c.stop(), StopSettings { signal: 10, timeout: Some(Duration::from_secs(7)) });
        assert_eq!(c.devices, DeviceRequest::default());
        assert!(c.granted.is_empty(), "{:?}", c.granted);
    }

    #[test]
    fn refusals_are_typed() {
        let root: &std::path::Path = "/mnt/batch".as_ref();
        let e = check(&spec(Some("Bad Image"), ""), Ok(who(false)), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::Image(_)), "{e:?}");
        let e = check(&spec(Some("busybox"), "--frobnicate"), Ok(who(false)), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::RunOption(_)), "{e:?}");
        let e = check(&spec(Some("busybox"), "--privileged"), Ok(who(false)), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::RunOption(_)), "{e:?}");
        let mut s = spec(Some("busybox"), "");
        s.container.as_mut().unwrap().devices = vec!["nvidia.com/gpu=0".into()];
        let e = check(&s, Ok(who(false)), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::Devices(_)), "{e:?}");
        let mut s = spec(Some("busybox"), "");
        s.required_slots = 5;
        let e = check(&s, Ok(who(false)), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::Invalid { field: "required_slots", .. }), "{e:?}");
        let e = check(&spec(None, ""), Ok(who(false)), &Policy { allow_host_tasks: false, ..policy() }, root, None, 4)
            .unwrap_err();
        assert!(matches!(e, Refusal::Invalid { field: "container", .. }), "{e:?}");
    }

    #[test]
    fn without_the_task_directory_the_working_directory_is_the_images() {
        use crate::model::{HostMount, HostMountSource as S};
        let root: &std::path::Path = "/mnt/batch".as_ref();
        let with = |list: Vec<HostMount>, wd: WorkingDirMode| {
            let mut s = spec(Some("busybox"), "");
            let c = s.container.as_mut().unwrap();
            (c.host_mounts, c.working_directory) = (Some(list), wd);
            check(&s, Ok(who(false)), &policy(), root, None, 4).map(|_| ())
        };
        let shared = HostMount { source: S::Shared, read_only: false };
        let e = with(vec![shared], WorkingDirMode::TaskWorkingDir).unwrap_err();
        assert!(matches!(e, Refusal::Invalid { field: "container.working_directory", .. }), "{e:?}");
        assert!(with(vec![], WorkingDirMode::TaskWorkingDir).is_err(), "an empty list has no task directory either");
        assert!(with(vec![shared], WorkingDirMode::ImageDefault).is_ok());
        assert!(with(vec![], WorkingDirMode::ImageDefault).is_ok());
        assert!(with(vec![HostMount { source: S::Task, read_only: true }], WorkingDirMode::TaskWorkingDir).is_ok());
    }

    /// What a queued task keeps in memory is small: tasks without run
    /// options share one parsed set.
    #[test]
    fn tasks_without_run_options_share_one_parsed_set() {
        let root: &std::path::Path = "/mnt/batch".as_ref();
        let checked = |o: &str| check(&spec(Some("busybox"), o), Ok(who(false)), &policy(), root, None, 4).unwrap();
        let (a, b, c) = (checked(""), checked(""), checked("--stop-timeout 7"));
        assert!(Arc::ptr_eq(&a.run_options, &b.run_options));
        assert!(!Arc::ptr_eq(&a.run_options, &c.run_options));
        assert_eq!(c.run_options.stop_timeout, Some(7));
        assert!(std::mem::size_of::<CheckedTask>() <= 256, "{} bytes", std::mem::size_of::<CheckedTask>());
    }

    /// A spec with a bad run option and an unknown user is refused for the
    /// run option, as before admission was one function.
    #[test]
    fn run_options_are_checked_before_the_identity() {
        let root: &std::path::Path = "/mnt/batch".as_ref();
        let unknown = || Err(Refusal::Identity("no user x".into()));
        let e = check(&spec(Some("busybox"), "--frobnicate"), unknown(), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::RunOption(_)), "{e:?}");
        let e = check(&spec(Some("busybox"), ""), unknown(), &policy(), root, None, 4).unwrap_err();
        assert!(matches!(e, Refusal::Identity(_)), "{e:?}");
    }

    #[test]
    fn a_host_task_and_an_admin_are_named_among_the_grants() {
        let c = check(
            &spec(None, ""),
            Ok(who(true)),
            &Policy { allow_host_tasks: true, ..policy() },
            "/mnt/batch".as_ref(),
            None,
            4,
        )
        .unwrap();
        assert_eq!(c.image, None);
        assert!(c.granted.iter().any(|g| g.contains("host")), "{:?}", c.granted);
        assert!(c.granted.iter().any(|g| g.contains("admin")), "{:?}", c.granted);
    }
}
