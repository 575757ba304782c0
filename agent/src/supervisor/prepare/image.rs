//! The task's image, pulled first as its pull policy says, then resolved in
//! containerd. A terminate is honoured while the image is pulled (the pull
//! itself goes on for any other task that wants it).

use super::{Failure, Task};
use crate::containerd::{ResolvedImage, RuntimeError};
use crate::model::{Credentials, Platform, PullPolicy};
use crate::supervisor::Supervisor;

pub(super) async fn ensure(sup: &Supervisor, t: &mut Task<'_>) -> Result<ResolvedImage, Failure> {
    let Some(name) = t.checked.image.clone() else {
        return Err(Failure::Internal("a host task has no image".into()));
    };
    let key = t.info.key().clone();
    // `--pull` wins over the container settings' policy.
    let o = &t.checked.run_options;
    let policy = o.pull.unwrap_or_else(|| t.info.spec.container.as_ref().map(|c| c.pull_policy).unwrap_or_default());
    let platform = platform_for(o.platform.as_ref(), &sup.shared.settings.platform)?;
    tracing::info!(job_id = %key.job, task_id = %key.task, image = %name, "preparing task");
    let creds = sup.credentials_for(&key, &name);
    let mut stop = t.stop.clone();
    let image = tokio::select! {
        r = image_for(sup, &name, policy, &platform, creds.as_ref()) => r?,
        stop = crate::supervisor::stop::stopped(&mut stop) => {
            return Err(Failure::Stopped { stop, while_: " while its image was being pulled" });
        }
    };
    sup.touch_image(&name);
    Ok(image)
}

/// The platform to resolve the image for: `--platform`, when the node runs it
/// (its OS and architecture; a variant it names picks that entry), else the node's.
fn platform_for(asked: Option<&Platform>, node: &Platform) -> Result<Platform, Failure> {
    let Some(asked) = asked else { return Ok(node.clone()) };
    if asked.os != node.os || asked.architecture != node.architecture {
        let show = |p: &Platform| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        };
        return Err(Failure::Platform(format!(
            "--platform {} asks for an image this node cannot run: it runs {} images",
            show(asked),
            show(node)
        )));
    }
    Ok(Platform { variant: asked.variant.clone().or_else(|| node.variant.clone()), ..asked.clone() })
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
    platform: &Platform,
    creds: Option<&Credentials>,
) -> Result<ResolvedImage, Failure> {
    let sh = &sup.shared;
    let resolve = || sh.runtime.resolve_image(name, platform);
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
    fn platform_picks_an_entry_the_node_runs_or_fails() {
        let node = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert_eq!(platform_for(None, &node).unwrap(), node);
        let same = Platform { variant: None, ..node.clone() };
        assert_eq!(platform_for(Some(&same), &node).unwrap(), node, "the node's variant when none is named");
        let other = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        let f: crate::model::FailureInfo = platform_for(Some(&other), &node).unwrap_err().into();
        assert_eq!(f.code.as_str(), "ImagePlatformMismatch");
        assert!(f.message.contains("linux/amd64") && f.message.contains("linux/arm64/v8"), "{}", f.message);
    }

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
