//! Parsers for the values of `docker create` flags: sizes, CPU counts, ulimits,
//! mounts, devices, sysctls, signals. Each returns a reason on error; the caller
//! names the flag.

use oci_spec::runtime::{Capability, PosixRlimitType};

/// A size as docker reads it (`go-units` `RAMInBytes`): `1024`, `64k`, `512m`,
/// `1.5g`, `2GiB`; binary multiples, case-insensitive.
pub(super) fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(format!("{text:?} is not a size (e.g. 512m, 2g)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("{text:?} is not a size (e.g. 512m, 2g)"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= i64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    #[allow(clippy::cast_possible_truncation, reason = "in range, checked above; the fraction of a byte is dropped")]
    Ok(bytes as u64)
}

/// `--cpus 1.5` → CFS quota in microseconds per 100 ms period.
pub(super) fn cpus_quota(text: &str) -> Result<i64, String> {
    let n: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of CPUs"))?;
    if !n.is_finite() || n <= 0.0 || n > 4096.0 {
        return Err(format!("{text:?} must be more than 0 and at most 4096"));
    }
    #[allow(clippy::cast_possible_truncation, reason = "at most 409_600_000, checked above")]
    Ok(((n * 100_000.0).round() as i64).max(1_000))
}

/// `--cpuset-cpus 0-3,5`: a list of CPU numbers and ranges.
pub(super) fn cpuset(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.split(',').all(|part| {
            let mut ends = part.splitn(2, '-').map(|n| n.parse::<u32>());
            match (ends.next(), ends.next()) {
                (Some(Ok(_)), None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                _ => false,
            }
        });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a CPU list like 0-3,5"))
    }
}

pub(super) fn integer<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not an integer in range"))
}

/// A numeric uid or gid: 0..=2^31-1 (larger values hit runtime bugs).
pub(crate) fn id_number(text: &str) -> Result<Option<u32>, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
        _ => Err(format!("{text} is outside 0..2147483647")),
    }
}

/// A user or group name.
pub(super) fn id_name(text: &str) -> Result<(), String> {
    crate::spec::check_user_name(text)
}

/// `CAP_SYS_ADMIN`, `sys_admin` or `ALL` (None).
pub(super) fn capability(text: &str) -> Result<Option<Capability>, String> {
    let upper = text.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    name.parse().map(Some).map_err(|_| format!("{text:?} is not a Linux capability"))
}

/// `nofile=1024:2048` or `nofile=1024`; -1 means unlimited.
pub(super) fn ulimit(text: &str) -> Result<(PosixRlimitType, u64, u64), String> {
    let (name, values) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=SOFT[:HARD]"))?;
    let typ: PosixRlimitType = format!("RLIMIT_{}", name.to_ascii_uppercase())
        .parse()
        .map_err(|_| format!("{name:?} is not a resource limit name (nofile, nproc, memlock, core, stack, ...)"))?;
    let one = |v: &str| -> Result<u64, String> {
        match v.trim() {
            "-1" | "unlimited" => Ok(u64::MAX),
            n => n.parse().map_err(|_| format!("{v:?} is not a limit (a number or -1)")),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => (one(values)?, one(values)?),
    };
    if soft > hard {
        return Err(format!("{text}: the soft limit is above the hard limit"));
    }
    Ok((typ, soft, hard))
}

/// A signal by name (`SIGTERM`, `term`) or number.
pub(super) fn signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(format!("{n} is not a signal number")) };
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>().map(|s| s as i32).map_err(|_| format!("{text:?} is not a signal"))
}

/// An absolute path without `..` components, normalised (`//` and `/./`
/// collapsed, no trailing slash), so that comparisons see what runc will.
pub(super) fn container_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} is not an absolute path"));
    }
    if text.split('/').any(|c| c == "..") || text.contains('\0') {
        return Err(format!("{text:?} must not contain '..'"));
    }
    let parts: Vec<&str> = text.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    Ok(format!("/{}", parts.join("/")))
}

/// A hostname: RFC 1123 labels, at most 64 characters (the kernel's limit).
pub(super) fn hostname(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a valid hostname"))
    }
}

/// Sysctls a container may set: those namespaced by the IPC namespace, and
/// `net.*` when the task has its own network namespace (docker's rule).
pub(super) fn sysctl(text: &str, own_network: bool) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let ipc = ["kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax"];
    let ipc_ok =
        ipc.contains(&k) || k == "kernel.shmmni" || k == "kernel.shm_rmid_forced" || k.starts_with("fs.mqueue.");
    if ipc_ok {
        return Ok((k.to_owned(), v.to_owned()));
    }
    if k.starts_with("net.") {
        return if own_network {
            Ok((k.to_owned(), v.to_owned()))
        } else {
            Err(format!(
                "{k} would change the node's network settings (the task shares the node's network: --network host)"
            ))
        };
    }
    Err(format!("{k} is not a namespaced sysctl a container may set"))
}

/// Options of a tmpfs mount: `size=`, `mode=` and the usual flags.
pub(super) fn tmpfs_options(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for opt in text.split(',').filter(|o| !o.is_empty()) {
        let ok = match opt.split_once('=') {
            Some(("size", v)) => size(v).is_ok(),
            Some(("mode", v)) => u32::from_str_radix(v, 8).is_ok_and(|m| m <= 0o7777),
            Some(("uid" | "gid" | "nr_inodes", v)) => v.parse::<u32>().is_ok(),
            Some(_) => false,
            None => matches!(
                opt,
                "rw" | "ro" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "atime" | "noatime"
            ),
        };
        if !ok {
            return Err(format!("tmpfs option {opt:?} is not supported (size=, mode=, uid=, gid=, ro, noexec, ...)"));
        }
        out.push(match opt.split_once('=') {
            Some(("size", v)) => format!("size={}", size(v)?),
            _ => opt.to_owned(),
        });
    }
    Ok(out)
}

pub(super) fn propagation(text: &str) -> Result<String, String> {
    match text {
        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => Ok(text.to_owned()),
        _ => Err(format!("{text:?} is not a bind propagation (rprivate, rslave, rshared, ...)")),
    }
}

/// `true`/`false`/`1`/`0` as docker's bool flags take them.
pub(super) fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

pub(super) fn private_or_host(value: &str) -> Result<super::Namespace, String> {
    match value {
        "private" => Ok(super::Namespace::Private),
        "host" => Ok(super::Namespace::Host),
        _ => Err(format!("{value:?}: private or host")),
    }
}

/// `--platform os/arch[/variant]`, Go's names (`x86_64` and `aarch64` taken as docker takes them).
pub(super) fn platform(value: &str) -> Result<crate::model::Platform, String> {
    let parts: Vec<&str> = value.split('/').collect();
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] if ok(os) && ok(arch) => (*os, *arch, None),
        [os, arch, v] if ok(os) && ok(arch) && ok(v) => (*os, *arch, Some(*v)),
        _ => return Err(format!("{value:?} is not os/arch[/variant] (e.g. linux/amd64)")),
    };
    let (arch, variant) = match (arch.to_ascii_lowercase().as_str(), variant) {
        ("x86_64" | "x86-64", v) => ("amd64".to_string(), v.map(str::to_owned)),
        ("aarch64", None) => ("arm64".to_string(), Some("v8".to_string())),
        ("arm64", None) => ("arm64".to_string(), Some("v8".to_string())),
        (a, v) => (a.to_owned(), v.map(str::to_owned)),
    };
    Ok(crate::model::Platform { os: os.to_ascii_lowercase(), architecture: arch, variant })
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters.
pub(super) fn container_name(value: &str) -> Result<String, String> {
    let name = value.strip_prefix('/').unwrap_or(value);
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || name.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(format!("{value:?} is not a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128)"));
    }
    Ok(name.to_owned())
}

/// `--expose PORT[-PORT][/tcp|udp]`: checked, then nothing (docker records it in
/// the image metadata only; publishing is `-p`).
pub(super) fn expose(value: &str) -> Result<(), String> {
    let (ports, proto) = value.split_once('/').unwrap_or((value, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!("{value:?}: the protocol is tcp, udp or sctp"));
    }
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    match (port(lo), port(hi)) {
        (Some(a), Some(b)) if a <= b => Ok(()),
        _ => Err(format!("{value:?} is not PORT[-PORT][/tcp|udp]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (t, want) in [("1024", 1024), ("64k", 64 << 10), ("512m", 512 << 20), ("1.5g", 3 << 29), ("2GiB", 2 << 30)]
        {
            assert_eq!(size(t).unwrap(), want, "{t}");
        }
        for t in ["", "m", "12x", "-1m", "1e30g", "99999999999p"] {
            assert!(size(t).is_err(), "{t}");
        }
    }

    #[test]
    fn small_values() {
        assert_eq!(cpus_quota("1.5").unwrap(), 150_000);
        assert!(cpus_quota("0").is_err() && cpus_quota("NaN").is_err());
        assert!(cpuset("0-3,5").is_ok() && cpuset("3-1").is_err() && cpuset("a").is_err());
        assert_eq!(id_number("1000").unwrap(), Some(1000));
        assert_eq!(id_number("alice").unwrap(), None);
        assert!(id_number("4294967295").is_err() && id_number("2147483648").is_err());
        assert_eq!(capability("cap_sys_admin").unwrap(), Some(Capability::SysAdmin));
        assert_eq!(capability("NET_ADMIN").unwrap(), Some(Capability::NetAdmin));
        assert_eq!(capability("all").unwrap(), None);
        assert!(capability("CAP_BOGUS").is_err());
        assert_eq!(ulimit("nofile=10:20").unwrap(), (PosixRlimitType::RlimitNofile, 10, 20));
        assert_eq!(ulimit("memlock=-1").unwrap(), (PosixRlimitType::RlimitMemlock, u64::MAX, u64::MAX));
        assert!(ulimit("nofile=20:10").is_err() && ulimit("bogus=1").is_err() && ulimit("nofile").is_err());
        assert_eq!(signal("SIGUSR1").unwrap(), 10);
        assert_eq!(signal("int").unwrap(), 2);
        assert_eq!(signal("9").unwrap(), 9);
        assert!(signal("SIGBOGUS").is_err() && signal("0").is_err());
        assert!(hostname("a-b.c").is_ok() && hostname("-a").is_err() && hostname("a_b").is_err());
        assert!(sysctl("kernel.shmmax=1", false).is_ok());
        assert!(sysctl("net.ipv4.ip_forward=1", false).is_err() && sysctl("net.ipv4.ip_forward=1", true).is_ok());
        assert!(sysctl("kernel.panic=1", true).is_err());
        assert_eq!(tmpfs_options("size=1m,mode=1777,noexec").unwrap(), ["size=1048576", "mode=1777", "noexec"]);
        assert!(
            tmpfs_options("size=x").is_err() && tmpfs_options("mode=999").is_err() && tmpfs_options("bind").is_err()
        );
        assert!(container_path("/a/../b").is_err() && container_path("rel").is_err());
        assert_eq!(container_path("//sys/./fs/").unwrap(), "/sys/fs");
        assert_eq!(container_path("/").unwrap(), "/");
    }
}
