"""Scaling series (issue 23), run by `bench/run.py --only scale`: how the cost per unit and
the peak RSS move as a build grows, each series from its smallest to its largest point.

- steps: a Dockerfile of 10 / 100 / 1,000 `RUN echo` steps on busybox (ms per step);
- context: `COPY` of a context of 10,000 / 100,000 / 1,000,000 empty files in directories
  of 1,000 (us per file), first build and cached rebuild;
- apply: `rbuild import` of a rootfs tar of 10,000 / 100,000 / 1,000,000 entries (us per
  entry): the layer apply a pulled base goes through.

BuildKit (docker 20.10, DOCKER_BUILDKIT=1) builds the same steps and context series where
it can: dockerd refuses an image of more than 125 layers (`max depth exceeded`), so the
1,000-step point (and any above 125) is n/a for it; its peak RSS is the daemon's and is not
measured. The apply series has no BuildKit counterpart (it pulls, it does not import a
tar). --scale scales every point (0.01: 10 / 100 / 1,000 files); the full series writes
~1,000,000 files twice and takes the better part of an hour, so it is not in the default
run. Contexts and stores live in /dev/shm when it has room (ext4 slows down for a minute
after mass deletes, which would time the next point, not the builder).
"""
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

STEPS = [10, 100, 1000]
FILES = [10_000, 100_000, 1_000_000]
ENTRIES = [10_000, 100_000, 1_000_000]
# dockerd's limit on an image's layers (daemon/graphdriver/overlay2: maxDepth).
DOCKER_MAX_LAYERS = 125
# Seconds within which the stat cache does not remember a file changed (context/statcache.rs).
RACY_WINDOW = 2
# docker 20.10, as bench/run.py runs it (another docker on PATH may lack buildx).
DOCKER = "/usr/bin/docker"


def timed(cmd, env=None):
    """Wall seconds and peak RSS (MB) of cmd, through /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r") as t:
        start = time.monotonic()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name] + cmd, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wall = time.monotonic() - start
        rss = int(t.read().strip().splitlines()[-1]) / 1024
    return wall, rss


def many_files(ctx, n):
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM scratch\nCOPY files /files\n")
    for i in range(n):
        d = os.path.join(ctx, "files", f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        os.close(os.open(os.path.join(d, f"f{i % 1000:04d}"), os.O_CREAT | os.O_WRONLY, 0o644))


def many_entries_tar(path, n):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for i in range(n):
            if i % 1000 == 0:
                d = tarfile.TarInfo(f"d{i // 1000:04d}")
                d.type, d.mode = tarfile.DIRTYPE, 0o755
                t.addfile(d)
            f = tarfile.TarInfo(f"d{i // 1000:04d}/f{i % 1000:04d}")
            f.mode = 0o644
            t.addfile(f)


def docker_build(ctx, tag, cached=False):
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    nc = [] if cached else ["--no-cache"]
    wall, _ = timed([DOCKER, "build", "--network=host", "-q", *nc, "-t", tag, ctx], env=env)
    return wall


def rbuild_build(ctx, store, tag):
    return timed(["rbuild", "--root", store, "build", "-q", "-t", tag, ctx])


def run(scale, busybox, peers=True):
    """Every series; returns rows (series, point, unit, rbuild per unit, rbuild RSS MB,
    BuildKit per unit or None)."""
    base = "/dev/shm" if shutil.disk_usage("/dev/shm").free > 8 << 30 else None
    work = tempfile.mkdtemp(prefix="rbuild-scale-", dir=base)
    rows = []
    pt = lambda n: max(1, int(n * scale))
    try:
        for n in map(pt, STEPS):
            ctx = os.path.join(work, f"steps{n}")
            os.makedirs(ctx)
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write(f"FROM {busybox}\n" + "".join(f"RUN echo {i} > /f{i}\n" for i in range(n)))
            store = os.path.join(work, f"store-steps{n}")
            subprocess.run(["rbuild", "--root", store, "pull", busybox], check=True,
                           stdout=subprocess.DEVNULL)
            wall, rss = rbuild_build(ctx, store, f"rbuild-scale/steps:{n}")
            peer = None
            if peers and n + 1 <= DOCKER_MAX_LAYERS:
                peer = docker_build(ctx, f"rbuild-scale/steps:{n}") * 1000 / n
                subprocess.run([DOCKER, "rmi", "-f", f"rbuild-scale/steps:{n}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows.append(("steps", n, "ms/step", wall * 1000 / n, rss, peer))
            print(f"steps {n}: {wall * 1000 / n:.1f} ms/step, {rss:.1f} MB", flush=True)
        for n in map(pt, FILES):
            ctx = os.path.join(work, f"ctx{n}")
            many_files(ctx, n)
            # As a CI checkout is by the time its build starts: older than the stat cache's
            # racy window (2 s on mtime and ctime; ctime cannot be set back), else the first
            # build does not remember the files' digests and the cached one hashes them again.
            time.sleep(RACY_WINDOW + 1)
            store = os.path.join(work, f"store-ctx{n}")
            for cond in ("first", "cached"):
                wall, rss = rbuild_build(ctx, store, f"rbuild-scale/ctx:{n}")
                peer = None
                if peers:
                    tag = f"rbuild-scale/ctx:{n}"
                    peer = docker_build(ctx, tag, cond == "cached") * 1e6 / n
                rows.append((f"context ({cond})", n, "us/file", wall * 1e6 / n, rss, peer))
                print(f"context {n} {cond}: {wall * 1e6 / n:.1f} us/file, {rss:.1f} MB", flush=True)
            if peers:
                subprocess.run([DOCKER, "rmi", "-f", f"rbuild-scale/ctx:{n}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(ctx)
            shutil.rmtree(store)
        for n in map(pt, ENTRIES):
            tar = os.path.join(work, f"apply{n}.tar")
            many_entries_tar(tar, n)
            store = os.path.join(work, f"store-apply{n}")
            wall, rss = timed(["rbuild", "--root", store, "import", tar, f"rbuild-scale/apply:{n}"])
            rows.append(("apply", n, "us/entry", wall * 1e6 / n, rss, None))
            print(f"apply {n}: {wall * 1e6 / n:.1f} us/entry, {rss:.1f} MB", flush=True)
            os.remove(tar)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def report(rows):
    print()
    print("| series | point | rbuild | rbuild peak RSS | BuildKit | BuildKit / rbuild |")
    print("|---|---|---|---|---|---|")
    for series, n, unit, per, rss, peer in rows:
        bk = f"{peer:.1f} {unit}" if peer is not None else "n/a"
        ratio = f"{peer / per:.2f}x" if peer is not None else "n/a"
        print(f"| {series} | {n:,} | {per:.1f} {unit} | {rss:.1f} MB | {bk} | {ratio} |")
    # The targets: cost per unit within 1.5x from the smallest point to the largest.
    by = {}
    for series, n, unit, per, rss, _ in rows:
        by.setdefault(series, []).append((n, per, rss))
    print()
    for series, pts in by.items():
        (n0, p0, r0), (n1, p1, r1) = pts[0], pts[-1]
        print(f"{series}: per unit {p1 / p0:.2f}x from {n0:,} to {n1:,}, "
              f"peak RSS {r0:.1f} -> {r1:.1f} MB")
