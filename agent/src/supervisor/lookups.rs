//! What a task's spec needs from the host and the image, looked up just before
//! its container is made (the spec builder itself does no I/O): bind sources
//! with symlinks resolved and checked against the policy again, device numbers,
//! `--env-file` contents, and the image's `/etc/passwd` and `/etc/group` when a
//! user or group is named.

use super::failure::Failure;
use super::Supervisor;
use crate::containerd::ResolvedImage;
use crate::model::{RunAs, TaskKey};
use crate::spec::{self, ImageAccounts, Lookups, MountOpt, Policy, RunOptions, SpecError};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use std::path::{Path, PathBuf};

/// Largest `--env-file` read.
const MAX_ENV_FILE: u64 = 1 << 20;

fn refused(flag: &str, reason: String) -> SpecError {
    SpecError::RunOption { flag: flag.to_owned(), reason }
}

/// The host-side checks, also made when the task is accepted so that a bad
/// bind source, device or a missing init binary is refused at `RunTask`.
pub(super) async fn check_host(o: &RunOptions, policy: &Policy) -> Result<(), SpecError> {
    let (o, policy) = (o.clone(), policy.clone());
    tokio::task::spawn_blocking(move || host_side(&o, &policy).map(drop))
        .await
        .map_err(|e| refused("run_options", e.to_string()))?
}

/// Bind sources, devices and the init binary.
fn host_side(o: &RunOptions, policy: &Policy) -> Result<Lookups, SpecError> {
    let mut l = Lookups { bind_sources: bind_sources(o, policy)?, ..Lookups::default() };
    for d in &o.devices {
        l.devices.push(device(&d.host, &d.container, policy)?);
    }
    // runc has nothing to write on cgroup v2 (no memory.oom_control): the
    // flag would be silently dropped.
    if o.oom_kill_disable && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return Err(refused(
            "--oom-kill-disable",
            "this node uses cgroup v2, which has no switch to turn the OOM killer off".into(),
        ));
    }
    if o.init && !policy.init_binary.is_file() {
        return Err(refused("--init", format!("{} is not installed on this node", policy.init_binary.display())));
    }
    if let spec::Seccomp::Profile(path) = &o.seccomp {
        l.seccomp = Some(seccomp_profile(path, policy)?);
    }
    Ok(l)
}

/// Largest seccomp profile file read.
const MAX_SECCOMP_FILE: u64 = 1 << 20;

/// The profile of `--security-opt seccomp=FILE`: a regular file under the
/// bind prefixes once every symlink is resolved, root's and writable by root
/// only (a task that can write under a prefix must not be able to give
/// itself an allow-everything profile), holding an OCI `linux.seccomp` object.
fn seccomp_profile(path: &str, policy: &Policy) -> Result<oci_spec::runtime::LinuxSeccomp, SpecError> {
    use std::io::Read;
    let bad = |reason: String| refused("--security-opt", format!("seccomp profile {path}: {reason}"));
    let prefixes: Vec<PathBuf> =
        policy.bind_mount_prefixes.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let real = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    if !spec::bind_allowed(&real, &prefixes) {
        return Err(bad(format!(
            "resolves to {}, which is not under a host path this node allows (policy.bind_mount_prefixes)",
            real.display()
        )));
    }
    let file = crate::safefs::open_trusted(&real).map_err(|e| bad(e.to_string()))?;
    let mut text = Vec::new();
    file.take(MAX_SECCOMP_FILE + 1).read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_SECCOMP_FILE {
        return Err(bad(format!("larger than {MAX_SECCOMP_FILE} bytes")));
    }
    spec::parse_seccomp_profile(&text).map_err(bad)
}

pub(in crate::supervisor) async fn lookups(
    sup: &Supervisor,
    key: &TaskKey,
    o: &RunOptions,
    who: &RunAs,
    image: &ResolvedImage,
) -> Result<Lookups, Failure> {
    let sh = &sup.shared;
    let policy = sh.settings.policy.clone();
    let layout = sh.layout.clone();
    let (o2, key2) = (o.clone(), key.clone());
    let host = tokio::task::spawn_blocking(move || -> Result<Lookups, SpecError> {
        let mut l = host_side(&o2, &policy)?;
        for rel in &o2.env_files {
            let file = layout
                .read_task_file(&key2, rel, 0, MAX_ENV_FILE)
                .map_err(|e| refused("--env-file", format!("{rel}: {e}")))?;
            let text = String::from_utf8(file.data).map_err(|_| refused("--env-file", format!("{rel}: not UTF-8")))?;
            l.env_files.extend(spec::parse_env_file(&text).map_err(|e| refused("--env-file", format!("{rel}: {e}")))?);
        }
        Ok(l)
    })
    .await
    .map_err(|e| Failure::Internal(e.to_string()))?
    .map_err(Failure::Lookup)?;

    let names_a_user = o.user.is_some() || image.config.user.is_some() || !o.group_add.is_empty();
    let accounts = if who.admin && !sh.settings.policy.user_namespaces && names_a_user {
        let files = sh
            .runtime
            .image_files(&sh.node.node_id, &image.chain_id, &["/etc/passwd", "/etc/group"])
            .await
            .map_err(Failure::ImageFiles)?;
        let text = |i: usize| files.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
        ImageAccounts::parse(&text(0).unwrap_or_default(), &text(1).unwrap_or_default())
    } else {
        ImageAccounts::default()
    };
    Ok(Lookups { accounts, ..host })
}

/// Each bind source with every symlink resolved, checked against the policy's
/// prefixes (themselves resolved), so a link cannot lead out of them.
fn bind_sources(o: &RunOptions, policy: &Policy) -> Result<Vec<String>, SpecError> {
    let prefixes: Vec<PathBuf> =
        policy.bind_mount_prefixes.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let mut out = Vec::new();
    for m in &o.mounts {
        let MountOpt::Bind { source, .. } = m else { continue };
        let real =
            std::fs::canonicalize(source).map_err(|e| refused("--volume", format!("bind source {source}: {e}")))?;
        if !spec::bind_allowed(&real, &prefixes) {
            return Err(refused(
                "--volume",
                format!(
                    "bind source {source} resolves to {}, which is not under a host path this node allows \
                     (policy.bind_mount_prefixes)",
                    real.display()
                ),
            ));
        }
        out.push(real.to_string_lossy().into_owned());
    }
    Ok(out)
}

/// A host device node, as the container will see it at `container`.
fn device(host: &str, container: &str, policy: &Policy) -> Result<LinuxDevice, SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let real = std::fs::canonicalize(host).map_err(|e| refused("--device", format!("{host}: {e}")))?;
    let allowed = policy.allowed_devices.iter().filter_map(|p| std::fs::canonicalize(p).ok()).any(|p| p == real);
    if !allowed {
        return Err(refused("--device", format!("{host} is not allowed on this node (policy.allowed_devices)")));
    }
    let meta = std::fs::metadata(&real).map_err(|e| refused("--device", format!("{host}: {e}")))?;
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(refused("--device", format!("{host} is not a device node")));
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(Path::new(container))
        .typ(typ)
        .major(nix::sys::stat::major(rdev) as i64)
        .minor(nix::sys::stat::minor(rdev) as i64)
        // Owner and mode as on the host (a 0660 root:render node stays usable by that group).
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .map_err(|e| refused("--device", e.to_string()))
}
