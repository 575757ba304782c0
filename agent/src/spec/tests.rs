//! Spec builder tests: table-driven rules and golden JSON files in `testdata/`.
//! Set `BERTH_UPDATE_GOLDEN=1` to rewrite the golden files after a deliberate change.

use super::*;
use crate::model::{ContainerSettings, RunAs, TaskConstraints, TaskKey, UserIdentity};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn node() -> NodeFacts {
    NodeFacts {
        node_id: "node-1".into(),
        pool_id: "pool-1".into(),
        account_name: "acct".into(),
        account_url: Some("https://acct.example.batch".into()),
        reserved_disk_bytes: 64 << 20,
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
            devices: vec![],
            host_mounts: None,
        }),
        environment: BTreeMap::from([("MY_VAR".to_string(), "mine".to_string())]),
        user: UserIdentity::default(),
        constraints: TaskConstraints::default(),
        required_slots: 1,
        staging: Default::default(),
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

fn root() -> RunAs {
    RunAs { uid: 20000, gid: 20000, groups: vec![20000], admin: true }
}

fn plain() -> RunAs {
    RunAs { uid: 1000, gid: 1000, groups: vec![20000], admin: false }
}

/// Everything a spec is built from, owned, for a task: `inputs()` lends it
/// out, and a test overrides the one input it is about.
struct Fixture {
    task: TaskSpec,
    run_options: RunOptions,
    node: NodeFacts,
    layout: Layout,
    network: NetworkSetup,
    image: ImageConfig,
    run_as: RunAs,
    policy: Policy,
    lookups: Lookups,
}

impl Fixture {
    fn new(task: &TaskSpec) -> Self {
        let run_options = check_task(task).unwrap();
        let network = setup_for(&run_options);
        Fixture {
            task: task.clone(),
            run_options,
            node: node(),
            layout: Layout::new("/var/lib/berth/node"),
            network,
            image: image(),
            run_as: root(),
            policy: Policy::default(),
            lookups: Lookups::default(),
        }
    }

    fn inputs(&self) -> SpecInputs<'_> {
        SpecInputs {
            task: &self.task,
            run_options: &self.run_options,
            run_as: &self.run_as,
            policy: &self.policy,
            lookups: &self.lookups,
            image: &self.image,
            node: &self.node,
            layout: &self.layout,
            cgroups_path: "/berth/c1",
            job_prep: false,
            packages: &[],
            network: &self.network,
            shim_group: None,
        }
    }
}

fn build_with(
    t: &TaskSpec,
    img: &ImageConfig,
    who: &RunAs,
    policy: &Policy,
    lookups: &Lookups,
) -> Result<Spec, SpecError> {
    let f = Fixture::new(t);
    build(SpecInputs { run_as: who, policy, lookups, image: img, ..f.inputs() })
}

/// What the supervisor passes: a bridge task's namespace, its own files
/// unless it is a plain host-network task.
fn setup_for(o: &RunOptions) -> NetworkSetup {
    let netns =
        (o.network.mode == crate::model::NetworkMode::Bridge).then(|| "/run/berth/network/netns/c1".to_string());
    let files = if o.network.own_files() {
        let dir = "/run/berth/network/files/c1";
        vec![(format!("{dir}/resolv.conf"), "/etc/resolv.conf".into()), (format!("{dir}/hosts"), "/etc/hosts".into())]
    } else {
        node().network_files.iter().map(|f| (f.display().to_string(), f.display().to_string())).collect()
    };
    NetworkSetup { netns, files }
}

fn build_for(t: &TaskSpec, img: &ImageConfig) -> Spec {
    build_with(t, img, &root(), &Policy::default(), &Lookups::default()).unwrap()
}

fn build_as(t: &TaskSpec, who: &RunAs) -> Spec {
    build_with(t, &image(), who, &Policy::default(), &Lookups::default()).unwrap()
}

/// Sorts the capability sets, which `oci-spec` keeps in hash sets.
fn canonical(spec: &Spec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap();
    // The seccomp profile is tested on its own (spec::seccomp); here only
    // that it is there, and how many rules it has.
    if let Some(Value::Array(rules)) = v.pointer_mut("/linux/seccomp/syscalls") {
        let n = rules.len();
        *v.pointer_mut("/linux/seccomp/syscalls").unwrap() = Value::String(format!("<{n} rules>"));
    }
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
    let t = task("", "", WorkingDirMode::ImageDefault);
    golden("image-default-uid.json", &build_as(&t, &plain()));
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
    assert_eq!(get("AZ_BATCH_ACCOUNT_URL").as_deref(), Some("https://acct.example.batch"));
    assert_eq!(
        get("AZ_BATCH_CERTIFICATES_DIR").as_deref(),
        Some("/var/lib/berth/node/workitems/job1/job-1/task1/certs")
    );
    assert_eq!(get("AZ_BATCH_NODE_MOUNTS_DIR").as_deref(), Some("/var/lib/berth/node/fsmounts"));
    assert_eq!(get("AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES").as_deref(), Some("67108864"));
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
    let t = task("/bin/true", "", WorkingDirMode::TaskWorkingDir);
    let spec = build_as(&t, &plain());
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[20000][..]));
    let caps = process.capabilities().as_ref().unwrap();
    assert!(caps.effective().as_ref().unwrap().is_empty());
    assert!(caps.permitted().as_ref().unwrap().is_empty());
    assert!(caps.bounding().as_ref().unwrap().is_empty(), "a setuid binary cannot regain anything");
}

#[test]
fn check_task_refusals() {
    let mut t = task("echo 'unclosed", "", WorkingDirMode::TaskWorkingDir);
    assert!(matches!(check_task(&t), Err(SpecError::CommandLine { .. })));
    t.command_line = "/bin/true".into();
    t.environment.insert("AZ_BATCH_TASK_ID".into(), "x".into());
    assert!(matches!(check_task(&t), Err(SpecError::EnvName { .. })));
    t.environment.clear();
    t.container.as_mut().unwrap().run_options = "--restart always".into();
    assert!(matches!(check_task(&t), Err(SpecError::RunOption { .. })));
}

#[test]
fn no_command_is_an_error() {
    let t = task("", "", WorkingDirMode::TaskWorkingDir);
    let f = Fixture::new(&t);
    let err = build(SpecInputs { image: &ImageConfig::default(), ..f.inputs() }).unwrap_err();
    assert!(matches!(err, SpecError::NoCommand));
}

fn ns_types(spec: &Spec) -> Vec<String> {
    let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    ns.iter().map(|n| format!("{:?}", n.typ())).collect()
}

fn mount_of<'s>(spec: &'s Spec, dest: &str) -> Option<&'s Mount> {
    spec.mounts().as_ref().unwrap().iter().find(|m| m.destination().to_str() == Some(dest))
}

#[test]
fn resource_oom_and_namespace_flags_shape_the_spec() {
    let t = task(
        "/bin/true",
        "-m 1g --memory-reservation 256m --cpu-quota 20000 --cpu-period 50000 --cpuset-mems 0 --blkio-weight 300 \
         --oom-score-adj 200 --oom-kill-disable --domainname example.test",
        WorkingDirMode::TaskWorkingDir,
    );
    let spec = build_for(&t, &image());
    let v = serde_json::to_value(&spec).unwrap();
    let r = &v["linux"]["resources"];
    assert_eq!(r["memory"]["limit"], 1 << 30);
    assert_eq!(r["memory"]["reservation"], 256 << 20);
    assert_eq!(r["memory"]["disableOOMKiller"], true);
    assert_eq!(
        (&r["cpu"]["quota"], &r["cpu"]["period"], &r["cpu"]["mems"]),
        (&20_000.into(), &50_000.into(), &"0".into())
    );
    assert_eq!(r["blockIO"]["weight"], 300);
    assert_eq!(v["process"]["oomScoreAdj"], 200);
    assert_eq!((&v["hostname"], &v["domainname"]), (&"host-1".into(), &"example.test".into()));
    assert_eq!(v["linux"]["sysctl"]["kernel.domainname"], "example.test", "for runc before 1.2 too");
    assert!(ns_types(&spec).contains(&"Uts".to_string()) && ns_types(&spec).contains(&"Cgroup".to_string()));

    // A quota without a period is per 100 ms, as --cpus.
    let v = serde_json::to_value(build_for(
        &task("/bin/true", "--cpu-quota 30000", WorkingDirMode::TaskWorkingDir),
        &image(),
    ))
    .unwrap();
    assert_eq!(
        (&v["linux"]["resources"]["cpu"]["quota"], &v["linux"]["resources"]["cpu"]["period"]),
        (&30_000.into(), &100_000.into())
    );
    // A soft limit alone is a soft limit alone.
    let v = serde_json::to_value(build_for(
        &task("/bin/true", "--memory-reservation 64m", WorkingDirMode::TaskWorkingDir),
        &image(),
    ))
    .unwrap();
    assert_eq!(v["linux"]["resources"]["memory"], serde_json::json!({"reservation": 64 << 20}));

    // The node's UTS and cgroup namespaces: no names of the task's own.
    let open = Policy { allow_host_namespaces: true, ..Policy::default() };
    let t = task("/bin/true", "--uts host --cgroupns host", WorkingDirMode::TaskWorkingDir);
    let spec = build_with(&t, &image(), &root(), &open, &Lookups::default()).unwrap();
    let types = ns_types(&spec);
    assert!(!types.contains(&"Uts".to_string()) && !types.contains(&"Cgroup".to_string()), "{types:?}");
    assert!(types.contains(&"Pid".to_string()));
    assert_eq!((spec.hostname(), spec.domainname()), (&None, &None));
}

#[test]
fn golden_run_options() {
    let t = task(
        "/bin/true",
        "--memory 512m --memory-swap 1g --cpus 1.5 --cpu-shares 512 --cpuset-cpus 0-1 --pids-limit 100 \
         --shm-size 256m --ulimit nofile=4096:8192 --read-only --tmpfs /scratch:size=64m,mode=1777 \
         -v /data/in:/in:ro --cap-drop ALL --cap-add CHOWN --network none --sysctl kernel.shmmax=1000000 \
         --hostname worker-1 --init --entrypoint /bin/env --device /dev/fuse -e FROM_FLAG=1 --env-file vars.env",
        WorkingDirMode::TaskWorkingDir,
    );
    let lookups = Lookups {
        bind_sources: vec!["/data/real/in".into()],
        devices: vec![oci_spec::runtime::LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(oci_spec::runtime::LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o666u32)
            .build()
            .unwrap()],
        env_files: vec![("FROM_FILE".into(), "2".into())],
        accounts: ImageAccounts::default(),
        seccomp: None,
    };
    let spec = build_with(&t, &image(), &root(), &Policy::default(), &lookups).unwrap();
    golden("run-options.json", &spec);
}

#[test]
fn run_options_shape_the_spec() {
    let spec = |opts: &str| build_for(&task("/bin/true", opts, WorkingDirMode::TaskWorkingDir), &image());
    let s = spec("--memory 64m --pids-limit 10 --cpus 2");
    let res = s.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(res.pids().unwrap().limit(), 10);
    assert_eq!(
        (res.cpu().clone().unwrap().quota(), res.cpu().clone().unwrap().period()),
        (Some(200_000), Some(100_000))
    );

    let s = spec("--read-only --tmpfs /t:size=1m --shm-size 8m");
    assert!(s.root().as_ref().unwrap().readonly().unwrap());
    let t = mount_of(&s, "/t").unwrap();
    assert_eq!(t.typ().as_deref(), Some("tmpfs"));
    assert!(t.options().as_ref().unwrap().contains(&"size=1048576".to_string()));
    assert!(mount_of(&s, "/dev/shm").unwrap().options().as_ref().unwrap().contains(&"size=8388608".to_string()));

    let caps = |s: &Spec| s.process().as_ref().unwrap().capabilities().clone().unwrap();
    assert!(caps(&spec("--cap-drop ALL")).bounding().as_ref().unwrap().is_empty());
    let c = caps(&spec("--cap-drop all --cap-add NET_RAW"));
    assert_eq!(c.bounding().as_ref().unwrap().len(), 1);
    assert_eq!(c.effective().as_ref().unwrap().len(), 1, "root keeps what it is given");
    assert_eq!(caps(&spec("--cap-add ALL")).bounding().as_ref().unwrap().len(), 41);
    assert_eq!(caps(&spec("--cap-add ALL --cap-drop NET_RAW")).bounding().as_ref().unwrap().len(), 40);
    let mem = spec("--memory 64m").linux().as_ref().unwrap().resources().clone().unwrap().memory().unwrap();
    assert_eq!(mem.swap(), Some(128 << 20), "docker's default: as much swap as memory");

    let p = spec("--privileged");
    assert_eq!(caps(&p).bounding().as_ref().unwrap().len(), 41);
    assert_eq!(p.linux().as_ref().unwrap().masked_paths().as_deref(), Some(&[][..]));
    let rules = p.linux().as_ref().unwrap().resources().clone().unwrap().devices().clone().unwrap();
    assert!(rules[0].allow());

    assert!(ns_types(&spec("--network none")).contains(&"Network".to_string()));
    assert!(!ns_types(&spec("--network host")).contains(&"Network".to_string()), "the node's network");
    let ns = spec("").linux().as_ref().unwrap().namespaces().clone().unwrap();
    let net = ns.iter().find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network).unwrap();
    assert_eq!(
        net.path().as_deref(),
        Some(Path::new("/run/berth/network/netns/c1")),
        "a bridge task joins the agent's"
    );
    let bridge = spec("");
    let resolv = mount_of(&bridge, "/etc/resolv.conf").unwrap();
    assert_eq!(resolv.source().as_deref(), Some(Path::new("/run/berth/network/files/c1/resolv.conf")));
    assert!(resolv.options().as_ref().unwrap().contains(&"ro".to_string()));
    let host = spec("--network host");
    let host = mount_of(&host, "/etc/hosts").unwrap();
    assert_eq!(host.source().as_deref(), Some(Path::new("/etc/hosts")), "a plain host task gets the node's");
    let with_dns = spec("--network host --dns 192.0.2.1");
    let with_dns = mount_of(&with_dns, "/etc/resolv.conf").unwrap();
    assert_eq!(with_dns.source().as_deref(), Some(Path::new("/run/berth/network/files/c1/resolv.conf")));
    assert!(!ns_types(&spec("--pid host")).contains(&"Pid".to_string()));
    let ipc = spec("--ipc host");
    assert!(!ns_types(&ipc).contains(&"Ipc".to_string()));
    assert_eq!(mount_of(&ipc, "/dev/shm").unwrap().typ().as_deref(), Some("bind"));
    assert!(mount_of(&ipc, "/dev/mqueue").is_none());

    let init = spec("--init");
    assert_eq!(init.process().as_ref().unwrap().args().as_ref().unwrap()[..3], [INIT_PATH, "--", "/bin/true"]);
    assert_eq!(mount_of(&init, INIT_PATH).unwrap().source().as_ref().unwrap().to_str(), Some("/usr/bin/tini-static"));

    let u = spec("--ulimit nofile=10:20 --ulimit core=0");
    let rl = u.process().as_ref().unwrap().rlimits().clone().unwrap();
    assert_eq!(rl.len(), 2);
    assert!(rl.iter().any(|r| r.soft() == 10 && r.hard() == 20));
    assert_eq!(spec("-h w1").hostname().as_deref(), Some("w1"));
    assert!(!spec("--security-opt no-new-privileges=false").process().as_ref().unwrap().no_new_privileges().unwrap());
}

#[test]
fn mounts_over_kernel_interfaces_are_refused() {
    for opts in ["--tmpfs /proc", "--tmpfs /sys/fs/cgroup", "--tmpfs /dev/pts", "-v /a:/"] {
        let t = task("/bin/true", opts, WorkingDirMode::TaskWorkingDir);
        assert!(matches!(check_task(&t), Err(SpecError::RunOption { .. })), "{opts}");
    }
    let t = task("/bin/true", "--tmpfs /dev/shm", WorkingDirMode::TaskWorkingDir);
    build_with(&t, &image(), &root(), &Policy::default(), &Lookups::default()).unwrap();
}

#[test]
fn identities_shape_the_process_user() {
    let t = task("/bin/true", "", WorkingDirMode::TaskWorkingDir);
    let img = ImageConfig { user: Some("app".into()), ..image() };
    let lookups = Lookups {
        accounts: ImageAccounts::parse("app:x:1234:1234::/:/bin/sh\n", "app:x:1234:\n"),
        ..Default::default()
    };
    let user_of = |s: &Spec| {
        let u = s.process().as_ref().unwrap().user().clone();
        (u.uid(), u.gid())
    };
    let admin = build_with(&t, &img, &root(), &Policy::default(), &lookups).unwrap();
    assert_eq!(user_of(&admin), (1234, 1234), "admin honours the image's USER");
    let nonadmin = build_with(&t, &img, &plain(), &Policy::default(), &lookups).unwrap();
    assert_eq!(user_of(&nonadmin), (1000, 1000), "non-admin runs as its identity");
    let missing = build_with(&t, &img, &root(), &Policy::default(), &Lookups::default()).unwrap_err();
    assert!(missing.to_string().contains("not in the image's /etc/passwd"), "{missing}");

    let userns = Policy { user_namespaces: true, ..Policy::default() };
    let s = build_with(&t, &img, &plain(), &userns, &lookups).unwrap();
    assert_eq!(user_of(&s), (0, 0));
    let linux = s.linux().as_ref().unwrap();
    assert!(ns_types(&s).contains(&"User".to_string()));
    let uids = linux.uid_mappings().clone().unwrap();
    assert_eq!((uids[0].container_id(), uids[0].host_id(), uids[0].size()), (0, 1000, 1));
    let gids = linux.gid_mappings().clone().unwrap();
    assert!(gids.iter().any(|g| g.container_id() == 20000 && g.host_id() == 20000));
    let caps = s.process().as_ref().unwrap().capabilities().clone().unwrap();
    assert!(!caps.effective().as_ref().unwrap().is_empty(), "root of its own namespace");
    assert_eq!(s.process().as_ref().unwrap().user().additional_gids().as_deref(), Some(&[20000][..]));
}

#[test]
fn binds_are_nosuid_and_nodev() {
    let t = task("", "-v /data/in:/in:ro --init", WorkingDirMode::TaskWorkingDir);
    let policy = Policy { bind_mount_prefixes: vec!["/data".into()], ..Policy::default() };
    let lookups = Lookups { bind_sources: vec!["/data/in".into()], ..Lookups::default() };
    let spec = build_with(&t, &image(), &plain(), &policy, &lookups).unwrap();
    let binds: Vec<&Mount> =
        spec.mounts().as_ref().unwrap().iter().filter(|m| m.typ().as_deref() == Some("bind")).collect();
    assert_eq!(binds.len(), 6, "node root, applications, resolv.conf, hosts, -v, init");
    for m in binds {
        let opts = m.options().clone().unwrap_or_default();
        for want in ["nosuid", "nodev"] {
            assert!(opts.iter().any(|o| o == want), "{:?}: {opts:?}", m.destination());
        }
    }
}

#[test]
fn no_working_directory_under_proc() {
    let mut img = image();
    for bad in ["/proc/self/fd/7", "/proc", "/app/../proc/1/cwd"] {
        img.working_dir = Some(bad.into());
        let t = task("", "", WorkingDirMode::ImageDefault);
        let err = build_with(&t, &img, &root(), &Policy::default(), &Lookups::default()).unwrap_err();
        assert!(matches!(err, SpecError::WorkingDir { .. }), "{bad}: {err}");
    }
    img.working_dir = Some("/procedures".into());
    assert!(build_with(
        &task("", "", WorkingDirMode::ImageDefault),
        &img,
        &root(),
        &Policy::default(),
        &Lookups::default()
    )
    .is_ok());
    for flag in ["-w /proc/self/fd/8", "--workdir=/proc", "-w /proc/1/root"] {
        let err = check_task(&task("", flag, WorkingDirMode::TaskWorkingDir)).unwrap_err().to_string();
        assert!(err.contains("run option -") && err.contains("under /proc"), "{flag}: {err}");
    }
}

#[test]
fn application_packages_are_read_only_and_announced() {
    let t = task("", "", WorkingDirMode::TaskWorkingDir);
    let f = Fixture::new(&t);
    let packages = [crate::model::PackageId::new("Blender", "2.79").unwrap()];
    let spec = build(SpecInputs { packages: &packages, ..f.inputs() }).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let root = mounts.iter().position(|m| m.destination() == Path::new("/var/lib/berth/node")).unwrap();
    let apps = mounts.iter().position(|m| m.destination() == Path::new("/var/lib/berth/node/applications")).unwrap();
    assert!(apps > root, "mounted over the node root's bind");
    let opts = mounts[apps].options().clone().unwrap();
    assert!(opts.iter().any(|o| o == "ro") && !opts.iter().any(|o| o == "rw"), "{opts:?}");
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    for name in ["AZ_BATCH_APP_PACKAGE_Blender_2_79", "AZ_BATCH_APP_PACKAGE_blender_2_79"] {
        assert!(env.contains(&format!("{name}=/var/lib/berth/node/applications/Blender/2.79")), "{name}: {env:?}");
    }
}

#[test]
fn a_shared_shim_is_asked_for_by_annotation_only_when_grouped() {
    let t = task("", "", WorkingDirMode::TaskWorkingDir);
    let f = Fixture::new(&t);
    let inputs = SpecInputs { shim_group: Some("berth-job-j1"), ..f.inputs() };
    let grouped = build(inputs).unwrap();
    let annotations = grouped.annotations().clone().unwrap_or_default();
    assert_eq!(annotations.get("io.containerd.runc.v2.group").map(String::as_str), Some("berth-job-j1"));
    let own = build(SpecInputs { shim_group: None, ..inputs }).unwrap();
    assert_eq!(own.annotations().as_ref().map(|a| a.len()).unwrap_or(0), 0, "{:?}", own.annotations());
}
