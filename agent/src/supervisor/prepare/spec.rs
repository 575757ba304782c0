//! The task's OCI runtime spec: the host lookups (bind sources, devices,
//! `--env-file`, the image's users; reads only), then `spec::build` (pure),
//! then the CDI edits. `ExplainTask` calls `look_ups` and `oci_spec` too:
//! what it shows is what the container gets.

use super::{Failure, Task};
use crate::containerd::ResolvedImage;
use crate::model::TaskInfo;
use crate::spec::Lookups;
use crate::supervisor::admission::CheckedTask;
use crate::supervisor::Supervisor;
use oci_spec::runtime::Spec;

/// The host lookups of the task's spec (reads only).
pub(super) async fn look_up(sup: &Supervisor, t: &Task<'_>, image: &ResolvedImage) -> Result<Lookups, Failure> {
    look_ups(sup, &t.info, &t.checked, image).await
}

pub(super) fn build(
    sup: &Supervisor,
    t: &Task<'_>,
    image: &ResolvedImage,
    lookups: &Lookups,
    devices: &[String],
) -> Result<Spec, Failure> {
    oci_spec(sup, &t.info, &t.checked, image, lookups, devices, t.job_prep)
}

/// `linux.cgroupsPath` of a container (`finish` reads the OOM count from there).
pub(in crate::supervisor) fn cgroups_path(namespace: &str, container_id: &str) -> String {
    format!("/{namespace}/{container_id}")
}

/// What the spec of `info` needs from the host and the image.
pub(in crate::supervisor) async fn look_ups(
    sup: &Supervisor,
    info: &TaskInfo,
    checked: &CheckedTask,
    image: &ResolvedImage,
) -> Result<Lookups, Failure> {
    crate::supervisor::lookups::lookups(sup, info.key(), &checked.run_options, &checked.run_as, image).await
}

/// The spec of `info`'s current container: `spec::build` (pure), then the CDI edits.
pub(in crate::supervisor) fn oci_spec(
    sup: &Supervisor,
    info: &TaskInfo,
    checked: &CheckedTask,
    image: &ResolvedImage,
    lookups: &Lookups,
    devices: &[String],
    job_prep: bool,
) -> Result<Spec, Failure> {
    let sh = &sup.shared;
    let cgroups_path = cgroups_path(&sh.settings.namespace, &info.container_id());
    let packages: Vec<_> = sup.task_packages(&info.spec).into_iter().map(|p| p.id).collect();
    let shim_group = sh.settings.shim_group.group_of(info.key().job.as_str());
    let inputs = crate::spec::SpecInputs {
        task: &info.spec,
        run_options: &checked.run_options,
        run_as: &checked.run_as,
        policy: &sh.settings.policy,
        lookups,
        image: &image.config,
        node: &sh.node,
        layout: &sh.layout,
        cgroups_path: &cgroups_path,
        job_prep,
        packages: &packages,
        network: &super::network::setup(sup, &info.container_id(), &checked.run_options.network),
        shim_group: shim_group.as_deref(),
    };
    let mut spec = crate::spec::build(inputs).map_err(Failure::Spec)?;
    if let Some(reg) = &sh.settings.devices {
        reg.inject(&mut spec, devices).map_err(|e| Failure::Devices(e.to_string()))?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cgroups_path_is_under_the_namespace() {
        assert_eq!(super::cgroups_path("berth", "c1"), "/berth/c1");
    }
}
