//! The container's environment: the image's ENV, then the run options' `-e`,
//! then the task's own variables, then the agent's `AZ_BATCH_*` set (which no
//! task may set itself).

use super::SpecError;
use crate::layout::{Layout, TaskPaths};
use crate::model::{NodeFacts, PackageId, TaskKey, TaskKind};
use std::collections::BTreeMap;

/// Prefix reserved for the variables the agent sets.
pub const RESERVED_PREFIX: &str = "AZ_BATCH_";

/// PATH when the image sets none (containerd's default).
pub(super) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks a variable name a task wants to set.
pub(super) fn check_name(name: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::EnvName { name: name.escape_default().to_string(), reason: reason.into() };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.contains('=') || name.contains('\0') {
        return Err(bad("contains '=' or NUL"));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(bad("starts with AZ_BATCH_, which is reserved for the variables the agent sets"));
    }
    Ok(())
}

/// Checks every variable of a task (names and values).
pub(super) fn check_task_env(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (name, value) in env {
        check_name(name)?;
        if value.contains('\0') {
            return Err(SpecError::EnvName { name: name.clone(), reason: "value contains NUL".into() });
        }
    }
    Ok(())
}

/// The `AZ_BATCH_*` variables of a task (SEMANTICS.md, "Node layout and
/// environment variables"), with one per application package it gets
/// (the node's and its own). The start task has no job or task id; the job
/// preparation directory is named to the tasks of a job that has one (and to
/// the preparation task itself), not to its release task.
pub fn batch_vars(
    node: &NodeFacts,
    layout: &Layout,
    key: &TaskKey,
    paths: &TaskPaths,
    job_prep: bool,
    packages: &[PackageId],
) -> Vec<(String, String)> {
    let p = |path: &std::path::Path| path.display().to_string();
    let kind = key.kind();
    let mut vars: Vec<(String, String)> = vec![
        ("AZ_BATCH_ACCOUNT_NAME".into(), node.account_name.clone()),
        ("AZ_BATCH_POOL_ID".into(), node.pool_id.clone()),
        ("AZ_BATCH_NODE_ID".into(), node.node_id.clone()),
        ("AZ_BATCH_NODE_IS_DEDICATED".into(), node.is_dedicated.to_string()),
        ("AZ_BATCH_NODE_ROOT_DIR".into(), p(layout.root())),
        ("AZ_BATCH_NODE_SHARED_DIR".into(), p(&layout.shared())),
        ("AZ_BATCH_NODE_STARTUP_DIR".into(), p(&layout.startup())),
        ("AZ_BATCH_NODE_STARTUP_WORKING_DIR".into(), p(&layout.startup_wd())),
        ("AZ_BATCH_NODE_MOUNTS_DIR".into(), p(&layout.mounts())),
        ("AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES".into(), node.reserved_disk_bytes.to_string()),
    ];
    if let Some(url) = &node.account_url {
        vars.push(("AZ_BATCH_ACCOUNT_URL".into(), url.clone()));
    }
    if kind != TaskKind::StartTask {
        vars.push(("AZ_BATCH_JOB_ID".into(), key.job.to_string()));
        vars.push(("AZ_BATCH_TASK_ID".into(), key.task.to_string()));
    }
    if job_prep && matches!(kind, TaskKind::Task | TaskKind::JobPreparation) {
        vars.push(("AZ_BATCH_JOB_PREP_DIR".into(), p(&paths.job_prep_dir)));
        vars.push(("AZ_BATCH_JOB_PREP_WORKING_DIR".into(), p(&paths.job_prep_dir.join("wd"))));
    }
    vars.push(("AZ_BATCH_TASK_DIR".into(), p(&paths.task_dir)));
    vars.push(("AZ_BATCH_TASK_WORKING_DIR".into(), p(&paths.working_dir)));
    vars.push(("AZ_BATCH_CERTIFICATES_DIR".into(), p(&paths.certs_dir)));
    for pkg in packages {
        let dir = p(&layout.applications().join(pkg.rel_dir()));
        vars.extend(pkg.env_names().into_iter().map(|name| (name, dir.clone())));
    }
    vars
}

/// Merges layers of variables: a later layer's value replaces an earlier one in
/// place; new names are appended in order. Image entries without '=' are kept
/// as they are (runc passes them through).
pub(super) fn merge(image: &[String], layers: &[&[(String, String)]]) -> Vec<String> {
    let mut out: Vec<(String, Option<String>)> = image
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (e.clone(), None),
        })
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), Some(DEFAULT_PATH.into())));
    }
    for layer in layers {
        for (k, v) in layer.iter() {
            match out.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = Some(v.clone()),
                None => out.push((k.clone(), Some(v.clone()))),
            }
        }
    }
    out.into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect()
}

/// An `--env-file`: `KEY=VALUE` lines; blank lines and `#` comments skipped.
/// A bare `KEY` (docker takes it from its own environment) is refused.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            format!("line {}: not KEY=VALUE (values from the agent's environment are not taken)", n + 1)
        })?;
        check_name(k).map_err(|e| format!("line {}: {e}", n + 1))?;
        if v.contains('\0') {
            return Err(format!("line {}: value contains NUL", n + 1));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files() {
        let vars = parse_env_file("# comment\n\nA=1\n  B=x=y\nC=\n").unwrap();
        assert_eq!(vars, [("A".into(), "1".into()), ("B".into(), "x=y".into()), ("C".into(), String::new())]);
        assert!(parse_env_file("A=1\nBARE\n").unwrap_err().contains("line 2"));
        assert!(parse_env_file("AZ_BATCH_NODE_ID=x").unwrap_err().contains("reserved"));
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn later_layers_win_in_place() {
        let image = vec!["PATH=/bin".to_string(), "A=image".into(), "B=image".into()];
        let run = [kv("B", "run"), kv("C", "run")];
        let task = [kv("C", "task"), kv("D", "task")];
        let got = merge(&image, &[&run, &task]);
        assert_eq!(got, ["PATH=/bin", "A=image", "B=run", "C=task", "D=task"]);
    }

    #[test]
    fn default_path_when_image_has_none() {
        assert_eq!(merge(&[], &[]), [format!("PATH={DEFAULT_PATH}")]);
    }

    #[test]
    fn names_checked() {
        assert!(check_name("MY_VAR").is_ok());
        assert!(check_name("az_batch_lower").is_ok());
        for bad in ["", "A=B", "A\0", "AZ_BATCH_NODE_ID", "AZ_BATCH_"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let mut env = BTreeMap::new();
        env.insert("OK".to_string(), "bad\0value".to_string());
        assert!(check_task_env(&env).is_err());
    }
}
