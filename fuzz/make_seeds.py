#!/usr/bin/env python3
"""Regenerate the committed seed corpora (fuzz/corpus/<target>/seed-*) from testdata.

Run from the fuzz/ directory: python3 make_seeds.py
"""
import glob
import gzip
import io
import os
import subprocess
import tarfile

CORPUS = "corpus"
TAR_BASE = "/tmp/rbuild-fuzz-tar"  # the tar_apply target's fixed directory


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def dockerfiles():
    for sub in ("parse", "plan", "parse-negative"):
        for path in sorted(glob.glob(f"../testdata/{sub}/*/Dockerfile")):
            case = os.path.basename(os.path.dirname(path))
            with open(path, "rb") as f:
                put("dockerfile", f"{sub}-{case}", f.read())


def unescape(value):
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            n = value[i + 1]
            out.append({"n": "\n", "t": "\t"}.get(n, n))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_env(env):
    items, cur, i = [], "", 0
    while i < len(env):
        if env[i] == "\\" and i + 1 < len(env):
            cur += env[i : i + 2]
            i += 2
        elif env[i] == ",":
            items.append(cur)
            cur = ""
            i += 1
        else:
            cur += env[i]
            i += 1
    items.append(cur)
    return items


def expand_rows():
    flags_bits = {"@escape=backtick": 1, "@raw_quotes": 2, "@raw_escapes": 4,
                  "@skip_unset": 8, "@skip_quotes": 16}
    rows = []
    with open("../testdata/expand/table.txt", encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if not line or line.startswith("#"):
                continue
            fields = line.split(" | ")
            if len(fields) != 3:
                continue
            rows.append((fields[0], fields[1]))
    # Every third row keeps the corpus small while covering each section of the table.
    for n, (word, env) in enumerate(rows[::3]):
        flags, pairs = 0, []
        if env != "-":
            for item in split_env(env):
                if item in flags_bits:
                    flags |= flags_bits[item]
                elif "=" in item:
                    k, v = item.split("=", 1)
                    pairs.append(k + "=" + unescape(v))
        data = bytes([flags]) + "\0".join([word] + pairs).encode()
        put("expand", f"row{n:03}", data)


def dockerignores():
    cases = {
        "simple": "node_modules\n*.log\0a.log\0node_modules/\0node_modules/x/y\0src/a.go",
        "exception": "docs\n!docs/README.md\0docs/\0docs/README.md\0docs/other",
        "doublestar": "**/*.tmp\n**\n!keep/**\0keep/\0keep/a/b.tmp\0x.tmp",
        "classes": "[a-c]?.txt\n[!x]*\n\\*star\0ab.txt\0y\0*star",
        "comments": "# comment\n  ./dir/  \n/abs\n!\0dir/\0abs",
        "dot": ".\n..\n../x\n./a/../b\0b\0a/b\0.",
        "bad": "[\n[]a]\n\\\0x",
        "exclude-all-but": "*\n!src\n!src/**\nsrc/gen\0src/\0src/gen/\0src/gen/a\0other",
    }
    for name, text in cases.items():
        put("dockerignore", name, text.encode())


def tar_bytes(build, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        build(t)
    return buf.getvalue()


def add(t, name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644, pax=None):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tars():
    def basic(t):
        add(t, "etc/", tarfile.DIRTYPE, mode=0o755)
        add(t, "etc/hostname", data=b"fuzz\n")
        add(t, "bin/", tarfile.DIRTYPE, mode=0o755)
        add(t, "bin/sh", data=b"#!\n", mode=0o755)
        add(t, "bin/ash", tarfile.LNKTYPE, link="bin/sh")
        add(t, "bin/bash", tarfile.SYMTYPE, link="sh")

    def whiteouts(t):
        add(t, "etc/", tarfile.DIRTYPE, mode=0o755)
        add(t, "etc/.wh.passwd")
        add(t, "var/", tarfile.DIRTYPE, mode=0o755)
        add(t, "var/.wh..wh..opq")
        add(t, ".wh.tmp")
        add(t, "var/new", data=b"x")

    def devices(t):
        add(t, "dev/", tarfile.DIRTYPE, mode=0o755)
        add(t, "dev/null", tarfile.CHRTYPE, mode=0o666)
        add(t, "dev/fifo", tarfile.FIFOTYPE, mode=0o600)

    def pax(t):
        add(t, "long/" + "d" * 120 + "/file", data=b"long",
            pax={"SCHILY.xattr.user.fuzz": "1", "SCHILY.xattr.security.capability": "x"})
        add(t, "dir/", tarfile.DIRTYPE, pax={"SCHILY.xattr.user.d": "v"})

    def hostile_links(t):
        add(t, "esc", tarfile.SYMTYPE, link=TAR_BASE)
        add(t, "esc/owned", data=b"x")
        add(t, "up", tarfile.SYMTYPE, link="..")
        add(t, "up/owned", data=b"x")
        add(t, "hl", tarfile.LNKTYPE, link="../owned")
        add(t, "abs", tarfile.LNKTYPE, link=TAR_BASE + "/owned")

    def hostile_names(t):
        add(t, "../owned", data=b"x")
        add(t, TAR_BASE + "/owned", data=b"x")
        add(t, "./a/./b", data=b"x")
        add(t, "a/b/../../../owned", data=b"x")

    def replace(t):
        add(t, "a", data=b"file")
        add(t, "a/", tarfile.DIRTYPE)
        add(t, "a/b", data=b"x")
        add(t, "a", tarfile.SYMTYPE, link="/")
        add(t, "a/c", data=b"y")
        add(t, "l", tarfile.LNKTYPE, link="a")

    builds = {"basic": basic, "whiteouts": whiteouts, "devices": devices,
              "pax": pax, "hostile-links": hostile_links,
              "hostile-names": hostile_names, "replace": replace}
    for name, build in builds.items():
        raw = tar_bytes(build, tarfile.PAX_FORMAT if name == "pax" else tarfile.GNU_FORMAT)
        put("tar_apply", name + ".tar", raw)
    raw = tar_bytes(basic)
    put("tar_apply", "basic.tar.gz", gzip.compress(raw, mtime=0))
    put("tar_apply", "whiteouts.tar.gz", gzip.compress(tar_bytes(whiteouts), mtime=0))
    zst = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True)
    put("tar_apply", "basic.tar.zst", zst.stdout)
    put("tar_apply", "truncated.tar", raw[:700])
    put("tar_apply", "empty.tar", b"\0" * 1024)


dockerfiles()
expand_rows()
dockerignores()
tars()
