#!/usr/bin/env bash
# Install rbuild to /usr/local/bin (and Debian's slirp4netns, the way out of the network
# RUN steps get), then build an example image offline and run it:
# a busybox base image is made from Debian's busybox-static with `rbuild import`,
# Dockerfile.examples/static-site is built on it and loaded into docker, and run.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || exec sudo -E "$0" "$@"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

command -v cargo >/dev/null || { echo "install.sh: needs a Rust toolchain (cargo): https://rustup.rs" >&2; exit 1; }
ensure_packages busybox-static docker.io curl slirp4netns uidmap

log "building rbuild (release)"
cargo build --release --locked --quiet
install -m 0755 target/release/rbuild /usr/local/bin/rbuild
log "installed $(rbuild --version) to /usr/local/bin/rbuild"

log "importing busybox:latest from busybox-static (no network needed)"
rootfs=$(mktemp --suffix=.tar)
trap 'rm -f "$rootfs"' EXIT
make_busybox_rootfs "$rootfs"
rbuild import "$rootfs" busybox:latest -c "$BASE_ENV" -c 'CMD ["sh"]' >/dev/null

log "building Dockerfile.examples/static-site"
rbuild -t rbuild-example/static-site:latest -o type=docker,dest=static-site.tar Dockerfile.examples/static-site

ensure_dockerd /var/log/rbuild-dockerd.log
$DOCKER load -q -i static-site.tar
log "running it: busybox httpd serving the page, fetched once"
cid=$($DOCKER run -d --rm --network=host rbuild-example/static-site:latest)
trap '$DOCKER rm -f "$cid" >/dev/null 2>&1 || true; rm -f "$rootfs"' EXIT
for _ in $(seq 20); do curl -fsS http://127.0.0.1:8080/ && break; sleep 0.5; done
log "done: rbuild is installed; the example image is static-site.tar and rbuild-example/static-site:latest in docker"
