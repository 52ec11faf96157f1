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

/// Recompute the header checksums of an uncompressed tar, walking it as the tar crate
/// does (header, data padded to 512 bytes, next header). Random mutations almost never
/// keep a checksum valid, so without this the fuzzer would only ever test the checksum
/// check; with it, mutated names, types, sizes and links reach the applier.
fn fix_checksums(data: &mut [u8]) {
    let mut off = 0;
    while data.len().saturating_sub(off) >= 512 {
        let header = &mut data[off..off + 512];
        if header.iter().all(|&b| b == 0) {
            off += 512;
            continue;
        }
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(&field.as_bytes()[..8]);
        let size = std::str::from_utf8(&header[124..136])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0);
        let blocks = size.div_ceil(512).saturating_add(1);
        off = off.saturating_add(usize::try_from(blocks.saturating_mul(512)).unwrap_or(usize::MAX));
    }
}

fuzz_target!(|data: &[u8]| {
    let base = Path::new(BASE);
    let root = base.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).expect("cleaning the previous destination");
    }
    fs::create_dir_all(&root).expect("creating the destination");
    let compressed = data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let mut data = data.to_vec();
    if !compressed {
        fix_checksums(&mut data);
    }
    let _ = rbuild::layer::apply(&data[..], &root);
    let names: Vec<_> = fs::read_dir(base)
        .expect("listing the fuzz directory")
        .map(|e| e.expect("reading the fuzz directory").file_name())
        .collect();
    assert_eq!(names, ["root"], "apply wrote outside its destination");
    fs::remove_dir_all(&root).expect("cleaning the destination");
});
