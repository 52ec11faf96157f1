//! Deep layer stacks (issue 23): a Dockerfile of a thousand steps builds, although one overlay
//! mount stacks at most 500 layers (rbuild stacks at most 125), because the oldest layers are
//! mounted as a flattened snapshot (store/flat.rs); the image still has one layer per step. Snapshots are reused by
//! later builds and removed by `rbuild prune`.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use rbuild::store::{STACK, STRIDE};
use support::*;

const BASE: InRegistry = InRegistry("busybox");

/// Steps (1-based) whose RUN does more than `echo N > /fN`: whiteouts and opaque directories
/// below and above the snapshot the last steps mount (layers 1..896: the base is layer 1,
/// `setup` layer 2, step N layer N + 2; step N runs on N + 1 layers).
fn extra(n: usize) -> &'static str {
    match n {
        // Inside the snapshot: a whiteout, and /d replaced by an opaque directory.
        200 => " && rm -rf /d && mkdir /d && echo b > /d/b",
        300 => " && rm /f10",
        // Above it: a whiteout of a file the snapshot has, and /e replaced.
        950 => " && rm -rf /e && mkdir /e && echo new > /e/new",
        900 => " && rm /f30",
        // Inside the snapshot at the end; run above the 640-layer one (steps 700-763).
        700 => " && rm /f20",
        _ => "",
    }
}

const STEPS: usize = 1000;
const DELETED: [usize; 3] = [10, 20, 30];

/// The thousand-step Dockerfile; its last RUN checks the tree inside the sandbox (where the
/// lower is the snapshot plus the layers above it), with `tail` appended.
fn dockerfile(tail: &str) -> String {
    let mut s = format!("FROM {BASE}\nRUN mkdir /d /e && echo a > /d/a && echo old > /e/old\n");
    for n in 1..=STEPS {
        s.push_str(&format!("RUN echo {n} > /f{n}{}\n", extra(n)));
    }
    s.push_str(&format!("RUN {}{tail}\n", check_script()));
    s
}

fn check_script() -> String {
    let deleted = DELETED.map(|d| d.to_string()).join("|");
    format!(
        "test ! -e /d/a && test \"$(cat /d/b)\" = b && test ! -e /e/old \
         && test \"$(cat /e/new)\" = new \
         && for i in $(seq 1 {STEPS}); do case $i in {deleted}) test ! -e /f$i ;; \
         *) test \"$(cat /f$i)\" = $i ;; esac || {{ echo bad /f$i; exit 1; }}; done"
    )
}

/// The image's files as a rootfs: what every step wrote, minus what later steps removed.
fn check_rootfs(root: &Path, who: &str) {
    for n in 1..=STEPS {
        let p = root.join(format!("f{n}"));
        if DELETED.contains(&n) {
            assert!(!p.exists(), "{who}: /f{n} was deleted but is there");
        } else {
            assert_eq!(
                std::fs::read_to_string(&p).unwrap_or_default(),
                format!("{n}\n"),
                "{who}: /f{n}"
            );
        }
    }
    assert!(!root.join("d/a").exists(), "{who}: /d/a");
    assert!(root.join("d/b").exists(), "{who}: /d/b");
    assert!(!root.join("e/old").exists(), "{who}: /e/old");
    assert!(root.join("e/new").exists(), "{who}: /e/new");
}

/// flat/<chain> -> inode of its root, for every snapshot in the store.
fn snapshots(store: &Path) -> BTreeMap<String, u64> {
    let Ok(dir) = std::fs::read_dir(store.join("flat")) else {
        return BTreeMap::new();
    };
    dir.map(|e| {
        let e = e.unwrap();
        let ino = std::fs::metadata(e.path().join("root")).unwrap().ino();
        (e.file_name().to_string_lossy().into_owned(), ino)
    })
    .collect()
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn a_thousand_steps_build_through_flattened_snapshots_that_are_reused_and_pruned() {
    needs_root_docker_and_registry();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile("")).unwrap();
    let name = format!("rbuild-deep-{}", std::process::id());
    let _images = DockerImages(vec![format!("{name}:1")]);
    let archive = work.path().join("docker.tar");
    let layout = work.path().join("layout");

    let started = std::time::Instant::now();
    run_ok(
        rbuild(&store)
            .args(["-t", &format!("{name}:1")])
            .arg("-o")
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg("-o")
            .arg(format!("type=oci,dest={},tar=false", layout.display()))
            .arg(&ctx),
    );
    eprintln!("{} steps built in {:?}", STEPS + 2, started.elapsed());

    // One layer per step, as BuildKit makes them: busybox's, setup's, the steps' and the
    // check's.
    let manifest: serde_json::Value = serde_json::from_slice(
        &Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("manifest.json")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), STEPS + 3);

    // Snapshots of 64, 128, ... 896 layers (every STRIDE): steps 125-187 mounted the first
    // above 62-124 layers, and so on.
    let first = snapshots(&store);
    let made = rbuild::store::flatten_depth(STEPS + 2, STACK, STRIDE).unwrap() / STRIDE;
    assert_eq!((first.len(), made), (14, 14), "{first:?}");

    // docker's layer store refuses an image of more than 125 layers (docs/compat.md); if
    // a docker ever loads it, it must run it as built.
    let loaded = run(docker().args(["load", "-i"]).arg(&archive));
    if loaded.status.success() {
        let out = run_ok(
            docker()
                .args(["run", "--rm", &format!("{name}:1"), "sh", "-c"])
                .arg(format!("{} && echo ok", check_script())),
        );
        assert_eq!(out.trim(), "ok");
    } else {
        let err = String::from_utf8_lossy(&loaded.stderr);
        assert!(err.contains("max depth exceeded"), "docker load: {err}");
    }
    // umoci applies the thousand layers on its own (whiteouts and opaque dirs included).
    require(
        Command::new("umoci").arg("--version").output().is_ok(),
        "umoci",
    );
    let bundle = work.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle),
    );
    check_rootfs(&bundle.join("rootfs"), "umoci");

    // A second build on the same 1,002 layers reuses the snapshot (same inode: not made
    // again) for its new last step.
    std::fs::write(ctx.join("Dockerfile"), dockerfile(" && true")).unwrap();
    run_ok(rbuild(&store).args(["-t", &format!("{name}:2")]).arg(&ctx));
    assert_eq!(snapshots(&store), first);

    // A plain prune keeps what tags and the build cache use; rmi and prune --all remove
    // the snapshots with their layers.
    let prune = |args: &[&str]| {
        run_ok(
            Command::new(rbuild_bin())
                .env("RBUILD_ROOT", &store)
                .arg("prune")
                .args(args),
        )
    };
    prune(&[]);
    assert_eq!(snapshots(&store), first);
    run_ok(Command::new(rbuild_bin()).env("RBUILD_ROOT", &store).args([
        "rmi",
        &format!("{name}:1"),
        &format!("{name}:2"),
    ]));
    let out = prune(&["--all"]);
    assert!(out.contains("14 flattened snapshots"), "{out}");
    assert!(snapshots(&store).is_empty());
}
