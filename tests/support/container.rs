//! rbuild in a docker container without `--privileged` (docs/rootless.md "In an unprivileged
//! container"): an image that rbuild itself builds from the run registry's debian:bookworm
//! (debootstrap, no Docker Hub) with Debian's uidmap, a user with a subordinate range and the
//! rbuild under test, loaded into the host's docker, and `docker run` with the flags the docs
//! give.

use std::path::Path;
use std::process::Command;

use super::{docker, run_ok, DockerImages, InRegistry};

/// The container's user, as the image's USER and /etc/subuid name it.
pub const UID: u32 = 1000;

/// The image docs/rootless.md shows. apt reaches Debian's mirror through the default RUN
/// network (slirp4netns); the kept store keeps that step between runs. newuidmap/newgidmap get
/// file capabilities instead of Debian's setuid bit: a setuid-root newuidmap (Debian's is
/// built without libcap, so it never drops to the caller) writes the map as root, and then the
/// kernel wants CAP_SYS_ADMIN, which docker does not grant (userns.rs `map_tool_hint`).
/// The store is a VOLUME owned by the user, so that it is never the container's overlay root.
const DOCKERFILE: &str = r#"FROM {BASE}
RUN apt-get update && apt-get install -y --no-install-recommends uidmap libcap2-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && chmod u-s /usr/bin/newuidmap /usr/bin/newgidmap \
 && setcap cap_setuid=ep /usr/bin/newuidmap && setcap cap_setgid=ep /usr/bin/newgidmap
RUN useradd --create-home --uid 1000 builder \
 && echo builder:100000:65536 > /etc/subuid && echo builder:100000:65536 > /etc/subgid \
 && mkdir -p /home/builder/.local/share/rbuild && chown -R builder: /home/builder/.local
VOLUME /home/builder/.local/share/rbuild
COPY rbuild /usr/local/bin/rbuild
USER 1000:1000
"#;

/// The image in the host's docker (tagged per test process, so that test runs of other
/// checkouts never remove it under this one), removed again when dropped.
pub struct RbuildImage {
    tag: String,
    _loaded: DockerImages,
}

impl RbuildImage {
    /// Builds the image with root's rbuild (a store kept between runs, so apt runs once) and
    /// `--load`s it. The context holds a stripped copy of the rbuild under test (its debug
    /// symbols are 80% of the file, and only make the COPY and the load slower).
    pub fn build() -> RbuildImage {
        let ctx = tempfile::tempdir().unwrap();
        let dockerfile = DOCKERFILE.replace("{BASE}", &InRegistry("debian:bookworm").to_string());
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
        run_ok(
            Command::new("strip")
                .arg("-o")
                .arg(ctx.path().join("rbuild"))
                .arg(super::rbuild_bin()),
        );
        let store = super::kept_store("rbuild-in-docker");
        let rbuild = |cmd: &str| {
            let mut c = Command::new(super::rbuild_bin());
            c.env("RBUILD_ROOT", &store).arg(cmd);
            c
        };
        let tag = format!("rbuild-test/rbuild-in-docker:{}", std::process::id());
        let loaded = DockerImages(vec![tag.clone()]);
        run_ok(
            rbuild("build")
                .args(["--progress", "plain", "--load", "-t", &tag])
                .arg(ctx.path()),
        );
        // Untagged in the store, so that prune takes the older binaries' layers (each run
        // COPYs a new one) and keeps the apt step's (used within the hour).
        run_ok(rbuild("rmi").arg(&tag));
        run_ok(rbuild("prune").args(["--filter", "until=1h"]));
        RbuildImage {
            tag,
            _loaded: loaded,
        }
    }

    /// `docker run --rm` of the image with `flags` (the security options under test, the
    /// host network for the run's registry), `ctx` read-only at /ctx and `out` at /out, running
    /// `script` with sh.
    pub fn run(&self, flags: &[&str], ctx: &Path, out: &Path, script: &str) -> Command {
        let mut cmd = docker();
        cmd.args(["run", "--rm", "--network", "host"])
            .args(flags)
            .arg("-v")
            .arg(format!("{}:/ctx:ro", ctx.display()))
            .arg("-v")
            .arg(format!("{}:/out", out.display()))
            .arg(&self.tag)
            .args(["sh", "-c", script]);
        cmd
    }
}
