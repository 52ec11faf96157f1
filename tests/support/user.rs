//! The rootless pass (scripts/test-rootless.sh, docs/rootless.md): with [`USER_VAR`] naming
//! an unprivileged user, the rbuild command builders ([`super::rbuild`],
//! [`super::rbuild_cmd`]) run rbuild as that user, while the test itself stays root (it
//! drives docker and the registry, and checks what the user's rbuild made). The user gets a
//! copy of the binary it may execute, a home of its own, the stores the tests name, and the
//! temp dirs the tests make ([`super::tempdir`]): one code path for both passes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Names the user the rbuild command builders run rbuild as (unset: the test's own root).
pub const USER_VAR: &str = "RBUILD_TEST_USER";

/// An unprivileged user, as `setpriv` needs it.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// The user `name` (it must exist).
    pub fn named(name: &str) -> User {
        let id = |flag: &str| -> u32 {
            let out = super::run_ok(Command::new("id").args([flag, name]));
            out.trim()
                .parse()
                .unwrap_or_else(|e| panic!("`id {flag} {name}`: {out:?}: {e}"))
        };
        User {
            name: name.to_string(),
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// `program` run as this user (setpriv drops root: its ids and its groups), with `home`
    /// as HOME and no XDG directory of root's. The rest of the environment stays the test's.
    pub fn command(&self, program: &Path, home: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.uid.to_string(),
            "--regid",
            &self.gid.to_string(),
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env("HOME", home)
        .env("USER", &self.name)
        .env("LOGNAME", &self.name);
        for var in [
            "XDG_RUNTIME_DIR",
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "XDG_CACHE_HOME",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Gives `path` (a directory root made) to this user.
    pub fn give(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
    }
}

/// The user of the rootless pass ([`USER_VAR`]), if this is that pass, with its home (from
/// /etc/passwd: scripts/test-rootless.sh makes both).
pub fn pass_user() -> Option<&'static (User, PathBuf)> {
    static USER: OnceLock<Option<(User, PathBuf)>> = OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var(USER_VAR).ok().filter(|n| !n.is_empty())?;
        let user = User::named(&name);
        let passwd = super::run_ok(Command::new("getent").args(["passwd", &name]));
        let home = PathBuf::from(passwd.trim().split(':').nth(5).unwrap_or_default());
        let owned = std::fs::metadata(&home)
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == user.uid);
        super::require(
            owned,
            &format!(
                "{USER_VAR}={name}: a home directory {} owned by {name} \
                 (scripts/test-rootless.sh makes the user and its home)",
                home.display()
            ),
        );
        Some((user, home))
    })
    .as_ref()
}

/// rbuild for the test: run as the pass's user on `store` (made and given to it), or
/// root's binary itself.
pub fn rbuild_on(store: &Path) -> Command {
    match pass_user() {
        None => Command::new(super::rbuild_bin()),
        Some((user, home)) => {
            std::fs::create_dir_all(store).unwrap_or_else(|e| panic!("{}: {e}", store.display()));
            user.give(store);
            user.command(binary(), home)
        }
    }
}

/// Gives `path` (a directory a test made as root) to the pass's user, if any, so that its
/// rbuild reads contexts and writes outputs there.
pub fn share(path: &Path) {
    if let Some((user, _)) = pass_user() {
        user.give(path);
    }
}

/// The built rbuild where every user may execute it (the target dir may be root's alone): a
/// copy in the temp dir's `rbuild-test-bin/` (root's, 0755), named by the binary's path and
/// build time, so that every test process of one build shares one copy; a new build
/// replaces its older copies.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use sha2::Digest as _;
        let src = super::rbuild_bin();
        let dir = std::env::temp_dir().join("rbuild-test-bin");
        let _ = std::fs::create_dir(&dir);
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(
            meta.is_dir() && std::os::unix::fs::MetadataExt::uid(&meta) == 0,
            "{} is not root's directory",
            dir.display()
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let built = std::fs::metadata(&src).unwrap().modified().unwrap();
        let built = built
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let key = hex::encode(&sha2::Sha256::digest(src.as_os_str().as_encoded_bytes())[..6]);
        let bin = dir.join(format!("{key}-{built}"));
        if !bin.exists() {
            let part = dir.join(format!("{key}-{built}.{}.part", std::process::id()));
            std::fs::copy(&src, &part).unwrap();
            std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&part, &bin).unwrap();
            for old in std::fs::read_dir(&dir).unwrap().flatten() {
                let name = old.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{key}-"))
                    && !name.ends_with(".part")
                    && old.path() != bin
                {
                    let _ = std::fs::remove_file(old.path());
                }
            }
        }
        bin
    })
}

/// `prefix` (a program and its arguments, e.g. `unshare -n`) running `cmd`, with `cmd`'s
/// environment: for a wrapper around whichever rbuild command the pass runs.
pub fn wrapped(prefix: &mut Command, cmd: &Command) -> Command {
    let mut out = Command::new(prefix.get_program());
    out.args(prefix.get_args())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => out.env(key, v),
            None => out.env_remove(key),
        };
    }
    out
}

/// How the pass's user namespace maps ids (docs/rootless.md): 0 -> the user's own id, 1..N
/// -> its range in /etc/subuid (uids) or /etc/subgid (gids).
struct IdMap {
    own: u32,
    start: u32,
    count: u32,
}

impl IdMap {
    fn of(user: &User, own: u32, file: &str) -> IdMap {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let (start, count) = text
            .lines()
            .find_map(|l| {
                let mut f = l.split(':');
                (f.next()? == user.name).then_some(())?;
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            })
            .unwrap_or_else(|| panic!("{file}: no line for {}", user.name));
        IdMap { own, start, count }
    }

    fn to_host(&self, id: u32) -> u32 {
        match id {
            0 => self.own,
            id if id <= self.count => self.start + id - 1,
            id => panic!("id {id} is beyond the rootless user's range"),
        }
    }

    fn to_image(&self, host: u32) -> u32 {
        match host {
            h if h == self.own => 0,
            h if h >= self.start && h - self.start < self.count => h - self.start + 1,
            h => panic!("host id {h} is outside the rootless user's map: rbuild wrote it"),
        }
    }
}

fn id_maps() -> Option<(IdMap, IdMap)> {
    let (user, _) = pass_user()?;
    Some((
        IdMap::of(user, user.uid, "/etc/subuid"),
        IdMap::of(user, user.gid, "/etc/subgid"),
    ))
}

/// The host's ids for a file of the image's `uid`/`gid` that the pass's rbuild wrote to the
/// host (a `type=local` output, a rootfs): the mapped ones, the same ids as root.
pub fn on_host(uid: u32, gid: u32) -> (u32, u32) {
    match id_maps() {
        Some((uids, gids)) => (uids.to_host(uid), gids.to_host(gid)),
        None => (uid, gid),
    }
}

/// A listing of files the pass's rbuild wrote to the host, with the image's ids again (the
/// inverse of [`on_host`]; as root, unchanged). A host id outside the map fails the test.
pub fn image_ids(
    mut listing: BTreeMap<String, super::FsEntry>,
) -> BTreeMap<String, super::FsEntry> {
    if let Some((uids, gids)) = id_maps() {
        for entry in listing.values_mut() {
            entry.uid = u64::from(uids.to_image(entry.uid as u32));
            entry.gid = u64::from(gids.to_image(entry.gid as u32));
        }
    }
    listing
}
