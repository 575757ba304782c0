//! `[[users]]`, `[auto_users]` and `[policy]`: who tasks run as and what their
//! run options may ask for. Every `[policy]` permission defaults to refusing.

use super::{invalid, ConfigError};
use crate::model::{AutoUsers, Elevation, Identities, UserAccount};
use crate::spec::Policy;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    name: String,
    uid: u32,
    gid: u32,
    #[serde(default)]
    groups: Vec<u32>,
    elevation: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoUsers {
    pool_uid: Option<u32>,
    pool_admin_uid: Option<u32>,
    pool_gid: Option<u32>,
    task_uid_first: Option<u32>,
    task_uid_count: Option<u32>,
    task_admin_uid_first: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    allow_privileged: Option<bool>,
    allow_host_namespaces: Option<bool>,
    allow_added_capabilities: Option<bool>,
    #[serde(default)]
    bind_mount_prefixes: Vec<PathBuf>,
    #[serde(default)]
    allowed_devices: Vec<PathBuf>,
    user_namespaces: Option<bool>,
    init_binary: Option<PathBuf>,
    allow_host_tasks: Option<bool>,
    allow_unconfined_seccomp: Option<bool>,
    allow_host_network: Option<bool>,
    allow_oom_kill_disable: Option<bool>,
}

/// Ids above this hit known runtime bugs (and `-1` as u32 means "unset" to some).
const MAX_ID: u32 = i32::MAX as u32;

pub(super) fn identities(users: Vec<RawUser>, auto: RawAutoUsers) -> Result<Identities, ConfigError> {
    let d = AutoUsers::default();
    let auto = AutoUsers {
        pool_uid: auto.pool_uid.unwrap_or(d.pool_uid),
        pool_admin_uid: auto.pool_admin_uid.unwrap_or(d.pool_admin_uid),
        pool_gid: auto.pool_gid.unwrap_or(d.pool_gid),
        task_uid_first: auto.task_uid_first.unwrap_or(d.task_uid_first),
        task_uid_count: auto.task_uid_count.unwrap_or(d.task_uid_count),
        task_admin_uid_first: auto.task_admin_uid_first.unwrap_or(d.task_admin_uid_first),
    };
    if auto.pool_uid == 0 || auto.pool_admin_uid == 0 || auto.pool_gid == 0 || auto.task_uid_first == 0 {
        return Err(invalid("auto_users", "auto-users must not be root (uid or gid 0)"));
    }
    let last = u64::from(auto.task_uid_first) + u64::from(auto.task_uid_count);
    if auto.task_uid_count == 0 || last > u64::from(MAX_ID) + 1 || auto.pool_uid.max(auto.pool_gid) > MAX_ID {
        return Err(invalid(
            "auto_users",
            "uids and gids must lie in 1..2147483647 and the task range must not be empty",
        ));
    }
    let task_range = u64::from(auto.task_uid_first)..last;
    if task_range.contains(&u64::from(auto.pool_uid)) {
        return Err(invalid("auto_users.pool_uid", "lies in the task-scope auto-user range"));
    }
    let admin_last = u64::from(auto.task_admin_uid_first) + u64::from(auto.task_uid_count);
    let admin_range = u64::from(auto.task_admin_uid_first)..admin_last;
    let overlap = admin_range.start < task_range.end && task_range.start < admin_range.end;
    if auto.task_admin_uid_first == 0
        || admin_last > u64::from(MAX_ID) + 1
        || overlap
        || [auto.pool_uid, auto.pool_admin_uid].iter().any(|u| admin_range.contains(&u64::from(*u)))
    {
        return Err(invalid(
            "auto_users.task_admin_uid_first",
            "the admin task-scope range (task_admin_uid_first, task_uid_count long) must lie in 1..2147483647 and \
             overlap neither the task-scope range nor the pool uids",
        ));
    }
    if task_range.contains(&u64::from(auto.pool_admin_uid)) || auto.pool_admin_uid == auto.pool_uid {
        return Err(invalid(
            "auto_users.pool_admin_uid",
            "must differ from pool_uid and lie outside the task-scope range (admin and non-admin identities never \
             share an owner)",
        ));
    }
    if auto.pool_admin_uid > MAX_ID {
        return Err(invalid("auto_users.pool_admin_uid", "must lie in 1..2147483647"));
    }
    let mut accounts: Vec<UserAccount> = Vec::new();
    for u in users {
        let elevation = match u.elevation.as_deref().unwrap_or("nonadmin") {
            "admin" => Elevation::Admin,
            "nonadmin" => Elevation::NonAdmin,
            other => return Err(invalid("users.elevation", &format!("{other:?} is not \"admin\" or \"nonadmin\""))),
        };
        crate::spec::check_user_name(&u.name).map_err(|e| invalid("users.name", &e))?;
        if accounts.iter().any(|a| a.name == u.name) {
            return Err(invalid("users.name", &format!("{} is defined twice", u.name)));
        }
        if [u.uid, u.gid].iter().chain(&u.groups).any(|id| *id > MAX_ID) {
            return Err(invalid("users.uid", &format!("{}: ids must lie in 0..2147483647", u.name)));
        }
        if u.uid == 0
            || task_range.contains(&u64::from(u.uid))
            || admin_range.contains(&u64::from(u.uid))
            || u.uid == auto.pool_uid
            || u.uid == auto.pool_admin_uid
        {
            return Err(invalid(
                "users.uid",
                &format!("{}: uid {} is root or an auto-user's (use elevation = \"admin\" for root)", u.name, u.uid),
            ));
        }
        if let Some(other) = accounts.iter().find(|a| a.uid == u.uid && a.elevation != elevation) {
            return Err(invalid(
                "users.uid",
                &format!(
                    "{} and {} share uid {}, one admin and one not: admin and non-admin identities never share an owner",
                    other.name, u.name, u.uid
                ),
            ));
        }
        accounts.push(UserAccount { name: u.name, uid: u.uid, gid: u.gid, groups: u.groups, elevation });
    }
    Ok(Identities { users: accounts, auto })
}

/// A path with its symlinks resolved where it exists (as runc will see it),
/// else as written (normalised).
fn resolved(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.components().collect())
}

/// Refuses a bind prefix that is, holds or lies inside one of `guarded`
/// (the node root, the state directory, containerd's directories, the
/// socket's directory, `/proc`, `/sys`, `/dev`, `/run`, `/etc`, `/boot`);
/// `/` holds them all.
pub(super) fn check_bind_prefixes(prefixes: &[PathBuf], guarded: &[(PathBuf, &str)]) -> Result<(), ConfigError> {
    for p in prefixes {
        for (g, what) in guarded {
            let g = resolved(g);
            if p.starts_with(&g) || g.starts_with(p) {
                let how = if *p == g {
                    "is"
                } else if g.starts_with(p) {
                    "holds"
                } else {
                    "lies inside"
                };
                return Err(invalid(
                    "policy.bind_mount_prefixes",
                    &format!("{} {how} {} ({what}): tasks must not bind it", p.display(), g.display()),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn policy(raw: RawPolicy) -> Result<Policy, ConfigError> {
    let mut prefixes = Vec::new();
    for p in raw.bind_mount_prefixes {
        if !p.is_absolute() {
            return Err(invalid("policy.bind_mount_prefixes", &format!("{} is not an absolute path", p.display())));
        }
        // Resolved now: a link in a prefix must not lead the checks astray.
        prefixes.push(resolved(&p));
    }
    for d in &raw.allowed_devices {
        if !d.starts_with("/dev/") {
            return Err(invalid("policy.allowed_devices", &format!("{} is not under /dev", d.display())));
        }
    }
    let init_binary = raw.init_binary.unwrap_or_else(|| PathBuf::from("/usr/bin/tini-static"));
    if !init_binary.is_absolute() {
        return Err(invalid("policy.init_binary", "must be an absolute path"));
    }
    Ok(Policy {
        allow_privileged: raw.allow_privileged.unwrap_or(false),
        allow_host_namespaces: raw.allow_host_namespaces.unwrap_or(false),
        allow_added_capabilities: raw.allow_added_capabilities.unwrap_or(false),
        bind_mount_prefixes: prefixes,
        allowed_devices: raw.allowed_devices,
        user_namespaces: raw.user_namespaces.unwrap_or(false),
        init_binary,
        allow_host_tasks: raw.allow_host_tasks.unwrap_or(false),
        allow_unconfined_seccomp: raw.allow_unconfined_seccomp.unwrap_or(false),
        allow_host_network: raw.allow_host_network.unwrap_or(true),
        reserved_host_ports: Vec::new(),
        allow_oom_kill_disable: raw.allow_oom_kill_disable.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::model::Elevation;
    use std::path::PathBuf;

    #[test]
    fn users_auto_users_and_policy() {
        let c = Config::parse(
            r#"
            [[users]]
            name = "alice"
            uid = 1500
            gid = 1500
            groups = [44, 1600]
            elevation = "admin"
            [[users]]
            name = "bob"
            uid = 1501
            gid = 1501
            [auto_users]
            pool_uid = 30000
            pool_gid = 30000
            task_uid_first = 30001
            task_uid_count = 10
            task_admin_uid_first = 40001
            [policy]
            allow_privileged = true
            allow_host_tasks = true
            bind_mount_prefixes = ["/data/", "/scratch"]
            user_namespaces = true
            "#,
            "h",
        )
        .unwrap();
        assert_eq!(c.identities.users.len(), 2);
        assert_eq!(c.identities.users[0].elevation, Elevation::Admin);
        assert_eq!(c.identities.users[1].elevation, Elevation::NonAdmin);
        assert_eq!(c.identities.users[0].groups, [44, 1600]);
        assert_eq!(c.identities.auto.task_uid_count, 10);
        assert!(c.policy.allow_privileged && !c.policy.allow_host_namespaces && !c.policy.allow_added_capabilities);
        assert!(c.policy.allow_host_tasks);
        assert_eq!(c.policy.bind_mount_prefixes, [PathBuf::from("/data"), PathBuf::from("/scratch")]);
        assert!(c.policy.user_namespaces);
    }

    #[test]
    fn policy_defaults_refuse() {
        let c = Config::parse("", "h").unwrap();
        let p = &c.policy;
        assert!(!p.allow_privileged && !p.allow_host_namespaces && !p.allow_added_capabilities && !p.user_namespaces);
        assert!(p.bind_mount_prefixes.is_empty() && p.allowed_devices.is_empty());
        assert!(c.identities.users.is_empty());
    }

    #[test]
    fn refuses_bad_identities() {
        let user = |extra: &str| format!("[[users]]\nname = \"u\"\nuid = 1000\ngid = 1000\n{extra}");
        let cases = [
            (user("elevation = \"root\""), "users.elevation"),
            ("[[users]]\nname = \"u\"\nuid = 0\ngid = 0".to_string(), "users.uid"),
            ("[[users]]\nname = \"u\"\nuid = 20005\ngid = 1".to_string(), "users.uid"),
            ("[[users]]\nname = \"u\"\nuid = 4294967295\ngid = 1".to_string(), "users.uid"),
            ("[[users]]\nname = \"u\"\nuid = 2147483648\ngid = 1".to_string(), "users.uid"),
            (format!("{}\n{}", user(""), user("")), "users.name"),
            ("[[users]]\nname = \"-x\"\nuid = 1000\ngid = 1".to_string(), "users.name"),
            ("[auto_users]\npool_uid = 0".to_string(), "auto_users"),
            ("[auto_users]\ntask_uid_count = 0".to_string(), "auto_users"),
            ("[auto_users]\npool_uid = 20003".to_string(), "auto_users.pool_uid"),
            ("[auto_users]\npool_admin_uid = 20000".to_string(), "auto_users.pool_admin_uid"),
            ("[auto_users]\npool_admin_uid = 20005".to_string(), "auto_users.pool_admin_uid"),
            ("[auto_users]\ntask_admin_uid_first = 25000".to_string(), "auto_users.task_admin_uid_first"),
            ("[[users]]\nname = \"u\"\nuid = 30005\ngid = 1".to_string(), "users.uid"),
            (format!("{}\n[[users]]\nname = \"v\"\nuid = 1000\ngid = 1\nelevation = \"admin\"", user("")), "share uid"),
            ("[policy]\nbind_mount_prefixes = [\"rel\"]".to_string(), "policy.bind_mount_prefixes"),
            ("[policy]\nallowed_devices = [\"/etc/passwd\"]".to_string(), "policy.allowed_devices"),
            (
                "[policy]\nbind_mount_prefixes = [\"/var/lib/berth/node/shared\"]".to_string(),
                "policy.bind_mount_prefixes",
            ),
            ("[policy]\nbind_mount_prefixes = [\"/var\"]".to_string(), "policy.bind_mount_prefixes"),
            ("[policy]\nbind_mount_prefixes = [\"/\"]".to_string(), "holds"),
            ("[policy]\nbind_mount_prefixes = [\"/etc/ssl\"]".to_string(), "lies inside /etc"),
            ("[policy]\nbind_mount_prefixes = [\"/run\"]".to_string(), "is /run"),
            ("[policy]\nbind_mount_prefixes = [\"/proc/1\"]".to_string(), "lies inside /proc"),
            ("[policy]\nbind_mount_prefixes = [\"/dev\"]".to_string(), "/dev"),
            ("[policy]\nbind_mount_prefixes = [\"/sys/fs\"]".to_string(), "/sys"),
            ("[policy]\nbind_mount_prefixes = [\"/boot\"]".to_string(), "/boot"),
            ("[policy]\nbind_mount_prefixes = [\"/var/lib/berth/state/x\"]".to_string(), "state directory"),
            ("[policy]\nbind_mount_prefixes = [\"/var/lib/containerd/x\"]".to_string(), "containerd's root"),
            (
                "[node]\nstate_dir = \"/srv/state\"\n[policy]\nbind_mount_prefixes = [\"/srv\"]".to_string(),
                "state directory",
            ),
            (
                "[api]\nlisten = \"unix:///srv/sock/a.sock\"\n[policy]\nbind_mount_prefixes = [\"/srv/sock\"]"
                    .to_string(),
                "socket",
            ),
            ("[policy]\nallow_everything = true".to_string(), "unknown field"),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text, "h").unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
