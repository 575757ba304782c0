//! The task's OCI runtime spec: the host lookups (bind sources, devices,
//! `--env-file`, the image's users; reads only), then `spec::build` (pure),
//! then the CDI edits. `ExplainTask` calls `oci_spec` too: what it shows is
//! what the container gets.

use super::{Failure, Task};
use crate::containerd::ResolvedImage;
use crate::model::TaskInfo;
use crate::supervisor::admission::CheckedTask;
use crate::supervisor::Supervisor;
use oci_spec::runtime::Spec;

pub(super) async fn build(
    sup: &Supervisor,
    t: &mut Task<'_>,
    image: &ResolvedImage,
    devices: &[String],
) -> Result<Spec, Failure> {
    oci_spec(sup, &t.info, &t.checked, image, devices, t.job_prep).await
}

/// `linux.cgroupsPath` of a container (`finish` reads the OOM count from there).
pub(in crate::supervisor) fn cgroups_path(namespace: &str, container_id: &str) -> String {
    format!("/{namespace}/{container_id}")
}

/// The spec of `info`'s current container.
pub(in crate::supervisor) async fn oci_spec(
    sup: &Supervisor,
    info: &TaskInfo,
    checked: &CheckedTask,
    image: &ResolvedImage,
    devices: &[String],
    job_prep: bool,
) -> Result<Spec, Failure> {
    let sh = &sup.shared;
    let lookups =
        crate::supervisor::lookups::lookups(sup, info.key(), &checked.run_options, &checked.run_as, image).await?;
    let cgroups_path = cgroups_path(&sh.settings.namespace, &info.container_id());
    let inputs = crate::spec::SpecInputs {
        task: &info.spec,
        run_options: &checked.run_options,
        run_as: &checked.run_as,
        policy: &sh.settings.policy,
        lookups: &lookups,
        image: &image.config,
        node: &sh.node,
        layout: &sh.layout,
        cgroups_path: &cgroups_path,
        job_prep,
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
