//! CDI devices in real containers: a GPU-like fixture (device nodes made with
//! mknod from /dev/null's numbers under a temp /dev root, and an NVIDIA-style
//! spec as `nvidia-ctk` writes it, with env, a library mount and a hook).

use berth_tests::v1 as pb;
use berth_tests::{failure_code, task, with_options, Agent, AgentOptions};
use std::path::Path;
use tonic::Code;

fn fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let (dev, cdi) = (tmp.path().join("dev"), tmp.path().join("cdi"));
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&cdi).unwrap();
    for n in ["nvidia0", "nvidia1", "nvidiactl"] {
        let st = std::process::Command::new("mknod").arg(dev.join(n)).args(["c", "1", "3"]).status().unwrap();
        assert!(st.success());
    }
    std::fs::write(tmp.path().join("libcuda.so.1"), "fake library\n").unwrap();
    let d = dev.display();
    let spec = format!(
        "cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n\
         - name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia0\n      hostPath: {d}/nvidia0\n\
         - name: \"1\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia1\n      hostPath: {d}/nvidia1\n\
         containerEdits:\n  env:\n  - NVIDIA_VISIBLE_DEVICES=void\n  deviceNodes:\n  - path: /dev/nvidiactl\n    hostPath: {d}/nvidiactl\n\
         \x20 mounts:\n  - hostPath: {lib}\n    containerPath: /usr/lib/libcuda.so.1\n    options: [ro, nosuid, nodev, bind]\n\
         \x20 hooks:\n  - hookName: createContainer\n    path: /bin/true\n",
        lib = tmp.path().join("libcuda.so.1").display()
    );
    std::fs::write(cdi.join("nvidia.yaml"), spec).unwrap();
    std::fs::write(cdi.join("broken.yaml"), "cdiVersion: [oops").unwrap();
    tmp
}

fn gpu_agent_options(root: &Path) -> AgentOptions {
    AgentOptions {
        extra_config: format!(
            "[devices]\ncdi_spec_dirs = [\"{}\"]\ndev_root = \"{}\"\n",
            root.join("cdi").display(),
            root.join("dev").display()
        ),
        ..AgentOptions::default()
    }
}

const PROBE: &str =
    "/bin/sh -c 'ls /dev | grep nvidia | tr \"\\n\" \" \"; echo; echo x > /dev/nvidiactl && echo writable; \
                     echo $NVIDIA_VISIBLE_DEVICES; cat /usr/lib/libcuda.so.1 2>/dev/null || echo no-library'";

#[tokio::test]
async fn gpus_by_default_by_count_and_by_name() {
    let fx = fixture();
    let agent = Agent::start(gpu_agent_options(fx.path())).await;
    let mut c = agent.client().await;
    let lines = |s: String| s.lines().map(|l| l.trim().to_owned()).collect::<Vec<_>>();

    // Every GPU by default, with the spec's env, mount and device cgroup rules (writable).
    let done = c.run_done(task("gpu", "default", PROBE)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {}", c.read("gpu", "default", "stderr.txt").await.unwrap());
    assert_eq!(
        lines(c.read("gpu", "default", "stdout.txt").await.unwrap()),
        ["nvidia0 nvidia1 nvidiactl", "writable", "void", "fake library"]
    );
    // --gpus 1: the first GPU only.
    let done = c.run_done(with_options(task("gpu", "one", PROBE), "--gpus 1")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(lines(c.read("gpu", "one", "stdout.txt").await.unwrap())[0], "nvidia0 nvidiactl");
    // --runtime nvidia, as the NVIDIA images' docs write it: every GPU, through CDI.
    let done = c.run_done(with_options(task("gpu", "runtime", PROBE), "--runtime nvidia")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(lines(c.read("gpu", "runtime", "stdout.txt").await.unwrap())[0], "nvidia0 nvidia1 nvidiactl");
    let done = c.run_done(with_options(task("gpu", "runtime1", PROBE), "--runtime nvidia --gpus 1")).await;
    assert_eq!(lines(c.read("gpu", "runtime1", "stdout.txt").await.unwrap())[0], "nvidia0 nvidiactl", "{done:?}");
    // By name.
    let mut spec = task("gpu", "named", PROBE);
    spec.container.as_mut().unwrap().devices = vec!["nvidia.com/gpu=1".into()];
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(lines(c.read("gpu", "named", "stdout.txt").await.unwrap())[0], "nvidia1 nvidiactl");

    // Unknown devices and more GPUs than the node has: refused, nothing created.
    let mut unknown = task("gpu", "unknown", "/bin/true");
    unknown.container.as_mut().unwrap().devices = vec!["vendor.com/fpga=0".into()];
    let err = c.run(unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("vendor.com/fpga=0") && err.message().contains("nvidia.com/gpu=0"),
        "{}",
        err.message()
    );
    let err = c.run(with_options(task("gpu", "many", "/bin/true"), "--gpus 3")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("--gpus") && err.message().contains("2 GPU"), "{}", err.message());
    assert!(c.get("gpu", "unknown").await.is_err() && c.get("gpu", "many").await.is_err());

    // GetNode: the GPUs, the specs, and the broken one with its reason.
    let node = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
    assert_eq!(node.gpus, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]);
    let broken = node.cdi_specs.iter().find(|s| s.path.ends_with("broken.yaml")).expect("broken spec listed");
    assert!(!broken.error.is_empty(), "{broken:?}");
    assert!(node.cdi_specs.iter().any(|s| s.kind == "nvidia.com/gpu" && s.devices == 2 && s.error.is_empty()));
}

#[tokio::test]
async fn default_injection_can_be_turned_off_and_nodes_without_specs_are_reported() {
    let fx = fixture();
    let mut opts = gpu_agent_options(fx.path());
    opts.extra_config.push_str("inject_all_gpus = false\n");
    let agent = Agent::start(opts).await;
    let mut c = agent.client().await;
    let done = c.run_done(task("gpu", "none", "/bin/sh -c 'ls /dev | grep -c nvidia || true'")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("gpu", "none", "stdout.txt").await.unwrap().trim(), "0");
    drop(c);
    drop(agent);

    // NVIDIA nodes without a spec: GetNode says how to make one.
    std::fs::remove_file(fx.path().join("cdi/nvidia.yaml")).unwrap();
    let agent = Agent::start(gpu_agent_options(fx.path())).await;
    let mut c = agent.client().await;
    let node = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
    assert!(node.gpus.is_empty());
    assert!(node.notes.iter().any(|n| n.contains("nvidia-ctk cdi generate")), "{:?}", node.notes);
    let done = c.run_done(with_options(task("gpu", "x", "/bin/true"), "")).await;
    assert_eq!(failure_code(&done), "", "a node without GPUs runs tasks as before: {done:?}");
}

/// A sysfs tree with two HCAs and their character devices (made with mknod
/// from /dev/null's numbers) under a temp dev root.
fn rdma_fixture(root: &Path) {
    for (i, (hca, state, ll)) in
        [("mlx5_0", "4: ACTIVE", "InfiniBand"), ("mlx5_1", "1: DOWN", "Ethernet")].iter().enumerate()
    {
        let port = root.join(format!("sys/class/infiniband/{hca}/ports/1"));
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("state"), format!("{state}\n")).unwrap();
        std::fs::write(port.join("link_layer"), format!("{ll}\n")).unwrap();
        for (class, prefix) in [("infiniband_verbs", "uverbs"), ("infiniband_mad", "umad")] {
            let d = root.join(format!("sys/class/{class}/{prefix}{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("ibdev"), format!("{hca}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("dev/infiniband")).unwrap();
        for n in ["uverbs", "umad", "issm"] {
            let p = root.join(format!("dev/infiniband/{n}{i}"));
            assert!(std::process::Command::new("mknod").arg(&p).args(["c", "1", "3"]).status().unwrap().success());
        }
    }
    let cm = root.join("dev/infiniband/rdma_cm");
    assert!(std::process::Command::new("mknod").arg(&cm).args(["c", "1", "3"]).status().unwrap().success());
}

#[tokio::test]
async fn rdma_devices_are_discovered_injected_and_bring_memlock() {
    let tmp = tempfile::tempdir().unwrap();
    rdma_fixture(tmp.path());
    let cdi = tmp.path().join("cdi");
    let extra = format!(
        "[devices]\ncdi_spec_dirs = [\"{c}\"]\ncdi_output_dir = \"{c}\"\nsysfs_root = \"{s}\"\ndev_root = \"{d}\"\n",
        c = cdi.display(),
        s = tmp.path().join("sys").display(),
        d = tmp.path().join("dev").display()
    );
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let probe = "/bin/sh -c 'ls /dev/infiniband | tr \"\\n\" \" \"; echo; ulimit -l; grep CapEff /proc/self/status; \
                 echo x > /dev/infiniband/uverbs1 && echo writable'";
    // RDMA devices by default, with unlimited locked memory; a non-admin task gets no capability
    // (CAP_IPC_LOCK only with [devices] ipc_lock_non_admin), an admin one CAP_IPC_LOCK.
    let done = c.run_done(task("rdma", "default", probe)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?} {}", c.read("rdma", "default", "stderr.txt").await.unwrap());
    let out = c.read("rdma", "default", "stdout.txt").await.unwrap();
    let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    // Unlimited where root may raise the limit (CAP_SYS_RESOURCE); else the host's hard limit.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let sys_resource = u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0;
    let memlock = if sys_resource {
        "unlimited".to_string()
    } else {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let hard =
            limits.lines().find(|l| l.starts_with("Max locked memory")).unwrap().split_whitespace().nth(4).unwrap();
        if hard == "unlimited" {
            hard.to_string()
        } else {
            (hard.parse::<u64>().unwrap() / 1024).to_string()
        }
    };
    assert_eq!(
        lines,
        ["issm0 issm1 rdma_cm umad0 umad1 uverbs0 uverbs1", &memlock, "CapEff: 0000000000000000", "writable"]
    );
    let caps = "/bin/sh -c 'grep -E \"Cap(Inh|Eff|Amb)\" /proc/self/status'";
    let done = c.run_done(berth_tests::as_auto_user(task("rdma", "admin", caps), pb::AutoUserScope::Pool, true)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let out = c.read("rdma", "admin", "stdout.txt").await.unwrap();
    let caps: Vec<(String, u64)> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        .collect();
    let ipc_lock = 1u64 << 14;
    assert_eq!(
        caps.iter().map(|(k, v)| (k.as_str(), v & ipc_lock != 0)).collect::<Vec<_>>(),
        [("CapInh", false), ("CapEff", true), ("CapAmb", false)],
        "{out}"
    );
    // One HCA by name.
    let mut spec = task("rdma", "one", "/bin/sh -c 'ls /dev/infiniband | tr \"\\n\" \" \"'");
    spec.container.as_mut().unwrap().devices = vec!["berth.dev/infiniband=mlx5_0".into()];
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("rdma", "one", "stdout.txt").await.unwrap().trim(), "issm0 rdma_cm umad0 uverbs0");

    // GetNode: both HCAs with their port state; the spec berth wrote loads back.
    let node = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
    let hcas: Vec<(String, String, String)> = node
        .rdma_devices
        .iter()
        .map(|d| (d.name.clone(), d.ports[0].state.clone(), d.ports[0].link_layer.clone()))
        .collect();
    assert_eq!(
        hcas,
        [
            ("mlx5_0".to_string(), "ACTIVE".to_string(), "InfiniBand".to_string()),
            ("mlx5_1".to_string(), "DOWN".to_string(), "Ethernet".to_string())
        ]
    );
    assert!(node.cdi_specs.iter().any(|s| s.kind == "berth.dev/infiniband" && s.devices == 3 && s.error.is_empty()));

    // berthctl node --output json shows them.
    let out = std::process::Command::new(berth_tests::binary("berthctl"))
        .args(["--addr", &agent.addr(), "node", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rdma_devices"][0]["name"], "mlx5_0");
    assert_eq!(v["rdma_devices"][0]["ports"][0]["state"], "ACTIVE");
    assert!(v["cdi_devices"].as_array().unwrap().iter().any(|d| d == "berth.dev/infiniband=all"));
}

#[tokio::test]
async fn specific_gpus_are_not_shared_between_running_tasks() {
    let fx = fixture();
    let agent = Agent::start(gpu_agent_options(fx.path())).await;
    let mut c = agent.client().await;
    let ts = |t: &pb::TaskInfo, which: &str| {
        let p = if which == "start" { t.started_at } else { t.completed_at }.unwrap();
        (p.seconds, p.nanos)
    };
    c.run(with_options(task("excl", "first", "/bin/sh -c 'sleep 2'"), "--gpus all")).await.unwrap();
    c.wait_state("excl", "first", pb::TaskState::Running, std::time::Duration::from_secs(30)).await;
    c.run(with_options(task("excl", "second", "/bin/true"), "--gpus 1")).await.unwrap();
    // A task that asks for nothing shares the GPUs and is not held up.
    let shared = c.run_done(task("excl", "shared", "/bin/sh -c 'ls /dev | grep -c nvidia'")).await;
    assert_eq!(shared.exit_code, Some(0));
    let second = c.get("excl", "second").await.unwrap();
    assert_eq!(second.state, pb::TaskState::Preparing as i32, "waits for a GPU: {second:?}");
    let first = c.wait_done("excl", "first").await;
    let second = c.wait_done("excl", "second").await;
    assert_eq!(second.exit_code, Some(0), "{second:?}");
    assert!(ts(&second, "start") >= ts(&first, "end"), "the second started after the first released its GPUs");
}
