//! The flags that mount and pass devices in: `-v`, `--mount`, `--device`.

use super::{values, DeviceOpt, MountOpt};

/// `-v /host:/ctr[:ro|rw][,propagation]`.
pub(super) fn volume(value: &str) -> Result<MountOpt, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [s, t] => (*s, *t, ""),
        [s, t, o] => (*s, *t, *o),
        _ => return Err(format!("{value:?} is not /host/path:/container/path[:ro]")),
    };
    if !source.starts_with('/') {
        return Err(format!("{source:?}: named volumes are not supported; give an absolute host path"));
    }
    let mut readonly = false;
    let mut propagation = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "z" | "Z" => return Err("SELinux relabelling (z, Z) is not supported".into()),
            p => propagation = Some(values::propagation(p)?),
        }
    }
    Ok(MountOpt::Bind {
        source: values::container_path(source)?,
        target: values::container_path(target)?,
        readonly,
        propagation,
    })
}

/// `--mount type=bind|tmpfs,source=..,target=..,readonly,...`.
pub(super) fn mount(value: &str) -> Result<MountOpt, String> {
    let (mut typ, mut source, mut target, mut readonly) = (None, None, None, false);
    let (mut propagation, mut tmpfs) = (None, Vec::new());
    for field in value.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (k, v) {
            ("type", Some(t)) => typ = Some(t),
            ("source" | "src", Some(s)) => source = Some(s),
            ("target" | "destination" | "dst", Some(t)) => target = Some(t),
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some(b)) => readonly = values::boolean(b)?,
            ("bind-propagation", Some(p)) => propagation = Some(values::propagation(p)?),
            ("tmpfs-size", Some(s)) => tmpfs.push(format!("size={}", values::size(s)?)),
            ("tmpfs-mode", Some(m)) => tmpfs.extend(values::tmpfs_options(&format!("mode={m}"))?),
            _ => return Err(format!("mount field {k:?} is not supported")),
        }
    }
    let target = values::container_path(target.ok_or("a mount needs target=")?)?;
    match typ {
        Some("bind") => {
            let source = source.ok_or("a bind mount needs source=")?;
            if !tmpfs.is_empty() {
                return Err("tmpfs-* fields apply to type=tmpfs only".into());
            }
            Ok(MountOpt::Bind { source: values::container_path(source)?, target, readonly, propagation })
        }
        Some("tmpfs") => {
            if source.is_some() || propagation.is_some() {
                return Err("a tmpfs mount takes no source or bind-propagation".into());
            }
            if readonly {
                tmpfs.push("ro".into());
            }
            Ok(MountOpt::Tmpfs { target, options: tmpfs })
        }
        Some(t) => Err(format!("type={t} is not supported (bind and tmpfs only)")),
        None => Err("a mount needs type=bind or type=tmpfs".into()),
    }
}

/// `--device /dev/x[:/dev/y][:rwm]`.
pub(super) fn device(value: &str) -> Result<DeviceOpt, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let is_access = |s: &str| !s.is_empty() && s.chars().all(|c| "rwm".contains(c));
    let (host, container, access) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, a] if is_access(a) => (*h, *h, *a),
        [h, c] => (*h, *c, "rwm"),
        [h, c, a] if is_access(a) => (*h, *c, *a),
        _ => return Err(format!("{value:?} is not /dev/host[:/dev/container][:rwm]")),
    };
    let (host, container) = (values::container_path(host)?, values::container_path(container)?);
    // The container side too: a node made elsewhere (say in the node root's
    // bind) would outlive the task on the host.
    for p in [&host, &container] {
        if !p.starts_with("/dev/")
            || p.starts_with("/dev/shm/")
            || p.starts_with("/dev/pts/")
            || p.starts_with("/dev/mqueue/")
        {
            return Err(format!("{p:?} is not a device path under /dev"));
        }
    }
    Ok(DeviceOpt { host, container, access: access.to_owned() })
}
