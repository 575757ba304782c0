//! PREPARING, as named steps. Each step is a function of its own module that
//! takes the task being prepared and returns a typed [`Failure`]; `steps`
//! chains them in order, and records each state before the side effect that
//! follows it. A new step (resource files, a network) is a module and one line
//! in `steps`.
//!
//! | step | what it does |
//! |---|---|
//! | `gates::start_task` | waits for the node's start task |
//! | `record_preparing` | records PREPARING with the resolved identity |
//! | `dirs::make` | checks free space, makes the task's directories |
//! | `gates::job_preparation` | waits for the job's preparation task |
//! | `packages::install` | installs the node's and the task's application packages |
//! | `resources::download` | downloads the resource files into the working directory |
//! | `image::ensure` | pulls (as the pull policy says) and resolves the image |
//! | `devices::hold` | waits for and holds the GPUs the task asked for |
//! | `container::record_attempt` | records the new container id |
//! | `network::attach` | a bridge task's namespace on the node's bridge (CNI), its resolv.conf and hosts |
//! | `spec::build` | host lookups, then the OCI spec (pure) with CDI devices |
//! | `container::create` | opens the output files, creates the container |
//!
//! The time of each (with the wait before the first, and then the start) is
//! logged with "task running" ([`Phases`]).

mod container;
mod devices;
mod dirs;
mod gates;
mod image;
mod network;
mod packages;
mod resources;
pub(in crate::supervisor) mod spec;

use super::admission::CheckedTask;
use super::failure::Failure;
use super::phases::Phases;
use super::record::{fail, save};
use super::stop::stop_requested;
use super::{Stop, Supervisor};
use crate::model::{RunAs, TaskInfo, TaskState};
use std::sync::Arc;
use tokio::sync::watch;

/// A task being prepared: its record, what admission decided, its stop requests.
pub(super) struct Task<'a> {
    pub info: TaskInfo,
    pub checked: Arc<CheckedTask>,
    pub stop: &'a watch::Receiver<Option<Stop>>,
    /// The task's job has a preparation task.
    pub job_prep: bool,
    /// A bridge task's address, once its network is attached.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Each step's time.
    pub phases: Phases,
}

impl Task<'_> {
    /// A stop request that came meanwhile, as the failure that ends the task.
    fn check_stop(&self, while_: &'static str) -> Result<(), Failure> {
        match stop_requested(self.stop) {
            Some(stop) => Err(Failure::Stopped { stop, while_ }),
            None => Ok(()),
        }
    }
}

/// What preparation hands on.
pub(super) enum Prepared {
    /// A container task whose container is created, and where the time went.
    Container(TaskInfo, Phases),
    /// A host task with its directories made.
    Host(Ready),
}

/// A host task whose directories are made.
pub(in crate::supervisor) struct Ready {
    pub info: TaskInfo,
    pub run_as: RunAs,
    pub job_prep: bool,
}

enum Next {
    Container,
    Host,
}

/// PREPARING: returns the task ready to start, or its completed record.
pub(super) async fn prepare(
    sup: &Supervisor,
    info: TaskInfo,
    checked: Arc<CheckedTask>,
    stop: &watch::Receiver<Option<Stop>>,
) -> Result<Prepared, TaskInfo> {
    let phases = Phases::since(info.created_at);
    let mut t = Task { info, checked, stop, job_prep: false, ip: None, phases };
    match steps(sup, &mut t).await {
        Ok(Next::Container) => Ok(Prepared::Container(t.info, t.phases)),
        Ok(Next::Host) => {
            let run_as = t.checked.run_as.clone();
            Ok(Prepared::Host(Ready { info: t.info, run_as, job_prep: t.job_prep }))
        }
        Err(failure) => Err(fail(sup, t.info, failure.into()).await),
    }
}

/// The steps, in order.
async fn steps(sup: &Supervisor, t: &mut Task<'_>) -> Result<Next, Failure> {
    gates::start_task(sup, t).await?;
    record_preparing(sup, t).await;
    t.phases.mark("record_preparing");
    dirs::make(sup, t).await?;
    t.phases.mark("dirs");
    gates::job_preparation(sup, t).await?;
    packages::install(sup, t).await?;
    resources::download(sup, t).await?;
    t.phases.mark("staging");
    if t.checked.image.is_none() {
        return Ok(Next::Host);
    }
    let image = image::ensure(sup, t).await?;
    t.phases.mark("image");
    // Host lookups first: a vanished bind source fails the task before it
    // waits for GPUs or records an attempt.
    let lookups = spec::look_up(sup, t, &image).await?;
    let devices = devices::hold(sup, t).await?;
    t.phases.mark("lookups_devices");
    container::record_attempt(sup, t).await?;
    t.phases.mark("record_attempt");
    network::attach(sup, t).await?;
    t.phases.mark("network");
    let oci = spec::build(sup, t, &image, &lookups, &devices)?;
    t.phases.mark("spec");
    t.check_stop(" before it started")?;
    container::create(sup, t, image, oci).await?;
    t.phases.mark("create");
    Ok(Next::Container)
}

/// Records PREPARING, with the identity admission resolved (records from
/// before identities existed have none).
async fn record_preparing(sup: &Supervisor, t: &mut Task<'_>) {
    let changed = t.info.state != TaskState::Preparing || t.info.run_as.is_none();
    t.info.run_as = Some(t.checked.run_as.clone());
    if changed {
        t.info.state = TaskState::Preparing;
        t.info = save(sup, t.info.clone()).await;
    }
}
