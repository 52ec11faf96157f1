//! A git server for tests that ADD repositories: `git daemon` on loopback serving bare
//! repositories made from work trees (tests/git.rs, tests/provenance.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::run_ok;

pub fn git(dir: &Path, args: &[&str]) -> String {
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
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // Commits far from any checkout's time: `mtime=commit` is told apart.
            .env("GIT_COMMITTER_DATE", "2001-02-03T04:05:06Z"),
    )
    .trim()
    .to_string()
}

/// A `git daemon` serving `base` on a free loopback port; killed when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
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

    pub fn url(&self, repo: &str) -> String {
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
pub fn repo(base: &Path, name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
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
