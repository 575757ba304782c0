//! Spec builder tests: table-driven rules and golden JSON files in `testdata/`.
//! Set `BERTH_UPDATE_GOLDEN=1` to rewrite the golden files after a deliberate change.

use super::*;
use crate::model::{ContainerSettings, TaskConstraints, TaskKey, UserIdentity};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn node() -> NodeFacts {
    NodeFacts {
        node_id: "node-1".into(),
        pool_id: "pool-1".into(),
        account_name: "acct".into(),
        is_dedicated: true,
        root_dir: "/var/lib/berth/node".into(),
        hostname: "host-1".into(),
        os: "linux".into(),
        arch: "amd64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        network_files: vec!["/etc/resolv.conf".into(), "/etc/hosts".into()],
    }
}

fn task(command_line: &str, run_options: &str, wd: WorkingDirMode) -> TaskSpec {
    TaskSpec {
        key: TaskKey::new("job1", "task1").unwrap(),
        command_line: command_line.into(),
        container: Some(ContainerSettings {
            image: "busybox".into(),
            run_options: run_options.into(),
            working_directory: wd,
            pull_policy: Default::default(),
            credentials: None,
        }),
        environment: BTreeMap::from([("MY_VAR".to_string(), "mine".to_string())]),
        user: UserIdentity::default(),
        constraints: TaskConstraints::default(),
        required_slots: 1,
    }
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "IMAGE_VAR=from-image".into(), "MY_VAR=image".into()],
        working_dir: Some("/app".into()),
        user: None,
    }
}

fn build_for(t: &TaskSpec, img: &ImageConfig) -> Spec {
    let ro = check_task(t).unwrap();
    let layout = Layout::new("/var/lib/berth/node");
    build(SpecInputs {
        task: t,
        run_options: &ro,
        image: img,
        node: &node(),
        layout: &layout,
        cgroups_path: "/berth/c1",
    })
    .unwrap()
}

/// Sorts the capability sets, which `oci-spec` keeps in hash sets.
fn canonical(spec: &Spec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap();
    if let Some(Value::Object(caps)) = v.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(a) = set {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    v
}

fn golden(name: &str, spec: &Spec) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/spec/testdata").join(name);
    let got = canonical(spec);
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(got, want, "spec differs from {}", path.display());
}

#[test]
fn golden_seed_example() {
    let t = task(
        r#"/bin/sh -c "echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt""#,
        "--rm --workdir /",
        WorkingDirMode::TaskWorkingDir,
    );
    golden("seed-example.json", &build_for(&t, &image()));
}

#[test]
fn golden_image_default_with_uid() {
    let mut t = task("", "", WorkingDirMode::ImageDefault);
    t.user = UserIdentity { uid: Some(1000), gid: Some(1000) };
    golden("image-default-uid.json", &build_for(&t, &image()));
}

#[test]
fn working_directory_rules() {
    let no_wd = ImageConfig { working_dir: None, ..image() };
    let cases: &[(&str, WorkingDirMode, &ImageConfig, &str)] = &[
        ("", WorkingDirMode::TaskWorkingDir, &image(), "/var/lib/berth/node/workitems/job1/job-1/task1/wd"),
        ("", WorkingDirMode::ImageDefault, &image(), "/app"),
        ("", WorkingDirMode::ImageDefault, &no_wd, "/"),
        ("--workdir /x", WorkingDirMode::TaskWorkingDir, &image(), "/x"),
        ("-w /y", WorkingDirMode::ImageDefault, &image(), "/y"),
    ];
    for (ro, mode, img, want) in cases {
        let spec = build_for(&task("", ro, *mode), img);
        assert_eq!(spec.process().as_ref().unwrap().cwd().to_str(), Some(*want), "{ro} {mode:?}");
    }
}

#[test]
fn environment_layers_and_batch_vars() {
    let t = task("", "-e RUN_VAR=run -e MY_VAR=run", WorkingDirMode::TaskWorkingDir);
    let spec = build_for(&t, &image());
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    let get = |k: &str| env.iter().find_map(|e| e.strip_prefix(&format!("{k}=")).map(str::to_owned));
    assert_eq!(get("IMAGE_VAR").as_deref(), Some("from-image"));
    assert_eq!(get("RUN_VAR").as_deref(), Some("run"));
    assert_eq!(get("MY_VAR").as_deref(), Some("mine"), "task env wins over run options and image");
    assert_eq!(get("AZ_BATCH_TASK_ID").as_deref(), Some("task1"));
    assert_eq!(get("AZ_BATCH_JOB_ID").as_deref(), Some("job1"));
    assert_eq!(get("AZ_BATCH_NODE_SHARED_DIR").as_deref(), Some("/var/lib/berth/node/shared"));
    assert_eq!(get("AZ_BATCH_TASK_WORKING_DIR").as_deref(), Some("/var/lib/berth/node/workitems/job1/job-1/task1/wd"));
    assert_eq!(get("AZ_BATCH_NODE_IS_DEDICATED").as_deref(), Some("true"));
}

#[test]
fn hardening_and_node_root_bind() {
    let spec = build_for(&task("/bin/true", "", WorkingDirMode::TaskWorkingDir), &image());
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().unwrap();
    assert!(caps.ambient().as_ref().unwrap().is_empty());
    assert!(caps.inheritable().as_ref().unwrap().is_empty());
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert_eq!(caps.effective().as_ref().unwrap().len(), 14, "root keeps the default set");
    let mounts = spec.mounts().as_ref().unwrap();
    let root_bind = mounts.iter().find(|m| m.destination().to_str() == Some("/var/lib/berth/node")).unwrap();
    assert_eq!(root_bind.source().as_ref().unwrap().to_str(), Some("/var/lib/berth/node"));
    assert!(root_bind.options().as_ref().unwrap().contains(&"rbind".to_string()));
    let cgroup = mounts.iter().find(|m| m.destination().to_str() == Some("/sys/fs/cgroup")).unwrap();
    assert!(cgroup.options().as_ref().unwrap().contains(&"ro".to_string()));
    assert!(mounts.iter().any(|m| m.destination().to_str() == Some("/dev/shm")));
    assert_eq!(spec.hostname().as_deref(), Some("host-1"));
}

#[test]
fn non_root_has_no_effective_capabilities() {
    let mut t = task("/bin/true", "", WorkingDirMode::TaskWorkingDir);
    t.user = UserIdentity { uid: Some(1000), gid: Some(1000) };
    let spec = build_for(&t, &image());
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
    let caps = process.capabilities().as_ref().unwrap();
    assert!(caps.effective().as_ref().unwrap().is_empty());
    assert!(caps.permitted().as_ref().unwrap().is_empty());
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
}

#[test]
fn check_task_refusals() {
    let mut t = task("echo 'unclosed", "", WorkingDirMode::TaskWorkingDir);
    assert!(matches!(check_task(&t), Err(SpecError::CommandLine { .. })));
    t.command_line = "/bin/true".into();
    t.environment.insert("AZ_BATCH_TASK_ID".into(), "x".into());
    assert!(matches!(check_task(&t), Err(SpecError::EnvName { .. })));
    t.environment.clear();
    t.container.as_mut().unwrap().run_options = "--privileged".into();
    assert!(matches!(check_task(&t), Err(SpecError::RunOption { .. })));
}

#[test]
fn no_command_is_an_error() {
    let t = task("", "", WorkingDirMode::TaskWorkingDir);
    let layout = Layout::new("/r");
    let err = build(SpecInputs {
        task: &t,
        run_options: &RunOptions::default(),
        image: &ImageConfig::default(),
        node: &node(),
        layout: &layout,
        cgroups_path: "/b/c",
    })
    .unwrap_err();
    assert!(matches!(err, SpecError::NoCommand));
}
