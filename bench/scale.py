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
~1,000,000 files twice and takes 15-40 minutes (docs/performance.md), so it is not in the
default run. Contexts and stores live in /dev/shm when it has room, bytes and inodes, for the
largest point (ext4 slows down for a minute after mass deletes, which would time the next
point, not the builder); else in the root filesystem's temp dir, said so; with room in
neither the run does not start. Each point prints its figures and the time (UTC) as it
ends; a failing point (or ^C) stops the run, prints the rows so far and which `--series`
resumes it. A BuildKit build past `peer_timeout` seconds is stopped and its cell reads
"timeout after N s" (the cached rebuild after a first build that timed out is not run).

Every timed build of either builder starts after a `sync`: the build before it (BuildKit's
first build of a million files copies them into /var/lib/docker) would otherwise still be
writing back while the next one is timed. Then it waits until the CPUs are idle (two 0.1 s
windows under 15 % busy, 10 s at most): dockerd goes on working for ~0.1 s after `docker
build` returns, which was timed as part of the next build. A cached rebuild takes a second or two at most
points, so each builder's is the median of CACHED_RUNS runs, one builder's run after the
other's; a first build is timed once.
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
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
# Where dockerd keeps BuildKit's snapshots (a context's files are copied there).
DOCKER_ROOT = "/var/lib/docker"


SERIES = ("steps", "context", "apply")
# Runs of each builder's cached rebuild of a context point: its median is reported.
CACHED_RUNS = 3
# Seconds a BuildKit build may take before it is stopped and reported as a timeout (its
# 1,000,000-file context is the one that can run that long); rbuild gets the same bound
# three times over, so a hang ends the run with a message rather than silently.
PEER_TIMEOUT = 900


class Timeout(Exception):
    def __init__(self, seconds):
        super().__init__(f"timeout after {seconds:.0f} s")
        self.seconds = seconds


def stamp():
    return time.strftime("%H:%M:%S UTC", time.gmtime())


def say(text):
    print(f"{stamp()} {text}", flush=True)


def cpu_ticks():
    """Busy and idle ticks of all CPUs so far (/proc/stat). Time the hypervisor gave other
    guests (steal) is neither: waiting would not make it go."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return user + nice + system + irq + softirq, idle + iowait


def quiet(window=0.1, busy_below=0.15, windows=2, give_up=10.0):
    """Wait until the CPUs are idle for `windows` windows in a row (under `busy_below` of
    each): dockerd goes on working for ~0.1 s after `docker build` returns (a third of the
    CPUs in that window, measured), and that work must not be timed as the next build's.
    Returns the seconds waited; after `give_up` seconds it goes on anyway."""
    start = time.monotonic()
    calm = 0
    last = cpu_ticks()
    while calm < windows and time.monotonic() - start < give_up:
        time.sleep(window)
        now = cpu_ticks()
        busy, idle = now[0] - last[0], now[1] - last[1]
        last = now
        calm = calm + 1 if busy < busy_below * max(busy + idle, 1) else 0
    return time.monotonic() - start


def timed(cmd, env=None, timeout=3 * PEER_TIMEOUT):
    """Wall seconds and peak RSS (MB) of cmd, through /usr/bin/time, after a `sync` (what
    ran before it is written back first, untimed) and once the CPUs are quiet ([`quiet`]);
    Timeout past `timeout` seconds (the command's process group is killed)."""
    os.sync()
    quiet()
    with tempfile.NamedTemporaryFile("r") as t:
        start = time.monotonic()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", t.name] + cmd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                             start_new_session=True)
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise Timeout(time.monotonic() - start)
        wall = time.monotonic() - start
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
        rss = int(t.read().strip().splitlines()[-1]) / 1024
    return wall, rss


def room(path):
    """Free bytes and free inodes of the filesystem at path."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_favail


def needs(series, n):
    """(bytes, inodes) a point takes at its peak: the context or tar and the store's copy,
    with a margin. A million empty files take few bytes but a million inodes, which a tmpfs
    sized by RAM may not have (df -i /dev/shm)."""
    if series == "steps":
        # A small layer a step, and a flattened snapshot of busybox every ~500 steps.
        return (2 << 20) * n + (1 << 30), 20 * n + 100_000
    if series == "context":
        # The context and the layer's files (the COPY's upperdir becomes the layer).
        return 4096 * n + (2 << 30), 2 * n + 100_000
    # apply: the tar (two 512-byte headers an entry), its blob in the store, the layer.
    return 3 * 1024 * n + (2 << 30), 2 * n + 100_000


def pick_base(points):
    """/dev/shm when it has room (bytes and inodes) for the largest point, else the root
    filesystem's temp dir; exits with what is missing when neither has."""
    want = [needs(s, n) for s, n in points]
    need_bytes = max((b for b, _ in want), default=0)
    need_inodes = max((i for _, i in want), default=0)
    candidates = ["/dev/shm", tempfile.gettempdir()]
    for base in candidates:
        if not os.path.isdir(base):
            continue
        free, inodes = room(base)
        if free >= need_bytes and inodes >= need_inodes:
            if base != "/dev/shm":
                say(f"/dev/shm lacks room; working in {base} (ext4 slows file creation for a "
                    "minute after mass deletes: points after a big one may read slow)")
            return base
    report = ", ".join(f"{b}: {room(b)[0] >> 30} GB, {room(b)[1]:,} inodes free"
                       for b in candidates if os.path.isdir(b))
    sys.exit(f"scale bench: the largest point needs {need_bytes >> 30} GB and "
             f"{need_inodes:,} inodes free in one filesystem; {report}. Free some, or run a "
             "smaller --scale or fewer --series.")


def check_room(work, series, n, peers):
    """Fails with what is missing when `work` (or, for BuildKit's copy of a context,
    dockerd's root) has no room for the point."""
    need_bytes, need_inodes = needs(series, n)
    places = [work] + ([DOCKER_ROOT] if peers and series != "apply" and
                       os.path.isdir(DOCKER_ROOT) else [])
    for place in places:
        free, inodes = room(place)
        if free < need_bytes or inodes < need_inodes:
            raise RuntimeError(
                f"{series} {n:,}: {place} has {free >> 20} MB and {inodes:,} inodes free, the "
                f"point needs {need_bytes >> 20} MB and {need_inodes:,} (df -h, df -i)")


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


def docker_build(ctx, tag, cached=False, timeout=PEER_TIMEOUT):
    """BuildKit's wall seconds, or a Timeout."""
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    nc = [] if cached else ["--no-cache"]
    wall, _ = timed([DOCKER, "build", "--network=host", "-q", *nc, "-t", tag, ctx], env=env,
                    timeout=timeout)
    return wall


def peer_per_unit(build, per):
    """BuildKit's cost per unit (`per` units), or the text of its timeout."""
    try:
        return build() * per
    except Timeout as t:
        return str(t)


def rbuild_build(ctx, store, tag):
    return timed(["rbuild", "--root", store, "build", "-q", "-t", tag, ctx])


def steps_point(work, n, busybox, peers, peer_timeout):
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
        tag = f"rbuild-scale/steps:{n}"
        peer = peer_per_unit(lambda: docker_build(ctx, tag, timeout=peer_timeout), 1000 / n)
        subprocess.run([DOCKER, "rmi", "-f", tag],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row = ("steps", n, "ms/step", wall * 1000 / n, rss, peer)
    say(f"steps {n:,}: rbuild {wall:.1f} s, {fmt(row)}")
    shutil.rmtree(ctx)
    shutil.rmtree(store)
    return [row]


def context_point(work, n, peers, peer_timeout):
    ctx = os.path.join(work, f"ctx{n}")
    many_files(ctx, n)
    # As a CI checkout is by the time its build starts: older than the stat cache's racy
    # window (2 s on mtime and ctime; ctime cannot be set back), else the first build does
    # not remember the files' digests and the cached one hashes them again.
    time.sleep(RACY_WINDOW + 1)
    store = os.path.join(work, f"store-ctx{n}")
    rows = []
    tag = f"rbuild-scale/ctx:{n}"
    peer_out = False
    for cond in ("first", "cached"):
        runs = CACHED_RUNS if cond == "cached" else 1
        walls, rsss, peer_walls = [], [], []
        for _ in range(runs):
            wall, rss = rbuild_build(ctx, store, tag)
            walls.append(wall)
            rsss.append(rss)
            if peers and not peer_out:
                peer = peer_per_unit(
                    lambda: docker_build(ctx, tag, cond == "cached", timeout=peer_timeout),
                    1e6 / n)
                # A first build that timed out leaves nothing to rebuild from the cache.
                peer_out = isinstance(peer, str)
                peer_walls.append(peer)
        wall, rss = statistics.median(walls), max(rsss)
        timeouts = [p for p in peer_walls if isinstance(p, str)]
        peer = None
        if timeouts:
            peer = timeouts[0]
        elif peer_walls:
            peer = statistics.median(peer_walls)
        elif peer_out:
            peer = "n/a (its first build timed out)"
        row = (f"context ({cond})", n, "us/file", wall * 1e6 / n, rss, peer)
        rows.append(row)
        say(f"context {n:,} {cond}: rbuild {wall:.1f} s, {fmt(row)}")
    if peers:
        subprocess.run([DOCKER, "rmi", "-f", tag],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(ctx)
    shutil.rmtree(store)
    return rows


def apply_point(work, n):
    tar = os.path.join(work, f"apply{n}.tar")
    many_entries_tar(tar, n)
    store = os.path.join(work, f"store-apply{n}")
    wall, rss = timed(["rbuild", "--root", store, "import", tar, f"rbuild-scale/apply:{n}"])
    row = ("apply", n, "us/entry", wall * 1e6 / n, rss, None)
    say(f"apply {n:,}: rbuild {wall:.1f} s, {fmt(row)}")
    os.remove(tar)
    shutil.rmtree(store)
    return [row]


def run(scale, busybox, peers=True, series=SERIES, peer_timeout=PEER_TIMEOUT):
    """The chosen series (of SERIES), point by point; returns rows (series, point, unit,
    rbuild per unit, rbuild RSS MB, BuildKit per unit, its timeout's text or None). A point
    that fails ends the run with the rows so far and how to resume."""
    unknown = set(series) - set(SERIES)
    if unknown:
        sys.exit(f"unknown series {', '.join(sorted(unknown))}: choose from {', '.join(SERIES)}")
    pt = lambda n: max(1, int(n * scale))
    sizes = {"steps": STEPS, "context": FILES, "apply": ENTRIES}
    points = [(s, pt(n)) for s in SERIES if s in series for n in sizes[s]]
    work = tempfile.mkdtemp(prefix="rbuild-scale-", dir=pick_base(points))
    say(f"series {', '.join(s for s in SERIES if s in series)} at scale {scale} in {work}; "
        f"BuildKit stopped after {peer_timeout} s a build")
    rows = []
    try:
        for i, (s, n) in enumerate(points):
            check_room(work, s, n, peers)
            say(f"{s} {n:,}: starting")
            if s == "steps":
                rows += steps_point(work, n, busybox, peers, peer_timeout)
            elif s == "context":
                rows += context_point(work, n, peers, peer_timeout)
            else:
                rows += apply_point(work, n)
    except (Exception, KeyboardInterrupt) as e:
        left = list(dict.fromkeys(s for s, _ in points[i:]))
        say(f"stopped at {s} {n:,}: {e}")
        say(f"resume with --series {','.join(left)} (a series restarts at its first point)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def fmt(row):
    _, _, unit, per, rss, peer = row
    if peer is None:
        bk = "BuildKit n/a"
    elif isinstance(peer, str):
        bk = f"BuildKit {peer}"
    else:
        bk = f"BuildKit {peer:.1f} {unit} ({peer / per:.2f}x)"
    return f"{per:.1f} {unit}, peak RSS {rss:.1f} MB; {bk}"


def report(rows):
    print()
    print("| series | point | rbuild | rbuild peak RSS | BuildKit | BuildKit / rbuild |")
    print("|---|---|---|---|---|---|")
    for series, n, unit, per, rss, peer in rows:
        if isinstance(peer, (int, float)):
            bk, ratio = f"{peer:.1f} {unit}", f"{peer / per:.2f}x"
        else:
            bk, ratio = peer or "n/a", "n/a"
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
