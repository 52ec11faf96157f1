//! Memory flat in the number of context files (issue 23): walking the context, its content
//! digest, the stat cache, the copy and the layer snapshot keep nothing per file in memory,
//! so a COPY of 60,000 files peaks at the RSS of one of 15,000, on a first build and a
//! cached rebuild, within 4 MB. Both are past the fixed buffers that fill with the first
//! ~10,000 files (the digest's batches of records in flight: with 3,000 files against
//! 30,000 they made 2-4.5 MB of the difference, and the test failed now and then), so the
//! difference is what grows per file. (The code before took ~0.4-0.9 KB per file: its
//! release binary peaked at 11.7 and 10.9 MB for 3,000 files, 23.5 and 34.1 MB for 30,000.
//! The cost line after the build held the layer's listing, ~190 B per entry, until session
//! 18.)

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// A context of `n` empty files in directories of 1000, copied by one COPY.
fn many_files_context(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY files /files\n").unwrap();
    for i in 0..n {
        let sub = dir.join(format!("files/d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::File::create(sub.join(format!("f{:04}", i % 1000))).unwrap();
    }
}

/// Peak RSS (KB) of `rbuild build` of `context` into `store`.
fn build_peak_kb(store: &Path, context: &Path) -> u64 {
    let out = run(Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(rbuild_bin())
        .arg("--root")
        .arg(store)
        // Not quiet: the cost line a build prints last reads the image's layer listings
        // too, merged as they are read (output::history).
        .args(["build", "--progress", "plain", "-t", "rbuild-test/scale:x"])
        .arg(context));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err.trim().lines().last().unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root"]
fn copying_a_context_takes_memory_flat_in_its_files() {
    needs_root();
    let dir = many_files_tempdir(160_000);
    let peaks = |n: usize| -> (u64, u64) {
        let context = dir.path().join(format!("ctx{n}"));
        many_files_context(&context, n);
        let store = dir.path().join(format!("store{n}"));
        let first = build_peak_kb(&store, &context);
        let cached = build_peak_kb(&store, &context);
        (first, cached)
    };
    let (small, big) = (peaks(15_000), peaks(60_000));
    let message = format!(
        "peak RSS (first build, cached rebuild) {small:?} KB for 15,000 files, {big:?} KB for 60,000"
    );
    assert!(big.0 < small.0 + 4 * 1024, "{message}");
    assert!(big.1 < small.1 + 4 * 1024, "{message}");
}
