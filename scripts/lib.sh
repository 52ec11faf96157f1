# Shared by install.sh and test-env.sh (sourced, not run).

DOCKER=/usr/bin/docker   # Debian's 20.10 client: it has BuildKit built in (a newer CLI needs buildx)

log() { printf '==> %s\n' "$*" >&2; }

# Start CMD... in the background in a session of its own, stdin from /dev/null, stdout and
# stderr to LOGFILE, and no other descriptor of ours: a daemon that inherits the pipe of a
# `$(...)` (test-env.sh's fd 3) keeps that command substitution waiting until the daemon exits.
# $! is the daemon's pid (a non-interactive shell's job is no group leader: setsid execs).
spawn_daemon() {
  local logfile=$1 fd
  shift
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec setsid "$@" >"$logfile" 2>&1 </dev/null
  ) &
}

# apt-get install whichever of the named packages are missing.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Start dockerd (no bridge, no iptables: the machine has no network to give it) unless one runs.
ensure_dockerd() {
  local logfile=$1
  $DOCKER info >/dev/null 2>&1 && return 0
  log "starting dockerd"
  spawn_daemon "$logfile" dockerd --iptables=false --bridge=none --storage-driver=overlay2
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 "$logfile" >&2
  echo "dockerd did not start" >&2
  return 1
}

# A busybox rootfs tarball from busybox-static, with a uid 1000 user for USER tests.
# BUSYBOX: the static binary to use (default the host's). A foreign one gets the applet links
# the host's busybox lists (the same Debian version), so no emulation is needed here.
make_busybox_rootfs() {
  local out=$1 busybox=${2:-/bin/busybox} root applet
  root=$(mktemp -d)
  chmod 755 "$root"   # mktemp makes it 0700: the image's / would be unreadable to users
  mkdir -p "$root"/{bin,etc,tmp,root,home/user}
  cp "$busybox" "$root/bin/busybox"
  if [[ $busybox == /bin/busybox ]]; then
    chroot "$root" /bin/busybox --install -s /bin
  else
    for applet in $(/bin/busybox --list); do
      [[ $applet == busybox ]] || ln -s /bin/busybox "$root/bin/$applet"
    done
  fi
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\nstaff:x:50:user\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  chown 1000:1000 "$root/home/user"
  tar --numeric-owner -C "$root" -cf "$out" .
  rm -rf "$root"
}

# Register qemu-user-static's binfmt_misc handlers (Debian's /usr/lib/binfmt.d/qemu-NAME.conf,
# whose F flag opens the interpreter at registration, so it runs inside a chroot) for the
# named qemu targets (aarch64 arm ...) that have none yet.
ensure_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc name conf
  [[ -f $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir" || return 1
  for name in "$@"; do
    [[ -e $dir/qemu-$name ]] && continue
    conf=/usr/lib/binfmt.d/qemu-$name.conf
    [[ -f $conf ]] || { echo "ensure_binfmt: $conf missing (install qemu-user-static)" >&2; return 1; }
    log "registering the binfmt_misc handler qemu-$name"
    # The conf's flags may name O and C; the kernel takes them as given.
    cat "$conf" >"$dir/register" || return 1
  done
}

# The busybox-static binary of a Debian architecture (arm64, armhf...), unpacked from its
# package into DIR; prints the binary's path.
foreign_busybox() {
  local arch=$1 dir=$2 deb
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    dpkg --add-architecture "$arch"
    apt-get update -qq
  fi
  mkdir -p "$dir"
  (cd "$dir" && apt-get download -qq "busybox-static:$arch" 2>/dev/null) >&2
  deb=$(ls "$dir"/busybox-static_*_"$arch".deb)
  dpkg-deb -x "$deb" "$dir/root"
  echo "$dir/root/bin/busybox"
}

BASE_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# ---- test registries: docker-registry (distribution 2.8) serving plain HTTP on 127.0.0.1 ----

# The pid of the process listening on 127.0.0.1:PORT (nothing when none listens).
listener_pid() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true
}

# A TCP port nothing listens on, below Linux's ephemeral range (32768-60999) so that no
# outgoing connection takes it between this check and the registry's bind.
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 12000))
    [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
  done
  echo "free_port: no free port found in 20000-31999" >&2
  return 1
}

# Start docker-registry on 127.0.0.1:PORT with its storage in STORAGE, its config and log in
# DIR (DIR/registry.yml, DIR/registry.log) and its pid in DIR/registry.pid. Succeeds once
# the process started here answers on the port; fails (leaving nothing running) when it
# exits first, e.g. because the port was taken meanwhile: a registry this script did not
# start is never used.
registry_start() {
  local dir=$1 storage=$2 port=$3 pid
  mkdir -p "$dir" "$storage"
  cat >"$dir/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YML
  spawn_daemon "$dir/registry.log" docker-registry serve "$dir/registry.yml"
  pid=$!
  echo "$pid" >"$dir/registry.pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/registry.pid"; return 1; }
    if [[ $(listener_pid "$port") == "$pid" ]] && curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  registry_stop "$dir"
  return 1
}

# registry_start on a free port, retried when another process takes the port first; prints
# the port.
registry_start_free() {
  local dir=$1 storage=$2 port
  for _ in 1 2 3 4 5; do
    port=$(free_port) || return 1
    registry_start "$dir" "$storage" "$port" && { echo "$port"; return 0; }
  done
  tail -5 "$dir/registry.log" >&2
  echo "docker-registry did not start on a free port" >&2
  return 1
}

# Stop the registry registry_start started in DIR (only that process: its pid file, and only
# while that pid still runs docker-registry with DIR's config).
registry_stop() {
  local dir=$1 pid
  [[ -f $dir/registry.pid ]] || return 0
  pid=$(<"$dir/registry.pid")
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "serve $dir/registry.yml"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/registry.pid"
}

# What a registry holds, one line each, sorted: `REPO:TAG` for every tag (distribution API)
# and `REPO@DIGEST` for every manifest, tagged or not (its filesystem STORAGE: the API cannot
# list untagged manifests). A repository whose manifests were all deleted holds nothing: the
# catalog keeps listing its name until garbage collection.
registry_contents() {
  local port=$1 storage=$2 repo tag rev
  local url=http://127.0.0.1:$port/v2
  for repo in $(curl -fsS "$url/_catalog?n=1000" | sed 's/.*"repositories":\[\(.*\)\].*/\1/' | tr ',' '\n' | tr -d '"'); do
    for tag in $(curl -fsS "$url/$repo/tags/list" 2>/dev/null | sed -n 's/.*"tags":\[\(.*\)\].*/\1/p' | tr ',' '\n' | tr -d '"'); do
      echo "$repo:$tag"
    done
    for rev in "$storage/docker/registry/v2/repositories/$repo/_manifests/revisions/sha256"/*/link; do
      if [[ -f $rev ]]; then echo "$repo@sha256:$(basename "$(dirname "$rev")")"; fi
    done
  done | LC_ALL=C sort
}

# An unprivileged user NAME for rootless runs, idempotently: a home of its own, a range of
# 65536 subordinate ids in /etc/subuid and /etc/subgid (after the ranges the files already
# hand out; useradd may have added one), or with `no-range` none at all (single-id mode),
# and /dev/net/tun open to it (slirp4netns, the default RUN network; Debian's udev makes it
# 0666, some container hosts leave it 0600).
ensure_rootless_user() {
  local name=$1 range=${2:-range} home file start
  id "$name" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$name"
  home=$(getent passwd "$name" | cut -d: -f6)
  if [[ ! -d $home ]]; then
    mkdir -p "$home"
    chown "$name:" "$home"
  fi
  for file in /etc/subuid /etc/subgid; do
    touch "$file"
    if [[ $range == no-range ]]; then
      sed -i "/^$name:/d" "$file"
      continue
    fi
    grep -q "^$name:" "$file" && continue
    start=$(awk -F: '$2 + $3 > m { m = $2 + $3 } END { print (m > 100000 ? m : 100000) }' "$file")
    echo "$name:$start:65536" >>"$file"
  done
  if [[ -c /dev/net/tun ]]; then chmod go+rw /dev/net/tun; fi
}
