//! The node directories a container gets: the whole node root by default, or
//! exactly the directories of Batch's `containerHostBatchBindMounts`, each at
//! its host path. The `AZ_BATCH_*` variables of a directory it does not get
//! are not set.

use crate::layout::{Layout, TaskPaths};
use crate::model::{ContainerSettings, HostMountSource};
use std::path::PathBuf;

/// One bind of a node directory: its path (host and container), read-only or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeBind {
    pub(super) path: PathBuf,
    pub(super) read_only: bool,
}

/// The binds of a container, in mount order. Without a list: the node root
/// read-write, then `applications/` read-only over it. With one: each listed
/// directory, `applications/` always read-only (packages are shared by every
/// task), the job preparation directory only when the job has one.
pub(super) fn node_binds(
    c: Option<&ContainerSettings>,
    layout: &Layout,
    paths: &TaskPaths,
    job_prep: bool,
) -> Vec<NodeBind> {
    let Some(list) = c.and_then(|c| c.host_mounts.as_ref()) else {
        return vec![
            NodeBind { path: layout.root().to_path_buf(), read_only: false },
            NodeBind { path: layout.applications(), read_only: true },
        ];
    };
    list.iter()
        .filter_map(|m| {
            let path = match m.source {
                HostMountSource::Shared => layout.shared(),
                HostMountSource::Startup => layout.startup(),
                HostMountSource::VfsMounts => layout.mounts(),
                HostMountSource::Task => paths.task_dir.clone(),
                HostMountSource::JobPrep if job_prep => paths.job_prep_dir.clone(),
                HostMountSource::JobPrep => return None,
                HostMountSource::Applications => {
                    return Some(NodeBind { path: layout.applications(), read_only: true })
                }
            };
            Some(NodeBind { path, read_only: m.read_only })
        })
        .collect()
}

/// What a variable names, when it names a node directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// The node root itself: set only when the whole root is bound.
    Root,
    Dir(HostMountSource),
}

fn names(var: &str) -> Option<Names> {
    use HostMountSource as S;
    Some(match var {
        "AZ_BATCH_NODE_ROOT_DIR" => Names::Root,
        "AZ_BATCH_NODE_SHARED_DIR" => Names::Dir(S::Shared),
        "AZ_BATCH_NODE_STARTUP_DIR" | "AZ_BATCH_NODE_STARTUP_WORKING_DIR" => Names::Dir(S::Startup),
        "AZ_BATCH_NODE_MOUNTS_DIR" => Names::Dir(S::VfsMounts),
        "AZ_BATCH_TASK_DIR" | "AZ_BATCH_TASK_WORKING_DIR" | "AZ_BATCH_CERTIFICATES_DIR" => Names::Dir(S::Task),
        "AZ_BATCH_JOB_PREP_DIR" | "AZ_BATCH_JOB_PREP_WORKING_DIR" => Names::Dir(S::JobPrep),
        _ if var.starts_with("AZ_BATCH_APP_PACKAGE_") => Names::Dir(S::Applications),
        _ => return None,
    })
}

/// Keeps the variables whose directory the container gets.
pub(super) fn visible_vars(c: Option<&ContainerSettings>, vars: &mut Vec<(String, String)>) {
    let Some(c) = c.filter(|c| c.host_mounts.is_some()) else { return };
    vars.retain(|(name, _)| match names(name) {
        None => true,
        Some(Names::Root) => false,
        Some(Names::Dir(source)) => c.mounts(source),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostMount, TaskKey};

    fn settings(list: Option<Vec<HostMount>>) -> ContainerSettings {
        ContainerSettings {
            image: "busybox".into(),
            run_options: String::new(),
            working_directory: Default::default(),
            pull_policy: Default::default(),
            credentials: None,
            devices: vec![],
            host_mounts: list,
        }
    }

    fn m(source: HostMountSource, read_only: bool) -> HostMount {
        HostMount { source, read_only }
    }

    #[test]
    fn unset_binds_the_root_and_keeps_every_variable() {
        let layout = Layout::new("/mnt/batch/tasks");
        let key = TaskKey::new("job", "t1").unwrap();
        let paths = layout.task(&key);
        let c = settings(None);
        let binds = node_binds(Some(&c), &layout, &paths, true);
        assert_eq!(binds.len(), 2);
        assert_eq!((binds[0].path.to_str(), binds[0].read_only), (Some("/mnt/batch/tasks"), false));
        assert!(binds[1].read_only);
        let mut vars = vec![("AZ_BATCH_NODE_ROOT_DIR".to_string(), "x".to_string())];
        visible_vars(Some(&c), &mut vars);
        assert_eq!(vars.len(), 1);
    }

    #[test]
    fn a_list_binds_exactly_its_directories() {
        use HostMountSource as S;
        let layout = Layout::new("/mnt/batch/tasks");
        let key = TaskKey::new("job", "t1").unwrap();
        let paths = layout.task(&key);
        let c = settings(Some(vec![
            m(S::Task, false),
            m(S::Shared, true),
            m(S::JobPrep, false),
            m(S::Applications, false),
        ]));
        let got: Vec<(String, bool)> = node_binds(Some(&c), &layout, &paths, false)
            .into_iter()
            .map(|b| (b.path.display().to_string(), b.read_only))
            .collect();
        assert_eq!(
            got,
            [
                ("/mnt/batch/tasks/workitems/job/job-1/t1".to_string(), false),
                ("/mnt/batch/tasks/shared".to_string(), true),
                // No preparation task: nothing to bind. Packages stay read-only.
                ("/mnt/batch/tasks/applications".to_string(), true),
            ]
        );
        assert!(node_binds(Some(&settings(Some(vec![]))), &layout, &paths, true).is_empty());
        let with_prep = node_binds(Some(&settings(Some(vec![m(S::JobPrep, true)]))), &layout, &paths, true);
        assert_eq!(with_prep, [NodeBind { path: paths.job_prep_dir.clone(), read_only: true }]);
    }

    #[test]
    fn variables_follow_the_list() {
        use HostMountSource as S;
        let all = [
            "AZ_BATCH_NODE_ROOT_DIR",
            "AZ_BATCH_NODE_SHARED_DIR",
            "AZ_BATCH_NODE_STARTUP_DIR",
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR",
            "AZ_BATCH_NODE_MOUNTS_DIR",
            "AZ_BATCH_TASK_DIR",
            "AZ_BATCH_TASK_WORKING_DIR",
            "AZ_BATCH_CERTIFICATES_DIR",
            "AZ_BATCH_JOB_PREP_DIR",
            "AZ_BATCH_JOB_PREP_WORKING_DIR",
            "AZ_BATCH_APP_PACKAGE_pkg_1",
            "AZ_BATCH_NODE_ID",
            "AZ_BATCH_TASK_ID",
        ];
        let kept = |list: Vec<HostMount>| {
            let mut vars: Vec<(String, String)> = all.iter().map(|n| (n.to_string(), String::new())).collect();
            visible_vars(Some(&settings(Some(list))), &mut vars);
            vars.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(kept(vec![]), ["AZ_BATCH_NODE_ID", "AZ_BATCH_TASK_ID"]);
        assert_eq!(
            kept(vec![m(S::Task, true), m(S::Applications, false)]),
            [
                "AZ_BATCH_TASK_DIR",
                "AZ_BATCH_TASK_WORKING_DIR",
                "AZ_BATCH_CERTIFICATES_DIR",
                "AZ_BATCH_APP_PACKAGE_pkg_1",
                "AZ_BATCH_NODE_ID",
                "AZ_BATCH_TASK_ID"
            ]
        );
        assert_eq!(
            kept(vec![m(S::VfsMounts, false)]),
            ["AZ_BATCH_NODE_MOUNTS_DIR", "AZ_BATCH_NODE_ID", "AZ_BATCH_TASK_ID"]
        );
        let every: Vec<HostMount> = S::ALL.into_iter().map(|s| m(s, false)).collect();
        assert_eq!(kept(every).len(), all.len() - 1, "everything but the root");
    }
}
