//! Unpacking an application package: a zip, or a gzip-compressed tar, into
//! a new directory only the agent writes (below `applications/`, root's).
//!
//! Every entry is checked before it is written:
//! - its name must stay inside (no absolute path, no `..`), and nothing is
//!   ever written through a link an earlier entry made;
//! - only files, directories, symbolic links and (tar) hard links to a file
//!   already unpacked are taken: a device node or a FIFO fails the package;
//! - the bytes unpacked are capped (a decompression bomb fails it);
//! - modes are the agent's: directories 0755, files 0644, or 0755 when the
//!   owner could run them (no set-uid, no write for others), owner root.
//!
//! Blocking: run it on a blocking thread.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What an archive is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Zip,
    TarGz,
}

/// Why a package cannot be unpacked: its content (`Bad`) or the node (`Io`).
#[derive(Debug, thiserror::Error)]
pub(super) enum UnpackError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Io(String),
}

pub(super) fn sniff(archive: &Path) -> io::Result<Option<Format>> {
    let mut head = [0u8; 4];
    let mut f = fs::File::open(archive)?;
    let n = f.read(&mut head)?;
    Ok(match &head[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Some(Format::Zip),
        [0x1f, 0x8b, ..] => Some(Format::TarGz),
        _ => None,
    })
}

/// Unpacks `archive` into the (new, empty) directory `dest`; returns the bytes written.
pub(super) fn unpack(archive: &Path, dest: &Path, max_bytes: u64) -> Result<u64, UnpackError> {
    let io = |e: io::Error| UnpackError::Io(format!("cannot read the archive: {e}"));
    let format = sniff(archive)
        .map_err(io)?
        .ok_or_else(|| UnpackError::Bad("the package is neither a zip nor a gzip-compressed tar archive".into()))?;
    let mut out = Out { root: dest.to_owned(), written: 0, max: max_bytes };
    let file = fs::File::open(archive).map_err(io)?;
    match format {
        Format::Zip => zip_entries(file, &mut out)?,
        Format::TarGz => tar_entries(file, &mut out)?,
    }
    Ok(out.written)
}

fn zip_entries(file: fs::File, out: &mut Out) -> Result<(), UnpackError> {
    let bad = |e: zip::result::ZipError| UnpackError::Bad(format!("the zip archive cannot be read: {e}"));
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file)).map_err(bad)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(bad)?;
        let name = entry.name().map_err(bad)?.into_owned();
        let rel = checked(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if entry.is_dir() {
            out.dir(&rel)?;
        } else if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| UnpackError::Bad(format!("{name}: the link's target cannot be read: {e}")))?;
            out.symlink(&rel, &target)?;
        } else {
            let mode = entry.unix_mode().unwrap_or(0o644);
            if mode & 0o170000 != 0 && mode & 0o170000 != 0o100000 {
                return Err(special(&name));
            }
            out.file(&rel, mode, &mut entry)?;
        }
    }
    Ok(())
}

fn tar_entries(file: fs::File, out: &mut Out) -> Result<(), UnpackError> {
    use tar::EntryType as E;
    let bad = |e: io::Error| UnpackError::Bad(format!("the tar archive cannot be read: {e}"));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        // Metadata entries (pax headers, GNU long names) are read by the crate.
        if matches!(kind, E::XHeader | E::XGlobalHeader | E::GNULongName | E::GNULongLink) {
            continue;
        }
        let rel = checked(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        match kind {
            E::Directory => out.dir(&rel)?,
            E::Regular | E::Continuous | E::GNUSparse => {
                let mode = entry.header().mode().unwrap_or(0o644);
                out.file(&rel, mode, &mut entry)?
            }
            E::Symlink => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                out.symlink(&rel, &target.unwrap_or_default())?
            }
            E::Link => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                out.hard_link(&rel, &checked(&target.unwrap_or_default())?)?
            }
            _ => return Err(special(&name)),
        }
    }
    Ok(())
}

fn special(name: &str) -> UnpackError {
    UnpackError::Bad(format!(
        "{name:?} is a device node, FIFO or socket; a package may hold only files, directories and links"
    ))
}

/// An entry's name as a relative path that stays inside.
fn checked(name: &str) -> Result<PathBuf, UnpackError> {
    if name.contains('\0') {
        return Err(UnpackError::Bad("an entry's name holds a NUL byte".into()));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Bad(format!("entry {name:?} leaves the package's directory")));
            }
        }
    }
    Ok(rel)
}

struct Out {
    root: PathBuf,
    written: u64,
    max: u64,
}

impl Out {
    fn io(&self, rel: &Path, e: io::Error) -> UnpackError {
        UnpackError::Io(format!("cannot unpack {}: {e}", rel.display()))
    }

    /// Makes `rel`'s parents as real directories; refuses to go through a
    /// link or a file an earlier entry made.
    fn parents(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let mut cur = self.root.clone();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::Bad(format!(
                        "entry {} goes through a link or a file of the package",
                        rel.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| self.io(rel, e))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).map_err(|e| self.io(rel, e))?;
                }
                Err(e) => return Err(self.io(rel, e)),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Clears the name for a new entry (a later entry replaces an earlier
    /// file or link, as tar does; never a directory).
    fn clear(&self, rel: &Path, path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_dir() => {
                Err(UnpackError::Bad(format!("entry {} replaces a directory", rel.display())))
            }
            Ok(_) => fs::remove_file(path).map_err(|e| self.io(rel, e)),
            Err(_) => Ok(()),
        }
    }

    fn dir(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let path = self.parents(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => Ok(()),
            Ok(_) => Err(UnpackError::Bad(format!("directory {} replaces a file or link", rel.display()))),
            Err(_) => {
                fs::create_dir(&path).map_err(|e| self.io(rel, e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| self.io(rel, e))
            }
        }
    }

    fn file(&mut self, rel: &Path, mode: u32, data: &mut dyn Read) -> Result<(), UnpackError> {
        let path = self.parents(rel)?;
        self.clear(rel, &path)?;
        let perm = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perm)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.io(rel, e))?;
        let room = self.max.saturating_sub(self.written);
        let n = io::copy(&mut data.take(room.saturating_add(1)), &mut f).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                UnpackError::Bad(format!("{}: the archive is corrupt: {e}", rel.display()))
            }
            _ => self.io(rel, e),
        })?;
        if n > room {
            return Err(UnpackError::Bad(format!(
                "the package unpacks to more than {} bytes ([staging] max_task_bytes)",
                self.max
            )));
        }
        self.written += n;
        f.set_permissions(fs::Permissions::from_mode(perm)).map_err(|e| self.io(rel, e))
    }

    fn symlink(&mut self, rel: &Path, target: &str) -> Result<(), UnpackError> {
        if target.is_empty() || target.contains('\0') {
            return Err(UnpackError::Bad(format!("link {} has no target", rel.display())));
        }
        let path = self.parents(rel)?;
        self.clear(rel, &path)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| self.io(rel, e))
    }

    fn hard_link(&mut self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        let path = self.parents(rel)?;
        let src = self.parents(target)?;
        match fs::symlink_metadata(&src) {
            Ok(m) if m.file_type().is_file() => {}
            _ => {
                return Err(UnpackError::Bad(format!(
                    "hard link {} names {}, which is no file unpacked before it",
                    rel.display(),
                    target.display()
                )))
            }
        }
        self.clear(rel, &path)?;
        fs::hard_link(&src, &path).map_err(|e| self.io(rel, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    type Builder = tar::Builder<flate2::write::GzEncoder<fs::File>>;
    type Case = (Box<dyn Fn(&mut Builder)>, &'static str);

    fn tar_gz(dir: &Path, build: impl FnOnce(&mut Builder)) -> PathBuf {
        let path = dir.join("p.tar.gz");
        let gz = flate2::write::GzEncoder::new(fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h
    }

    #[test]
    fn a_tar_gz_unpacks_with_the_agents_modes() {
        let d = tempfile::tempdir().unwrap();
        let archive = tar_gz(d.path(), |b| {
            b.append_data(&mut header(tar::EntryType::Regular, 5, 0o4777), "bin/run.sh", &b"hello"[..]).unwrap();
            b.append_data(&mut header(tar::EntryType::Regular, 2, 0o600), "./data/x", &b"xy"[..]).unwrap();
            let mut l = header(tar::EntryType::Symlink, 0, 0o777);
            b.append_link(&mut l, "lib/current", "../bin").unwrap();
            let mut h = header(tar::EntryType::Link, 0, 0o644);
            b.append_link(&mut h, "data/y", "data/x").unwrap();
        });
        let dest = d.path().join("out");
        fs::create_dir(&dest).unwrap();
        assert_eq!(unpack(&archive, &dest, 1 << 20).unwrap(), 7);
        let run = fs::metadata(dest.join("bin/run.sh")).unwrap();
        assert_eq!(run.mode() & 0o7777, 0o755, "no set-uid, no write for others");
        assert_eq!(fs::metadata(dest.join("data/x")).unwrap().mode() & 0o7777, 0o644, "readable by every task");
        assert_eq!(fs::read_link(dest.join("lib/current")).unwrap(), Path::new("../bin"));
        assert_eq!(fs::read(dest.join("data/y")).unwrap(), b"xy");
    }

    #[test]
    fn escaping_names_links_and_devices_fail_the_package() {
        let d = tempfile::tempdir().unwrap();
        let cases: Vec<Case> = vec![
            (
                Box::new(|b| {
                    let mut h = header(tar::EntryType::Regular, 1, 0o644);
                    // The builder refuses `..`; write the name raw.
                    h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "leaves",
            ),
            (
                Box::new(|b| {
                    let mut l = header(tar::EntryType::Symlink, 0, 0o777);
                    b.append_link(&mut l, "etc", "/etc").unwrap();
                    b.append_data(&mut header(tar::EntryType::Regular, 1, 0o644), "etc/evil", &b"x"[..]).unwrap();
                }),
                "goes through a link",
            ),
            (
                Box::new(|b| {
                    b.append_data(&mut header(tar::EntryType::Fifo, 0, 0o644), "fifo", io::empty()).unwrap();
                }),
                "FIFO",
            ),
            (
                Box::new(|b| {
                    let mut h = header(tar::EntryType::Link, 0, 0o644);
                    b.append_link(&mut h, "passwd", "/etc/passwd").unwrap();
                }),
                "leaves",
            ),
            (
                Box::new(|b| {
                    b.append_data(&mut header(tar::EntryType::Regular, 4096, 0o644), "big", &[0u8; 4096][..]).unwrap();
                }),
                "more than",
            ),
        ];
        for (i, (build, says)) in cases.into_iter().enumerate() {
            let archive = tar_gz(d.path(), |b| build(b));
            let dest = d.path().join(format!("out{i}"));
            fs::create_dir(&dest).unwrap();
            let e = unpack(&archive, &dest, 1024).unwrap_err();
            assert!(matches!(e, UnpackError::Bad(_)) && e.to_string().contains(says), "{i}: {e}");
        }
        assert!(!Path::new("/etc/evil").exists());
    }

    #[test]
    fn a_zip_unpacks_and_junk_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.zip");
        let mut z = zip::ZipWriter::new(fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        z.add_directory("tool/", opts).unwrap();
        z.start_file("tool/run", opts).unwrap();
        z.write_all(b"#!/bin/sh\n").unwrap();
        z.start_file("../../escape", opts).unwrap();
        z.write_all(b"x").unwrap();
        z.finish().unwrap();
        let dest = d.path().join("out");
        fs::create_dir(&dest).unwrap();
        let e = unpack(&path, &dest, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("leaves"), "{e}");
        assert_eq!(fs::read(dest.join("tool/run")).unwrap(), b"#!/bin/sh\n");

        fs::write(d.path().join("junk"), b"not an archive").unwrap();
        let e = unpack(&d.path().join("junk"), &dest, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("neither a zip nor"), "{e}");
    }
}
