//! The task's image, pulled first as its pull policy says, then resolved in
//! containerd. A terminate is honoured while the image is pulled (the pull
//! itself goes on for any other task that wants it).

use super::{Failure, Task};
use crate::containerd::{ResolvedImage, RuntimeError};
use crate::model::{Credentials, PullPolicy};
use crate::supervisor::Supervisor;

pub(super) async fn ensure(sup: &Supervisor, t: &mut Task<'_>) -> Result<ResolvedImage, Failure> {
    let Some(name) = t.checked.image.clone() else {
        return Err(Failure::Internal("a host task has no image".into()));
    };
    let key = t.info.key().clone();
    let policy = t.info.spec.container.as_ref().map(|c| c.pull_policy).unwrap_or_default();
    tracing::info!(job_id = %key.job, task_id = %key.task, image = %name, "preparing task");
    let creds = sup.credentials_for(&key, &name);
    let mut stop = t.stop.clone();
    let image = tokio::select! {
        r = image_for(sup, &name, policy, creds.as_ref()) => r?,
        stop = crate::supervisor::stop::stopped(&mut stop) => {
            return Err(Failure::Stopped { stop, while_: " while its image was being pulled" });
        }
    };
    sup.touch_image(&name);
    Ok(image)
}

/// Pull first (ALWAYS), pull only when the image is not there (MISSING), or never.
fn pull_first(policy: PullPolicy) -> bool {
    policy == PullPolicy::Always
}

/// After a first resolve: whether to pull and resolve again.
fn pull_after(policy: PullPolicy, first: &Result<ResolvedImage, RuntimeError>) -> bool {
    policy == PullPolicy::Missing && matches!(first, Err(RuntimeError::NotFound { .. }))
}

async fn image_for(
    sup: &Supervisor,
    name: &str,
    policy: PullPolicy,
    creds: Option<&Credentials>,
) -> Result<ResolvedImage, Failure> {
    let sh = &sup.shared;
    let resolve = || sh.runtime.resolve_image(name, &sh.settings.platform);
    let pull = || async { sh.puller.pull(name, creds).await.map(drop).map_err(Failure::Pull) };
    if pull_first(policy) {
        pull().await?;
    }
    let mut resolved = resolve().await;
    if pull_after(policy, &resolved) {
        pull().await?;
        resolved = resolve().await;
    }
    resolved.map_err(|error| Failure::Resolve { image: name.to_owned(), policy, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_policy_decides_when_to_pull() {
        let missing: Result<ResolvedImage, RuntimeError> = Err(RuntimeError::NotFound { what: "image".into() });
        let down: Result<ResolvedImage, RuntimeError> = Err(RuntimeError::Unavailable { message: "x".into() });
        assert!(pull_first(PullPolicy::Always));
        assert!(!pull_first(PullPolicy::Missing) && !pull_first(PullPolicy::Never));
        assert!(pull_after(PullPolicy::Missing, &missing));
        assert!(!pull_after(PullPolicy::Missing, &down), "containerd down is not a missing image");
        assert!(!pull_after(PullPolicy::Never, &missing));
        assert!(!pull_after(PullPolicy::Always, &missing), "pulled already");
    }
}
