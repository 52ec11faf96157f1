//! Arbitrary bytes as a layer (tar, gzip or zstd): apply never panics and never writes
//! outside its destination.
//!
//! The destination is `/tmp/rbuild-fuzz-tar/root` (a fixed path, so that seeds can hold
//! symlinks and hard links aimed at it and at its parent). After every input the parent
//! must hold nothing but `root`, and `root` is removed again. Run one fuzzing job at a
//! time per machine.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

const BASE: &str = "/tmp/rbuild-fuzz-tar";

fuzz_target!(|data: &[u8]| {
    let base = Path::new(BASE);
    let root = base.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).expect("cleaning the previous destination");
    }
    fs::create_dir_all(&root).expect("creating the destination");
    let _ = rbuild::layer::apply(data, &root);
    let names: Vec<_> = fs::read_dir(base)
        .expect("listing the fuzz directory")
        .map(|e| e.expect("reading the fuzz directory").file_name())
        .collect();
    assert_eq!(names, ["root"], "apply wrote outside its destination");
    fs::remove_dir_all(&root).expect("cleaning the destination");
});
