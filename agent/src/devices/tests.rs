//! CDI registry tests against fixture spec files (an NVIDIA-style spec as
//! `nvidia-ctk` writes it, and a broken one) and device nodes made with mknod
//! from /dev/null's numbers.

use super::*;
use oci_spec::runtime::SpecBuilder;

/// A temp dir with `dev/` (nvidia0, nvidia1, nvidiactl: char 1:3) and `cdi/`.
pub(super) fn fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(tmp.path().join("cdi")).unwrap();
    for n in ["nvidia0", "nvidia1", "nvidiactl"] {
        nix::sys::stat::mknod(
            &dev.join(n),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    std::fs::write(tmp.path().join("libcuda.so.1"), "fake library").unwrap();
    tmp
}

pub(super) fn nvidia_spec(root: &Path) -> String {
    let d = root.join("dev");
    format!(
        r#"---
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {d}/nvidia0
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: {d}/nvidia1
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {d}/nvidia0
    - path: /dev/nvidia1
      hostPath: {d}/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: {d}/nvidiactl
  mounts:
  - hostPath: {lib}
    containerPath: /usr/lib/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: /bin/true
    args: [true]
"#,
        d = d.display(),
        lib = root.join("libcuda.so.1").display()
    )
}

fn config(root: &Path) -> DeviceConfig {
    DeviceConfig { cdi_spec_dirs: vec![root.join("cdi")], dev_root: root.join("dev"), ..DeviceConfig::default() }
}

#[test]
fn loads_specs_reports_broken_ones_and_reloads_on_change() {
    let tmp = fixture();
    std::fs::write(tmp.path().join("cdi/nvidia.yaml"), nvidia_spec(tmp.path())).unwrap();
    std::fs::write(tmp.path().join("cdi/broken.yaml"), "cdiVersion: [not a spec").unwrap();
    let r = Registry::new(config(tmp.path()));
    assert_eq!(r.names(), ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]);
    assert_eq!(r.gpus(), ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]);
    let specs = r.specs();
    let broken = specs.iter().find(|s| s.path.ends_with("broken.yaml")).unwrap();
    assert!(!broken.error.is_empty() && broken.devices == 0, "{broken:?}");
    let good = specs.iter().find(|s| s.path.ends_with("nvidia.yaml")).unwrap();
    assert_eq!((good.kind.as_str(), good.devices, good.error.as_str()), ("nvidia.com/gpu", 3, ""));
    assert_eq!(r.hint(), None, "the GPUs have a spec");

    std::fs::remove_file(tmp.path().join("cdi/nvidia.yaml")).unwrap();
    assert!(r.names().is_empty(), "a removed spec's devices go");
    assert!(r.hint().unwrap().contains("nvidia-ctk cdi generate"), "device nodes without a spec");
}

#[test]
fn injects_nodes_cgroup_rules_env_mounts_and_hooks() {
    let tmp = fixture();
    std::fs::write(tmp.path().join("cdi/nvidia.yaml"), nvidia_spec(tmp.path())).unwrap();
    let r = Registry::new(config(tmp.path()));
    let mut spec = SpecBuilder::default().build().unwrap();
    r.inject(&mut spec, &["nvidia.com/gpu=1".to_string()]).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let paths: Vec<String> = linux.devices().iter().flatten().map(|d| d.path().display().to_string()).collect();
    assert!(paths.contains(&"/dev/nvidia1".to_string()) && paths.contains(&"/dev/nvidiactl".to_string()), "{paths:?}");
    assert!(!paths.contains(&"/dev/nvidia0".to_string()), "a GPU not asked for is absent");
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(rules.iter().any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)), "{rules:?}");
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=void".to_string()));
    assert!(spec.mounts().iter().flatten().any(|m| m.destination().to_str() == Some("/usr/lib/libcuda.so.1")));
    assert!(spec.hooks().as_ref().is_some_and(|h| h.create_container().as_ref().is_some_and(|c| !c.is_empty())));

    let err = r.inject(&mut spec, &["nvidia.com/gpu=7".to_string()]).unwrap_err();
    assert!(matches!(err, DeviceError::Unknown { .. }) && err.to_string().contains("nvidia.com/gpu=0"), "{err}");
}

#[test]
fn gpu_requests() {
    use super::gpus::{parse, select, GpuRequest};
    let gpus: Vec<String> = vec!["nvidia.com/gpu=0".into(), "nvidia.com/gpu=1".into()];
    assert_eq!(parse("all").unwrap(), GpuRequest::All);
    assert_eq!(parse("2").unwrap(), GpuRequest::Count(2));
    assert_eq!(parse("\"device=0,1\"").unwrap(), GpuRequest::Ids(vec!["0".into(), "1".into()]));
    assert!(parse("0").is_err() && parse("capabilities=compute").is_err() && parse("device=").is_err());
    assert_eq!(select(&GpuRequest::Count(1), &gpus).unwrap(), ["nvidia.com/gpu=0"]);
    assert_eq!(select(&GpuRequest::Ids(vec!["1".into()]), &gpus).unwrap(), ["nvidia.com/gpu=1"]);
    assert_eq!(select(&GpuRequest::All, &gpus).unwrap(), gpus);
    assert!(select(&GpuRequest::Count(3), &gpus).unwrap_err().contains("has 2"));
    assert!(select(&GpuRequest::All, &[]).is_err());
    assert!(select(&GpuRequest::Ids(vec!["9".into()]), &gpus).is_err());
}

#[test]
fn rdma_spec_is_written_loads_back_and_brings_memlock_and_ipc_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (sys, dev) = rdma::tests::fixture(tmp.path());
    // CDI needs real device nodes: replace the fixture's files by char devices.
    for n in ["uverbs0", "umad0", "issm0", "uverbs1", "umad1", "issm1", "rdma_cm"] {
        let p = dev.join("infiniband").join(n);
        std::fs::remove_file(&p).unwrap();
        nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    let cdi = tmp.path().join("cdi");
    let cfg = DeviceConfig {
        cdi_spec_dirs: vec![cdi.clone()],
        cdi_output_dir: cdi.clone(),
        sysfs_root: sys,
        dev_root: dev,
        ..DeviceConfig::default()
    };
    let r = Registry::start(cfg.clone());
    assert_eq!(r.rdma.len(), 2);
    assert_eq!(r.names(), ["berth.dev/infiniband=all", "berth.dev/infiniband=mlx5_0", "berth.dev/infiniband=mlx5_1"]);
    assert!(r.specs().iter().all(|s| s.error.is_empty()), "{:?}", r.specs());
    assert_eq!(r.rdma_all().as_deref(), Some("berth.dev/infiniband=all"));

    let mut spec = oci_spec::runtime::SpecBuilder::default()
        .process(oci_spec::runtime::ProcessBuilder::default().build().unwrap())
        .build()
        .unwrap();
    r.inject(&mut spec, &["berth.dev/infiniband=mlx5_1".to_string()]).unwrap();
    let paths: Vec<String> =
        spec.linux().as_ref().unwrap().devices().iter().flatten().map(|d| d.path().display().to_string()).collect();
    assert_eq!(
        paths,
        ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs1", "/dev/infiniband/umad1", "/dev/infiniband/issm1"]
    );
    let rlimits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
    assert!(rlimits
        .iter()
        .any(|l| l.typ() == oci_spec::runtime::PosixRlimitType::RlimitMemlock && l.soft() == r.memlock));

    // Without HCAs the spec is removed again.
    let empty = DeviceConfig { sysfs_root: tmp.path().join("none"), ..cfg };
    let r = Registry::start(empty);
    assert!(r.rdma.is_empty() && r.names().is_empty());
}

#[test]
fn additional_gids_of_a_spec_reach_the_process() {
    let tmp = fixture();
    let spec_text = format!(
        "cdiVersion: \"0.7.0\"\nkind: example.com/video\ndevices:\n- name: \"0\"\n  containerEdits:\n    \
         deviceNodes:\n    - path: /dev/video0\n      hostPath: {}/nvidia0\n    additionalGids: [44, 45]\n",
        tmp.path().join("dev").display()
    );
    std::fs::write(tmp.path().join("cdi/video.yaml"), spec_text).unwrap();
    let r = Registry::new(config(tmp.path()));
    assert!(r.specs().iter().all(|s| s.error.is_empty()), "{:?}", r.specs());
    let mut spec =
        SpecBuilder::default().process(oci_spec::runtime::ProcessBuilder::default().build().unwrap()).build().unwrap();
    r.inject(&mut spec, &["example.com/video=0".to_string()]).unwrap();
    let gids = spec.process().as_ref().unwrap().user().additional_gids().clone().unwrap_or_default();
    assert!(gids.contains(&44) && gids.contains(&45), "{gids:?}");
}
