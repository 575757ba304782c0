//! Devices through the Container Device Interface (CDI): vendor specs are
//! loaded from the configured directories with the `container-device-interface`
//! crate, one file at a time (a broken file is reported, not fatal), reloaded
//! when the files change, and fully qualified device names
//! (`vendor.com/class=name`) are injected into a task's OCI spec: device nodes
//! with their device-cgroup rules, mounts, env, hooks, additional gids.
//!
//! GPUs are the devices of the configured GPU classes (`nvidia.com/gpu`, ...);
//! see [`gpus`] for how `--gpus` and the default selection map to names.

pub mod gpus;
pub mod rdma;

use container_device_interface::container_edits::ContainerEdits;
use container_device_interface::device::Device;
use container_device_interface::spec::read_spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// `[devices]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub cdi_output_dir: PathBuf,
    pub gpu_classes: Vec<String>,
    pub inject_all_gpus: bool,
    pub inject_rdma: bool,
    /// Let tasks that ask for specific GPUs share them with others that do.
    pub share_gpus: bool,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    /// Give a non-admin task with RDMA devices CAP_IPC_LOCK too (in every
    /// set, ambient included, as only that keeps it across exec for a
    /// non-root process). Off: it gets the memlock limit alone.
    pub ipc_lock_non_admin: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            cdi_output_dir: "/var/run/cdi".into(),
            gpu_classes: vec!["nvidia.com/gpu".into(), "amd.com/gpu".into()],
            inject_all_gpus: true,
            inject_rdma: true,
            share_gpus: false,
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            ipc_lock_non_admin: false,
        }
    }
}

/// One spec file as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecStatus {
    pub path: PathBuf,
    /// `vendor.com/class`, when the file parsed.
    pub kind: String,
    pub devices: usize,
    /// Why the file could not be used; empty when it loaded.
    pub error: String,
}

struct Loaded {
    /// (path, modified, size) of every spec file: reload when it changes.
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    devices: BTreeMap<String, Device>,
    specs: Vec<SpecStatus>,
}

/// The node's CDI devices.
pub struct Registry {
    pub config: DeviceConfig,
    loaded: Mutex<Loaded>,
    /// RDMA HCAs found at start-up (their CDI spec is written by [`Registry::start`]).
    pub rdma: Vec<rdma::Hca>,
    /// RLIMIT_MEMLOCK of RDMA tasks ([`rdma::memlock_limit`]).
    pub memlock: u64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("unknown CDI device {name:?} (this node has: {known})")]
    Unknown { name: String, known: String },
    #[error("injecting CDI devices failed: {0}")]
    Inject(String),
}

fn spec_files(dirs: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        for p in files {
            let meta = std::fs::metadata(&p).ok();
            out.push((p, meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len())));
        }
    }
    out
}

fn load(dirs: &[PathBuf]) -> Loaded {
    let fingerprint = spec_files(dirs);
    let mut devices = BTreeMap::new();
    let mut specs = Vec::new();
    // Later directories win (the dynamic /var/run/cdi over the static /etc/cdi), as the CDI spec says.
    for (priority, dir) in dirs.iter().enumerate() {
        for (path, _, _) in fingerprint.iter().filter(|(p, _, _)| p.parent() == Some(dir.as_path())) {
            match read_spec(path, i32::try_from(priority).unwrap_or(i32::MAX)) {
                Ok(spec) => {
                    let devs = spec.get_devices();
                    specs.push(SpecStatus {
                        path: path.clone(),
                        kind: format!("{}/{}", spec.get_vendor(), spec.get_class()),
                        devices: devs.len(),
                        error: String::new(),
                    });
                    for dev in devs.into_values() {
                        devices.insert(dev.get_qualified_name(), dev);
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(path = %path.display(), error = %error, "CDI spec not loaded");
                    specs.push(SpecStatus { path: path.clone(), kind: String::new(), devices: 0, error });
                }
            }
        }
    }
    Loaded { fingerprint, devices, specs }
}

impl Registry {
    pub fn new(config: DeviceConfig) -> Self {
        let loaded = load(&config.cdi_spec_dirs);
        Self { config, loaded: Mutex::new(loaded), rdma: Vec::new(), memlock: u64::MAX }
    }

    /// Discovers the RDMA HCAs, writes their CDI spec to `cdi_output_dir`
    /// (removes a stale one when there are none), then loads every spec.
    pub fn start(config: DeviceConfig) -> Self {
        let hcas = rdma::discover(&config.sysfs_root, &config.dev_root);
        if let Err(e) = rdma::write_spec(&config.cdi_output_dir, &hcas, &config.dev_root) {
            tracing::warn!(dir = %config.cdi_output_dir.display(), error = %e, "cannot write the RDMA CDI spec");
        }
        if !hcas.is_empty() {
            tracing::info!(hcas = hcas.len(), "RDMA devices found");
        }
        let memlock = if hcas.is_empty() { u64::MAX } else { rdma::memlock_limit() };
        Self { rdma: hcas, memlock, ..Self::new(config) }
    }

    /// The RDMA device of all HCAs, when berth's spec for them is loaded.
    pub fn rdma_all(&self) -> Option<String> {
        let all = format!("{}=all", rdma::KIND);
        self.current().devices.contains_key(&all).then_some(all)
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Loaded> {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if spec_files(&self.config.cdi_spec_dirs) != l.fingerprint {
            *l = load(&self.config.cdi_spec_dirs);
            tracing::info!(devices = l.devices.len(), "CDI specs reloaded");
        }
        l
    }

    /// Every device name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.current().devices.keys().cloned().collect()
    }

    pub fn specs(&self) -> Vec<SpecStatus> {
        self.current().specs.clone()
    }

    /// The node's GPUs: devices of the GPU classes, without the `all` aliases.
    pub fn gpus(&self) -> Vec<String> {
        gpus::of(&self.names(), &self.config.gpu_classes)
    }

    /// Checks that every name is a known device.
    pub fn check(&self, names: &[String]) -> Result<(), DeviceError> {
        let l = self.current();
        match names.iter().find(|n| !l.devices.contains_key(*n)) {
            Some(name) => Err(DeviceError::Unknown {
                name: name.clone(),
                known: if l.devices.is_empty() {
                    "none".into()
                } else {
                    l.devices.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
            None => Ok(()),
        }
    }

    /// Applies the edits of `names` (and of their specs) to `spec`.
    pub fn inject(&self, spec: &mut oci_spec::runtime::Spec, names: &[String]) -> Result<(), DeviceError> {
        if names.is_empty() {
            return Ok(());
        }
        self.check(names)?;
        let l = self.current();
        let mut edits = ContainerEdits::new();
        let mut seen_specs = Vec::new();
        for name in names {
            let dev = &l.devices[name];
            let mut s = dev.get_spec();
            if !seen_specs.contains(&s.get_path()) {
                seen_specs.push(s.get_path());
                if let Some(e) = s.edits() {
                    edits.append(e).map_err(|e| DeviceError::Inject(e.to_string()))?;
                }
            }
            edits.append(dev.edits()).map_err(|e| DeviceError::Inject(e.to_string()))?;
        }
        edits.apply(spec).map_err(|e| DeviceError::Inject(format!("{e:#}")))?;
        if names.iter().any(|n| n.starts_with(&format!("{}=", rdma::KIND))) {
            rdma::add_limits(spec, self.memlock, self.config.ipc_lock_non_admin);
        }
        Ok(())
    }

    /// What `GetNode` says when NVIDIA device nodes exist but no GPU is known
    /// through CDI.
    pub fn hint(&self) -> Option<String> {
        let nvidia = std::fs::read_dir(&self.config.dev_root).ok()?.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.strip_prefix("nvidia").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        });
        (nvidia && self.gpus().is_empty()).then(|| {
            format!(
                "NVIDIA devices are present in {} but no CDI spec describes them: generate one with \
                 `nvidia-ctk cdi generate --output={}/nvidia.yaml`",
                self.config.dev_root.display(),
                self.config.cdi_output_dir.display()
            )
        })
    }
}

/// Whether `path` looks like a CDI spec file.
pub fn is_spec_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests;
