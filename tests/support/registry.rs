//! A docker-registry (distribution 2.8) of a test's own, on a free loopback port, with its
//! storage in a temporary directory the test can reach into (to tamper with a blob).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbuild::image::{Digest, Reference};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// For `#[ignore = "needs docker-registry"]`: the tests start registries of their own.
pub fn needs_docker_registry() {
    super::require(
        Path::new(REGISTRY_BIN).exists(),
        &format!("{REGISTRY_BIN} (apt-get install docker-registry)"),
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process with its own storage; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(htpasswd: Option<&Path>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(h) = htpasswd {
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: rbuild-test\n    path: {}\n",
                h.display()
            );
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    pub fn reference(&self, name: &str) -> Reference {
        format!("127.0.0.1:{}/{name}", self.port).parse().unwrap()
    }

    /// The file holding a blob in the registry's filesystem storage.
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
