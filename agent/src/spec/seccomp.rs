//! The seccomp filter of a container task. By default berth's own profile
//! (`seccomp-default.toml`, data kept beside this file): an allowlist whose
//! coverage matches the default profile containerd and Docker apply, written
//! for berth from the syscall list. Which of its rules apply depends on the
//! node's architecture and on the task's capability bounding set (a non-admin
//! task, with an empty set, gets no rule gated on a capability).
//!
//! `--security-opt seccomp=unconfined` (policy `allow_unconfined_seccomp`)
//! and `--privileged` run without a filter, as with docker;
//! `--security-opt seccomp=PROFILE.json` (a host file under the bind
//! prefixes) replaces the profile with an OCI `linux.seccomp` object. Pure:
//! the profile file's text is read by the supervisor.

use super::SpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

/// berth's default profile, as data.
const DEFAULT_PROFILE: &str = include_str!("seccomp-default.toml");

/// The oldest kernel berth runs on (it needs `openat2`): a rule's
/// `min_kernel` up to this always holds.
const MIN_KERNEL: (u32, u32) = (5, 6);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    default_errno: u32,
    /// Node architecture (Go name) → the seccomp architectures of its programs.
    architectures: BTreeMap<String, Vec<Arch>>,
    rule: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[allow(dead_code)]
    comment: Option<String>,
    names: Vec<String>,
    action: Action,
    errno: Option<u32>,
    /// Only on these node architectures.
    arches: Option<Vec<String>>,
    /// Only for a task whose bounding set has one of these.
    caps: Option<Vec<String>>,
    /// Only for a task whose bounding set has none of these.
    not_caps: Option<Vec<String>>,
    min_kernel: Option<String>,
    #[serde(default)]
    args: Vec<Arg>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Allow,
    Errno,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: Op,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

impl From<Op> for LinuxSeccompOperator {
    fn from(op: Op) -> Self {
        match op {
            Op::Eq => LinuxSeccompOperator::ScmpCmpEq,
            Op::Ne => LinuxSeccompOperator::ScmpCmpNe,
            Op::Lt => LinuxSeccompOperator::ScmpCmpLt,
            Op::Le => LinuxSeccompOperator::ScmpCmpLe,
            Op::Gt => LinuxSeccompOperator::ScmpCmpGt,
            Op::Ge => LinuxSeccompOperator::ScmpCmpGe,
            Op::MaskedEq => LinuxSeccompOperator::ScmpCmpMaskedEq,
        }
    }
}

/// The parsed default profile (constant data, parsed once).
static PARSED: LazyLock<Result<Profile, String>> = LazyLock::new(|| parse(DEFAULT_PROFILE));

fn parse(text: &str) -> Result<Profile, String> {
    let p: Profile = toml::from_str(text).map_err(|e| format!("the default seccomp profile does not load: {e}"))?;
    for r in &p.rule {
        if r.action == Action::Errno && r.errno.is_none() {
            return Err(format!("seccomp rule {:?}: action errno needs errno", r.names));
        }
        for c in r.caps.iter().chain(&r.not_caps).flatten() {
            capability(c)?;
        }
        if let Some(k) = &r.min_kernel {
            let v = kernel_version(k).ok_or_else(|| format!("seccomp rule {:?}: min_kernel {k:?}", r.names))?;
            if v > MIN_KERNEL {
                return Err(format!("seccomp rule {:?}: min_kernel {k} is above the kernels berth runs on", r.names));
            }
        }
    }
    Ok(p)
}

fn kernel_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn capability(name: &str) -> Result<Capability, String> {
    name.strip_prefix("CAP_")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("seccomp profile: {name:?} is not a capability"))
}

fn err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Seccomp { reason: e.to_string() }
}

/// berth's default profile for a task on a node of architecture `arch` (Go
/// name) whose capability bounding set is `bounding`.
pub(super) fn default_profile(arch: &str, bounding: &HashSet<Capability>) -> Result<LinuxSeccomp, SpecError> {
    let p = PARSED.as_ref().map_err(err)?;
    let has = |names: &Option<Vec<String>>| -> bool {
        names.iter().flatten().filter_map(|n| capability(n).ok()).any(|c| bounding.contains(&c))
    };
    let mut syscalls: Vec<LinuxSyscall> = Vec::new();
    for r in &p.rule {
        let applies = r.arches.as_ref().is_none_or(|a| a.iter().any(|x| x == arch))
            && (r.caps.is_none() || has(&r.caps))
            && !has(&r.not_caps);
        if !applies {
            continue;
        }
        let mut b = LinuxSyscallBuilder::default().names(r.names.clone());
        b = match r.action {
            Action::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
            Action::Errno => b.action(LinuxSeccompAction::ScmpActErrno).errno_ret(r.errno.unwrap_or(1)),
        };
        if !r.args.is_empty() {
            let args = r
                .args
                .iter()
                .map(|a| {
                    let mut ab = LinuxSeccompArgBuilder::default().index(a.index).value(a.value).op(a.op);
                    if let Some(v2) = a.value_two {
                        ab = ab.value_two(v2);
                    }
                    ab.build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            b = b.args(args);
        }
        syscalls.push(b.build().map_err(err)?);
    }
    let mut s = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(p.default_errno)
        .syscalls(syscalls);
    if let Some(arches) = p.architectures.get(arch) {
        s = s.architectures(arches.clone());
    }
    s.build().map_err(err)
}

/// A profile file given with `--security-opt seccomp=FILE`: an OCI
/// `linux.seccomp` object. Docker's own format (with `archMap`, `includes`,
/// `excludes`) is refused rather than read with its conditions dropped.
pub fn parse_profile_file(text: &[u8]) -> Result<LinuxSeccomp, String> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let docker = v.get("archMap").is_some()
        || v.get("syscalls")
            .and_then(|s| s.as_array())
            .is_some_and(|a| a.iter().any(|s| s.get("includes").is_some() || s.get("excludes").is_some()));
    if docker {
        return Err("this is docker's profile format (archMap, includes, excludes); give an OCI runtime spec \
                    linux.seccomp object (defaultAction, architectures, syscalls)"
            .into());
    }
    serde_json::from_value(v).map_err(|e| format!("not an OCI linux.seccomp object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls().iter().flatten().any(|c| {
            c.action() == LinuxSeccompAction::ScmpActAllow
                && c.names().iter().any(|n| n == name)
                && c.args().as_ref().is_none_or(|a| a.is_empty())
        })
    }

    #[test]
    fn the_default_profile_loads() {
        let p = parse(DEFAULT_PROFILE).unwrap();
        assert!(p.rule.len() > 20);
        let all: usize = p.rule.iter().map(|r| r.names.len()).sum();
        assert!(all > 350, "{all}");
        assert!(p.architectures["amd64"].contains(&Arch::ScmpArchX86_64));
    }

    #[test]
    fn a_task_without_capabilities_gets_no_gated_syscall() {
        let s = default_profile("amd64", &HashSet::new()).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(1));
        for name in ["read", "write", "futex", "execve", "arch_prctl", "set_robust_list", "rseq"] {
            assert!(allowed(&s, name), "{name}");
        }
        for name in ["keyctl", "add_key", "request_key", "kexec_load", "open_by_handle_at", "unshare", "mount", "bpf"] {
            assert!(!allowed(&s, name), "{name}");
        }
        // clone only without namespace flags; clone3 ENOSYS so libc falls back.
        let clone: Vec<&LinuxSyscall> =
            s.syscalls().iter().flatten().filter(|c| c.names().iter().any(|n| n == "clone")).collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args().as_ref().unwrap()[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        let clone3 = s.syscalls().iter().flatten().find(|c| c.names().iter().any(|n| n == "clone3")).unwrap();
        assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
        assert!(!allowed(&s, "s390_runtime_instr"), "other architectures' rules stay out");
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let admin: HashSet<Capability> = [Capability::SysAdmin, Capability::DacReadSearch].into();
        let s = default_profile("amd64", &admin).unwrap();
        for name in ["mount", "unshare", "setns", "clone", "clone3", "open_by_handle_at"] {
            assert!(allowed(&s, name), "{name}");
        }
        for name in ["keyctl", "add_key", "kexec_load"] {
            assert!(!allowed(&s, name), "never: {name}");
        }
        let s = default_profile("arm64", &HashSet::new()).unwrap();
        assert_eq!(s.architectures().as_ref().unwrap()[0], Arch::ScmpArchAarch64);
        assert!(!allowed(&s, "arch_prctl"));
    }

    #[test]
    fn profile_files_are_oci_objects() {
        let ok = br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#;
        assert_eq!(parse_profile_file(ok).unwrap().syscalls().as_ref().unwrap().len(), 1);
        let docker = br#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[],"syscalls":[]}"#;
        assert!(parse_profile_file(docker).unwrap_err().contains("docker"));
        assert!(parse_profile_file(b"{").is_err());
        assert!(parse_profile_file(br#"{"defaultAction":"NOPE"}"#).is_err());
    }
}
