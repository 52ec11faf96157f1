//! USER resolution against the image's own /etc/passwd and /etc/group.
//!
//! Semantics follow runc's `user.GetExecUser` as BuildKit calls it (executor/oci/user.go):
//! `user[:group]`, each a name or a number; a numeric user without a passwd entry is
//! accepted (gid 0, home "/"); supplementary groups are the groups that list the user by
//! name, and only when no group was given explicitly. An empty USER is root with no
//! supplementary groups and no file lookups (BuildKit's fast path).
//!
//! The one reader of passwd and group files: RUN's USER, WORKDIR's owner and COPY/ADD
//! `--chown` (whose rules differ, see [`UserDb::chown`]) all go through [`UserDb`]. Pure:
//! the caller reads the files (`Root::user_db`).

use serde::{Deserialize, Serialize};

/// The credentials a step runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub sgids: Vec<u32>,
    pub home: String,
}

/// Why a USER string could not be resolved; the message mirrors runc's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("{0}: id out of range")]
    Range(String),
}

/// An image's /etc/passwd and /etc/group; `None`: the file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl UserDb {
    /// A USER value, with runc's semantics ([`resolve`]).
    pub fn resolve(&self, spec: &str) -> Result<ExecUser, UserError> {
        resolve(spec, self.passwd.as_deref(), self.group.as_deref())
    }

    /// A `--chown` value, `user[:group]` -> (uid, gid), with BuildKit's rules for it: a
    /// numeric user is its own gid unless a group is given, a named user takes its primary
    /// group from passwd; names that are not numbers are looked up. `Err(Range)` for an
    /// empty user or group.
    pub fn chown(&self, spec: &str) -> Result<(u32, u32), UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(UserError::Range(spec.to_string()));
        }
        let (uid, mut gid) = match user.parse::<u32>() {
            Ok(id) => (id, id),
            Err(_) => passwd_entries(self.passwd.as_deref().unwrap_or(""))
                .find(|e| e.name == user)
                .map(|e| (e.uid, e.gid))
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        };
        if let Some(group) = group {
            gid = match group.parse::<u32>() {
                Ok(id) => id,
                Err(_) => group_entries(self.group.as_deref().unwrap_or(""))
                    .find(|g| g.name == group)
                    .map(|g| g.gid)
                    .ok_or_else(|| UserError::NoGroup(group.to_string()))?,
            };
        }
        Ok((uid, gid))
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        // Malformed lines are skipped, as runc's parser does for unparsable ids.
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.trim().parse().ok()?,
            gid: f.get(3)?.trim().parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        Some(GroupEntry {
            name: f.first()?,
            gid: f.get(2)?.trim().parse().ok()?,
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

fn parse_id(s: &str) -> Option<Result<u32, UserError>> {
    // runc uses Atoi, so "-1" is numeric but out of range.
    let n: i64 = s.parse().ok()?;
    Some(u32::try_from(n).map_err(|_| UserError::Range(s.to_string())))
}

/// Resolves `spec` (the raw USER value) with the given file contents (`None`: file absent).
pub fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    if spec.is_empty() {
        // No USER is user "0", looked up like any other (root's /etc/group memberships
        // apply), or plain 0:0 when the image cannot resolve it (BuildKit's GetUser).
        return Ok(resolve("0", passwd, group).unwrap_or_else(|_| ExecUser {
            uid: 0,
            gid: 0,
            sgids: Vec::new(),
            home: home_of(0, passwd),
        }));
    }
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        sgids: Vec::new(),
        home: "/".to_string(),
    };
    let uid_arg = parse_id(user_arg).transpose()?;
    let matched = passwd.and_then(|text| {
        passwd_entries(text)
            .find(|e| match uid_arg {
                Some(uid) => e.uid == uid,
                None => e.name == user_arg,
            })
            .map(|e| (e.name.to_string(), e.uid, e.gid, e.home.to_string()))
    });
    let matched_name = match matched {
        Some((name, uid, gid, home)) => {
            out.uid = uid;
            out.gid = gid;
            out.home = home;
            Some(name)
        }
        None => match uid_arg {
            Some(uid) => {
                out.uid = uid;
                None
            }
            None => return Err(UserError::NoUser(user_arg.to_string())),
        },
    };
    if !group_arg.is_empty() {
        let gid_arg = parse_id(group_arg).transpose()?;
        let found = group.and_then(|text| {
            group_entries(text)
                .find(|g| match gid_arg {
                    Some(gid) => g.gid == gid,
                    None => g.name == group_arg,
                })
                .map(|g| g.gid)
        });
        out.gid = match (found, gid_arg) {
            (Some(gid), _) => gid,
            (None, Some(gid)) => gid,
            (None, None) => return Err(UserError::NoGroup(group_arg.to_string())),
        };
    } else if let (Some(name), Some(text)) = (matched_name, group) {
        out.sgids = group_entries(text)
            .filter(|g| g.members.contains(&name.as_str()))
            .map(|g| g.gid)
            .collect();
    }
    Ok(out)
}

fn home_of(uid: u32, passwd: Option<&str>) -> String {
    passwd
        .and_then(|t| {
            passwd_entries(t)
                .find(|e| e.uid == uid)
                .map(|e| e.home.to_string())
        })
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad line\nuser:x:1000:1000::/home/user:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:root,user\naudio:x:29:other,user\n";

    fn r(spec: &str) -> Result<ExecUser, UserError> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    /// Regression (issue 14): without USER, root got no supplementary groups while
    /// `USER root` did; BuildKit resolves both the same way.
    #[test]
    fn empty_is_user_zero_with_its_groups() {
        let u = r("").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.sgids.clone(), u.home.as_str()),
            (0, 0, vec![10], "/root")
        );
        assert_eq!(r("root").unwrap(), u);
        let bare = resolve("", None, None).unwrap();
        assert_eq!(
            (bare.uid, bare.gid, bare.sgids, bare.home.as_str()),
            (0, 0, vec![], "/")
        );
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        let u = r("user").unwrap();
        assert_eq!((u.uid, u.gid, u.sgids.clone()), (1000, 1000, vec![10, 29]));
        assert_eq!(u.home, "/home/user");
        assert_eq!(r("1000").unwrap(), u);
        assert_eq!(r("root").unwrap().sgids, vec![10]);
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        let u = r("user:audio").unwrap();
        assert_eq!((u.uid, u.gid, u.sgids), (1000, 29, vec![]));
        assert_eq!(r("1000:5").unwrap().gid, 5);
    }

    #[test]
    fn unknown_numeric_user_is_accepted() {
        let u = r("4242").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.sgids, u.home.as_str()),
            (4242, 0, vec![], "/")
        );
        let u = resolve("7:8", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
    }

    /// `--chown`'s rules (moved from the copier's own passwd reader).
    #[test]
    fn chown_numbers_and_names() {
        let db = UserDb {
            passwd: Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".into()),
            group: Some("root:x:0:\nstaff:x:50:app\n".into()),
        };
        assert_eq!(db.chown("app"), Ok((1000, 1001)));
        assert_eq!(db.chown("app:staff"), Ok((1000, 50)));
        assert_eq!(db.chown("77"), Ok((77, 77)));
        assert_eq!(db.chown("77:5"), Ok((77, 5)));
        assert_eq!(db.chown("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(
            db.chown("app:nogroup"),
            Err(UserError::NoGroup("nogroup".into()))
        );
        assert_eq!(
            UserDb::default().chown("app"),
            Err(UserError::NoUser("app".into()))
        );
        assert!(matches!(db.chown(":5"), Err(UserError::Range(_))));
        assert!(matches!(db.chown("app:"), Err(UserError::Range(_))));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(r("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(r("user:nogroup"), Err(UserError::NoGroup("nogroup".into())));
        assert_eq!(
            resolve("user", None, None),
            Err(UserError::NoUser("user".into()))
        );
        assert_eq!(
            r("nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(r("-1"), Err(UserError::Range("-1".into())));
    }
}
