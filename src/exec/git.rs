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

/// `REMOTE[#[REF][:SUBDIR]]`, as BuildKit's Dockerfile frontend splits an ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    pub remote: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

impl GitUrl {
    pub fn parse(url: &str) -> Result<GitUrl, BuildError> {
        let fail = |why: &str| BuildError::Invalid(format!("ADD `{url}`: {why}"));
        let (remote, fragment) = match url.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (url, None),
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
        // A ref is handed to git as an argument: never let it read as an option or a range.
        if let Some(r) = reference.filter(|r| !r.is_empty()) {
            let bad = r.starts_with('-')
                || r.contains("..")
                || r.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "~^?*[\\".contains(c));
            if bad {
                return Err(fail(&format!("invalid git ref `{r}`")));
            }
        }
        Ok(GitUrl {
            remote: remote.to_string(),
            reference: reference.filter(|r| !r.is_empty()).map(str::to_string),
            subdir: subdir.filter(|d| !d.is_empty()).map(str::to_string),
        })
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
    if dir.join(".gitmodules").exists() {
        // Submodule commits need not be branch tips: no --depth.
        run(
            &["submodule", "update", "-q", "--init", "--recursive"],
            "updating submodules",
        )?;
    }
    if !keep_git_dir {
        remove_git_dirs(dir)?;
    }
    Ok(())
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
