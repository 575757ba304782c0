//! Reading small files of an image's root filesystem (`/etc/passwd`,
//! `/etc/group`) without creating a container: a read-only view snapshot of the
//! image's layers, under a lease, removed again at once. The layer directories
//! the snapshotter names are read directly (bind and overlay mounts), never
//! following a symlink, so an image cannot point the agent at a host file.

use super::{Containerd, ImageStore, RuntimeError};
use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use containerd_client::types::Mount;
use nix::fcntl::ResolveFlag;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest file read (an `/etc/group` of an image is a few KiB).
const MAX_FILE: u64 = 1 << 20;

impl Containerd {
    pub(super) async fn read_image_files(
        &self,
        node_id: &str,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        let lease = self.create_lease(node_id).await?;
        let key = format!("berth-view-{lease}");
        let view = ViewSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.clone(),
            parent: chain_id.to_owned(),
            labels: Default::default(),
        };
        let result = match self.snapshots().view(self.leased(view, &lease)).await {
            Ok(r) => {
                let dirs = layer_dirs(&r.into_inner().mounts);
                let paths: Vec<String> = paths.iter().map(|p| p.trim_start_matches('/').to_owned()).collect();
                tokio::task::spawn_blocking(move || paths.iter().map(|p| read_in_layers(&dirs, p)).collect())
                    .await
                    .map_err(|e| RuntimeError::Failed { op: "read image files", message: e.to_string() })
            }
            Err(s) => Err(self.status_error("view snapshot", &format!("snapshot {chain_id}"), s)),
        };
        let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key };
        let _ = self.snapshots().remove(self.request(remove)).await;
        self.delete_lease(&lease).await;
        result
    }
}

/// Creates the mount points of `spec`'s mounts that the image lacks, in the
/// writable (upper) layer of a fresh overlay snapshot whose mounts are
/// `mounts`, as the agent (host root). A task in a user namespace cannot create
/// them itself: the image's directories belong to host root, which its
/// namespace does not map. Parent directories are copied up with the mode and
/// owner the image gives them (as overlayfs itself would); nothing is created
/// through a symlink of the image: such a mount point is left to runc.
pub(super) fn create_mount_points(mounts: &[Mount], spec: &oci_spec::runtime::Spec) -> std::io::Result<()> {
    let overlay = mounts.iter().find(|m| m.r#type == "overlay");
    let Some(upper) = overlay.and_then(|m| m.options.iter().find_map(|o| o.strip_prefix("upperdir="))) else {
        return Err(std::io::Error::other("user namespaces need the overlayfs snapshotter"));
    };
    let upper = PathBuf::from(upper);
    let lowers: Vec<PathBuf> = layer_dirs(mounts).into_iter().filter(|d| *d != upper).collect();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if ["/proc", "/sys", "/dev"].iter().any(|k| dest.starts_with(k)) {
            continue;
        }
        let parts: Vec<&std::ffi::OsStr> = dest
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect();
        if parts.is_empty() || in_lowers(&lowers, &parts).is_some() {
            continue; // the image has it: runc mounts over it
        }
        let file = m.typ().as_deref() == Some("bind") && m.source().as_ref().is_some_and(|s| s.is_file());
        let _ = create_beneath(&upper, &lowers, &parts, file)?;
    }
    Ok(())
}

/// What the topmost lower layer holding `parts` has there (not following
/// symlinks); None when no layer has it or a whiteout hides it.
fn in_lowers(lowers: &[PathBuf], parts: &[&std::ffi::OsStr]) -> Option<std::fs::Metadata> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for dir in lowers {
        let path: PathBuf = parts.iter().fold(dir.clone(), |p, c| p.join(c));
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
            return (!whiteout).then_some(meta);
        }
    }
    None
}

/// Creates `parts` under `upper`, parents copied up from the lower layers.
/// Returns false (creating nothing more) where the image has a symlink or a
/// non-directory on the way.
fn create_beneath(upper: &Path, lowers: &[PathBuf], parts: &[&std::ffi::OsStr], file: bool) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let mut path = upper.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let last = i + 1 == parts.len();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.is_dir() && !last {
                continue;
            }
            return Ok(meta.is_dir() != file);
        }
        let lower = in_lowers(lowers, &parts[..=i]);
        if let Some(meta) = &lower {
            if !meta.is_dir() {
                return Ok(false); // a symlink or a file of the image on the way
            }
        }
        if last && file {
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
        } else {
            let mode = lower.as_ref().map_or(0o755, |m| m.mode() & 0o7777);
            std::fs::DirBuilder::new().mode(mode).create(&path)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            if let Some(m) = &lower {
                std::os::unix::fs::chown(&path, Some(m.uid()), Some(m.gid()))?;
            }
        }
    }
    Ok(true)
}

/// The directories of a snapshot's mounts, topmost layer first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                for o in &m.options {
                    if let Some(upper) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(upper));
                    }
                    if let Some(lower) = o.strip_prefix("lowerdir=") {
                        dirs.extend(lower.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

/// The file at `rel` as the merged layers show it: the topmost layer that has
/// it wins; a whiteout there (a 0/0 character device) means it was deleted.
/// A symlink or anything but a regular file reads as absent.
fn read_in_layers(dirs: &[PathBuf], rel: &str) -> Option<Vec<u8>> {
    for dir in dirs {
        let root = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(_) => continue,
        };
        // O_PATH first: an image's device node or FIFO is never opened.
        let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV;
        match crate::safefs::path_at(&root, Path::new(rel), resolve) {
            Ok(fd) => {
                crate::safefs::check_regular(&fd, rel, false).ok()?;
                let file = crate::safefs::reopen(&fd, std::fs::OpenOptions::new().read(true)).ok()?;
                let mut data = Vec::new();
                file.take(MAX_FILE).read_to_end(&mut data).ok()?;
                return Some(data);
            }
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
                // An opaque or whiteout entry on the way stops the search; a plain absence does not.
                if whiteout(dir, rel) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Whether `rel` or a parent of it is a whiteout (0/0 char device) in `dir`.
fn whiteout(dir: &Path, rel: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut p = dir.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return true,
            Ok(m) if m.is_dir() => continue,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_copy_up_parents_and_never_follow_image_links() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(lower.join("tmp")).unwrap();
        std::fs::set_permissions(lower.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir(&upper).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, lower.join("link")).unwrap();
        let mounts = [Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![format!("upperdir={}", upper.display()), format!("lowerdir={}", lower.display())],
        }];
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "x").unwrap();
        let m = |dest: &str, typ: &str, source: &str| {
            oci_spec::runtime::MountBuilder::default().destination(dest).typ(typ).source(source).build().unwrap()
        };
        let spec = oci_spec::runtime::SpecBuilder::default()
            .mounts(vec![
                m("/tmp/work/dir", "bind", "/x"),
                m("/etc/hosts", "bind", &hosts.to_string_lossy()),
                m("/link/evil", "tmpfs", "tmpfs"),
                m("/etc", "bind", "/y"),
                m("/proc", "proc", "proc"),
            ])
            .build()
            .unwrap();
        create_mount_points(&mounts, &spec).unwrap();
        let tmp_up = std::fs::metadata(upper.join("tmp")).unwrap();
        assert_eq!(tmp_up.mode() & 0o7777, 0o1777, "a copied-up parent keeps the image's mode");
        assert!(upper.join("tmp/work/dir").is_dir());
        assert!(upper.join("etc/hosts").is_file());
        assert!(
            !upper.join("link").exists() && std::fs::read_dir(&outside).unwrap().next().is_none(),
            "no write through an image symlink"
        );
        assert!(!upper.join("proc").exists());
        let bind = [Mount { r#type: "bind".into(), source: "/x".into(), target: String::new(), options: vec![] }];
        assert!(create_mount_points(&bind, &spec).is_err(), "overlay only");
    }

    #[test]
    fn top_layer_wins_and_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
        for d in [&top, &bottom] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(bottom.join("etc/passwd"), "old").unwrap();
        std::fs::write(bottom.join("etc/group"), "g").unwrap();
        std::fs::write(top.join("etc/passwd"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", top.join("etc/hostname")).unwrap();
        let dirs = vec![top.clone(), bottom.clone()];
        assert_eq!(read_in_layers(&dirs, "etc/passwd").as_deref(), Some(&b"new"[..]));
        assert_eq!(read_in_layers(&dirs, "etc/group").as_deref(), Some(&b"g"[..]));
        assert_eq!(read_in_layers(&dirs, "etc/hostname"), None, "a symlink is not followed to the host");
        assert_eq!(read_in_layers(&dirs, "etc/shadow"), None);
        // An image's /etc/passwd that is a device node or a FIFO is never opened.
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        std::fs::remove_file(top.join("etc/passwd")).unwrap();
        mknod(&top.join("etc/passwd"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o644), makedev(1, 5)).unwrap();
        let ino = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_NONBLOCK).unwrap();
        ino.add_watch(&top.join("etc/passwd"), nix::sys::inotify::AddWatchFlags::IN_OPEN).unwrap();
        assert_eq!(read_in_layers(&dirs, "etc/passwd"), None);
        nix::unistd::mkfifo(&top.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(read_in_layers(&dirs, "etc/fifo"), None, "a FIFO does not block the read");
        assert!(ino.read_events().is_err(), "the device node was opened");
        let m = |t: &str, source: &str, options: &[&str]| Mount {
            r#type: t.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(layer_dirs(&[m("bind", "/a", &["ro", "rbind"])]), [PathBuf::from("/a")]);
        assert_eq!(
            layer_dirs(&[m("overlay", "overlay", &["index=off", "lowerdir=/l1:/l2"])]),
            [PathBuf::from("/l1"), PathBuf::from("/l2")]
        );
    }
}
