#!/usr/bin/env python3
"""Benchmark rbuild against docker build (BuildKit and classic) and buildah, side by side.

Each scenario is built by every builder in turn (A B C D, A B C D, ...) for --rounds rounds;
every builder ends with an image tarball on disk. Prints the median wall time per builder,
the ratio peer/rbuild and rbuild's peak RSS. Needs scripts/test-env.sh's environment (docker,
buildah, its developer registry with busybox and debian:bookworm: RBUILD_TEST_REGISTRY,
localhost:5000 when unset; the benchmark only pulls from it). Run as root:

    sudo bench/run.py [--rounds 3] [--scale 1.0] [--only steps,context] [--stores fresh,aged]

`--only scale` runs the scaling series of bench/scale.py instead (steps, context files and
layer entries from 10k to 1M: not in the default run, it takes 15-40 minutes at --scale 1).
Each point prints its result and the time as it finishes; `--series context,apply` runs
some of the series (to resume a run that stopped), `--peer-timeout` bounds each BuildKit
build (default 900 s; a point past it reads "timeout after N s").

Every scenario runs on two rbuild stores: "fresh" (empty but for the base image) and "aged":
one filled first by a fixed recipe the way weeks of CI use leave a store (age_store: 40
builds of varied Dockerfiles and contexts, ~1,000 layers, ~11 GB at --aged-scale 1, every
fifth a `--no-cache` rebuild, so its trash is full too). The peers keep their own stores.
Before each builder's run the machine syncs and the context is read once, so no builder
pays for another's dirty pages or a cold context (a CI checkout leaves it in page cache).

The `ci` scenario (issue 18) is a CI pipeline on runners that start empty, sharing their
build cache through a registry: see run_ci. It starts a loopback docker-registry of its own.
`--registry-rate 1gbit` limits the loopback device (tc tbf) while the scenario runs, as a
runner's link to its registry is, for every builder alike (docker's, buildah's and rbuild's
pulls and pushes all go through it); the limit is removed afterwards.

Docker 20.10's builders cannot export OCI archives, so the `oci` scenario compares rbuild
with buildah only; nor build several platforms (buildx is not installed), so `multiarch`
(linux/amd64 and linux/arm64 from busybox-multi, the arm64 RUNs through qemu-user, into one
OCI archive with an index) compares rbuild with `buildah bud --platform ... --manifest`. Images the peers create are removed again at the end of each scenario.

Scenarios with RUN steps also time rbuild with `--network=host`, the peers' network (by
default rbuild gives RUN a namespace of its own behind slirp4netns), and "run alone": the
same RUN commands in a plain chroot of the base image's filesystem (unpacked by `docker
export`), with no builder around them, no snapshot and no tarball. COPY scenarios get a
floor too: `cp -a` of the context's data plus writing a tar archive of it (context), or
writing that archive alone (rebuild). No builder can beat it, so "best peer / run alone" is
the best ratio any builder could reach in that scenario on this machine.

`steps` and `context` on the fresh store also time "rbuild rootless": the same rbuild run by
an unprivileged user with a subordinate id range (ROOTLESS_USER, made by scripts/lib.sh's
ensure_rootless_user), on a store of its own, writing the same archive; the table gives
rootless / root (docs/rootless.md: the target is within 15 %).
"""
import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = "/usr/bin/docker"
REGISTRY = os.environ.get("RBUILD_TEST_REGISTRY", "localhost:5000")
BUSYBOX = f"{REGISTRY}/busybox:latest"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN = f"{REGISTRY}/debian:bookworm"
ROOTLESS_USER = "rbuild-bench"
ROOTLESS_KINDS = ("steps", "context")
# scripts/test-env.sh's OCI index of busybox for linux/amd64, linux/arm64 and linux/arm/v7.
BUSYBOX_MULTI = f"{REGISTRY}/busybox-multi:latest"
MULTIARCH_PLATFORMS = "linux/amd64,linux/arm64"
# Images the multiarch scenario's buildah runs make carry it, so they can be removed again
# without touching other users' images (a --manifest build tags none).
MULTIARCH_LABEL = "rbuild-bench-multiarch=1"
# Scenarios no docker build runs in (docker 20.10 has no OCI exporter, no buildx).
NO_DOCKER_KINDS = ("oci", "multiarch")
# Every command that failed (builder runs, untimed warm-ups): the run exits non-zero.
FAILURES = []


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def failed(what, cmd, r):
    """Report a command that exited non-zero (`r` captured text: its stderr's tail) and
    remember it: the run
    finishes its table, then exits 1 (a failed builder must not read as a mere "n/a")."""
    print(f"  {what} failed (exit {r.returncode}): {shlex.join(cmd)}\n{r.stderr[-2000:]}",
          file=sys.stderr, flush=True)
    FAILURES.append(what)


def preflight(kinds):
    """Fail before any work when what the scenarios pull from or compare with is not up:
    the registry (with the base images) and, when docker builds are measured, dockerd.
    Without this a stopped registry made every builder fail and the table say "n/a"."""
    import urllib.error
    import urllib.request
    start = 'start them with: eval "$(scripts/test-env.sh 2>/dev/null)" (as root, in the repo)'
    bases = [BUSYBOX]
    if {"pyapp", "ci"} & set(kinds):
        bases.append(DEBIAN)
    if "multiarch" in kinds:
        bases.append(BUSYBOX_MULTI)
    accept = ", ".join(["application/vnd.oci.image.index.v1+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])
    for image in bases:
        name, tag = image[len(REGISTRY) + 1:].rsplit(":", 1)
        url = f"http://{REGISTRY}/v2/{name}/manifests/{tag}"
        req = urllib.request.Request(url, method="HEAD", headers={"Accept": accept})
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as e:
            sys.exit(f"the registry at {REGISTRY} has no {image} (HTTP {e.code}); {start}")
        except OSError as e:
            sys.exit(f"the registry at {REGISTRY} does not answer ({e}); {start}")
    if any(k not in NO_DOCKER_KINDS for k in kinds) and os.path.exists(DOCKER):
        try:
            r = subprocess.run([DOCKER, "info"], capture_output=True, text=True, timeout=60)
            why = r.returncode and (r.stderr.strip()[-300:] or f"exit {r.returncode}")
        except subprocess.TimeoutExpired:
            why = "no answer in 60 s"
        if why:
            sys.exit(f"dockerd does not answer (`docker info`: {why}); {start}")


def check_room(kinds, stores, scale, aged_scale):
    """Fail before any work when the disk cannot hold the run: the aged store (~11 GB at
    --aged-scale 1) and its contexts (~3.5 GB), plus every builder's stores, images and
    archives of the scenarios (a few GB at --scale 1). A run that filled the disk in
    session 19 stopped half way with every builder failing for lack of space."""
    gib = 1 << 30
    need = 10 * gib * scale * len(kinds) / 8 + 2 * gib
    if "aged" in stores:
        need += 16 * gib * aged_scale
    # The bench's work dir, and the peers' storage (/var/lib/docker, buildah's), usually
    # the same filesystem: count the need once per filesystem.
    seen = set()
    for path in (tempfile.gettempdir(), "/var/lib"):
        st = os.statvfs(path)
        if st.f_fsid in seen:
            continue
        seen.add(st.f_fsid)
        free = st.f_bavail * st.f_frsize
        if free < need:
            sys.exit(f"{path}: {free / gib:.1f} GiB free, and this run needs about "
                     f"{need / gib:.0f} GiB ({', '.join(kinds)} on {', '.join(stores)} stores); "
                     "free space (old target dirs, stores, /tmp/rbuild-bench-*) or run fewer "
                     "scenarios (--only, --stores fresh)")


def write_context(kind, scale, dest):
    os.makedirs(dest, exist_ok=True)
    df = os.path.join(dest, "Dockerfile")
    if kind == "steps":
        lines = [f"FROM {BUSYBOX}"] + [f"RUN echo step {i} > /step-{i}" for i in range(20)]
    elif kind in ("biglayer", "oci"):
        files = int(12000 * scale)
        size = int(50 * 1024)  # ~600 MB at scale 1
        lines = [f"FROM {BUSYBOX}",
                 f"RUN mkdir /data && for d in $(seq 0 {files // 100 - 1}); do mkdir /data/$d; "
                 f"for f in $(seq 0 99); do head -c {size} /dev/urandom > /data/$d/$f; done; done"]
    elif kind in ("context", "rebuild"):
        files = int(10000 * scale)
        data = os.path.join(dest, "data")
        os.makedirs(data, exist_ok=True)
        for i in range(files):
            sub = os.path.join(data, str(i // 100))
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, str(i)), "wb") as f:
                f.write(os.urandom(30 * 1024))
        lines = [f"FROM {BUSYBOX}", "COPY data /data"]
    elif kind == "multiarch":
        files = int(2000 * scale)
        data = os.path.join(dest, "data")
        for i in range(files):
            sub = os.path.join(data, str(i // 100))
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, str(i)), "wb") as f:
                f.write(os.urandom(8 * 1024))
        # The arm64 pass runs every RUN through qemu-user.
        lines = [f"FROM {BUSYBOX_MULTI}", "ARG TARGETARCH",
                 "RUN uname -m > /arch && echo $TARGETARCH > /target",
                 "COPY data /data",
                 "RUN find /data -type f | sort | xargs cat | md5sum > /data.md5",
                 "RUN for i in $(seq 200); do echo $i > /tmp/n; cat /tmp/n >> /count; done",
                 "RUN tar -cf /data.tar /data && gzip -1 /data.tar"]
    elif kind == "pyapp":
        lines = [f"FROM {DEBIAN}",
                 "RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*"]
    else:
        raise ValueError(kind)
    with open(df, "w") as f:
        f.write("\n".join(lines) + "\n")


def rootless_setup(work):
    """The rootless user (with a subordinate range and a home) and a copy of rbuild it may
    execute; the work dir opened to it (contexts are read, out/rootless written)."""
    lib = os.path.join(ROOT, "scripts", "lib.sh")
    sh(["bash", "-c", '. "$0" && ensure_rootless_user "$1"', lib, ROOTLESS_USER])
    os.chmod(work, 0o755)
    bin_dir = os.path.join(work, "rootless-bin")
    os.makedirs(bin_dir)
    os.chmod(bin_dir, 0o755)
    shutil.copy(shutil.which("rbuild"), os.path.join(bin_dir, "rbuild"))
    os.chmod(os.path.join(bin_dir, "rbuild"), 0o755)
    return os.path.join(bin_dir, "rbuild")


def as_rootless(cmd):
    """`cmd` run by ROOTLESS_USER, with its own HOME."""
    home = subprocess.run(["getent", "passwd", ROOTLESS_USER], capture_output=True,
                          text=True).stdout.split(":")[5]
    return ["setpriv", "--reuid", ROOTLESS_USER, "--regid", ROOTLESS_USER, "--init-groups",
            "env", f"HOME={home}", f"USER={ROOTLESS_USER}", *cmd]


def rootless_dirs(kind, out):
    """The rootless user's store and output dir for `kind`, made and given to it."""
    dirs = (os.path.join(os.path.dirname(out), "store-rootless"), os.path.join(out, "rootless"))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, ROOTLESS_USER, ROOTLESS_USER)
    return dirs


def builders(kind, ctx, out, store, cached, rootless_bin=None):
    nc = [] if cached else ["--no-cache"]
    rb_out = f"type=oci,dest={out}/rbuild.tar,compression=gzip" if kind == "oci" else f"type=docker,dest={out}/rbuild.tar"
    # Unique names: docker and buildah are shared with other users of the machine.
    tag = f"rbuild-bench/{kind}:latest"
    bud_dest = f"oci-archive:{out}/buildah.tar" if kind == "oci" else f"docker-archive:{out}/buildah.tar"
    all_builders = {
        "rbuild": [["rbuild", "--root", store, "--progress=plain", *nc, "-t", tag, "-o", rb_out, ctx]],
        "buildkit": [[DOCKER, "build", "--network=host", "-q", *nc, "-t", tag, ctx],
                     [DOCKER, "save", "-o", f"{out}/buildkit.tar", tag]],
        "classic": [[DOCKER, "build", "--network=host", "-q", *nc, "-t", tag, ctx],
                    [DOCKER, "save", "-o", f"{out}/classic.tar", tag]],
        "buildah": [["buildah", "bud", "--network=host", "--tls-verify=false", "-q", *(["--layers"] if cached else ["--no-cache"]), "-t", tag, ctx],
                    ["buildah", "push", "--tls-verify=false", "-q", tag, bud_dest]],
    }
    if rootless_bin and kind in ROOTLESS_KINDS:
        rl_store, rl_out = rootless_dirs(kind, out)
        all_builders["rbuild-rootless"] = [as_rootless(
            [rootless_bin, "--root", rl_store, "--progress=plain", *nc, "-t", tag,
             "-o", f"type=docker,dest={rl_out}/rbuild.tar", ctx])]
    if kind == "multiarch":
        # One OCI archive holding an index of both platforms. Docker 20.10 has no buildx
        # here (no multi-platform builder): buildah's --manifest build is the only peer.
        manifest = "localhost/rbuild-bench-multiarch:latest"
        return {
            "rbuild": [["rbuild", "--root", store, "--progress=plain", *nc,
                        "--platform", MULTIARCH_PLATFORMS, "--label", MULTIARCH_LABEL,
                        "-t", tag, "-o", f"type=oci,dest={out}/rbuild.tar", ctx]],
            "buildah": [["buildah", "bud", "--network=host", "--tls-verify=false", "-q",
                         "--no-cache", "--platform", MULTIARCH_PLATFORMS,
                         "--label", MULTIARCH_LABEL, "--manifest", manifest, ctx],
                        ["buildah", "manifest", "push", "--all", "--quiet", manifest,
                         f"oci-archive:{out}/buildah.tar"]],
        }
    if kind == "oci":
        # docker 20.10 has no OCI exporter: only buildah makes the same artifact.
        del all_builders["buildkit"], all_builders["classic"]
    elif run_lines(ctx):
        # rbuild's RUN gets a network namespace of its own (slirp4netns) by default; the
        # peers above run with the host's. This row is rbuild on the host's network too,
        # so the table shows what the isolated default costs.
        rb = [a.replace("rbuild.tar", "rbuild-hostnet.tar") for a in all_builders["rbuild"][0]]
        all_builders["rbuild-hostnet"] = [rb[:-1] + ["--network=host", rb[-1]]]
        all_builders["alone"] = None  # made per run by run_builder: a fresh root each time
    elif kind in ("context", "rebuild"):
        all_builders["alone"] = None  # copy_floor_script, per run
    return all_builders


def run_lines(ctx):
    with open(os.path.join(ctx, "Dockerfile")) as f:
        return [l[len("RUN "):].strip() for l in f if l.startswith("RUN ")]


def floor_script(ctx, root, lines=None, before=""):
    """The scenario's RUN commands (or `lines`) one after the other in a chroot of the base's
    filesystem at `root`, with /dev, /proc and the host's resolv.conf, as a container has
    them; `before` is a shell command run first (on the host)."""
    steps = " && ".join(
        f"env -i PATH={PATH} HOME=/root chroot {root} /bin/sh -c {shlex.quote(cmd)} >/dev/null"
        for cmd in (run_lines(ctx) if lines is None else lines))
    script = (f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
              f"mount --bind /etc/resolv.conf {root}/etc/resolv.conf && {before}{steps}")
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", script]


def copy_floor_script(kind, ctx, out):
    """The least a COPY scenario's build can do: copy the context's data into a filesystem
    (context only: a cached rebuild has it already) and write an archive of it."""
    data = shlex.quote(os.path.join(ctx, "data"))
    if kind == "rebuild":
        return ["tar", "-cf", f"{out}/alone.tar", "-C", ctx, "data"]
    dest = tempfile.mkdtemp(prefix="alone-copy-", dir=out)
    return ["sh", "-ec", f"cp -a {data} {dest}/data && tar -cf {out}/alone.tar -C {dest} data"]


def floor_rootfs(image, out):
    """A fresh copy of `image`'s filesystem (docker's, exported once into `out`) for one "run
    alone" (untimed). Earlier copies are left for the scenario's cleanup: deleting them here
    would slow the timed run (on this ext4, files created soon after many deletions are
    slower to allocate)."""
    tar = os.path.join(out, "alone-root.tar")
    if not os.path.exists(tar):
        cid = sh([DOCKER, "create", image, "true"], capture_output=True, text=True).stdout.strip()
        try:
            sh([DOCKER, "export", "-o", tar + ".part", cid])
            os.rename(tar + ".part", tar)
        finally:
            subprocess.run([DOCKER, "rm", cid], capture_output=True)
    root = tempfile.mkdtemp(prefix="alone-root-", dir=out)
    sh(["tar", "-xf", tar, "-C", root])
    return root


PEERS = ("buildkit", "classic", "buildah")


def run_builder(name, cmds, out, created, kind, ctx):
    """Run one builder's commands; returns (seconds, peak RSS in MB or None), or None if it
    failed. Image ids the peers print go to `created` (removed after the scenario)."""
    env = dict(os.environ, DOCKER_BUILDKIT="1" if name == "buildkit" else "0")
    # Every build writes a fresh tarball (buildah refuses to overwrite a docker-archive).
    for f in os.listdir(out):
        if f.startswith(name + "."):
            os.remove(os.path.join(out, f))
    if name == "rbuild-rootless" and os.path.exists(os.path.join(out, "rootless", "rbuild.tar")):
        os.remove(os.path.join(out, "rootless", "rbuild.tar"))
    if name == "alone" and kind in ("context", "rebuild"):
        cmds = [copy_floor_script(kind, ctx, out)]
    elif name == "alone":
        try:
            base = DEBIAN if kind == "pyapp" else BUSYBOX
            cmds = [floor_script(ctx, floor_rootfs(base, out))]
        except subprocess.CalledProcessError as e:
            print(f"  run alone: preparing the root failed: {e}", file=sys.stderr, flush=True)
            FAILURES.append(f"{kind} run alone (preparing the root)")
            return None
    if name == "buildah" and kind == "multiarch":
        # --manifest adds to an existing list: each run starts without one (untimed).
        subprocess.run(["buildah", "manifest", "rm", "localhost/rbuild-bench-multiarch:latest"],
                       capture_output=True)
    settle(ctx)
    rss = None
    start = time.monotonic()
    for cmd in cmds:
        if name.startswith("rbuild"):
            # GNU time's %M is the peak RSS of rbuild or any process it waited for (the
            # RUN helpers and the commands they run).
            cmd = ["/usr/bin/time", "-f", "%M", *cmd]
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            failed(f"{kind} {name}", cmd, r)
            return None
        if name == "rbuild":
            rss = int(r.stderr.strip().splitlines()[-1]) // 1024
        elif cmd[1] in ("build", "bud") and r.stdout.strip():
            created.add((name, r.stdout.strip().splitlines()[-1]))
    return time.monotonic() - start, rss


def settle(ctx):
    """Before each timed run: write back everything dirty, then read the context once, so
    every builder starts from the same page cache (a CI checkout leaves the context cached)."""
    os.sync()
    for top, _, files in os.walk(ctx):
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def cleanup(created):
    for name, image in created:
        if name == "buildah":
            subprocess.run(["buildah", "rmi", "-f", image], capture_output=True)
        else:
            subprocess.run([DOCKER, "rmi", "-f", image], capture_output=True)
    created.clear()
    # The multiarch scenario's list and its images (both platforms', untagged).
    subprocess.run(["buildah", "manifest", "rm", "localhost/rbuild-bench-multiarch:latest"],
                   capture_output=True)
    ids = subprocess.run(["buildah", "images", "-q", "--filter", f"label={MULTIARCH_LABEL}"],
                         capture_output=True, text=True).stdout.split()
    for image in sorted(set(ids)):
        subprocess.run(["buildah", "rmi", "-f", image], capture_output=True)


def warm_bases(kind, store, out, rootless_bin=None):
    """Pull the base image into every builder untimed, so round 1 measures builds, not pulls."""
    if kind == "multiarch":
        return  # main warms it with a whole untimed build (both platforms' bases)
    base = DEBIAN if kind == "pyapp" else BUSYBOX
    cmds = [["rbuild", "--root", store, "pull", base], [DOCKER, "pull", "-q", base],
            ["buildah", "pull", "--tls-verify=false", "-q", base]]
    if rootless_bin and kind in ROOTLESS_KINDS:
        rl_store, _ = rootless_dirs(kind, out)
        cmds.append(as_rootless([rootless_bin, "--root", rl_store, "pull", base]))
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            failed(f"{kind} pulling the base image", cmd, r)


AGED_RECIPE = 2  # bump when age_store changes: results of different recipes don't compare


def age_store(store, work, scale):
    """Fill `store` the way weeks of CI use leave a store, by a fixed recipe: 40 builds of
    varied Dockerfiles and contexts (~1,000 layers, ~11 GB on disk at scale 1, ~100,000
    stat cache entries). Each has a
    COPY of its own context (2,000-4,000 files of 16-48 KB, deterministic), a RUN writing
    fresh random data (64 KB files), a RUN deleting part of the COPY (whiteouts) and 20
    small RUN steps; every fifth build is a `--no-cache` rebuild of an earlier one, whose
    identical COPY layer leaves an upperdir in the trash."""
    import random
    start = time.monotonic()
    # Every context is written before the first build, as checkouts that sit a while before
    # their build: older than the stat cache's racy window, so their digests are remembered.
    builds = [(i, i - 3 if i % 5 == 4 else i) for i in range(40)]
    for _, src in builds:
        ctx = os.path.join(work, "aged-ctx", str(src))
        if os.path.exists(ctx):
            continue
        rnd = random.Random(src)
        files = int((2000 + 500 * (src % 5)) * scale)
        for n in range(files):
            sub = os.path.join(ctx, "src", str(n // 100))
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, str(n)), "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(16, 48) * 1024))
        big = int((2500 + 100 * (src % 7)) * scale)
        lines = [f"FROM {BUSYBOX}", f"ENV BUILD={src}", "COPY src /src",
                 f"RUN mkdir /data && for f in $(seq {big}); do head -c 64k /dev/urandom > /data/$f; done",
                 "RUN rm -rf /src/0 /src/1"]
        lines += [f"RUN echo {src}-{j} > /f{j}" for j in range(20)]
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("\n".join(lines) + "\n")
    for i, src in builds:
        nc = ["--no-cache"] if src != i else []
        sh(["rbuild", "--root", store, "--progress=quiet", *nc, "-t", f"aged/{src}:latest",
            "-o", f"type=tar,dest={work}/aged-out.tar", os.path.join(work, "aged-ctx", str(src))],
           stdout=subprocess.DEVNULL)
    # The contexts stay until the bench ends: removing their ~120,000 files here made the
    # next scenario's file creation pay for it on ext4 without a journal (it skips inodes
    # freed in the last 60-360 s one by one; docs/performance.md, session 14): the first
    # `context` run after the store was built measured a floor of 4.4 s instead of 1.2 s.
    os.sync()
    du = subprocess.run(["du", "-sh", store], capture_output=True, text=True).stdout.split()[0]
    print(f"aged store (recipe {AGED_RECIPE}, scale {scale}): {du} in {time.monotonic() - start:.0f}s",
          flush=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A fresh loopback docker-registry (as scripts/lib.sh registry_start), its storage in
    `dir`; stopped (this process only) by stop()."""

    def __init__(self, dir):
        import urllib.request
        os.makedirs(dir, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            config = os.path.join(dir, "registry.yml")
            with open(config, "w") as f:
                f.write("version: 0.1\nlog: {level: warn}\n"
                        f"storage:\n  filesystem: {{rootdirectory: {dir}/storage}}\n"
                        f"  delete: {{enabled: true}}\nhttp: {{addr: 127.0.0.1:{self.port}}}\n")
            log = open(os.path.join(dir, "registry.log"), "ab")
            self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=log,
                                         stderr=log, start_new_session=True)
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1)
                    self.addr = f"127.0.0.1:{self.port}"
                    return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        sys.exit(f"docker-registry did not start (log in {dir}/registry.log)")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def write_ci_context(scale, dest):
    """The `ci` app: Debian with python3 from the mirror (as pyapp), vendored assets
    (~150 MB of incompressible data at scale 1: with the base, a ~300 MB image), a source
    tree of 3,000 modules, and a build step that compiles it."""
    src = os.path.join(dest, "src")
    for i in range(int(3000 * scale)):
        sub = os.path.join(src, f"pkg{i // 100}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"m{i}.py"), "w") as f:
            f.write("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60)))
    assets = int(150_000_000 * scale)
    lines = [f"FROM {DEBIAN}",
             "RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*",
             f"RUN mkdir /opt/assets && head -c {assets} /dev/urandom > /opt/assets/data.bin",
             "WORKDIR /app",
             "COPY src /app/src",
             "RUN python3 -m compileall -q /app/src && find /app/src -name '*.pyc' | wc -l > /app/built"]
    with open(os.path.join(dest, "Dockerfile"), "w") as f:
        f.write("\n".join(lines) + "\n")


def ci_commands(name, ctx, reg, run_dir):
    """One CI job of builder `name` on an empty runner (`run_dir`, fresh): build with the
    cache from the registry, export the cache, push the image. Returns (prepare, timed):
    `prepare` empties the builder's state (untimed)."""
    app = f"{reg}/ci/app:{name}"
    if name == "rbuild":
        cache = f"{reg}/ci/cache:rbuild"
        return [], [["rbuild", "--root", f"{run_dir}/store", "--progress=plain",
                     "--cache-from", f"type=registry,ref={cache}",
                     "--cache-to", f"type=registry,ref={cache},mode=max",
                     "--push", "-t", app, ctx]]
    if name == "buildkit":
        # docker 20.10's BuildKit has inline cache only: in the pushed image's config.
        prepare = [[DOCKER, "builder", "prune", "-af"], [DOCKER, "rmi", "-f", app, DEBIAN]]
        return prepare, [[DOCKER, "build", "--network=host", "-q",
                          "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--cache-from", app,
                          "-t", app, ctx],
                         [DOCKER, "push", "-q", app]]
    if name == "buildah":
        store = ["--root", f"{run_dir}/root", "--runroot", f"{run_dir}/run"]
        cache = f"{reg}/ci/cache-buildah"
        return [], [["buildah", *store, "bud", "--network=host", "--tls-verify=false", "-q",
                     "--layers", "--cache-from", cache, "--cache-to", cache, "-t", app, ctx],
                    ["buildah", *store, "push", "--tls-verify=false", "-q", app, f"docker://{app}"]]
    raise ValueError(name)


def ci_floor(reg, root, ctx):
    """The "run alone" of the `ci` changed job: what its cache misses run, with no builder
    around them: `cp -a` of the sources and the last RUN, in a chroot of the app image's
    filesystem as it is before the COPY (from BuildKit's image, untimed; unpacked afresh
    for each run). Fetching and unpacking the layers the RUN needs is left out, so no
    builder on an empty runner can do the job in less."""
    rootfs = floor_rootfs(f"{reg}/ci/app:buildkit", root)
    sh(["rm", "-rf", f"{rootfs}/app/src", f"{rootfs}/app/built"])
    copy = f"cp -a {shlex.quote(os.path.join(ctx, 'src'))} {rootfs}/app/src && "
    return floor_script(ctx, rootfs, lines=run_lines(ctx)[-1:], before=copy)


def run_ci(args, work):
    """Issue 18's `ci` scenario: every CI job runs on an empty runner (rbuild and buildah
    with a new store, docker with its build cache and images removed), takes the build
    cache from a loopback registry the bench starts, exports it there again and pushes the
    image. Seeded once (untimed); then per round, for each builder: one source file
    changed ("changed"), and the same job again with nothing changed ("cached", the
    ~300 MB image pushed from a fully cached build). The changed job also gets its "run
    alone" ([`ci_floor`]). Returns table rows."""
    root = os.path.join(work, "ci")
    ctx = os.path.join(root, "ctx")
    write_ci_context(args.scale, ctx)
    reg = Registry(os.path.join(root, "registry"))
    names = ("rbuild", "buildkit", "buildah")
    runs = []
    env = dict(os.environ, DOCKER_BUILDKIT="1")

    def job(name):
        if name == "alone":
            try:
                prepare, timed = [], [ci_floor(reg.addr, root, ctx)]
            except subprocess.CalledProcessError as e:
                print(f"  run alone: preparing the root failed: {e}", file=sys.stderr, flush=True)
                FAILURES.append("ci run alone (preparing the root)")
                return None
        else:
            run_dir = tempfile.mkdtemp(prefix=f"{name}-", dir=root)
            runs.append((name, run_dir))
            prepare, timed = ci_commands(name, ctx, reg.addr, run_dir)
        for cmd in prepare:
            # Removing what an earlier job left (docker rmi, builder prune) may find nothing.
            subprocess.run(cmd, env=env, capture_output=True)
        settle(ctx)
        start = time.monotonic()
        for cmd in timed:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                failed(f"ci {name}", cmd, r)
                return None
        return time.monotonic() - start

    times = {"changed": {}, "cached": {}}
    link = None
    try:
        link = limit_loopback(args.registry_rate)
        for name in names:
            job(name)  # the pipeline's first run: fills the cache
        for n in range(args.rounds):
            with open(os.path.join(ctx, "src", "pkg0", "m0.py"), "a") as f:
                f.write(f"# change {n}\n")
            for row in ("changed", "cached"):
                for name in names + (("alone",) if row == "changed" else ()):
                    t = job(name)
                    if t is not None:
                        times[row].setdefault(name, []).append(t)
    finally:
        if link:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        reg.stop()
        for name, run_dir in runs:
            if name == "buildah":
                store = ["--root", f"{run_dir}/root", "--runroot", f"{run_dir}/run"]
                subprocess.run(["buildah", *store, "rmi", "-af"], capture_output=True)
        subprocess.run([DOCKER, "rmi", "-f", f"{reg.addr}/ci/app:buildkit"], capture_output=True)
    rows = []
    for row, by_name in times.items():
        med = {n: statistics.median(v) for n, v in by_name.items()}
        print(f"ci-{row}: " + ", ".join(f"{n} {t:.2f}s" for n, t in med.items())
              + f" (load {load()})", flush=True)
        rows.append((f"ci-{row}", f"empty, {link} link" if link else "empty", med, None))
    return rows


def limit_loopback(rate):
    """Limit the loopback device to `rate` (tc's units: `1gbit`) for the `ci` scenario;
    returns the rate, or None without one. A limit already there is refused: the bench
    would remove it afterwards."""
    if not rate:
        return None
    shown = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True,
                           text=True, check=True).stdout
    if "noqueue" not in shown:
        sys.exit(f"lo already has a root qdisc ({shown.strip()}): remove it first")
    sh(f"tc qdisc add dev lo root tbf rate {rate} burst 1mb latency 100ms")
    return rate


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, {model}, kernel {platform.release()}"


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="scales file counts of biglayer/context/ci")
    ap.add_argument("--only", default="steps,biglayer,context,rebuild,pyapp,oci,ci,multiarch")
    ap.add_argument("--stores", default="fresh,aged", help="fresh, aged or both (see age_store)")
    ap.add_argument("--aged-scale", type=float, default=1.0, help="scales age_store's files")
    ap.add_argument("--no-rootless", action="store_true", help="leave out the rootless column")
    ap.add_argument("--registry-rate", default=None,
                    help="with ci: limit loopback to this rate (tc units, e.g. 1gbit) while it runs")
    ap.add_argument("--series", default="steps,context,apply",
                    help="with --only scale: which of bench/scale.py's series (to resume a run)")
    ap.add_argument("--peer-timeout", type=int, default=900,
                    help="with --only scale: seconds before a BuildKit build is stopped")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    shutil.which("rbuild") or sys.exit("rbuild is not on PATH (scripts/install.sh)")
    shutil.which("/usr/bin/time") or sh("apt-get install -y -qq time >/dev/null")
    stores = args.stores.split(",")
    preflight(["steps", "context"] if args.only == "scale" else args.only.split(","))
    if args.only != "scale":  # scale.py checks room before each point itself
        check_room(args.only.split(","), stores, args.scale, args.aged_scale)
    print(f"machine: {machine()}; rbuild: {shutil.which('rbuild')}", flush=True)
    print(f"load average at start: {load()}", flush=True)
    if args.only == "scale":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import scale

        series = args.series.split(",")
        rows = scale.run(args.scale, BUSYBOX, peers=os.path.exists(DOCKER), series=series,
                         peer_timeout=args.peer_timeout)
        scale.report(rows)
        print(f"load average at end: {load()}")
        return
    work = tempfile.mkdtemp(prefix="rbuild-bench-")
    rows = []
    created = set()
    try:
        rootless_bin = None if args.no_rootless else rootless_setup(work)
        aged = os.path.join(work, "aged-store")
        if "aged" in stores:
            age_store(aged, work, args.aged_scale)
        for kind in args.only.split(","):
            if kind == "ci":
                rows.extend(run_ci(args, work))
                continue
            ctx = os.path.join(work, kind, "ctx")
            out = os.path.join(work, kind, "out")
            os.makedirs(out, exist_ok=True)
            write_context(kind, args.scale, ctx)
            for cond in stores:
                store = aged if cond == "aged" else os.path.join(work, kind, "store")
                # The rootless user's store is a fresh one of its own.
                rl_bin = rootless_bin if cond == "fresh" else None
                warm_bases(kind, store, out, rl_bin)
                cached = kind == "rebuild"
                if cached or kind == "multiarch":
                    # warm every builder's cache (rebuild) or both platforms' bases, untimed
                    for name, cmds in builders(kind, ctx, out, store, True).items():
                        run_builder(name, cmds, out, created, kind, ctx)
                times = {}
                rss = []
                for _ in range(args.rounds):
                    for name, cmds in builders(kind, ctx, out, store, cached, rl_bin).items():
                        r = run_builder(name, cmds, out, created, kind, ctx)
                        if r is None:
                            continue
                        times.setdefault(name, []).append(r[0])
                        if r[1]:
                            rss.append(r[1])
                cleanup(created)
                med = {n: statistics.median(v) for n, v in times.items()}
                rows.append((kind, cond, med, max(rss) if rss else None))
                print(f"{kind} ({cond}): " + ", ".join(f"{n} {t:.2f}s" for n, t in med.items())
                      + f" (load {load()})", flush=True)
                if kind == "multiarch":
                    print("  multiarch: no BuildKit row: docker 20.10's buildx (multi-platform "
                          "builds) is not installed here; buildah is the only peer", flush=True)
    finally:
        cleanup(created)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"load average at end: {load()}")
    print("| scenario | store | rbuild | buildkit | classic | buildah | best peer / rbuild "
          "| rbuild / run alone | rbuild peak RSS | rbuild, host net | run alone | best peer / run alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cell = lambda med, n: f"{med[n]:.2f}s" if n in med else "n/a"
    fresh = {}
    for kind, cond, med, rss in rows:
        peers = [med[n] for n in PEERS if n in med]
        ratio = lambda n: f"{min(peers) / med[n]:.2f}x" if peers and n in med else "n/a"
        floor = f"{med['rbuild'] / med['alone']:.2f}x" if "rbuild" in med and "alone" in med else "n/a"
        print(f"| {kind} | {cond} | {cell(med, 'rbuild')} | {cell(med, 'buildkit')} | {cell(med, 'classic')} "
              f"| {cell(med, 'buildah')} | {ratio('rbuild')} | {floor} | {f'{rss} MB' if rss else 'n/a'} | {cell(med, 'rbuild-hostnet')} "
              f"| {cell(med, 'alone')} | {ratio('alone')} |")
        if cond == "fresh" and "rbuild" in med:
            fresh[kind] = med["rbuild"]
    aged_vs = [f"{kind} {med['rbuild'] / fresh[kind]:.2f}" for kind, cond, med, _ in rows
               if cond == "aged" and kind in fresh and "rbuild" in med]
    if aged_vs:
        print(f"\nrbuild aged / fresh: {', '.join(aged_vs)}")
    rootless_vs = [f"{kind} {med['rbuild-rootless']:.2f}s / {med['rbuild']:.2f}s = "
                   f"{med['rbuild-rootless'] / med['rbuild']:.2f}" for kind, cond, med, _ in rows
                   if "rbuild-rootless" in med and "rbuild" in med]
    if rootless_vs:
        print(f"\nrbuild rootless / root (fresh store, target <= 1.15): {', '.join(rootless_vs)}")
    if FAILURES:
        sys.exit(f"\n{len(FAILURES)} command(s) failed (their stderr is above; their cells "
                 f"say n/a): {', '.join(sorted(set(FAILURES)))}")


if __name__ == "__main__":
    main()
