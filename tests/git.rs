//! `ADD <git url>` against a `git daemon` the test starts on 127.0.0.1: branches, an
//! annotated and a lightweight tag, a commit, `:subdir`, a submodule, `--keep-git-dir`,
//! `--checksum`, BuildKit's `?ref=..` query form, git sources mixed with others, the cache
//! keyed by the commit, `git http-backend` behind a server that demands `GIT_AUTH_TOKEN`,
//! hostile repositories (a symlink out, `ext::` and `file://` submodules). docker 20.10's
//! frontend has no ADD git (it reads the URL as a context path: `failed to walk
//! .../git:/127.0.0.1:PORT`), so there is no comparison.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use support::git::{git, repo, Daemon};
use support::*;

const BASE: InRegistry = InRegistry("busybox");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, path: &str, content: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn push(work: &Path, base: &Path, name: &str) {
    let bare = base.join(format!("{name}.git"));
    git(
        work,
        &["push", "-q", "--force", bare.to_str().unwrap(), "main"],
    );
}

struct Fixture {
    base: tempfile::TempDir,
    daemon: Daemon,
    work: PathBuf,
    first: String,
    dev: String,
}

fn fixture() -> Fixture {
    let base = tempfile::tempdir().unwrap();
    let b = base.path().to_path_buf();
    repo(&b, "sub", |w| {
        write(w, "s.txt", "in the submodule\n");
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "sub"]);
    });
    // The daemon serves the bare repos; the submodule is reached through it too.
    let daemon = Daemon::start(&b);
    let sub_url = daemon.url("sub.git");
    let mut first = String::new();
    let work = repo(&b, "repo", |w| {
        write(w, "a.txt", "first\n");
        write(w, "dir/b.txt", "in dir\n");
        std::os::unix::fs::symlink("/etc/shadow", w.join("out")).unwrap();
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "one"]);
        first = git(w, &["rev-parse", "HEAD"]);
        git(w, &["submodule", "add", "-q", &sub_url, "sub"]);
        write(w, "a.txt", "second\n");
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "two"]);
        git(w, &["tag", "-a", "v1", "-m", "v1"]);
        git(w, &["tag", "light", &first]);
        git(w, &["checkout", "-q", "-b", "dev"]);
        write(w, "dev.txt", "on dev\n");
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "dev"]);
        git(w, &["checkout", "-q", "main"]);
    });
    let dev = git(&work, &["rev-parse", "dev"]);
    Fixture {
        base,
        daemon,
        work,
        first,
        dev,
    }
}

fn build(store: &Path, dockerfile: &str, dest: &Path) -> Output {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    run(rbuild(store)
        .arg("-o")
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(ctx.path()))
}

/// Builds `dockerfile`, expecting a user error (exit 1, no panic) that contains `want`.
fn fails_with(store: &Path, dockerfile: &str, want: &str) {
    let out = tempfile::tempdir().unwrap();
    let o = build(store, dockerfile, &out.path().join("bad"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "want {want:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn add_git_clones_each_ref_form_with_submodules() {
    needs_root_and_registry();
    let f = fixture();
    let url = f.daemon.url("repo.git");
    let main = git(&f.work, &["rev-parse", "main"]);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("fs");
    let dockerfile = format!(
        "FROM {BASE}\n\
         ADD {url} /head\n\
         ADD {url}#dev /dev\n\
         ADD {url}#v1:dir /tagdir\n\
         ADD {url}#light /light\n\
         ADD {url}#{first} /sha\n\
         ADD --keep-git-dir=true {url}#dev /kept\n\
         ADD --checksum={main} {url}#main /checked\n",
        first = f.first,
    );
    let o = build(store.path(), &dockerfile, &dest);
    assert!(o.status.success(), "{}", stderr(&o));

    assert_eq!(read(dest.join("head/a.txt")), "second\n");
    assert_eq!(read(dest.join("head/sub/s.txt")), "in the submodule\n");
    assert!(!dest.join("head/.git").exists() && !dest.join("head/sub/.git").exists());
    // A link in the repository is copied as a link, never followed.
    assert_eq!(
        std::fs::read_link(dest.join("head/out")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(read(dest.join("dev/dev.txt")), "on dev\n");
    assert_eq!(read(dest.join("tagdir/b.txt")), "in dir\n");
    assert!(!dest.join("tagdir/a.txt").exists());
    assert_eq!(read(dest.join("light/a.txt")), "first\n");
    assert!(!dest.join("light/sub").exists());
    assert_eq!(read(dest.join("sha/a.txt")), "first\n");
    assert_eq!(read(dest.join("checked/a.txt")), "second\n");
    // --keep-git-dir: the repository, on the branch the ref named.
    assert_eq!(read(dest.join("kept/.git/HEAD")), "ref: refs/heads/dev\n");
    assert_eq!(git(&dest.join("kept"), &["rev-parse", "HEAD"]), f.dev);
    // Owned by root, as context files are.
    let meta = std::fs::symlink_metadata(dest.join("head/a.txt")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // The key is the commit: the same commits hit; a new commit on main misses only the
    // steps from the first ADD that follows main.
    let keyed = format!("FROM {BASE}\nADD {url}#dev /dev\nADD {url}#main /main\n");
    let o = build(store.path(), &keyed, &out.path().join("k1"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = build(store.path(), &keyed, &out.path().join("k2"));
    let log = stderr(&o);
    assert_eq!(log.matches(" CACHED").count(), 2, "{log}");
    write(&f.work, "a.txt", "third\n");
    git(&f.work, &["commit", "-q", "-am", "three"]);
    push(&f.work, f.base.path(), "repo");
    let o = build(store.path(), &keyed, &out.path().join("k3"));
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(log.matches(" CACHED").count(), 1, "{log}");
    assert_eq!(read(out.path().join("k3/main/a.txt")), "third\n");

    // Errors name what is wrong.
    let bad = |dockerfile: String, want: &str| fails_with(store.path(), &dockerfile, want);
    bad(
        format!("FROM {BASE}\nADD --checksum={} {url}#main /x\n", f.first),
        &format!("expected checksum to match {}", f.first),
    );
    bad(
        format!("FROM {BASE}\nADD --checksum=xyz {url} /x\n"),
        "expected hex commit hash",
    );
    bad(
        format!("FROM {BASE}\nADD {url}#nope /x\n"),
        "no branch, tag or commit `nope`",
    );
    // `:subdir` through the repository's link to /etc/shadow resolves inside the checkout,
    // where there is no such file: the host's is never read.
    bad(format!("FROM {BASE}\nADD {url}#main:out /x\n"), "not found");
}

/// BuildKit's query form (`?ref=`, `tag=`, `branch=`, `subdir=`, `commit=`, `keep-git-dir`,
/// `submodules=false`, `mtime=commit`, `fetch-by-commit`) and git sources mixed with others
/// in one ADD, copied in their order.
#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn add_git_query_form_and_mixed_sources() {
    needs_root_and_registry();
    let f = fixture();
    let url = f.daemon.url("repo.git");
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("fs");
    let commit_time: i64 = git(&f.work, &["log", "-1", "--format=%ct", "main"])
        .parse()
        .unwrap();
    let dockerfile = format!(
        "FROM {BASE}\n\
         ADD {url}?ref=dev /qdev\n\
         ADD {url}?tag=v1&subdir=dir /qtag\n\
         ADD {url}?branch=main&submodules=false /qnosub\n\
         ADD {url}?keep-git-dir=true#dev /qkept\n\
         ADD {url}?commit={first}&fetch-by-commit /qfbc\n\
         ADD {url}?mtime=commit#main /qmtime\n\
         ADD Dockerfile {url}#dev /mixed/\n",
        first = f.first,
    );
    let o = build(store.path(), &dockerfile, &dest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(dest.join("qdev/dev.txt")), "on dev\n");
    assert_eq!(read(dest.join("qtag/b.txt")), "in dir\n");
    assert!(!dest.join("qtag/a.txt").exists());
    assert_eq!(read(dest.join("qnosub/a.txt")), "second\n");
    assert!(dest.join("qnosub/sub").is_dir() && !dest.join("qnosub/sub/s.txt").exists());
    assert_eq!(read(dest.join("qkept/.git/HEAD")), "ref: refs/heads/dev\n");
    assert_eq!(read(dest.join("qfbc/a.txt")), "first\n");
    for p in [
        "qmtime/a.txt",
        "qmtime/dir/b.txt",
        "qmtime/dir",
        "qmtime/sub/s.txt",
    ] {
        let meta = std::fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&meta),
            commit_time,
            "{p}"
        );
    }
    assert_eq!(commit_time, 981173106);
    let meta = std::fs::symlink_metadata(dest.join("qdev/a.txt")).unwrap();
    assert_ne!(std::os::unix::fs::MetadataExt::mtime(&meta), commit_time);
    assert_eq!(read(dest.join("mixed/dev.txt")), "on dev\n");
    assert!(read(dest.join("mixed/Dockerfile")).starts_with("FROM "));

    let bad = |dockerfile: String, want: &str| fails_with(store.path(), &dockerfile, want);
    bad(
        format!("FROM {BASE}\nADD {url}?ref=main#dev /x\n"),
        "ref conflicts: \"dev\" vs \"main\"",
    );
    bad(
        format!("FROM {BASE}\nADD {url}?depth=1 /x\n"),
        "unexpected query \"depth\"",
    );
    bad(
        format!("FROM {BASE}\nADD {url}?tag=v1&branch=main /x\n"),
        "branch conflicts with tag",
    );
    bad(
        format!("FROM {BASE}\nADD --keep-git-dir=true {url}?keep-git-dir=false /x\n"),
        "inconsistent keep-git-dir configuration",
    );
    bad(
        format!(
            "FROM {BASE}\nADD --checksum={} {url}?checksum={} /x\n",
            f.first, f.dev
        ),
        "checksum mismatch",
    );
    // A short sha is not a ref, as in current BuildKit (its ls-remote finds nothing).
    bad(
        format!("FROM {BASE}\nADD {url}#{} /x\n", &f.first[..8]),
        "no branch, tag or commit",
    );
}

#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn add_git_refuses_ext_and_file_submodules() {
    needs_root_and_registry();
    let base = tempfile::tempdir().unwrap();
    let b = base.path().to_path_buf();
    let marker = b.join("pwned");
    let local = repo(&b, "local", |w| {
        write(w, "l.txt", "local\n");
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "l"]);
    });
    for (name, sub_url) in [
        ("ext", format!("ext::sh -c touch% {}", marker.display())),
        ("file", format!("file://{}", local.display())),
    ] {
        repo(&b, name, |w| {
            write(w, "x.txt", "x\n");
            // Written by hand: git itself refuses to add such a submodule.
            write(
                w,
                ".gitmodules",
                &format!("[submodule \"s\"]\n\tpath = s\n\turl = {sub_url}\n"),
            );
            let head = git(&local, &["rev-parse", "HEAD"]);
            git(
                w,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("160000,{head},s"),
                ],
            );
            git(w, &["add", "x.txt", ".gitmodules"]);
            git(w, &["commit", "-q", "-m", "hostile"]);
        });
    }
    let daemon = Daemon::start(&b);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for name in ["ext", "file"] {
        let o = build(
            store.path(),
            &format!(
                "FROM {BASE}\nADD {} /r\n",
                daemon.url(&format!("{name}.git"))
            ),
            &out.path().join(name),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("updating submodules")
                && err.contains(&format!("transport '{name}' not allowed")),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!marker.exists(), "an ext:: submodule ran a command");
}

/// `git http-backend` (CGI) behind a one-request-per-connection HTTP server on 127.0.0.1
/// that answers 401 unless the request carries `Authorization: <auth>`.
struct HttpGit {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpGit {
    fn start(root: &Path, auth: String) -> HttpGit {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (root, flag) = (root.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve(conn, &root, &auth);
                }
            }
        });
        HttpGit {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, root: &Path, auth: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = std::collections::BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut out = conn;
    if headers.get("authorization").map(String::as_str) != Some(auth) {
        return out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", len.to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    cgi.stdin.take().unwrap().write_all(&body)?;
    let mut response = Vec::new();
    cgi.stdout.take().unwrap().read_to_end(&mut response)?;
    cgi.wait()?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            response
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((end, gap)) = split else {
        return out.write_all(b"HTTP/1.1 500 Bad CGI\r\nConnection: close\r\n\r\n");
    };
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut status = "200 OK".to_string();
    let mut reply = String::new();
    for h in head.lines() {
        match h.strip_prefix("Status:") {
            Some(s) => status = s.trim().to_string(),
            None => reply.push_str(&format!("{}\r\n", h.trim_end())),
        }
    }
    out.write_all(format!("HTTP/1.1 {status}\r\n{reply}Connection: close\r\n\r\n").as_bytes())?;
    out.write_all(&response[end + gap..])
}

#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn add_git_over_http_sends_git_auth_token_and_keeps_it_out_of_the_image() {
    use base64::Engine as _;
    needs_root_and_registry();
    let f = fixture();
    let token = format!("tok-{}", std::process::id());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    let server = HttpGit::start(f.base.path(), format!("basic {basic}"));
    let url = format!("http://127.0.0.1:{}/repo.git", server.port);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("token"), &token).unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nADD --keep-git-dir=true {url}#dev /r\n"),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let build = |secret: Option<&str>, dest: &Path| {
        let mut cmd = rbuild(store.path());
        if let Some(id) = secret {
            cmd.arg("--secret").arg(format!(
                "id={id},src={}",
                secrets.path().join("token").display()
            ));
        }
        run(cmd
            .arg("--no-cache")
            .arg("-o")
            .arg(format!("type=local,dest={}", dest.display()))
            .arg(ctx.path()))
    };
    // Without the secret the server says 401 and git may not prompt: a clear failure.
    let o = build(None, &out.path().join("none"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("resolving `dev`"), "{}", stderr(&o));

    for id in [
        "GIT_AUTH_TOKEN".to_string(),
        format!("GIT_AUTH_TOKEN.127.0.0.1:{}", server.port),
    ] {
        let dest = out.path().join("with");
        let _ = std::fs::remove_dir_all(&dest);
        let o = build(Some(&id), &dest);
        assert!(o.status.success(), "{id}: {}", stderr(&o));
        assert_eq!(read(dest.join("r/dev.txt")), "on dev\n");
        assert_eq!(git(&dest.join("r"), &["rev-parse", "HEAD"]), f.dev);
        // Neither the token nor its header reaches the image (.git/config included) or
        // the store.
        for needle in [token.as_bytes(), basic.as_bytes()] {
            assert_eq!(
                support::files_containing(&dest, needle),
                Vec::<PathBuf>::new()
            );
            assert_eq!(
                support::files_containing(store.path(), needle),
                Vec::<PathBuf>::new()
            );
        }
    }
    drop(server);
}

/// ssh URLs (`git@host:path`, `ssh://`) reach git's ssh with the `--ssh default` agent. The
/// server side is a stand-in: an `ssh` first in PATH that records `ssh-add -l` (what the
/// real client would offer the server) and runs the remote command locally, so git's ssh
/// transport runs for real while no sshd is needed on the machine.
#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn add_git_over_ssh_uses_the_ssh_default_agent() {
    needs_root_and_registry();
    let f = fixture();
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("agent.log");
    let ssh = bin.path().join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nfor a; do last=$a; done\n\
             ssh-add -l >> {log} 2>&1 || echo \"no agent ($SSH_AUTH_SOCK)\" >> {log}\n\
             exec sh -c \"$last\"\n",
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = bin.path().join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "rbuild-git-ssh",
                "-f",
            ])
            .arg(&key),
    );
    let line = run_ok(Command::new("ssh-keygen").arg("-lf").arg(&key));
    let repo = f.base.path().join("repo.git");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {BASE}\nADD git@localhost:{repo}#dev /scp\nADD ssh://git@localhost{repo}#v1:dir /url\n",
            repo = repo.display()
        ),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = run(rbuild(store.path())
        .env("PATH", &path)
        .arg("--ssh")
        .arg(format!("default={}", key.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg(ctx.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(out.path().join("scp/dev.txt")), "on dev\n");
    assert_eq!(read(out.path().join("url/b.txt")), "in dir\n");
    // Every ssh connection (ls-remote and fetch, both URLs) saw the key.
    let seen = read(&log);
    assert!(seen.lines().count() >= 4, "{seen}");
    assert!(seen.lines().all(|l| format!("{l}\n") == line), "{seen}");
}
