use std::io::{Read, Write};
use std::path::Path;

use super::*;
use crate::image::{media, Descriptor, History, ImageConfig, Reference};
use crate::layer::compress::{Compression, Compressor};

/// A one-file layer tar, and the matching extracted dir (inside the store's scratch).
pub(crate) fn make_layer(
    store: &Store,
    name: &str,
    content: &[u8],
    parent: Option<&Digest>,
) -> LayerRecord {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, content).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let blob = store.put_blob_bytes(&gz).unwrap();
    let dir = store.tmp_dir().unwrap().keep();
    std::fs::write(dir.join(name), content).unwrap();
    store
        .commit_layer(
            dir,
            parent,
            diff_id,
            Descriptor::new(media::OCI_LAYER_GZIP, blob, gz.len() as u64),
        )
        .unwrap()
}

pub(crate) fn config_for(layers: &[&LayerRecord]) -> ImageConfig {
    let mut cfg = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    cfg.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    cfg.config.cmd = Some(vec!["/hello".into()]);
    cfg
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn open_creates_an_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    for p in [
        "blobs/sha256",
        "layers",
        "cache",
        "tmp",
        "lock",
        "oci-layout",
        "index.json",
    ] {
        assert!(s.root().join(p).exists(), "{p}");
    }
    let idx: crate::image::Index =
        serde_json::from_slice(&std::fs::read(s.root().join("index.json")).unwrap()).unwrap();
    assert!(idx.manifests.is_empty());
}

#[test]
fn prehashed_blob_is_stored_under_the_producers_digest_and_synced_later() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let (d, n, v) = s
        .write_blob_prehashed(|w| {
            w.write_all(b"layer tar")
                .map(|_| ("value", Digest::of(b"layer tar")))
        })
        .unwrap();
    assert_eq!((d.clone(), n, v), (Digest::of(b"layer tar"), 9, "value"));
    assert_eq!(s.read_blob(&d).unwrap(), b"layer tar");
    // The rename into blobs/sha256 waits for one directory fsync at sync_pending.
    assert!(!s.pending_dirs.lock().unwrap().is_empty());
    s.sync_pending().unwrap();
    assert!(s.pending_dirs.lock().unwrap().is_empty());
    let err = s
        .write_blob_prehashed(|_| Err::<((), Digest), _>(std::io::Error::other("boom")))
        .unwrap_err();
    assert!(matches!(err, StoreError::Producer(_)), "{err}");
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 1);
}

#[test]
fn write_blob_hashes_and_stores() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let (d, n, v) = s.write_blob(|w| w.write_all(b"hello").map(|_| 7)).unwrap();
    assert_eq!((d.clone(), n, v), (Digest::of(b"hello"), 5, 7));
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    assert!(s.has_blob(&d));
    // Writing the same bytes again keeps one blob.
    assert_eq!(s.put_blob_bytes(b"hello").unwrap(), d);
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 1);
    // A failing producer stores nothing.
    let err = s
        .write_blob(|w| {
            w.write_all(b"partial")?;
            Err::<(), _>(std::io::Error::other("boom"))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Producer(_)), "{err}");
    assert!(!s.has_blob(&Digest::of(b"partial")));
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 1);
    assert_eq!(
        count_entries(s.session_dir()),
        1,
        "only .lock left in session"
    );
}

#[test]
fn verified_mismatch_stores_nothing() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let good = Descriptor::new(media::OCI_CONFIG, Digest::of(b"abc"), 3);
    s.put_blob_verified(&good, &b"abc"[..]).unwrap();
    assert!(s.has_blob(&good.digest));

    let want = Descriptor::new(media::OCI_CONFIG, Digest::of(b"xyz"), 3);
    let err = s.put_blob_verified(&want, &b"xyw"[..]).unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    // Too long: the right prefix followed by more bytes.
    let err = s.put_blob_verified(&want, &b"xyzzzz"[..]).unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { actual_size: 4, .. }),
        "{err}"
    );
    assert!(!s.has_blob(&want.digest));
    assert!(!s.has_blob(&Digest::of(b"xyw")));
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 1);
}

#[test]
fn chain_ids_follow_the_oci_rule() {
    let a = Digest::of(b"a");
    let b = Digest::of(b"b");
    assert_eq!(chain_id(None, &a), a);
    let expected = Digest::of(format!("{a} {b}").as_bytes());
    assert_eq!(chain_id(Some(&a), &b), expected);
    assert_eq!(chains_of(&[a.clone(), b]), vec![a, expected]);
}

#[test]
fn commit_layer_records_meta_and_tolerates_a_second_commit() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l1 = make_layer(&s, "hello", b"hi there", None);
    assert_eq!(l1.chain_id, l1.diff_id);
    assert_eq!(std::fs::read(l1.diff.join("hello")).unwrap(), b"hi there");
    assert_eq!(l1.size, 8);
    assert!(l1.blobs.gzip.is_some() && l1.blobs.uncompressed.is_none());
    assert_eq!(s.layer(&l1.chain_id), Some(l1.clone()));
    // Same layer again (what a concurrent build does): the record stays, ours is dropped.
    let again = make_layer(&s, "hello", b"hi there", None);
    assert_eq!(again, l1);
    let l2 = make_layer(&s, "second", b"2", Some(&l1.chain_id));
    assert_eq!(l2.parent.as_ref(), Some(&l1.chain_id));
    assert_eq!(l2.chain_id, chain_id(Some(&l1.chain_id), &l2.diff_id));
    assert_eq!(s.layer_ids().unwrap().len(), 2);
}

#[test]
fn concurrent_commits_of_one_layer_both_succeed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let results: Vec<LayerRecord> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                scope.spawn(move || {
                    // Each thread is its own "process": its own Store and session.
                    let s = Store::open(&root).unwrap();
                    let _lock = s.lock_shared().unwrap();
                    make_layer(&s, "same", b"content", None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let s = Store::open(&root).unwrap();
    assert_eq!(s.layer_ids().unwrap().len(), 1);
    assert_eq!(
        std::fs::read(results[0].diff.join("same")).unwrap(),
        b"content"
    );
    // Every scratch session of the threads is gone; the losers' copies that saw the layer
    // before committing wait in the trash (see trash.rs) until it is emptied (those that
    // lost the rename race drop theirs at once).
    assert_eq!(
        count_entries(&root.join("tmp")),
        3,
        ".lock, .trash and our session"
    );
    assert!(
        count_entries(&root.join("tmp/.trash")) <= 3,
        "three losers at most"
    );
    let _ = s.empty_trash();
    assert_eq!(count_entries(&root.join("tmp/.trash")), 0);
}

#[test]
fn layer_blob_recompresses_and_records() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = make_layer(&s, "f", b"data data data", None);
    let plain = s
        .layer_blob(&l.chain_id, Compression::Uncompressed)
        .unwrap();
    assert_eq!(
        plain.digest, l.diff_id,
        "uncompressed blob digest is the diff_id"
    );
    assert_eq!(plain.media_type, media::OCI_LAYER);
    let z = s.layer_blob(&l.chain_id, Compression::Zstd).unwrap();
    assert_eq!(z.media_type, media::OCI_LAYER_ZSTD);
    let mut back = Vec::new();
    crate::layer::compress::decompressor(s.open_blob(&z.digest).unwrap())
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(Digest::of(&back), l.diff_id);
    let rec = s.layer(&l.chain_id).unwrap();
    assert_eq!(rec.blobs.uncompressed.unwrap().digest, plain.digest);
    assert_eq!(rec.blobs.zstd.unwrap().digest, z.digest);
    assert_eq!(rec.blobs.gzip, l.blobs.gzip);
    // Asking again returns the recorded blob.
    assert_eq!(s.layer_blob(&l.chain_id, Compression::Zstd).unwrap(), z);
}

/// A pulled layer (its registry blob stored, no built tar) is listed in an image committed
/// "uncompressed" by the blob the store holds: no uncompressed copy is written at commit
/// (outputs make it when they need it), as a lazy layer is listed by its remote blob.
#[test]
fn an_image_lists_a_pulled_layers_own_blob_and_writes_no_copy() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = make_layer(&s, "f", b"pulled bytes", None);
    assert!(l.tar.is_none(), "a pulled layer");
    let img = s
        .put_image(
            &config_for(&[&l]),
            std::slice::from_ref(&l.chain_id),
            Compression::Uncompressed,
            &Default::default(),
        )
        .unwrap();
    let gz = l.blobs.gzip.clone().unwrap();
    assert_eq!(img.manifest_body.layers[0].digest, gz.digest);
    assert_eq!(
        img.manifest_body.layers[0].media_type,
        media::OCI_LAYER_GZIP
    );
    assert!(!s.has_blob(&l.diff_id), "no uncompressed copy at commit");
    assert_eq!(s.layer(&l.chain_id).unwrap().blobs.uncompressed, None);
    // An output that wants it still gets it, made then.
    let plain = s
        .layer_blob(&l.chain_id, Compression::Uncompressed)
        .unwrap();
    assert_eq!(plain.digest, l.diff_id);
}

#[test]
fn cache_records_round_trip_and_miss_when_layer_gone() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = make_layer(&s, "f", b"x", None);
    let rec = CacheRecord {
        chain: Some(l.chain_id.clone()),
        new_layer: true,
        config: config_for(&[&l]),
        history: History {
            created_by: Some("RUN touch f".into()),
            ..Default::default()
        },
        inputs: None,
    };
    let key = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(s.get_cache(&key), None);
    s.put_cache(&key, &rec).unwrap();
    assert_eq!(s.get_cache(&key), Some(rec.clone()));
    assert_eq!(
        s.get_cache(&"ab".repeat(32)),
        Some(rec.clone()),
        "prefix optional"
    );
    assert!(matches!(
        s.put_cache("../evil", &rec),
        Err(StoreError::InvalidCacheKey(_))
    ));
    assert_eq!(s.get_cache("../evil"), None);
    s.remove_layer(&l.chain_id).unwrap();
    assert_eq!(
        s.get_cache(&key),
        None,
        "a record without its layer is a miss"
    );
}

#[test]
fn tags_and_resolve() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = make_layer(&s, "f", b"x", None);
    let img = s
        .put_image(
            &config_for(&[&l]),
            std::slice::from_ref(&l.chain_id),
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap();
    assert_eq!(
        img.manifest_body.layers[0].digest,
        l.blobs.gzip.clone().unwrap().digest
    );
    let r: Reference = "myapp:1".parse().unwrap();
    s.tag(&r, &img.manifest).unwrap();
    s.tag(&"localhost:5000/other".parse().unwrap(), &img.manifest)
        .unwrap();

    let by_tag = s.resolve("myapp:1").unwrap().unwrap();
    assert_eq!(by_tag, img);
    assert_eq!(
        s.resolve("docker.io/library/myapp:1").unwrap(),
        Some(img.clone())
    );
    assert_eq!(
        s.resolve(&img.config_digest.to_string()).unwrap(),
        Some(img.clone())
    );
    assert_eq!(
        s.resolve(img.config_digest.short()).unwrap(),
        Some(img.clone())
    );
    assert_eq!(
        s.resolve(&img.manifest.digest.to_string()).unwrap(),
        Some(img.clone())
    );
    assert_eq!(s.resolve("myapp:2").unwrap(), None);
    assert_eq!(s.images().unwrap().len(), 2);

    // Retagging replaces; the index has one entry per name, with the full reference.
    s.tag(&r, &img.manifest).unwrap();
    let idx: crate::image::Index =
        serde_json::from_slice(&std::fs::read(s.root().join("index.json")).unwrap()).unwrap();
    let names: Vec<_> = idx
        .manifests
        .iter()
        .map(|d| d.annotations.as_ref().unwrap()[media::REF_NAME_ANNOTATION].clone())
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/myapp:1", "localhost:5000/other:latest"]
    );

    // rmi by id with two tags needs force; by tag removes just that tag.
    assert!(matches!(
        s.rmi(img.config_digest.short(), false),
        Err(StoreError::Ambiguous(_))
    ));
    assert_eq!(s.rmi("myapp:1", false).unwrap(), vec![r.clone()]);
    assert_eq!(s.resolve("myapp:1").unwrap(), None);
    assert!(!s.untag(&r).unwrap());
}

#[test]
fn put_image_checks_diff_ids() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let a = make_layer(&s, "a", b"a", None);
    let b = make_layer(&s, "b", b"b", None);
    let err = s
        .put_image(
            &config_for(&[&a]),
            std::slice::from_ref(&b.chain_id),
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ImageDiffIdMismatch { .. }),
        "{err}"
    );
    let err = s
        .put_image(
            &config_for(&[&a]),
            &[],
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LayerCountMismatch { .. }),
        "{err}"
    );
}

#[test]
fn prune_keeps_tagged_and_live_cache() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let base = make_layer(&s, "base", b"base", None);
    let top = make_layer(&s, "top", b"top", Some(&base.chain_id));
    let cached = make_layer(&s, "cached", b"cached", Some(&base.chain_id));
    let orphan = make_layer(&s, "orphan", b"orphan", None);
    let cfg = config_for(&[&base, &top]);
    let img = s
        .put_image(
            &cfg,
            &[base.chain_id.clone(), top.chain_id.clone()],
            Compression::Uncompressed,
            &Default::default(),
        )
        .unwrap();
    s.tag(&"app".parse().unwrap(), &img.manifest).unwrap();
    let rec = CacheRecord {
        chain: Some(cached.chain_id.clone()),
        new_layer: true,
        config: config_for(&[&base, &cached]),
        history: History::default(),
        inputs: None,
    };
    s.put_cache("k1", &rec).unwrap();
    let garbage = s.put_blob_bytes(b"garbage").unwrap();

    let stats = s.prune(&PruneOptions::default()).unwrap();
    assert_eq!(stats.layers, 1, "{stats:?}");
    assert_eq!(stats.cache_records, 0);
    assert!(s.layer(&orphan.chain_id).is_none());
    assert!(!s.has_blob(&orphan.blobs.gzip.unwrap().digest));
    assert!(!s.has_blob(&garbage));
    assert!(s.layer(&cached.chain_id).is_some());
    assert!(s.get_cache("k1").is_some());
    assert_eq!(s.resolve("app").unwrap(), Some(img.clone()));

    let stats = s.prune(&all()).unwrap();
    assert_eq!((stats.cache_records, stats.layers), (1, 1), "{stats:?}");
    assert!(s.get_cache("k1").is_none());
    assert!(s.layer(&base.chain_id).is_some() && s.layer(&top.chain_id).is_some());
    // The tagged image still resolves, and its blobs are all there.
    let img2 = s.resolve("app").unwrap().unwrap();
    for l in &img2.manifest_body.layers {
        assert!(s.has_blob(&l.digest));
    }
    assert!(s.has_blob(&img2.config_digest));

    // Untagged, everything goes.
    s.rmi("app", false).unwrap();
    let stats = s.prune(&all()).unwrap();
    assert_eq!(stats.layers, 2);
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 0);
}

fn all() -> PruneOptions {
    PruneOptions {
        all: true,
        ..Default::default()
    }
}

/// A record for a one-file layer of its own on `parent`.
fn record_on(s: &Store, key: &str, content: &[u8], parent: &LayerRecord) -> LayerRecord {
    let layer = make_layer(s, key, content, Some(&parent.chain_id));
    let rec = CacheRecord {
        chain: Some(layer.chain_id.clone()),
        new_layer: true,
        config: config_for(&[parent, &layer]),
        history: History::default(),
        inputs: None,
    };
    s.put_cache(key, &rec).unwrap();
    layer
}

/// What `rbuild du` counts, images aside (they are the layers counted again).
fn stored_bytes(s: &Store) -> u64 {
    let usage = s.disk_usage().unwrap();
    usage
        .iter()
        .filter(|u| u.kind != "Images" && u.kind != RECLAIMABLE)
        .map(|u| u.bytes)
        .sum()
}

#[test]
fn keep_storage_prunes_the_least_recently_used_records_first() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let base = make_layer(&s, "base", b"base", None);
    let cfg = config_for(&[&base]);
    let img = s
        .put_image(
            &cfg,
            std::slice::from_ref(&base.chain_id),
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap();
    s.tag(&"app".parse().unwrap(), &img.manifest).unwrap();
    let big = vec![7u8; 64 << 10];
    let layers: Vec<LayerRecord> = ["ka", "kb", "kc"]
        .iter()
        .map(|k| record_on(&s, k, &[k.as_bytes(), &big].concat(), &base))
        .collect();
    // Used in the order b, a, c, one build each (a noted use is what counts, not the
    // order the records were made in).
    for key in ["kb", "ka", "kc"] {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(s.get_cache(key).is_some());
        s.save_use().unwrap();
    }
    s.prune(&PruneOptions::default()).unwrap();
    let full = stored_bytes(&s);

    // Just under the total: the least recently used record (b) and its layer go.
    let opts = PruneOptions {
        keep_storage: Some(full - 1),
        ..Default::default()
    };
    let stats = s.prune(&opts).unwrap();
    assert_eq!((stats.cache_records, stats.layers), (1, 1), "{stats:?}");
    assert!(s.cache_record("kb").is_none() && s.layer(&layers[1].chain_id).is_none());
    assert!(s.get_cache("ka").is_some() && s.get_cache("kc").is_some());
    assert!(stored_bytes(&s) < full);
    s.save_use().unwrap();

    // An until filter spares what was used since; a size that nothing but the tag fits
    // takes every other record, and the tagged image stays whole.
    let recent = PruneOptions {
        keep_storage: Some(0),
        until: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    assert_eq!(s.prune(&recent).unwrap().cache_records, 0);
    let before = stored_bytes(&s);
    let reclaimable = s.disk_usage().unwrap().pop().unwrap();
    assert_eq!((reclaimable.kind, reclaimable.count), (RECLAIMABLE, 2));
    let stats = s
        .prune(&PruneOptions {
            keep_storage: Some(0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((stats.cache_records, stats.layers), (2, 2), "{stats:?}");
    // du foretold exactly what went, and prune says so.
    assert_eq!(stored_bytes(&s), before - reclaimable.bytes);
    assert_eq!(stats.bytes, reclaimable.bytes);
    let kept = s.resolve("app").unwrap().unwrap();
    assert!(s.layer(&base.chain_id).is_some());
    for l in &kept.manifest_body.layers {
        assert!(s.has_blob(&l.digest));
    }
    // The notes were folded into one index that names only the records left.
    let used: Vec<_> = std::fs::read_dir(s.root().join("used"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(used, ["index.json"]);
    let index = std::fs::read_to_string(s.root().join("used/index.json")).unwrap();
    assert_eq!(index, "{}");
}

#[test]
fn prune_refuses_while_a_build_holds_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let other = Store::open(t.path()).unwrap();
    let build = other.lock_shared().unwrap();
    assert!(matches!(
        s.prune(&PruneOptions::default()),
        Err(StoreError::Busy(_))
    ));
    drop(build);
    s.prune(&PruneOptions::default()).unwrap();
}

#[test]
fn open_sweeps_dead_scratch_but_not_live_sessions() {
    let t = tempfile::tempdir().unwrap();
    let live = Store::open(t.path()).unwrap();
    let live_scratch = live.tmp_dir().unwrap();
    std::fs::write(live_scratch.path().join("partial"), b"x").unwrap();

    // What a crashed process leaves: a session dir whose lock nobody holds, a stray
    // half-written blob and a dir without a lock.
    let tmp = t.path().join("tmp");
    std::fs::create_dir(tmp.join("s999-dead")).unwrap();
    std::fs::write(tmp.join("s999-dead/.lock"), b"").unwrap();
    std::fs::write(tmp.join("s999-dead/blob123"), b"half").unwrap();
    std::fs::write(tmp.join("stray"), b"half").unwrap();
    std::fs::create_dir(tmp.join("nolock")).unwrap();

    let s = Store::open(t.path()).unwrap();
    assert!(!tmp.join("s999-dead").exists());
    assert!(!tmp.join("stray").exists());
    assert!(!tmp.join("nolock").exists());
    assert!(
        live_scratch.path().join("partial").exists(),
        "live session kept"
    );
    // The partial blob never shows up as a record.
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 0);
    assert!(s.layer_ids().unwrap().is_empty());
    drop(live_scratch);
    drop(live);
    drop(s);
    assert_eq!(
        count_entries(&tmp),
        2,
        "only tmp/.lock and the empty tmp/.trash after every store closed"
    );
    assert_eq!(
        count_entries(&tmp.join(".trash")),
        0,
        "the dead scratch is gone"
    );
}

#[test]
fn resolve_by_digest_reference_finds_an_untagged_manifest() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = make_layer(&s, "f", b"x", None);
    let img = s
        .put_image(
            &config_for(&[&l]),
            std::slice::from_ref(&l.chain_id),
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap();
    let by_digest = format!("busybox@{}", img.manifest.digest);
    assert_eq!(s.resolve(&by_digest).unwrap(), Some(img));
    assert_eq!(
        s.resolve(&format!("busybox@{}", Digest::of(b"other")))
            .unwrap(),
        None
    );
}

#[test]
fn blobs_are_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let d = s.put_blob_bytes(b"content").unwrap();
    let mode = std::fs::metadata(s.blob_path(&d))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

/// A layer as a build commits it: a directory, hashed, with no blob.
fn built_layer(s: &Store, files: &[(&str, &[u8])]) -> LayerRecord {
    let dir = s.tmp_dir().unwrap().keep();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let opts = crate::layer::SnapshotOptions::default();
    let snap = crate::layer::snapshot_digest(&dir, &opts).unwrap();
    let tar = DiffTar {
        size: snap.size,
        source_date_epoch: None,
    };
    s.commit_built_layer(dir, None, snap.diff_id, tar, snap.content, true)
        .unwrap()
}

fn read_layer(s: &Store, chain: &Digest, c: Compression) -> Result<(Descriptor, Vec<u8>)> {
    let (desc, bytes) = s.layer_bytes(chain, c, None)?;
    let mut reader = bytes.open()?;
    let mut out = Vec::new();
    reader
        .copy_to(&mut out, u64::MAX)
        .map_err(StoreError::io("copying", "layer"))?;
    reader.finish()?;
    Ok((desc, out))
}

/// The size a built layer records is counted by its snapshot's walk: it must be what a
/// walk of its diff dir counts (regular files' bytes, a file with several links once).
#[test]
#[ignore = "needs root"]
fn a_built_layer_records_the_size_a_walk_of_its_diff_counts() {
    crate::layer::testutil::needs_root();
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let dir = s.tmp_dir().unwrap().keep();
    crate::layer::testutil::rich_tree(&dir);
    std::fs::write(dir.join("big"), vec![3u8; 200_000]).unwrap();
    std::fs::write(dir.join("opaque/empty"), b"").unwrap();
    std::fs::hard_link(dir.join("big"), dir.join("opaque/big-again")).unwrap();
    let want = content_size(&dir).unwrap();
    assert!(want > 200_000, "{want}");

    let snap = crate::layer::snapshot_digest(&dir, &Default::default()).unwrap();
    assert_eq!(snap.content, want);
    let tar = DiffTar {
        size: snap.size,
        source_date_epoch: None,
    };
    let l = s
        .commit_built_layer(dir, None, snap.diff_id, tar, snap.content, true)
        .unwrap();
    assert_eq!(l.size, want);
    assert_eq!(s.layer(&l.chain_id).unwrap().size, want);
}

#[test]
fn a_built_layer_keeps_no_blob_and_makes_its_tar_again() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = built_layer(&s, &[("a", b"alpha"), ("b", &[7u8; 300_000])]);
    assert_eq!(l.blobs, LayerBlobs::default());
    assert_eq!(count_entries(&t.path().join("blobs/sha256")), 0);
    let tar = l.tar.clone().unwrap();

    let (desc, bytes) = read_layer(&s, &l.chain_id, Compression::Uncompressed).unwrap();
    assert_eq!(
        (desc.digest.clone(), desc.size),
        (l.diff_id.clone(), tar.size)
    );
    assert_eq!(Digest::of(&bytes), l.diff_id);
    assert_eq!(bytes.len() as u64, tar.size);
    assert_eq!(desc.media_type, media::OCI_LAYER);
    assert_eq!(
        count_entries(&t.path().join("blobs/sha256")),
        0,
        "still none"
    );

    // A compressed blob is made from the diff dir, stored and recorded.
    let (gz, gz_bytes) = read_layer(&s, &l.chain_id, Compression::Gzip).unwrap();
    assert_eq!(Digest::of(&gz_bytes), gz.digest);
    let mut back = Vec::new();
    crate::layer::compress::decompressor(&gz_bytes[..])
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, bytes);
    assert_eq!(
        s.layer(&l.chain_id).unwrap().blobs.gzip.unwrap().digest,
        gz.digest
    );
}

#[test]
fn a_changed_diff_dir_fails_the_copy_and_stores_nothing() {
    let t = tempfile::tempdir().unwrap();
    let l = built_layer(&Store::open(t.path()).unwrap(), &[("a", b"alpha")]);
    // Another process (store) than the one that built it: every copy is verified.
    let s = Store::open(t.path()).unwrap();
    // Same size, other bytes: only the digest can tell.
    std::fs::write(l.diff.join("a"), b"omega").unwrap();
    for c in [Compression::Uncompressed, Compression::Gzip] {
        let err = read_layer(&s, &l.chain_id, c).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                StoreError::Layer(crate::layer::LayerError::DiffChanged { .. })
            ),
            "{c:?}: {msg}"
        );
        assert!(msg.contains(&l.diff_id.to_string()), "{msg}");
        assert!(msg.contains(&l.diff.display().to_string()), "{msg}");
    }
    assert_eq!(count_entries(&t.path().join("blobs/sha256")), 0);
    assert_eq!(s.layer(&l.chain_id).unwrap().blobs, LayerBlobs::default());
    // A file that grew: the size tells.
    std::fs::write(l.diff.join("a"), b"alpha and more").unwrap();
    assert!(read_layer(&s, &l.chain_id, Compression::Uncompressed).is_err());
}

#[test]
fn the_process_that_built_a_layer_copies_it_without_hashing_again() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = built_layer(&s, &[("a", b"alpha")]);
    let (_, bytes) = read_layer(&s, &l.chain_id, Compression::Uncompressed).unwrap();
    assert_eq!(Digest::of(&bytes), l.diff_id);
    // Only the tar's size is checked: a change within the same 512-byte blocks passes
    // here, and is caught by any other process (the test above); a file that grew by a
    // block is caught here too.
    std::fs::write(l.diff.join("a"), b"omega").unwrap();
    let (_, bytes) = read_layer(&s, &l.chain_id, Compression::Uncompressed).unwrap();
    assert_ne!(Digest::of(&bytes), l.diff_id);
    std::fs::write(l.diff.join("a"), [b'x'; 600]).unwrap();
    let err = read_layer(&s, &l.chain_id, Compression::Uncompressed).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Layer(crate::layer::LayerError::DiffResized { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_layer_built_again_is_copied_from_the_new_copy_which_then_goes_to_the_trash() {
    let t = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[("a", b"alpha"), ("b", &[7u8; 300_000])];
    let l = built_layer(&Store::open(t.path()).unwrap(), files);
    let trash = t.path().join("tmp/.trash");
    assert_eq!(count_entries(&trash), 0);
    // Another process, whose outputs would hash the stored copy to check it; that copy is
    // damaged (same size, other bytes).
    let s = Store::open(t.path()).unwrap();
    std::fs::write(l.diff.join("a"), b"omega").unwrap();
    // It builds the same layer again (a `--no-cache` rebuild): the store keeps its record.
    let again = built_layer(&s, files);
    assert_eq!((&again.chain_id, &again.diff), (&l.chain_id, &l.diff));
    // Its outputs copy the copy it just made and hashed, not the stored one.
    let (desc, bytes) = read_layer(&s, &l.chain_id, Compression::Uncompressed).unwrap();
    assert_eq!(
        (Digest::of(&bytes), bytes.len() as u64),
        (l.diff_id.clone(), desc.size)
    );
    // An output holds it while the build makes another layer again: it stays until read.
    let (_, held) = s
        .layer_bytes(&l.chain_id, Compression::Uncompressed, None)
        .unwrap();
    let other: &[(&str, &[u8])] = &[("c", b"gamma")];
    built_layer(&s, other);
    built_layer(&s, other);
    let mut reader = held.open().unwrap();
    let mut out = Vec::new();
    reader.copy_to(&mut out, u64::MAX).unwrap();
    reader.finish().unwrap();
    assert_eq!(Digest::of(&out), l.diff_id);
    assert_eq!(count_entries(&trash), 0, "held by the output");
    drop(held);
    assert_eq!(count_entries(&trash), 1, "the first copy, once read");
    // The stored copy is what other layers' questions see: damaged, and caught.
    assert!(matches!(
        read_layer(
            &Store::open(t.path()).unwrap(),
            &l.chain_id,
            Compression::Uncompressed
        ),
        Err(StoreError::Layer(
            crate::layer::LayerError::DiffChanged { .. }
        ))
    ));
    // Closing the store puts the last copy in the trash too, sized like any discarded tree.
    drop(s);
    let names: Vec<String> = std::fs::read_dir(&trash)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        let bytes = super::trash::entry_bytes(name);
        assert!(bytes.is_some_and(|b| b > 0), "sized: {name}");
    }
}

/// Regression (issue 15): cache mounts and the stat cache lived at paths exec built itself,
/// and prune never removed them. Plain prune keeps them (BuildKit keeps cache mounts
/// unless told to remove everything); `--all` removes both.
#[test]
fn prune_all_removes_cache_mounts_and_the_stat_cache() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let mount = s.cache_mount_dir("m").unwrap();
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join("f"), b"cached").unwrap();
    let lock = s.lock_cache_mount("m").unwrap();
    assert!(s.try_lock_cache_mount("m").unwrap().is_none(), "held");
    drop(lock);
    std::fs::write(s.stat_cache_path(), b"{}").unwrap();
    // The directory listings it keeps beside it.
    let listings = t.path().join("statcache.dirs");
    std::fs::write(&listings, b"dirs").unwrap();

    s.prune(&PruneOptions::default()).unwrap();
    assert!(mount.join("f").exists());
    assert!(s.stat_cache_path().exists() && listings.exists());

    let stats = s.prune(&all()).unwrap();
    assert!(!mount.exists());
    assert!(!s.stat_cache_path().exists() && !listings.exists());
    assert!(stats.bytes >= 12, "{stats:?}");
    // A later build creates them again.
    assert!(s.try_lock_cache_mount("m").unwrap().is_some());
}

#[test]
fn deep_stacks_mount_a_snapshot_that_is_reused_and_pruned() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let mut chains: Vec<Digest> = Vec::new();
    // Two snapshots' worth: one of 2 * STRIDE layers, made from the one of STRIDE.
    let n = STACK + STRIDE + 10;
    for i in 0..n {
        // As a build commits its layers (no blob to compress and sync).
        let dir = s.tmp_dir().unwrap().keep();
        std::fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
        let opts = crate::layer::SnapshotOptions::default();
        let snap = crate::layer::snapshot_digest(&dir, &opts).unwrap();
        let tar = DiffTar {
            size: snap.size,
            source_date_epoch: None,
        };
        let l = s
            .commit_built_layer(dir, chains.last(), snap.diff_id, tar, snap.content, true)
            .unwrap();
        chains.push(l.chain_id);
    }
    let diff = |i: usize| s.layer(&chains[i]).unwrap().diff;

    // Up to the stack's limit: the layers themselves, top-most first, and no snapshot.
    let lowers = s.lowers(&chains[..STACK]).unwrap();
    assert_eq!(lowers.len(), STACK);
    assert_eq!(lowers[0], diff(STACK - 1));
    assert!(s.flat_ids().unwrap().is_empty());

    // One more: the oldest STRIDE become one snapshot below the others. Two builds that
    // need it at once both get it; one copy is kept.
    let s2 = Store::open(t.path()).unwrap();
    let (lowers, lowers2) = std::thread::scope(|sc| {
        let other = sc.spawn(|| s2.lowers(&chains[..STACK + 1]).unwrap());
        let mine = s.lowers(&chains[..STACK + 1]).unwrap();
        (mine, other.join().unwrap())
    });
    assert_eq!(lowers, lowers2);
    assert_eq!(s.flat_ids().unwrap().len(), 1);
    assert_eq!(lowers.len(), STACK + 1 - STRIDE + 1);
    assert_eq!(lowers[0], diff(STACK));
    assert_eq!(lowers[lowers.len() - 2], diff(STRIDE));
    let flat = lowers.last().unwrap().clone();
    assert_eq!(Some(flat.clone()), s.flat(&chains[STRIDE - 1]));
    assert_eq!(count_entries(&flat), STRIDE);
    for i in [0, STRIDE - 1] {
        let f = format!("f{i}");
        assert_eq!(
            std::fs::read_to_string(flat.join(&f)).unwrap(),
            i.to_string()
        );
        // A hard link to the layer's file, not a copy.
        assert_eq!(
            std::fs::metadata(flat.join(&f)).unwrap().ino(),
            std::fs::metadata(diff(i).join(&f)).unwrap().ino()
        );
    }
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let first = ino(&flat);

    // n layers: a snapshot of 2 * STRIDE, made from the one of STRIDE, which is reused.
    let lowers = s.lowers(&chains).unwrap();
    assert_eq!(lowers.len(), n - 2 * STRIDE + 1);
    assert!(lowers.len() <= STACK);
    let flat2 = lowers.last().unwrap();
    assert_eq!(count_entries(flat2), 2 * STRIDE);
    assert_eq!(s.flat_ids().unwrap().len(), 2);
    assert_eq!(ino(&flat), first, "the first snapshot was made again");
    let again = s.lowers(&chains).unwrap();
    assert_eq!(ino(again.last().unwrap()), ino(flat2));

    // A layer gone from the store is an error naming it, not a panic.
    let mut broken = chains.clone();
    broken[STACK + 2] = Digest::of(b"not a layer");
    assert!(matches!(
        s.lowers(&broken),
        Err(StoreError::LayerMissing { chain }) if chain == broken[STACK + 2]
    ));

    // Nothing keeps the layers: prune removes them and both snapshots.
    let stats = s.prune(&PruneOptions::default()).unwrap();
    assert_eq!(stats.flats, 2);
    assert_eq!(stats.layers, n);
    assert!(s.flat_ids().unwrap().is_empty());
    assert_eq!(count_entries(&t.path().join("flat")), 0);
}

#[test]
fn layer_stats_are_made_on_first_use_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let l = built_layer(&s, &[("a", b"12345"), ("b", b"xy")]);
    // Nothing per entry is kept at commit (memory flat in a layer's entries): the first
    // use lists the layer and saves its statistics.
    assert_eq!(l.stats, None);
    assert_eq!(l.size, 7);
    let listed = |s: &Store| {
        let (stats, listing) = s.layer_files(&l.chain_id).unwrap().unwrap();
        (stats, listing.collect::<Result<Vec<_>, _>>().unwrap())
    };
    let (stats, files) = listed(&s);
    assert_eq!((stats.files, stats.bytes), (2, 7));
    assert_eq!(s.layer(&l.chain_id).unwrap().stats, Some(stats.clone()));
    let paths: Vec<&[u8]> = files.iter().map(|e| &e.path[..]).collect();
    assert_eq!(paths, [b"a".as_slice(), b"b"]);

    // A meta.json from before stats were kept, and no listing: counted once, then saved.
    let dir = t.path().join("layers").join(l.chain_id.hex());
    let meta_path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("stats");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    std::fs::remove_file(dir.join("files")).unwrap();
    assert_eq!(s.layer(&l.chain_id).unwrap().stats, None);
    assert_eq!(listed(&s), (stats.clone(), files.clone()));
    assert_eq!(s.layer(&l.chain_id).unwrap().stats, Some(stats));
    assert!(dir.join("files").exists());

    // A torn listing is made again rather than trusted.
    std::fs::write(dir.join("files"), b"RBFILES1\x05").unwrap();
    assert_eq!(listed(&s).1, files);
    assert!(s.layer_files(&Digest::of(b"none")).unwrap().is_none());
}

/// Lazy import (store/remote.rs): a remote layer on a present one is known but not a layer
/// (never a lower); a cache record on it is a hit; a chain with a link neither present nor
/// remote is unknown; a refused blob is remembered and its record gone.
#[test]
fn remote_layers_are_known_not_present_and_refusal_is_remembered() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let base = make_layer(&s, "f", b"x", None);
    let diff_id = Digest::of(b"remote diff");
    let chain = chain_id(Some(&base.chain_id), &diff_id);
    let blob = Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(b"remote blob"), 11);
    let remote = RemoteLayer {
        chain_id: chain.clone(),
        diff_id: diff_id.clone(),
        parent: Some(base.chain_id.clone()),
        blob: blob.clone(),
        source: BlobSource::Registry("localhost:5000/cache".into()),
    };
    assert!(!s.layer_known(&chain));
    s.put_remote_layer(&remote).unwrap();
    assert!(s.layer(&chain).is_none());
    assert!(s.layer_known(&chain));
    assert_eq!(s.missing_below(&chain), Some(vec![remote.clone()]));
    let rec = CacheRecord {
        chain: Some(chain.clone()),
        new_layer: true,
        config: ImageConfig::default(),
        history: History::default(),
        inputs: None,
    };
    s.put_cache("k", &rec).unwrap();
    assert_eq!(s.get_cache("k"), Some(rec));
    // Above an unknown layer: unknown, whatever its own record says.
    let orphan = RemoteLayer {
        chain_id: Digest::of(b"orphan chain"),
        parent: Some(Digest::of(b"nowhere")),
        ..remote.clone()
    };
    s.put_remote_layer(&orphan).unwrap();
    assert!(!s.layer_known(&orphan.chain_id));
    assert_eq!(s.missing_below(&orphan.chain_id), None);

    s.refuse_remote_layer(&chain, &blob.digest).unwrap();
    assert!(s.blob_refused(&blob.digest));
    assert!(!s.layer_known(&chain));
    assert_eq!(s.get_cache("k"), None);
}

/// Remote layers on a long-lived store: `du` lists their records ("Remote layers"); prune
/// keeps those a cache record (or a tag) still needs, with the present layer below them,
/// and drops the others; a refused blob stays refused for [`REFUSAL_KEPT`], or until a
/// prune.
#[test]
fn remote_records_are_listed_pruned_when_unused_and_refusals_expire() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let base = make_layer(&s, "f", b"x", None);
    let remote_on = |name: &[u8], parent: Option<&Digest>| {
        let diff_id = Digest::of(name);
        let r = RemoteLayer {
            chain_id: chain_id(parent, &diff_id),
            diff_id,
            parent: parent.cloned(),
            blob: Descriptor::new(
                media::OCI_LAYER_GZIP,
                Digest::of(&[name, b"blob"].concat()),
                9,
            ),
            source: BlobSource::Registry("localhost:5000/base:1".into()),
        };
        s.put_remote_layer(&r).unwrap();
        r
    };
    let used = remote_on(b"used", Some(&base.chain_id));
    let unused = remote_on(b"unused", None);
    let rec = CacheRecord {
        chain: Some(used.chain_id.clone()),
        new_layer: true,
        config: ImageConfig::default(),
        history: History::default(),
        inputs: None,
    };
    s.put_cache("k", &rec).unwrap();
    let remote_row = |s: &Store| {
        let usage = s.disk_usage().unwrap();
        let row = usage.iter().find(|u| u.kind == "Remote layers").unwrap();
        (row.count, row.bytes)
    };
    let (count, bytes) = remote_row(&s);
    assert_eq!(count, 2);
    assert!(bytes > 0 && bytes < 2048, "{bytes}");

    let refused = Digest::of(b"bad blob");
    s.refuse_remote_layer(&Digest::of(b"some chain"), &refused)
        .unwrap();
    assert!(s.blob_refused(&refused));
    let marker = t.path().join("remote/refused").join(refused.hex());
    let set_age = |age: std::time::Duration| {
        let f = std::fs::File::options().write(true).open(&marker).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
    };
    set_age(REFUSAL_KEPT + std::time::Duration::from_secs(60));
    assert!(!s.blob_refused(&refused), "an old refusal expires");
    set_age(std::time::Duration::from_secs(60));
    assert!(s.blob_refused(&refused));

    // No tag: the base layer stays for the record above it (its lower once fetched).
    s.prune(&PruneOptions::default()).unwrap();
    assert_eq!(remote_row(&s).0, 1);
    assert_eq!(s.remote_layer(&used.chain_id), Some(used.clone()));
    assert_eq!(s.remote_layer(&unused.chain_id), None);
    assert!(s.layer(&base.chain_id).is_some());
    assert!(s.layer_known(&used.chain_id));
    assert!(!s.blob_refused(&refused), "prune forgets refusals");
}

/// A multi-platform image: its tag names an index; prune keeps every image the index lists
/// whole (manifest, config, layers), and once the tag is gone takes them all.
#[test]
fn a_tagged_index_keeps_its_images_and_goes_with_its_tag() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let amd = make_layer(&s, "amd", b"amd64", None);
    let arm = make_layer(&s, "arm", b"arm64", None);
    let put = |layer: &LayerRecord, arch: &str| {
        let mut cfg = config_for(&[layer]);
        cfg.architecture = arch.into();
        s.put_image(
            &cfg,
            std::slice::from_ref(&layer.chain_id),
            Compression::Gzip,
            &Default::default(),
        )
        .unwrap()
    };
    let images = [put(&amd, "amd64"), put(&arm, "arm64")];
    let title = [(
        "org.opencontainers.image.title".to_string(),
        "t".to_string(),
    )];
    let annotations = crate::image::Annotations {
        index: title.clone().into(),
        manifest_descriptor: [("linux/arm64".to_string(), title.clone().into())].into(),
        ..Default::default()
    };
    let index = s.put_index(&images, &annotations).unwrap();
    assert_eq!(index.body.annotations, Some(title.clone().into()));
    assert_eq!(index.body.manifests[0].annotations, None);
    assert_eq!(index.annotations(), annotations, "read back as written");
    assert_eq!(
        index.body.manifests[1].platform.as_ref().unwrap().to_spec(),
        "linux/arm64"
    );
    s.tag(&"multi:1".parse().unwrap(), &index.index).unwrap();

    let found = s.lookup("multi:1").unwrap().unwrap();
    assert_eq!(found, Stored::Index(index.clone()));
    // By the index digest's prefix too; resolve gives the image that stands for it.
    assert_eq!(
        s.lookup(&index.index.digest.hex()[..12]).unwrap(),
        Some(found)
    );
    assert_eq!(
        s.resolve("multi:1").unwrap().as_ref(),
        Some(index.default_image())
    );
    assert_eq!(s.images().unwrap().len(), 2, "each image under its tag");

    let stats = s.prune(&all()).unwrap();
    assert_eq!(stats.layers, 0, "{stats:?}");
    for img in &images {
        assert!(s.has_blob(&img.manifest.digest) && s.has_blob(&img.config_digest));
        for l in &img.manifest_body.layers {
            assert!(s.has_blob(&l.digest));
        }
    }
    assert!(s.has_blob(&index.index.digest));

    // rmi by the index digest untags it; then prune takes the index and its images.
    let removed = s.rmi(&index.index.digest.to_string(), false).unwrap();
    assert_eq!(removed, vec!["multi:1".parse::<Reference>().unwrap()]);
    let stats = s.prune(&all()).unwrap();
    assert_eq!(stats.layers, 2, "{stats:?}");
    assert_eq!(count_entries(&s.root().join("blobs/sha256")), 0);
}
