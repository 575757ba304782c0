//! The container process's uid, gid and groups, from the task's identity, the
//! `-u`/`--group-add` run options, the image's `USER` and the image's
//! `/etc/passwd` and `/etc/group` (read by the supervisor, parsed here).
//!
//! - Non-admin: the identity's uid, gid and groups; nothing in the image or the
//!   run options changes them.
//! - Admin: `-u` if given, else the image's `USER`, else root; names are looked up
//!   in the image, and the user's groups there are added (as docker does).
//! - User namespaces: root of the task's namespace, mapped to the identity's uid.

use super::run_options::{IdRef, RunOptions};
use super::SpecError;
use crate::model::RunAs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The image's accounts; empty when the image has no such files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageAccounts {
    pub passwd: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl ImageAccounts {
    /// Parses `/etc/passwd` and `/etc/group` text; malformed lines are skipped.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let id = |s: &str| s.parse::<u32>().ok().filter(|n| *n <= i32::MAX as u32);
        let passwd = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && !f[0].is_empty())
                    .then(|| Some(PasswdEntry { name: f[0].into(), uid: id(f[2])?, gid: id(f[3])? }))?
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && !f[0].is_empty()).then(|| {
                    Some(GroupEntry {
                        name: f[0].into(),
                        gid: id(f[2])?,
                        members: f
                            .get(3)
                            .map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
                            .unwrap_or_default(),
                    })
                })?
            })
            .collect();
        Self { passwd, groups }
    }
}

/// uid, gid and supplementary groups of the process, in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn user_error(reason: String) -> SpecError {
    SpecError::User { reason }
}

pub(super) fn process_user(
    who: &RunAs,
    o: &RunOptions,
    image_user: Option<&str>,
    accounts: &ImageAccounts,
    user_namespaces: bool,
) -> Result<ProcessUser, SpecError> {
    if user_namespaces {
        // The identity's groups keep their ids in the namespace (they are mapped one to one).
        let mut groups: Vec<u32> = who.groups.iter().copied().filter(|g| *g != who.gid && *g != 0).collect();
        groups.sort_unstable();
        groups.dedup();
        return Ok(ProcessUser { uid: 0, gid: 0, additional_gids: groups });
    }
    if !who.admin {
        let mut groups = who.groups.clone();
        groups.retain(|g| *g != who.gid);
        return Ok(ProcessUser { uid: who.uid, gid: who.gid, additional_gids: groups });
    }
    let (spec, source) = match (&o.user, image_user) {
        (Some(u), _) => ((u.user.clone(), u.group.clone()), "--user"),
        (None, Some(text)) => (image_user_ref(text)?, "the image's USER"),
        (None, None) => ((IdRef::Id(0), None), ""),
    };
    let (uid, name, passwd_gid) = match &spec.0 {
        IdRef::Id(n) => {
            let entry = accounts.passwd.iter().find(|p| p.uid == *n);
            (*n, entry.map(|p| p.name.clone()), entry.map(|p| p.gid))
        }
        IdRef::Name(name) => {
            let p = accounts
                .passwd
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| user_error(format!("user {name:?} ({source}) is not in the image's /etc/passwd")))?;
            (p.uid, Some(name.clone()), Some(p.gid))
        }
    };
    let gid = match &spec.1 {
        Some(g) => group_id(g, accounts, source)?,
        None => passwd_gid.unwrap_or(0),
    };
    let mut additional: Vec<u32> = who.groups.clone();
    if let Some(name) = &name {
        additional.extend(accounts.groups.iter().filter(|g| g.members.contains(name)).map(|g| g.gid));
    }
    for g in &o.group_add {
        additional.push(group_id(g, accounts, "--group-add")?);
    }
    additional.retain(|g| *g != gid);
    additional.sort_unstable();
    additional.dedup();
    Ok(ProcessUser { uid, gid, additional_gids: additional })
}

fn group_id(g: &IdRef, accounts: &ImageAccounts, source: &str) -> Result<u32, SpecError> {
    match g {
        IdRef::Id(n) => Ok(*n),
        IdRef::Name(name) => accounts
            .groups
            .iter()
            .find(|e| &e.name == name)
            .map(|e| e.gid)
            .ok_or_else(|| user_error(format!("group {name:?} ({source}) is not in the image's /etc/group"))),
    }
}

/// The image's `USER` (`name`, `uid`, `name:group`, `uid:gid`).
fn image_user_ref(text: &str) -> Result<(IdRef, Option<IdRef>), SpecError> {
    let one = |s: &str| -> Result<IdRef, SpecError> {
        match super::run_options::id_number(s).map_err(|e| user_error(format!("the image's USER: {e}")))? {
            Some(n) => Ok(IdRef::Id(n)),
            None => Ok(IdRef::Name(s.to_owned())),
        }
    };
    match text.split_once(':') {
        Some((u, g)) => Ok((one(u)?, Some(one(g)?))),
        None => Ok((one(text)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::run_options::parse;

    fn accounts() -> ImageAccounts {
        ImageAccounts::parse(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1235::/home/app:/bin/sh\nbroken\nbig:x:4294967295:1::/:/bin/sh\n",
            "root:x:0:\napp:x:1235:\nvideo:x:44:app,other\nextra:x:50:\n",
        )
    }
    fn admin() -> RunAs {
        RunAs { uid: 1500, gid: 1500, groups: vec![20000], admin: true }
    }

    #[test]
    fn non_admin_runs_as_its_identity() {
        let who = RunAs { admin: false, groups: vec![1500, 44, 20000], ..admin() };
        let u = process_user(&who, &RunOptions::default(), Some("app"), &accounts(), false).unwrap();
        assert_eq!(u, ProcessUser { uid: 1500, gid: 1500, additional_gids: vec![44, 20000] });
    }

    #[test]
    fn admin_follows_user_flag_then_image_user_then_root() {
        let a = accounts();
        let run = |opts: &str, image: Option<&str>| process_user(&admin(), &parse(opts).unwrap(), image, &a, false);
        assert_eq!(run("", None).unwrap(), ProcessUser { uid: 0, gid: 0, additional_gids: vec![20000] });
        assert_eq!(
            run("", Some("app")).unwrap(),
            ProcessUser { uid: 1234, gid: 1235, additional_gids: vec![44, 20000] }
        );
        assert_eq!(run("-u app:extra", None).unwrap().gid, 50);
        assert_eq!(run("-u 1234", None).unwrap().gid, 1235, "a known uid takes its passwd gid");
        assert_eq!(run("-u 777:778", None).unwrap(), ProcessUser { uid: 777, gid: 778, additional_gids: vec![20000] });
        assert_eq!(run("-u 0 --group-add video --group-add 9", None).unwrap().additional_gids, [9, 44, 20000]);
        for (opts, image, want) in [
            ("", Some("nobody-here"), "the image's USER"),
            ("-u ghost", None, "--user"),
            ("-u app:nogroup", None, "/etc/group"),
            ("--group-add nogroup", None, "--group-add"),
            ("", Some("4294967295"), "outside"),
        ] {
            let err = run(opts, image).unwrap_err().to_string();
            assert!(err.contains(want), "{opts} {image:?}: {err}");
        }
        assert!(a.passwd.iter().all(|p| p.name != "big"), "out-of-range ids are dropped");
    }

    #[test]
    fn user_namespaces_run_as_namespace_root() {
        let u = process_user(&admin(), &RunOptions::default(), Some("app"), &accounts(), true).unwrap();
        assert_eq!(u, ProcessUser { uid: 0, gid: 0, additional_gids: vec![20000] });
    }
}
