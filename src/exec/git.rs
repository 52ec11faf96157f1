//! `ADD <git url>`: resolve the ref to a commit (the cache key) with `git ls-remote`, then
//! fetch that commit, check it out with its submodules and hand the tree to the copier as
//! a source directory. Runs the `git` binary as BuildKit's source/git does: a clean
//! environment (no system or user gitconfig, no prompts), `ext::` and `file://` refused for
//! the repository and every submodule, credentials from `--ssh default` (ssh URLs) and
//! `--secret id=GIT_AUTH_TOKEN` (https).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::BuildError;

/// `REMOTE[?QUERY][#[REF][:SUBDIR]]`, as BuildKit's Dockerfile frontend splits an ADD source
/// (dfgitutil.ParseGitRef): the fragment names a ref and a subdirectory, the query
/// (`ref`, `tag`, `branch`, `subdir`, `checksum`/`commit`, `keep-git-dir`, `submodules`,
/// `mtime`, `fetch-by-commit`) the same and more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    pub remote: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
    /// `?checksum=` / `?commit=`: the commit the ref must resolve to (a prefix of it).
    pub checksum: Option<String>,
    /// `?keep-git-dir[=BOOL]`.
    pub keep_git_dir: Option<bool>,
    /// `?submodules=false` skips them.
    pub submodules: bool,
    /// `?mtime=commit`: every file gets the commit's time instead of the checkout's.
    pub mtime_commit: bool,
    /// `?fetch-by-commit`: trust the checksum as the commit, without asking the remote
    /// which commit the ref names.
    pub fetch_by_commit: bool,
}

impl GitUrl {
    /// The checksum to verify: `--checksum` and the URL's `checksum=` must agree.
    pub fn checksum_with(&self, flag: Option<&str>) -> Result<Option<String>, BuildError> {
        match (flag.filter(|c| !c.is_empty()), &self.checksum) {
            (Some(f), Some(q)) if f != q => Err(BuildError::Invalid(format!(
                "ADD `{}`: checksum mismatch \"{f}\" != \"{q}\"",
                self.remote
            ))),
            (f, q) => Ok(f.map(str::to_string).or_else(|| q.clone())),
        }
    }

    /// Whether `.git` stays: `--keep-git-dir` and the URL's `keep-git-dir=` must agree.
    pub fn keep_git_dir_with(&self, flag: bool) -> Result<bool, BuildError> {
        match self.keep_git_dir {
            Some(q) if flag && !q => Err(BuildError::Invalid(format!(
                "ADD `{}`: inconsistent keep-git-dir configuration",
                self.remote
            ))),
            Some(q) => Ok(q || flag),
            None => Ok(flag),
        }
    }

    pub fn parse(url: &str) -> Result<GitUrl, BuildError> {
        let fail = |why: &str| BuildError::Invalid(format!("ADD `{url}`: {why}"));
        let (remote, fragment) = match url.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (url, None),
        };
        let (remote, query) = match remote.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (remote, None),
        };
        let (reference, subdir) = match fragment {
            None => (None, None),
            Some(f) => match f.split_once(':') {
                Some((r, d)) => (Some(r), Some(d)),
                None => (Some(f), None),
            },
        };
        let known = ["https://", "http://", "git://", "ssh://", "git@"];
        if !known.iter().any(|p| remote.starts_with(p)) {
            return Err(fail(
                "not a git URL rbuild clones (https://, http://, git://, ssh:// or git@host:path)",
            ));
        }
        if remote.len() <= remote.find("://").map_or(4, |i| i + 3) {
            return Err(fail("no host in the git URL"));
        }
        let mut parsed = GitUrl {
            remote: remote.to_string(),
            reference: reference.filter(|r| !r.is_empty()).map(str::to_string),
            subdir: subdir.filter(|d| !d.is_empty()).map(str::to_string),
            checksum: None,
            keep_git_dir: None,
            submodules: true,
            mtime_commit: false,
            fetch_by_commit: false,
        };
        if let Some(query) = query {
            parsed.load_query(query).map_err(|e| fail(&e))?;
        }
        // A ref is handed to git as an argument: never let it read as an option or a range.
        if let Some(r) = &parsed.reference {
            let bad = r.starts_with('-')
                || r.contains("..")
                || r.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "~^?*[\\".contains(c));
            if bad {
                return Err(fail(&format!("invalid git ref `{r}`")));
            }
        }
        if let Some(c) = &parsed.checksum {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail(&format!(
                    "invalid checksum {c}, expected hex commit hash"
                )));
            }
        }
        Ok(parsed)
    }

    /// The query's options, with BuildKit's rules: one value per key, a value required but
    /// for the booleans, a `ref` that conflicts with the fragment's or with `tag`/`branch`
    /// refused.
    fn load_query(&mut self, query: &str) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let (mut tag, mut branch) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (percent_decode(k)?, Some(percent_decode(v)?)),
                None => (percent_decode(pair)?, None),
            };
            if !seen.insert(k.clone()) {
                return Err(format!("query \"{k}\" has multiple values"));
            }
            let v = v.filter(|v| !v.is_empty());
            let flag = |v: Option<String>| -> Result<bool, String> {
                match v.as_deref() {
                    None => Ok(true),
                    Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                    Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                    Some(other) => Err(format!("invalid {k} value: \"{other}\"")),
                }
            };
            let value = |v: Option<String>| v.ok_or(format!("query \"{k}\" has no value"));
            match k.as_str() {
                "ref" => set_once(&mut self.reference, value(v)?, "ref")?,
                "tag" => tag = Some(value(v)?),
                "branch" => branch = Some(value(v)?),
                "subdir" => set_once(&mut self.subdir, value(v)?, "subdir")?,
                "checksum" | "commit" => self.checksum = Some(value(v)?),
                "keep-git-dir" => self.keep_git_dir = Some(flag(v)?),
                "submodules" => self.submodules = flag(v)?,
                "fetch-by-commit" => self.fetch_by_commit = flag(v)?,
                "mtime" => match value(v)?.as_str() {
                    "checkout" => self.mtime_commit = false,
                    "commit" => self.mtime_commit = true,
                    other => {
                        return Err(format!(
                            "invalid mtime value: \"{other}\" (must be \"checkout\" or \"commit\")"
                        ))
                    }
                },
                _ => return Err(format!("unexpected query \"{k}\"")),
            }
        }
        if let Some(t) = tag {
            let full = if t.starts_with("refs/tags/") {
                t
            } else {
                format!("refs/tags/{t}")
            };
            set_once(&mut self.reference, full, "ref")?;
        }
        if let Some(b) = branch {
            if self
                .reference
                .as_deref()
                .is_some_and(|r| r.starts_with("refs/tags/"))
            {
                return Err("branch conflicts with tag".to_string());
            }
            let full = if b.starts_with("refs/heads/") {
                b
            } else {
                format!("refs/heads/{b}")
            };
            set_once(&mut self.reference, full, "ref")?;
        }
        Ok(())
    }

    pub fn is_ssh(&self) -> bool {
        self.remote.starts_with("ssh://") || self.remote.starts_with("git@")
    }

    /// The host of an http(s) remote, for the `GIT_AUTH_TOKEN.<host>` secret.
    pub fn http_host(&self) -> Option<&str> {
        let rest = self
            .remote
            .strip_prefix("https://")
            .or_else(|| self.remote.strip_prefix("http://"))?;
        let authority = rest.split('/').next()?;
        Some(authority.rsplit('@').next().unwrap_or(authority))
    }

    /// Where the Authorization header is sent: the remote itself, or every github.com
    /// remote (BuildKit's tokenScope, as actions/checkout does).
    fn token_scope(&self) -> Option<String> {
        self.http_host()?;
        for prefix in ["https://github.com/", "https://www.github.com/"] {
            if self.remote.starts_with(prefix) {
                return Some(prefix.to_string());
            }
        }
        Some(self.remote.clone())
    }
}

/// How git reaches a repository: the ssh agent socket and the https token, if given.
#[derive(Default)]
pub struct GitAuth {
    pub ssh_auth_sock: Option<PathBuf>,
    /// The Authorization header's value for http(s) remotes.
    pub authorization: Option<Vec<u8>>,
}

impl GitAuth {
    /// BuildKit's `GIT_AUTH_TOKEN`: basic auth as `x-access-token`.
    pub fn token(token: &[u8]) -> Vec<u8> {
        let mut basic = b"x-access-token:".to_vec();
        basic.extend_from_slice(token);
        format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic)
        )
        .into_bytes()
    }
}

/// What a ref resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit to check out (a tag is peeled to its commit): the cache key.
    pub commit: String,
    /// The branch the ref named, checked out by name with `--keep-git-dir`.
    pub branch: Option<String>,
    /// The annotated tag object a ref named, which `--checksum` may name as well.
    pub tag_object: Option<String>,
}

pub fn is_commit_sha(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A `git` command with BuildKit's environment: nothing inherited but PATH, no prompts, no
/// system or user config, no `ext::` or `file://` transport (submodules included).
fn git(auth: &GitAuth, url: &GitUrl) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", "/dev/null")
        .env("LC_ALL", "C")
        // BuildKit's default without known hosts.
        .env(
            "GIT_SSH_COMMAND",
            "ssh -F /dev/null -o StrictHostKeyChecking=no -o BatchMode=yes",
        )
        .args(["-c", "protocol.allow=never"])
        .args(["-c", "protocol.https.allow=always"])
        .args(["-c", "protocol.http.allow=always"])
        .args(["-c", "protocol.git.allow=always"])
        .args(["-c", "protocol.ssh.allow=always"])
        .args(["-c", "core.symlinks=true"])
        .args(["-c", "advice.detachedHead=false"])
        .args(["-c", "init.defaultBranch=main"])
        .stdin(Stdio::null());
    // A killed rbuild takes its clone down with it.
    crate::sandbox::die_with_parent(&mut cmd);
    if let Some(sock) = &auth.ssh_auth_sock {
        cmd.env("SSH_AUTH_SOCK", sock);
    }
    if let (Some(value), Some(scope)) = (&auth.authorization, url.token_scope()) {
        // Through the environment, not argv: a token in argv is visible in /proc.
        let mut header = b"Authorization: ".to_vec();
        header.extend_from_slice(value);
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("http.{scope}.extraheader"))
            .env(
                "GIT_CONFIG_VALUE_0",
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(header),
            );
    }
    cmd
}

/// Runs `cmd`, returning stdout; a failure names what was done and git's own words.
fn output(mut cmd: Command, url: &GitUrl, what: &str) -> Result<String, BuildError> {
    let out = cmd.output().map_err(|e| {
        BuildError::Invalid(format!(
            "ADD `{}`: running git to {what}: {e} (install git)",
            url.remote
        ))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        return Err(BuildError::Invalid(format!(
            "ADD `{}`: {what}: {}",
            url.remote,
            if err.is_empty() {
                out.status.to_string()
            } else {
                err.to_string()
            }
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `url`'s ref names, checked against `checksum` (a commit sha or its prefix; an
/// annotated tag's own sha too), as BuildKit's resolveMetadata.
pub fn resolve(
    url: &GitUrl,
    checksum: Option<&str>,
    auth: &GitAuth,
) -> Result<Resolved, BuildError> {
    if let Some(c) = checksum {
        if c.is_empty() || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BuildError::Invalid(format!(
                "invalid checksum {c} for Git URL, expected hex commit hash"
            )));
        }
    }
    let resolved = match url.reference.as_deref() {
        // Trusted as BuildKit's fetch-by-commit does: the remote is not asked.
        reference if url.fetch_by_commit && checksum.is_some_and(is_commit_sha) => Resolved {
            commit: checksum.unwrap_or_default().to_ascii_lowercase(),
            branch: reference
                .filter(|r| !r.starts_with("refs/tags/") && !is_commit_sha(r))
                .map(|r| r.strip_prefix("refs/heads/").unwrap_or(r).to_string()),
            tag_object: None,
        },
        Some(r) if is_commit_sha(r) => Resolved {
            commit: r.to_ascii_lowercase(),
            branch: None,
            tag_object: None,
        },
        reference => {
            let mut cmd = git(auth, url);
            cmd.arg("ls-remote").arg("--").arg(&url.remote);
            let pattern = reference.unwrap_or("HEAD");
            cmd.arg(pattern);
            let listing = output(cmd, url, &format!("resolving `{pattern}`"))?;
            pick(&listing, reference).ok_or_else(|| {
                BuildError::Invalid(format!(
                    "ADD `{}`: no branch, tag or commit `{pattern}` in the repository (a ref is a branch, a tag or a full commit sha)",
                    url.remote
                ))
            })?
        }
    };
    if let Some(c) = checksum {
        let c = c.to_ascii_lowercase();
        let tag_ok = resolved
            .tag_object
            .as_deref()
            .is_some_and(|t| t.starts_with(&c));
        if !resolved.commit.starts_with(&c) && !tag_ok {
            return Err(BuildError::Invalid(format!(
                "expected checksum to match {c}, got {}",
                resolved.commit
            )));
        }
    }
    Ok(resolved)
}

/// The ref `reference` names in `git ls-remote` output: the full ref itself, else a branch,
/// else a tag (peeled to its commit); without a ref, HEAD.
fn pick(listing: &str, reference: Option<&str>) -> Option<Resolved> {
    let refs: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(sha, _)| is_commit_sha(sha))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(s, _)| s.to_string())
    };
    let Some(r) = reference else {
        return find("HEAD").map(|commit| Resolved {
            commit,
            branch: None,
            tag_object: None,
        });
    };
    let short = r.strip_prefix("refs/heads/").unwrap_or(r);
    if let Some(commit) = find(&format!("refs/heads/{short}")) {
        return Some(Resolved {
            commit,
            branch: Some(short.to_string()),
            tag_object: None,
        });
    }
    let tag = r.strip_prefix("refs/tags/").unwrap_or(r);
    let tag_ref = format!("refs/tags/{tag}");
    if let Some(object) = find(&tag_ref) {
        let peeled = find(&format!("{tag_ref}^{{}}"));
        return Some(Resolved {
            commit: peeled.clone().unwrap_or_else(|| object.clone()),
            branch: None,
            tag_object: peeled.map(|_| object),
        });
    }
    find(r).map(|commit| Resolved {
        commit,
        branch: None,
        tag_object: None,
    })
}

/// Fetches `resolved.commit` into `dir` (new), checks it out with its submodules, and
/// removes every `.git` unless `keep_git_dir`.
pub fn checkout(
    url: &GitUrl,
    resolved: &Resolved,
    dir: &Path,
    keep_git_dir: bool,
    auth: &GitAuth,
) -> Result<(), BuildError> {
    let run = |args: &[&str], what: &str| -> Result<String, BuildError> {
        let mut cmd = git(auth, url);
        cmd.arg("-C").arg(dir).args(args);
        output(cmd, url, what)
    };
    std::fs::create_dir_all(dir).map_err(BuildError::io("creating", dir))?;
    run(&["init", "-q"], "initializing a repository")?;
    run(
        &["remote", "add", "origin", &url.remote],
        "adding the remote",
    )?;
    let commit = resolved.commit.as_str();
    // One commit, shallow; a server that refuses a want by sha gets a full fetch instead.
    if run(
        &["fetch", "-q", "--depth=1", "--no-tags", "origin", commit],
        "fetching",
    )
    .is_err()
    {
        run(
            &[
                "fetch",
                "-q",
                "--tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
            ],
            &format!("fetching commit {commit}"),
        )?;
    }
    run(
        &["checkout", "-q", commit],
        &format!("checking out {commit}"),
    )?;
    if keep_git_dir {
        if let Some(branch) = &resolved.branch {
            run(
                &["checkout", "-q", "-B", branch],
                &format!("naming branch {branch}"),
            )?;
        }
    }
    if url.submodules && dir.join(".gitmodules").exists() {
        // Submodule commits need not be branch tips: no --depth.
        run(
            &["submodule", "update", "-q", "--init", "--recursive"],
            "updating submodules",
        )?;
    }
    let commit_time = if url.mtime_commit {
        let t = run(
            &["log", "-1", "--format=%ct", commit],
            "reading the commit time",
        )?;
        Some(t.trim().parse::<i64>().map_err(|_| {
            BuildError::Invalid(format!("ADD `{}`: commit time `{}`", url.remote, t.trim()))
        })?)
    } else {
        None
    };
    if !keep_git_dir {
        remove_git_dirs(dir)?;
    }
    if let Some(t) = commit_time {
        set_mtimes(dir, t)?;
    }
    Ok(())
}

/// Gives every entry of the tree (the root included, symlinks themselves) the time `secs`.
fn set_mtimes(dir: &Path, secs: i64) -> Result<(), BuildError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, 0);
    let set = |path: &Path| {
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| BuildError::io("setting the time of", path)(std::io::Error::from(e)))
    };
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(BuildError::io("reading", &d))? {
            let entry = entry.map_err(BuildError::io("reading", &d))?;
            let path = entry.path();
            if entry
                .file_type()
                .map_err(BuildError::io("reading", &path))?
                .is_dir()
            {
                todo.push(path.clone());
            }
            set(&path)?;
        }
    }
    set(dir)
}

/// Removes `.git` (a directory, or a submodule's `gitdir:` file) from every directory of
/// the tree, never following a symlink.
fn remove_git_dirs(dir: &Path) -> Result<(), BuildError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(BuildError::io("reading", &d))? {
            let entry = entry.map_err(BuildError::io("reading", &d))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(BuildError::io("reading", &path))?;
            if entry.file_name() == ".git" {
                if ft.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .map_err(BuildError::io("removing", &path))?;
            } else if ft.is_dir() {
                todo.push(path);
            }
        }
    }
    Ok(())
}

/// Sets `slot` to `value` unless it holds another value already (`ref conflicts: "a" vs "b"`).
fn set_once(slot: &mut Option<String>, value: String, what: &str) -> Result<(), String> {
    match slot {
        Some(old) if *old != value => Err(format!("{what} conflicts: \"{old}\" vs \"{value}\"")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// A query component with `%XX` escapes and `+` for a space (Go's url.ParseQuery).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(format!("invalid escape in query `{s}`"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("query `{s}` is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_like_buildkit() {
        let u = GitUrl::parse("https://example.com/a/b.git#v1.0:sub/dir").unwrap();
        assert_eq!(u.remote, "https://example.com/a/b.git");
        assert_eq!(u.reference.as_deref(), Some("v1.0"));
        assert_eq!(u.subdir.as_deref(), Some("sub/dir"));
        let u = GitUrl::parse("git@github.com:moby/buildkit.git").unwrap();
        assert_eq!(u.remote, "git@github.com:moby/buildkit.git");
        assert!(u.is_ssh() && u.reference.is_none() && u.subdir.is_none());
        let u = GitUrl::parse("git://h/r#:docs").unwrap();
        assert_eq!((u.reference, u.subdir.as_deref()), (None, Some("docs")));
        let u = GitUrl::parse("https://u@h:8443/r.git").unwrap();
        assert_eq!(u.http_host(), Some("h:8443"));
        assert_eq!(u.token_scope().as_deref(), Some("https://u@h:8443/r.git"));
        let u = GitUrl::parse("https://github.com/o/r.git").unwrap();
        assert_eq!(u.token_scope().as_deref(), Some("https://github.com/"));
        assert_eq!(GitUrl::parse("git://h/r").unwrap().token_scope(), None);
        for bad in [
            "https://h/r.git#--upload-pack=touch /x",
            "https://h/r.git#a..b",
            "https://h/r.git#a b",
            "file:///etc/r.git",
            "ext::sh -c touch% /tmp/x.git",
            "https://",
        ] {
            let err = GitUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("ADD `"), "{bad}: {err}");
        }
    }

    #[test]
    fn query_form_as_buildkit_reads_it() {
        let u = GitUrl::parse("https://h/r.git?ref=v1&subdir=a%2Fb").unwrap();
        assert_eq!(u.remote, "https://h/r.git");
        assert_eq!(
            (u.reference.as_deref(), u.subdir.as_deref()),
            (Some("v1"), Some("a/b"))
        );
        let u = GitUrl::parse("git@h:r.git?tag=v1#refs/tags/v1:d").unwrap();
        assert_eq!(u.remote, "git@h:r.git");
        assert_eq!(u.reference.as_deref(), Some("refs/tags/v1"));
        let u = GitUrl::parse("https://h/r.git?branch=dev&keep-git-dir&submodules=false").unwrap();
        assert_eq!(u.reference.as_deref(), Some("refs/heads/dev"));
        assert_eq!((u.keep_git_dir, u.submodules), (Some(true), false));
        let u =
            GitUrl::parse("https://h/r.git?commit=abc1&mtime=commit&fetch-by-commit=1").unwrap();
        assert_eq!(u.checksum.as_deref(), Some("abc1"));
        assert!(u.mtime_commit && u.fetch_by_commit);
        assert_eq!(u.checksum_with(None).unwrap().as_deref(), Some("abc1"));
        assert_eq!(
            u.checksum_with(Some("abc1")).unwrap().as_deref(),
            Some("abc1")
        );
        assert!(u.checksum_with(Some("abc2")).is_err());
        let kept = GitUrl::parse("https://h/r.git?keep-git-dir=false").unwrap();
        assert!(kept.keep_git_dir_with(true).is_err());
        assert!(!kept.keep_git_dir_with(false).unwrap());
        for (bad, why) in [
            ("https://h/r.git?ref=a#b", "ref conflicts: \"b\" vs \"a\""),
            ("https://h/r.git?ref=a&ref=a", "has multiple values"),
            ("https://h/r.git?ref=", "query \"ref\" has no value"),
            (
                "https://h/r.git?tag=a&branch=b",
                "branch conflicts with tag",
            ),
            (
                "https://h/r.git?submodules=maybe",
                "invalid submodules value",
            ),
            ("https://h/r.git?mtime=now", "invalid mtime value"),
            ("https://h/r.git?x=1", "unexpected query \"x\""),
            ("https://h/r.git?ref=%zz", "invalid escape"),
            ("https://h/r.git?ref=--upload-pack=x", "invalid git ref"),
            ("https://h/r.git?commit=xyz", "expected hex commit hash"),
        ] {
            let err = GitUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn refs_resolve_to_branches_then_tags_peeled() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let listing = format!(
            "{a}\tHEAD\n{a}\trefs/heads/main\n{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n{b}\trefs/tags/light\n"
        );
        let r = pick(&listing, None).unwrap();
        assert_eq!((r.commit.as_str(), r.branch), (a.as_str(), None));
        let r = pick(&listing, Some("main")).unwrap();
        assert_eq!(r.branch.as_deref(), Some("main"));
        let r = pick(&listing, Some("v1")).unwrap();
        assert_eq!(
            (r.commit.as_str(), r.tag_object.as_deref()),
            (c.as_str(), Some(b.as_str()))
        );
        let r = pick(&listing, Some("refs/tags/light")).unwrap();
        assert_eq!((r.commit.as_str(), r.tag_object), (b.as_str(), None));
        assert!(pick(&listing, Some("nope")).is_none());
    }
}
