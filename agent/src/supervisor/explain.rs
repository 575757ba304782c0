//! `ExplainTask`: admission and the pure part of preparation, without side
//! effects (no record, no directory, no pull, no GPU held, no container). It
//! shows what admission decided and the exact OCI runtime spec the task's
//! first container would get, or the precise refusal.

use super::admission::CheckedTask;
use super::failure::Failure;
use super::{Error, Supervisor};
use crate::model::{FailureInfo, TaskInfo, TaskSpec};
use std::time::SystemTime;

/// What `ExplainTask` answers for a task that admission accepts.
#[derive(Debug)]
pub struct Explanation {
    pub checked: CheckedTask,
    /// The id of the task's first container.
    pub container_id: String,
    /// The OCI runtime spec (JSON), for a container task whose image is on the node.
    pub oci_spec: Option<String>,
    /// Why there is no spec: preparation would fail (its failure), or the
    /// image is not on the node yet.
    pub failure: Option<FailureInfo>,
}

impl Supervisor {
    /// Explains a task: the refusal `RunTask` would give is this call's error.
    /// `job_preparation`: the request names a preparation task for the job.
    pub async fn explain(&self, spec: TaskSpec, job_preparation: bool) -> Result<Explanation, Error> {
        if spec.key.kind() != crate::model::TaskKind::Task {
            return Err(Error::Invalid {
                field: "task_id",
                reason: format!("\"{}\" is reserved for the job's own preparation or release task", spec.key.task),
            });
        }
        let checked = self.admit_check(&spec, 0)?;
        super::lookups::check_host(&checked.run_options, &self.shared.settings.policy).await?;
        let mut info = TaskInfo::new(spec, SystemTime::now());
        info.run_as = Some(checked.run_as.clone());
        info.attempt = 1;
        let container_id = info.container_id();
        let Some(name) = checked.image.clone() else {
            return Ok(Explanation { checked, container_id, oci_spec: None, failure: None });
        };
        let sh = &self.shared;
        let image = match sh.runtime.resolve_image(&name, &sh.settings.platform).await {
            Ok(i) => i,
            Err(error) => {
                let policy = crate::model::PullPolicy::Never;
                let mut failure: FailureInfo = Failure::Resolve { image: name, policy, error }.into();
                if failure.code == crate::model::FailureCode::ImageNotFound {
                    failure.message.push_str(": pull it (PullImage) to see the spec the task would get");
                }
                return Ok(Explanation { checked, container_id, oci_spec: None, failure: Some(failure) });
            }
        };
        // GPUs held exclusively are chosen when the task runs: the spec shows
        // the shared devices only.
        let job_prep = job_preparation || self.job_has_preparation(&info.key().job);
        let devices = checked.devices.shared.clone();
        let spec = match super::prepare::spec::look_ups(self, &info, &checked, &image).await {
            Ok(lookups) => super::prepare::spec::oci_spec(self, &info, &checked, &image, &lookups, &devices, job_prep),
            Err(f) => Err(f),
        };
        match spec {
            Ok(spec) => {
                let json = serde_json::to_string_pretty(&spec)
                    .map_err(|e| Error::Precondition { reason: format!("cannot encode the spec: {e}") })?;
                Ok(Explanation { checked, container_id, oci_spec: Some(json), failure: None })
            }
            Err(f) => Ok(Explanation { checked, container_id, oci_spec: None, failure: Some(f.into()) }),
        }
    }
}
