//! `rbuild history` and the cost line a build ends with (issue 19): figures checked against
//! listings computed here, independently, from the image's layer tars.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use support::*;

const BIG: u64 = 10 * 1024 * 1024;

/// 10 MB added then deleted, a file overwritten, a directory replaced (opaque).
fn dockerfile() -> String {
    format!(
        "FROM {REGISTRY}/busybox:latest\n\
         RUN head -c {BIG} /dev/zero > /big && mkdir -p /opq && echo aaaa > /opq/x && echo hello > /over\n\
         ENV A=1\n\
         RUN rm /big && echo hello-world > /over\n\
         RUN rm -rf /opq && mkdir /opq && echo b > /opq/y\n"
    )
}

struct Built {
    store: PathBuf,
    archive: PathBuf,
    tag: String,
    stderr: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("history-shared");
        let _ = std::fs::remove_dir_all(&dir);
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile()).unwrap();
        let store = dir.join("store");
        let archive = dir.join("image.tar");
        let tag = "rbuild-test/history:1".to_string();
        let out = run(rbuild(&store)
            .args(["-t", &tag, "-o"])
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg(&ctx));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "build failed:\n{stderr}");
        Built {
            store,
            archive,
            tag,
            stderr,
        }
    })
}

fn history_json(store: &Path, image: &str) -> serde_json::Value {
    let out = run_ok(rbuild_cmd(store).args(["history", "--format", "json", image]));
    serde_json::from_str(&out).unwrap()
}

/// Files of a tar, by name.
fn tar_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

/// One path of a layer tar: (size of its data, is a directory).
type Listing = BTreeMap<String, (u64, bool)>;

/// A layer tar read as the OCI image spec describes it ("Representing Changes"): the
/// paths it writes, the paths it deletes (`.wh.NAME`) and the directories it makes opaque
/// (`.wh..wh..opq`).
fn layer_listing(tar_bytes: &[u8]) -> (Listing, Vec<String>, Vec<String>) {
    let (mut files, mut deleted, mut opaque) = (BTreeMap::new(), Vec::new(), Vec::new());
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b.to_string()),
            None => (String::new(), path.clone()),
        };
        if base == ".wh..wh..opq" {
            opaque.push(dir.trim_end_matches('/').to_string());
        } else if let Some(name) = base.strip_prefix(".wh.") {
            deleted.push(format!("{dir}{name}"));
        } else {
            let kind = entry.header().entry_type();
            let size = if kind.is_file() { entry.size() } else { 0 };
            files.insert(path, (size, kind.is_dir()));
        }
    }
    (files, deleted, opaque)
}

/// Wasted bytes per layer, computed from the tars: a file's bytes are wasted in the layer
/// that added it when a later layer deletes (whiteout, opaque dir) or overwrites it.
fn wasted_from_tars(layers: &[Vec<u8>]) -> Vec<u64> {
    let mut wasted = vec![0u64; layers.len()];
    // path -> (layer, size), non-directories only
    let mut visible: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (l, tar_bytes) in layers.iter().enumerate() {
        let (files, deleted, opaque) = layer_listing(tar_bytes);
        let mut remove = |visible: &mut BTreeMap<String, (usize, u64)>,
                          keep: &dyn Fn(&str) -> bool| {
            let gone: Vec<String> = visible
                .iter()
                .filter(|(p, (owner, _))| *owner < l && !keep(p))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                let (owner, size) = visible.remove(&p).unwrap();
                wasted[owner] += size;
            }
        };
        for d in &deleted {
            let below = format!("{d}/");
            remove(&mut visible, &|p: &str| p != d && !p.starts_with(&below));
        }
        for d in &opaque {
            let below = format!("{d}/");
            remove(&mut visible, &|p: &str| !p.starts_with(&below));
        }
        for (path, (size, is_dir)) in files {
            if is_dir {
                continue;
            }
            if let Some((owner, old)) = visible.insert(path, (l, size)) {
                if owner < l {
                    wasted[owner] += old;
                }
            }
        }
    }
    wasted
}

/// The layer tars of a docker archive, bottom first.
fn archive_layers(archive: &Path) -> Vec<Vec<u8>> {
    let files = tar_files(&std::fs::read(archive).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| files[l.as_str().unwrap()].clone())
        .collect()
}

fn layers_of(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["layer"].is_null())
        .map(|e| e["layer"].clone())
        .collect()
}

#[test]
#[ignore = "needs root and a registry"]
fn wasted_bytes_match_a_listing_of_the_layer_tars() {
    needs_root_and_registry();
    let b = built();
    let report = history_json(&b.store, &b.tag);
    let layers = layers_of(&report);
    let tars = archive_layers(&b.archive);
    assert_eq!(layers.len(), tars.len());
    let expected = wasted_from_tars(&tars);
    let got: Vec<u64> = layers
        .iter()
        .map(|l| l["wasted"].as_u64().unwrap())
        .collect();
    assert_eq!(got, expected);
    // The figures themselves: the 10 MiB /big, `hello\n` in /over, `aaaa\n` in /opq/x.
    assert_eq!(got, [0, BIG + 6 + 5, 0, 0]);
    let by: Vec<(u64, &str, u64)> = layers[1]["wasted_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["layer"].as_u64().unwrap(),
                w["how"].as_str().unwrap(),
                w["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            (2, "deleted", BIG),
            (2, "overwritten", 6),
            (3, "deleted", 5)
        ]
    );
    let counts: Vec<(u64, u64, u64)> = layers
        .iter()
        .skip(1)
        .map(|l| {
            let f = &l["files"];
            (
                f["added"].as_u64().unwrap(),
                f["changed"].as_u64().unwrap(),
                f["deleted"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [(3, 0, 0), (0, 1, 1), (1, 0, 1)]);
    // Sizes: file data per layer, as the tars hold it; the summary adds them up.
    let sizes: Vec<u64> = tars
        .iter()
        .map(|t| layer_listing(t).0.values().map(|(s, _)| s).sum())
        .collect();
    let got_sizes: Vec<u64> = layers.iter().map(|l| l["size"].as_u64().unwrap()).collect();
    assert_eq!(got_sizes, sizes);
    let tar_sizes: Vec<u64> = tars.iter().map(|t| t.len() as u64).collect();
    let got_tar: Vec<u64> = layers
        .iter()
        .map(|l| l["tar_size"].as_u64().unwrap())
        .collect();
    assert_eq!(got_tar, tar_sizes);
    let total: u64 = sizes.iter().sum();
    assert_eq!(report["summary"]["size"].as_u64(), Some(total));
    assert_eq!(report["summary"]["wasted"].as_u64(), Some(BIG + 11));
    let efficiency = report["summary"]["efficiency"].as_f64().unwrap();
    assert!((efficiency - (1.0 - (BIG + 11) as f64 / total as f64)).abs() < 1e-12);
    assert_eq!(layers[1]["largest"][0]["path"], "big");
    assert_eq!(layers[1]["largest"][0]["size"].as_u64(), Some(BIG));

    // The text form says the same.
    let text = run_ok(rbuild_cmd(&b.store).args(["history", &b.tag]));
    assert!(
        text.contains("10.5MB added in layer 1 (RUN /bin/sh -c head -c 10485760 /dev/zero > /bi...) is deleted \
             by layer 2 (RUN /bin/sh -c rm /big && echo hello-world > /o...)\n"),
        "{text}"
    );
    assert!(text.contains("ENV A=1"), "{text}");
}

#[test]
#[ignore = "needs root and a registry"]
fn a_build_ends_with_its_cost_line() {
    needs_root_and_registry();
    let b = built();
    let lines: Vec<&str> = b.stderr.lines().collect();
    let n = lines.len();
    assert!(n >= 2, "{}", b.stderr);
    // Plain progress: the cost line, then the image line.
    assert_eq!(
        lines[n - 2],
        "image size 12.5MB, 4 layers, 10.5MB wasted: 10.5MB added in #2 (RUN head -c \
         10485760 /dev/zero > /big...) is deleted by #3 (RUN rm /big && echo hello-world \
         > /over)",
        "{}",
        b.stderr
    );
    assert!(lines[n - 1].starts_with("image sha256:"), "{}", b.stderr);
}

/// Every key the JSON can hold, by where it sits; docs/explain.md documents each.
#[test]
#[ignore = "needs root and a registry"]
fn history_json_schema_is_stable_and_documented() {
    needs_root_and_registry();
    let b = built();
    let report = history_json(&b.store, &b.tag);
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let set = |s: &[&str]| -> BTreeSet<String> { s.iter().map(|k| k.to_string()).collect() };
    assert_eq!(keys(&report), set(&["schema", "id", "history", "summary"]));
    assert_eq!(report["schema"], 1);
    assert_eq!(
        keys(&report["summary"]),
        set(&["layers", "size", "wasted", "efficiency"])
    );
    let entry_keys = set(&["created", "created_by", "comment", "empty_layer", "layer"]);
    let layer_keys = set(&[
        "index",
        "diff_id",
        "size",
        "tar_size",
        "compressed",
        "files",
        "wasted",
        "wasted_by",
        "largest",
    ]);
    let mut all = BTreeSet::new();
    for e in report["history"].as_array().unwrap() {
        assert_eq!(keys(e), entry_keys);
        if let Some(layer) = e["layer"].as_object() {
            assert_eq!(keys(&e["layer"]), layer_keys);
            assert_eq!(keys(&layer["files"]), set(&["added", "changed", "deleted"]));
            for w in layer["wasted_by"].as_array().unwrap() {
                assert_eq!(keys(w), set(&["layer", "how", "bytes", "files"]));
                all.extend(keys(w));
            }
            for f in layer["largest"].as_array().unwrap() {
                assert_eq!(keys(f), set(&["path", "size"]));
            }
        }
    }
    all.extend(keys(&report));
    all.extend(keys(&report["summary"]));
    all.extend(entry_keys);
    all.extend(layer_keys);
    all.extend(set(&["added", "changed", "deleted", "path", "compression"]));
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/explain.md")).unwrap();
    for k in all {
        assert!(
            doc.contains(&format!("`{k}`")),
            "docs/explain.md does not document `{k}`"
        );
    }
}

#[test]
#[ignore = "needs root and a registry"]
fn a_pulled_image_is_costed_from_its_blob() {
    needs_root_and_registry();
    let dir = tempfile::Builder::new()
        .prefix("history-pull-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let store = dir.path().join("store");
    let image = format!("{REGISTRY}/busybox:latest");
    run_ok(rbuild_cmd(&store).args(["pull", &image]));
    let report = history_json(&store, &image);
    let layers = layers_of(&report);
    assert_eq!(layers.len(), 1);
    let layer = &layers[0];

    // The layer's blob as pulled, read here: its size, its files, its data.
    let inspect: serde_json::Value =
        serde_json::from_str(&run_ok(rbuild_cmd(&store).args(["inspect", &image]))).unwrap();
    let desc = &inspect["Manifest"]["layers"][0];
    let digest = desc["digest"].as_str().unwrap();
    let blob = std::fs::read(
        store
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(layer["compressed"]["size"].as_u64(), desc["size"].as_u64());
    assert_eq!(layer["compressed"]["compression"], "gzip");
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    // Counted while the pull applied the blob.
    assert_eq!(layer["tar_size"].as_u64(), Some(tar_bytes.len() as u64));
    let (files, deleted, _) = layer_listing(&tar_bytes);
    assert!(deleted.is_empty());
    let non_dirs = files.values().filter(|(_, d)| !d).count() as u64;
    let data: u64 = files.values().map(|(s, _)| s).sum();
    assert_eq!(layer["files"]["added"].as_u64(), Some(non_dirs));
    assert_eq!(layer["size"].as_u64(), Some(data));
    assert_eq!(layer["wasted"].as_u64(), Some(0));
    assert_eq!(report["summary"]["efficiency"].as_f64(), Some(1.0));
}

#[test]
#[ignore = "needs root"]
fn an_unknown_image_is_a_clear_error() {
    needs_root();
    let dir = tempfile::Builder::new()
        .prefix("history-none-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let out = run(rbuild_cmd(&dir.path().join("store")).args(["history", "nope:1"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such image in the store: `nope:1`"),
        "{stderr}"
    );
}
