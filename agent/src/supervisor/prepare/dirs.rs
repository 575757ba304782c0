//! The task's directories: made (owned by its identity, see `RunAs::dir_owner`)
//! unless the node root has less free space than a task needs to start.

use super::{Failure, Task};
use crate::supervisor::Supervisor;
use std::path::Path;

pub(super) async fn make(sup: &Supervisor, t: &mut Task<'_>) -> Result<(), Failure> {
    let sh = &sup.shared;
    let owner = Some(t.checked.run_as.dir_owner(sh.settings.policy.user_namespaces));
    let (layout, key, min_free) = (sh.layout.clone(), t.info.key().clone(), sh.settings.min_free_bytes);
    // A retry keeps what the attempt before it wrote (see `retry`).
    let previous = t.info.retry_count.checked_sub(1);
    tokio::task::spawn_blocking(move || {
        enough_space(layout.root(), crate::supervisor::disk_space(layout.root()).map(|(free, _)| free), min_free)?;
        if let Some(n) = previous {
            layout.keep_attempt_output(&key, n).map_err(|source| {
                Failure::TaskDir(crate::layout::LayoutError::Create { path: layout.task(&key).task_dir, source })
            })?;
        }
        layout.create_task_dirs(&key, owner).map(drop).map_err(Failure::TaskDir)
    })
    .await
    .map_err(|e| Failure::Internal(e.to_string()))?
}

/// DiskFull when `free` (if it could be read) is below `min_free`.
fn enough_space(root: &Path, free: Option<u64>, min_free: u64) -> Result<(), Failure> {
    match free {
        Some(free) if free < min_free => Err(Failure::DiskFull(format!(
            "the node root {} has {} MiB free, less than the {} MiB a task needs to start",
            root.display(),
            free >> 20,
            min_free >> 20
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FailureInfo;

    #[test]
    fn too_little_space_is_disk_full() {
        let root = Path::new("/mnt/batch");
        assert!(enough_space(root, Some(10 << 20), 10 << 20).is_ok());
        assert!(enough_space(root, None, 10 << 20).is_ok(), "an unreadable figure does not stop the task");
        let f: FailureInfo = enough_space(root, Some(3 << 20), 10 << 20).unwrap_err().into();
        assert_eq!((f.code.as_str(), f.message.contains("3 MiB free")), ("DiskFull", true), "{}", f.message);
    }
}
