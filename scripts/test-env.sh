#!/usr/bin/env bash
# Bring up everything rbuild's tests need on a Debian machine, idempotently:
# the peer tools, a docker engine, a registry on 127.0.0.1:5000 and the base images in it.
# Run as root. Safe to run again: it reuses whatever is already up.
set -euo pipefail

REGISTRY=127.0.0.1:5000
STATE=${RBUILD_TEST_STATE:-/var/lib/rbuild-test}
mkdir -p "$STATE"
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ensure_packages docker.io docker-registry buildah skopeo umoci podman busybox-static debootstrap curl apache2-utils \
  slirp4netns gcc libc6-dev util-linux time
ensure_dockerd "$STATE/dockerd.log"

if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  log "starting docker-registry on $REGISTRY"
  mkdir -p "$STATE/registry"
  cat >"$STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry}
  delete: {enabled: true}
http: {addr: $REGISTRY}
YML
  setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  for _ in $(seq 30); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -fsS "http://$REGISTRY/v2/" >/dev/null || { cat "$STATE/registry.log"; exit 1; }
fi

have_image() { curl -fsS -o /dev/null 2>/dev/null "http://$REGISTRY/v2/$1/manifests/$2"; }

# busybox: a rootfs from busybox-static, with a uid 1000 user for USER tests. The marker
# names the recipe's version, so a changed recipe re-seeds a registry kept between runs.
BUSYBOX_RECIPE=$STATE/busybox.recipe-2
if ! have_image busybox latest || [[ ! -f $BUSYBOX_RECIPE ]]; then
  log "seeding $REGISTRY/busybox:latest"
  make_busybox_rootfs "$STATE/busybox-rootfs.tar"
  $DOCKER import -c "$BASE_ENV" \
    -c 'CMD ["sh"]' "$STATE/busybox-rootfs.tar" "localhost:5000/busybox:latest" >/dev/null
  $DOCKER push -q "localhost:5000/busybox:latest" >/dev/null
  touch "$BUSYBOX_RECIPE"
fi

# debian:bookworm from debootstrap (cached as a tarball between runs), for the apt examples.
if [[ ${RBUILD_TEST_DEBIAN:-1} == 1 ]] && ! have_image debian bookworm; then
  if [[ ! -s $STATE/debian-bookworm.tar ]]; then
    log "debootstrap bookworm (about a minute)"
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$STATE/debian-bookworm.tar.tmp" .
    mv "$STATE/debian-bookworm.tar.tmp" "$STATE/debian-bookworm.tar"
    rm -rf "$root"
  fi
  log "seeding $REGISTRY/debian:bookworm"
  $DOCKER import -c "$BASE_ENV" \
    -c 'CMD ["bash"]' "$STATE/debian-bookworm.tar" "localhost:5000/debian:bookworm" >/dev/null
  $DOCKER push -q "localhost:5000/debian:bookworm" >/dev/null
fi

log "test environment ready: docker $($DOCKER version -f '{{.Server.Version}}'), registry $REGISTRY"
