#!/usr/bin/env bash
# Bring up everything rbuild's tests need on a Debian machine, idempotently: the peer tools,
# a docker engine, and a seeded registry storage (busybox:latest, debian:bookworm) that
# scripts/test.sh copies into a registry of its own for each run. Run as root.
#
#   scripts/test-env.sh                     also keeps a developer registry on 127.0.0.1:5000
#                                           (one this script started, never someone else's)
#                                           and prints the line that points tests at it:
#       eval "$(sudo scripts/test-env.sh)"  # export RBUILD_TEST_REGISTRY=localhost:5000
#       sudo -E cargo test --test build -- --include-ignored
#                                           # then run single test binaries against it
#                                           (RBUILD_TEST_DEV_PORT=N: another port)
#   scripts/test-env.sh --no-dev-registry   only tools, docker and the seeded storage
#                                           (what scripts/test.sh uses)
#
# Stdout carries only `export` lines (RBUILD_TEST_SEED: the seeded storage; and
# RBUILD_TEST_REGISTRY for the developer registry); progress goes to stderr.
set -euo pipefail

DEV_PORT=${RBUILD_TEST_DEV_PORT:-5000}
STATE=${RBUILD_TEST_STATE:-/var/lib/rbuild-test}
mkdir -p "$STATE"
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

dev_registry=1
case ${1:-} in
  --no-dev-registry) dev_registry=0 ;;
  "") ;;
  *) echo "usage: scripts/test-env.sh [--no-dev-registry]" >&2; exit 2 ;;
esac
exec 3>&1 1>&2   # only the export lines below go to stdout

ensure_packages docker.io docker-registry buildah skopeo umoci podman busybox-static debootstrap curl apache2-utils \
  slirp4netns gcc binutils libc6-dev util-linux time iproute2 openssh-client libssl3 git uidmap acl \
  qemu-user-static binfmt-support
ensure_dockerd "$STATE/dockerd.log"
# Foreign-architecture RUN steps (tests/platforms.rs) go through qemu's binfmt handlers. A
# machine that cannot register them (a container without the privilege) still runs the
# other tests; tests/platforms.rs then fails naming the missing handler.
ensure_binfmt aarch64 arm || log "warning: no qemu binfmt handlers: tests/platforms.rs will fail"

# The base images' filesystems, made once. busybox: a rootfs from busybox-static, with a uid
# 1000 user for USER tests; the recipe's version names the seeded storage built from it.
BUSYBOX_RECIPE=2
if [[ ! -f $STATE/busybox-rootfs.recipe-$BUSYBOX_RECIPE || ! -s $STATE/busybox-rootfs.tar ]]; then
  make_busybox_rootfs "$STATE/busybox-rootfs.tar"
  touch "$STATE/busybox-rootfs.recipe-$BUSYBOX_RECIPE"
fi
# The same for arm64 and armhf (Debian's busybox-static of those architectures), the
# foreign members of busybox-multi:latest.
MULTI_ARCHES=(arm64 armhf)
for arch in "${MULTI_ARCHES[@]}"; do
  if [[ ! -f $STATE/busybox-rootfs-$arch.recipe-$BUSYBOX_RECIPE || ! -s $STATE/busybox-rootfs-$arch.tar ]]; then
    log "busybox rootfs for $arch"
    dl=$(mktemp -d)
    make_busybox_rootfs "$STATE/busybox-rootfs-$arch.tar" "$(foreign_busybox "$arch" "$dl")"
    rm -rf "$dl"
    touch "$STATE/busybox-rootfs-$arch.recipe-$BUSYBOX_RECIPE"
  fi
done
# debian:bookworm from debootstrap, for the apt examples (RBUILD_TEST_DEBIAN=0: none).
bases=(busybox)
if [[ ${RBUILD_TEST_DEBIAN:-1} == 1 ]]; then
  bases+=(debian)
  if [[ ! -s $STATE/debian-bookworm.tar ]]; then
    log "debootstrap bookworm (about a minute)"
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$STATE/debian-bookworm.tar.tmp" .
    mv "$STATE/debian-bookworm.tar.tmp" "$STATE/debian-bookworm.tar"
    rm -rf "$root"
  fi
fi

# Push the named base images (busybox, debian) to the registry on 127.0.0.1:PORT through
# docker, and drop the docker tags this made again.
push_bases() {
  local port=$1 base ref
  shift
  for base in "$@"; do
    case $base in
      busybox) ref=localhost:$port/busybox:latest
        $DOCKER import -c "$BASE_ENV" -c 'CMD ["sh"]' "$STATE/busybox-rootfs.tar" "$ref" >/dev/null ;;
      debian) ref=localhost:$port/debian:bookworm
        $DOCKER import -c "$BASE_ENV" -c 'CMD ["bash"]' "$STATE/debian-bookworm.tar" "$ref" >/dev/null ;;
    esac
    log "seeding $ref"
    $DOCKER push -q "$ref" >/dev/null
    $DOCKER rmi "$ref" >/dev/null
  done
}

# Push busybox-multi:latest, an OCI index of busybox for linux/amd64, linux/arm64 and
# linux/arm/v7, to the registry on 127.0.0.1:PORT, through buildah with a storage of its own.
MULTI_RECIPE=1
push_multi_base() {
  local port=$1 root arch variant plat ctr tar
  root=$(mktemp -d)
  local b=(buildah --root "$root/storage" --runroot "$root/run" --storage-driver vfs)
  for plat in linux/amd64 linux/arm64 linux/arm/v7; do
    case $plat in
      linux/amd64) tar=$STATE/busybox-rootfs.tar ;;
      linux/arm64) tar=$STATE/busybox-rootfs-arm64.tar ;;
      linux/arm/v7) tar=$STATE/busybox-rootfs-armhf.tar ;;
    esac
    arch=${plat#linux/} variant=
    [[ $arch == */* ]] && variant=${arch#*/}
    ctr=$("${b[@]}" from --quiet scratch)
    "${b[@]}" add --quiet "$ctr" "$tar" / >/dev/null
    "${b[@]}" config --os linux --arch "${arch%%/*}" ${variant:+--variant "$variant"} \
      --env "${BASE_ENV#ENV }" --cmd sh "$ctr"
    "${b[@]}" commit --quiet --format oci --manifest busybox-multi "$ctr" >/dev/null
    "${b[@]}" rm "$ctr" >/dev/null
  done
  log "seeding localhost:$port/busybox-multi:latest"
  "${b[@]}" manifest push --quiet --all --format oci --tls-verify=false busybox-multi \
    "docker://localhost:$port/busybox-multi:latest"
  "${b[@]}" rm --all >/dev/null 2>&1 || true
  rm -rf "$root"
}

# The seeded storage: a registry's filesystem holding the bases, and `contents`, what
# registry_contents lists for it. Each test run starts a registry on a copy of it, which is
# faster than pushing the bases again (about 0.3s instead of about 15s).
SEED=$STATE/seeded.busybox$BUSYBOX_RECIPE${bases[1]:+-${bases[1]}}
if [[ ! -f $SEED/contents ]]; then
  rm -rf "$SEED.tmp"
  trap 'registry_stop "$SEED.tmp"' EXIT
  port=$(registry_start_free "$SEED.tmp" "$SEED.tmp/storage")
  push_bases "$port" "${bases[@]}"
  registry_contents "$port" "$SEED.tmp/storage" >"$SEED.tmp/contents"
  registry_stop "$SEED.tmp"
  trap - EXIT
  rm -f "$SEED.tmp/registry.yml" "$SEED.tmp/registry.log"
  mv "$SEED.tmp" "$SEED"
  for old in "$STATE"/seeded.*; do
    [[ $old == "$SEED" ]] || rm -rf "$old"
  done
fi
# busybox-multi joins the seeded storage (and its contents) once, marked by its recipe.
if [[ ! -f $SEED/multi.recipe-$MULTI_RECIPE ]]; then
  trap 'registry_stop "$SEED.multi"' EXIT
  port=$(registry_start_free "$SEED.multi" "$SEED/storage")
  push_multi_base "$port"
  registry_contents "$port" "$SEED/storage" >"$SEED/contents.tmp"
  registry_stop "$SEED.multi"
  trap - EXIT
  rm -rf "$SEED.multi"
  mv "$SEED/contents.tmp" "$SEED/contents"
  touch "$SEED/multi.recipe-$MULTI_RECIPE"
fi
echo "export RBUILD_TEST_SEED=$SEED" >&3

# The developer registry on 127.0.0.1:5000, kept between runs, for running test binaries by
# hand. Only a registry this script started (its config in $STATE) is used: the tests push
# and delete images, so they never touch someone else's registry.
if ((dev_registry)); then
  pid=$(listener_pid $DEV_PORT)
  if [[ -n $pid ]]; then
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "serve $STATE/registry.yml"; then
      echo "test-env.sh: 127.0.0.1:$DEV_PORT is taken by a process this script did not start" \
        "(pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")); the tests never use it." \
        "Stop it, or run the tests with sudo scripts/test.sh (a registry of its own per run)." >&2
      exit 1
    fi
  else
    log "starting the developer registry on 127.0.0.1:$DEV_PORT"
    if [[ ! -d $STATE/registry/docker ]]; then
      mkdir -p "$STATE/registry"
      cp -a "$SEED/storage/." "$STATE/registry/"
      touch "$STATE/busybox.recipe-$BUSYBOX_RECIPE"
    fi
    registry_start "$STATE" "$STATE/registry" $DEV_PORT || { tail -5 "$STATE/registry.log"; exit 1; }
  fi
  # A registry kept between runs may predate the current busybox recipe (the marker names
  # the recipe its busybox was pushed with), or miss a base.
  # (an OCI index is found only when the request accepts one)
  have_image() {
    curl -fsS -o /dev/null 2>/dev/null -H 'Accept: application/vnd.oci.image.index.v1+json' \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://127.0.0.1:$DEV_PORT/v2/$1/manifests/$2"
  }
  if ! have_image busybox latest || [[ ! -f $STATE/busybox.recipe-$BUSYBOX_RECIPE ]]; then
    push_bases $DEV_PORT busybox
  fi
  touch "$STATE/busybox.recipe-$BUSYBOX_RECIPE"
  if ! have_image busybox-multi latest || [[ ! -f $STATE/busybox-multi.recipe-$MULTI_RECIPE ]]; then
    push_multi_base $DEV_PORT
    touch "$STATE/busybox-multi.recipe-$MULTI_RECIPE"
  fi
  if [[ ${bases[1]:-} == debian ]] && ! have_image debian bookworm; then
    push_bases $DEV_PORT debian
  fi
  echo "export RBUILD_TEST_REGISTRY=localhost:$DEV_PORT" >&3
fi

log "test environment ready: docker $($DOCKER version -f '{{.Server.Version}}'), seeded storage $SEED"
