//! A host task's process (a task without container settings): the same
//! command-line, environment and working-directory rules as a container task,
//! for a process the agent starts on the node itself. PURE, like the rest of
//! `spec`.

use super::{command, env, SpecError};
use crate::layout::Layout;
use crate::model::{NodeFacts, PackageId, RunAs, TaskSpec};
use serde::{Deserialize, Serialize};

/// Everything needed to start a host task's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    pub args: Vec<String>,
    /// `NAME=value` entries: PATH and HOME, then the task's variables, then the
    /// agent's `AZ_BATCH_*` set.
    pub env: Vec<String>,
    pub cwd: String,
    /// An admin identity runs as root; others as their uid, gid and groups,
    /// with no way to gain privileges (`no_new_privs`).
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privileges: bool,
}

/// Builds a host task's process. The command line is required: there is no
/// image to take an entrypoint from.
pub fn host_process(
    task: &TaskSpec,
    run_as: &RunAs,
    node: &NodeFacts,
    layout: &Layout,
    job_prep: bool,
    packages: &[PackageId],
) -> Result<HostProcess, SpecError> {
    if task.command_line.trim().is_empty() {
        return Err(SpecError::NoCommand);
    }
    let args = command::split(&task.command_line)?;
    let paths = layout.task(&task.key);
    let base = [("HOME".to_string(), paths.working_dir.display().to_string())];
    let task_env: Vec<(String, String)> = task.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let batch = env::batch_vars(node, layout, &task.key, &paths, job_prep, packages);
    let env = env::merge(&[], &[&base, &task_env, &batch]);
    let (uid, gid, groups) =
        if run_as.admin { (0, 0, vec![0]) } else { (run_as.uid, run_as.gid, run_as.groups.clone()) };
    Ok(HostProcess {
        args,
        env,
        cwd: paths.working_dir.display().to_string(),
        uid,
        gid,
        groups,
        no_new_privileges: !run_as.admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskConstraints, TaskKey, UserIdentity};
    use std::collections::BTreeMap;

    fn node() -> NodeFacts {
        NodeFacts {
            node_id: "n1".into(),
            pool_id: "p1".into(),
            account_name: "acct".into(),
            account_url: Some("https://acct.example.batch".into()),
            reserved_disk_bytes: 64 << 20,
            is_dedicated: true,
            root_dir: "/r".into(),
            hostname: "h".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            network_files: vec![],
        }
    }

    fn task(key: TaskKey, cmd: &str) -> TaskSpec {
        TaskSpec {
            key,
            command_line: cmd.into(),
            container: None,
            environment: BTreeMap::from([("A".to_string(), "1".to_string()), ("HOME".to_string(), "/h".to_string())]),
            user: UserIdentity::default(),
            constraints: TaskConstraints::default(),
            required_slots: 1,
            staging: Default::default(),
        }
    }

    fn user() -> RunAs {
        RunAs { uid: 1100, gid: 1100, groups: vec![1100, 1200], admin: false }
    }

    fn var<'a>(p: &'a HostProcess, name: &str) -> Option<&'a str> {
        p.env.iter().find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
    }

    #[test]
    fn task_rules_without_a_shell() {
        let l = Layout::new("/r");
        let p = host_process(
            &task(TaskKey::new("j", "t").unwrap(), "/bin/sh -c 'echo $A'"),
            &user(),
            &node(),
            &l,
            true,
            &[],
        )
        .unwrap();
        assert_eq!(p.args, ["/bin/sh", "-c", "echo $A"]);
        assert_eq!(p.cwd, "/r/workitems/j/job-1/t/wd");
        assert_eq!((p.uid, p.gid, p.groups.clone(), p.no_new_privileges), (1100, 1100, vec![1100, 1200], true));
        assert_eq!(var(&p, "A"), Some("1"));
        // The task's own HOME wins over the default; PATH is the default one.
        assert_eq!(var(&p, "HOME"), Some("/h"));
        assert!(var(&p, "PATH").is_some_and(|v| v.contains("/usr/bin")));
        assert_eq!(var(&p, "AZ_BATCH_TASK_ID"), Some("t"));
        assert_eq!(var(&p, "AZ_BATCH_JOB_PREP_DIR"), Some("/r/workitems/j/job-1/jobpreparation"));
        assert_eq!(var(&p, "AZ_BATCH_JOB_PREP_WORKING_DIR"), Some("/r/workitems/j/job-1/jobpreparation/wd"));
    }

    #[test]
    fn start_task_has_no_task_id() {
        let l = Layout::new("/r");
        let admin = RunAs { admin: true, ..user() };
        let p = host_process(&task(TaskKey::start_task(), "mount-things"), &admin, &node(), &l, false, &[]).unwrap();
        assert_eq!(var(&p, "AZ_BATCH_TASK_ID"), None);
        assert_eq!(var(&p, "AZ_BATCH_JOB_ID"), None);
        assert_eq!(var(&p, "AZ_BATCH_TASK_WORKING_DIR"), Some("/r/startup/wd"));
        assert_eq!(var(&p, "AZ_BATCH_NODE_STARTUP_WORKING_DIR"), Some("/r/startup/wd"));
        assert_eq!(p.cwd, "/r/startup/wd");
        assert_eq!((p.uid, p.gid, p.no_new_privileges), (0, 0, false));
    }

    #[test]
    fn release_task_is_not_told_the_prep_dir() {
        let l = Layout::new("/r");
        let job = crate::model::JobId::new("j").unwrap();
        let p = host_process(&task(TaskKey::job_release(&job), "cleanup"), &user(), &node(), &l, true, &[]).unwrap();
        assert_eq!(var(&p, "AZ_BATCH_JOB_PREP_DIR"), None);
        assert_eq!(var(&p, "AZ_BATCH_TASK_ID"), Some("jobrelease"));
        let prep =
            host_process(&task(TaskKey::job_preparation(&job), "stage"), &user(), &node(), &l, true, &[]).unwrap();
        assert_eq!(var(&prep, "AZ_BATCH_JOB_PREP_WORKING_DIR"), Some("/r/workitems/j/job-1/jobpreparation/wd"));
    }

    #[test]
    fn a_command_line_is_required() {
        let l = Layout::new("/r");
        let err =
            host_process(&task(TaskKey::new("j", "t").unwrap(), "  "), &user(), &node(), &l, false, &[]).unwrap_err();
        assert!(matches!(err, SpecError::NoCommand));
        let err = host_process(&task(TaskKey::new("j", "t").unwrap(), "'open"), &user(), &node(), &l, false, &[])
            .unwrap_err();
        assert!(matches!(err, SpecError::CommandLine { .. }));
    }
}
