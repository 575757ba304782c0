//! User identities: who a task runs as (SEMANTICS.md, "User"). A task names a
//! pool user account or an auto-user; the agent resolves that to a [`RunAs`] when
//! it accepts the task, and keeps it in the task's record, so a configuration
//! change never changes the user of a task already accepted.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Elevation {
    /// No capabilities; runs as its own uid inside the container.
    #[default]
    NonAdmin,
    /// Root inside the container.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AutoUserScope {
    /// One uid shared by every pool-scope auto-user task.
    #[default]
    Pool,
    /// A uid of the task's own, from the configured range.
    Task,
}

/// What a task asks to run as. The default is the pool auto-user, non-admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserIdentity {
    /// A pool user account (`[[users]]` in the agent's config), by name.
    Named(String),
    Auto {
        scope: AutoUserScope,
        elevation: Elevation,
    },
}

impl Default for UserIdentity {
    fn default() -> Self {
        UserIdentity::Auto { scope: AutoUserScope::Pool, elevation: Elevation::NonAdmin }
    }
}

/// A pool user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub elevation: Elevation,
}

/// The host identity a task runs as: the owner of its directories and of what
/// it writes in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the pool group among them).
    pub groups: Vec<u32>,
    pub admin: bool,
}

impl RunAs {
    /// Who owns the task's directories (and `stdout.txt`, `stderr.txt`): a
    /// non-admin identity its own uid and gid; an admin one root (it runs as
    /// root), so that no non-admin task can change what an admin task will
    /// read or run. With user namespaces an admin task is root of a
    /// namespace mapped to its own uid, which then owns them.
    pub fn dir_owner(&self, user_namespaces: bool) -> (u32, u32) {
        if self.admin && !user_namespaces {
            (0, 0)
        } else {
            (self.uid, self.gid)
        }
    }
}

/// Uids and the group of auto-users (`[auto_users]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoUsers {
    /// The pool-scope auto-user's uid.
    pub pool_uid: u32,
    /// The admin pool-scope auto-user's uid: an account of its own, so that
    /// no admin and non-admin identity ever share an owner (with user
    /// namespaces, the host uid an admin task's root maps to).
    pub pool_admin_uid: u32,
    /// The group every pool identity belongs to; `shared/` is writable by it.
    pub pool_gid: u32,
    /// Task-scope auto-users get uids `task_uid_first ..+ task_uid_count`, in turn.
    pub task_uid_first: u32,
    pub task_uid_count: u32,
    /// Admin task-scope auto-users get theirs from `task_admin_uid_first ..+
    /// task_uid_count`: a range of their own, so that no admin and non-admin
    /// identity share an owner (with user namespaces).
    pub task_admin_uid_first: u32,
}

impl Default for AutoUsers {
    fn default() -> Self {
        Self {
            pool_uid: 20000,
            pool_admin_uid: 19999,
            pool_gid: 20000,
            task_uid_first: 20001,
            task_uid_count: 9999,
            task_admin_uid_first: 30001,
        }
    }
}

/// Everything identities are resolved against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    pub users: Vec<UserAccount>,
    pub auto: AutoUsers,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("user {0:?} is not a user account of this pool")]
    UnknownUser(String),
}

impl Identities {
    /// Resolves a task's identity. `ticket` picks a task-scope auto-user's uid
    /// (the task's sequence number: successive tasks get successive uids).
    pub fn resolve(&self, id: &UserIdentity, ticket: u64) -> Result<RunAs, IdentityError> {
        let pool_gid = self.auto.pool_gid;
        let with_pool = |mut groups: Vec<u32>| {
            if !groups.contains(&pool_gid) {
                groups.push(pool_gid);
            }
            groups
        };
        match id {
            UserIdentity::Named(name) => {
                let u = self.users.iter().find(|u| &u.name == name).ok_or(IdentityError::UnknownUser(name.clone()))?;
                Ok(RunAs {
                    uid: u.uid,
                    gid: u.gid,
                    groups: with_pool(u.groups.clone()),
                    admin: u.elevation == Elevation::Admin,
                })
            }
            UserIdentity::Auto { scope, elevation } => {
                let uid = match scope {
                    AutoUserScope::Pool if *elevation == Elevation::Admin => self.auto.pool_admin_uid,
                    AutoUserScope::Pool => self.auto.pool_uid,
                    AutoUserScope::Task => {
                        let count = u64::from(self.auto.task_uid_count.max(1));
                        let first = if *elevation == Elevation::Admin {
                            self.auto.task_admin_uid_first
                        } else {
                            self.auto.task_uid_first
                        };
                        // Below `count`, itself a u32.
                        first + u32::try_from(ticket % count).unwrap_or(0)
                    }
                };
                Ok(RunAs { uid, gid: pool_gid, groups: with_pool(vec![]), admin: *elevation == Elevation::Admin })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_named_and_auto_users() {
        let ids = Identities {
            users: vec![UserAccount {
                name: "alice".into(),
                uid: 1500,
                gid: 1500,
                groups: vec![44],
                elevation: Elevation::NonAdmin,
            }],
            auto: AutoUsers::default(),
        };
        let alice = ids.resolve(&UserIdentity::Named("alice".into()), 0).unwrap();
        assert_eq!(alice, RunAs { uid: 1500, gid: 1500, groups: vec![44, 20000], admin: false });
        assert_eq!(ids.resolve(&UserIdentity::Named("bob".into()), 0), Err(IdentityError::UnknownUser("bob".into())));
        let pool = ids.resolve(&UserIdentity::default(), 7).unwrap();
        assert_eq!(pool, RunAs { uid: 20000, gid: 20000, groups: vec![20000], admin: false });
        let pool_admin =
            ids.resolve(&UserIdentity::Auto { scope: AutoUserScope::Pool, elevation: Elevation::Admin }, 7).unwrap();
        assert_eq!(pool_admin, RunAs { uid: 19999, gid: 20000, groups: vec![20000], admin: true });
        assert_eq!(pool_admin.dir_owner(false), (0, 0), "admin directories belong to root");
        assert_eq!(pool_admin.dir_owner(true), (19999, 20000), "or to the admin account with user namespaces");
        assert_eq!(pool.dir_owner(false), (20000, 20000));
        assert_ne!(pool_admin.dir_owner(true), pool.dir_owner(true), "admin and non-admin never share an owner");
        let task = |n| {
            ids.resolve(&UserIdentity::Auto { scope: AutoUserScope::Task, elevation: Elevation::Admin }, n).unwrap()
        };
        assert_eq!((task(0).uid, task(1).uid, task(9999).uid), (30001, 30002, 30001), "admin: a range of its own");
        assert!(task(3).admin);
        let plain =
            ids.resolve(&UserIdentity::Auto { scope: AutoUserScope::Task, elevation: Elevation::NonAdmin }, 0).unwrap();
        assert_eq!(plain.uid, 20001);
    }
}
