# Shared by install.sh and test-env.sh (sourced, not run).

DOCKER=/usr/bin/docker   # Debian's 20.10 client: it has BuildKit built in (a newer CLI needs buildx)

log() { printf '==> %s\n' "$*" >&2; }

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
  setsid dockerd --iptables=false --bridge=none --storage-driver=overlay2 >"$logfile" 2>&1 </dev/null &
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 "$logfile" >&2
  echo "dockerd did not start" >&2
  return 1
}

# A busybox rootfs tarball from busybox-static, with a uid 1000 user for USER tests.
make_busybox_rootfs() {
  local out=$1 root
  root=$(mktemp -d)
  chmod 755 "$root"   # mktemp makes it 0700: the image's / would be unreadable to users
  mkdir -p "$root"/{bin,etc,tmp,root,home/user}
  cp /bin/busybox "$root/bin/busybox"
  chroot "$root" /bin/busybox --install -s /bin
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\nstaff:x:50:user\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  chown 1000:1000 "$root/home/user"
  tar --numeric-owner -C "$root" -cf "$out" .
  rm -rf "$root"
}

BASE_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
