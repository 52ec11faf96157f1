//! `ADD <git url>` against a `git daemon` the test starts on 127.0.0.1: branches, an
//! annotated and a lightweight tag, a commit, `:subdir`, a submodule, `--keep-git-dir`,
//! `--checksum`, the cache keyed by the commit, hostile repositories (a symlink out, `ext::`
//! and `file://` submodules). docker 20.10's frontend has no ADD git (it reads the URL as a
//! context path: `failed to walk .../git:/127.0.0.1:PORT`), so there is no comparison.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use support::*;

const BASE: InRegistry = InRegistry("busybox");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args)
            .env("HOME", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"),
    )
    .trim()
    .to_string()
}

/// A `git daemon` serving `base` on a free loopback port; killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself, not `git daemon`: killing that wrapper would orphan the daemon.
        let exec_path = run_ok(Command::new("git").arg("--exec-path"));
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (git)");
        let d = Daemon { child, port };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("git daemon did not listen on {port}");
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes the bare repository `base/name.git` from a work tree that `fill` prepares.
fn repo(base: &Path, name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let work = base.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    fill(&work);
    let bare = base.join(format!("{name}.git"));
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&bare),
    );
    work
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
    let bad = |dockerfile: String, want: &str| {
        let o = build(store.path(), &dockerfile, &out.path().join("bad"));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
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
    bad(
        format!("FROM {BASE}\nADD {url} /a/ {url}#dev /b/\n"),
        "must be ADD's only source",
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
        assert!(err.contains("updating submodules"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!marker.exists(), "an ext:: submodule ran a command");
}
