//! Fetching and extracting the layers the store lacks: a lazy base's or a cache's remote
//! layers when something needs their files, a pulled image's at once. One path for all.
//!
//! A layer's extraction into a scratch dir of its own does not depend on its parent's files
//! (whiteouts are kept as overlay whiteouts); only its record does. So a small pool of
//! threads fetches and unpacks the layers at once (each as its blob downloads: the bytes go
//! to the store and to the extraction together), and then, after one `syncfs` that makes
//! their files durable (pushed to disk all along by [`Store::writeback`]), the layers are
//! recorded strictly bottom first: the store never holds a layer whose parent is missing,
//! and a kill at any moment leaves only scratch dirs, which the next session sweeps.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::cache::{self, CacheError};
use crate::image::{Descriptor, Digest};
use crate::layer::{self, compress};
use crate::store::{RemoteLayer, Store};

use super::{BuildError, Reporter, StepId};

/// At most this many layers are fetched and extracted at once, whatever the cores: a
/// download waits on the network as much as it works (docker pulls 3 at once).
const MAX_WORKERS: usize = 4;

/// Fetch and extract `missing` (bottom first: the parent of each is present or listed
/// before it), then record them bottom first. The batch holds its layers' claims from
/// before the first fetch to after the last record: stages of one build that need the
/// same layer at once (two stages on one base) do the work once, the second finding it
/// recorded. The first layer to fail stops the others (an
/// extraction at its next read); its error is the result, the layers below every failure
/// that were extracted are recorded anyway (the build that starts again needs them), the
/// rest go with their scratch dirs. A cache blob that fails its digest is refused and
/// forgotten ([`Store::refuse_remote_layer`]); a base image's is a registry error.
///
/// A refused cache blob stops nothing: the other layers of the batch are still fetched and
/// checked, so every tampered blob the batch holds is refused by this one call, and the
/// build that starts again (or the next build, after an output's refusal) runs every step
/// they answered. Stopping at the first one left the next tampered blob to fail the next
/// build, one build per blob, depending on which fetches had finished first.
pub(super) fn fetch_and_extract(
    store: &Store,
    registry: &crate::registry::Client,
    missing: &[RemoteLayer],
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<(), BuildError> {
    let workers = missing.len().min(MAX_WORKERS);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<BuildError>> = Mutex::new(None);
    let done: Mutex<Vec<Option<Done>>> = Mutex::new(missing.iter().map(|_| None).collect());
    // Taken in one global order (by name), whatever the batch's order, and nothing that
    // holds one waits for anything but claims after it: two batches that share layers
    // cannot deadlock (a step's key claim, held around this, is never waited for here).
    let mut names: Vec<String> = missing.iter().map(claim).collect();
    names.sort();
    names.dedup();
    let _claims: Vec<_> = names.iter().map(|n| store.claim_key(n)).collect();
    // The disk writes the unpacked files while the workers inflate the next ones; the
    // `syncfs` before the records then has little left (0.5-1.2 s in the `ci` job).
    let writeback = store.writeback();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= missing.len() || stop.load(Ordering::SeqCst) {
                    return;
                }
                match fetch_and_unpack(store, registry, &missing[i], &stop, reporter, id) {
                    Ok(d) => done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(d),
                    Err(e) => {
                        let refusal = super::remote_cache::refused(&e);
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        if !refusal {
                            stop.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            });
        }
    });
    drop(writeback);
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let ready: Vec<Done> = done.into_iter().map_while(|d| d).collect();
    let recorded = record_all(store, &missing[..ready.len()], ready, reporter);
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => recorded,
    }
}

/// A layer [`fetch_and_unpack`] finished.
enum Done {
    /// Another batch had recorded it.
    Present,
    Unpacked(Unpacked),
}

/// Record `ready` (the layers `layers` as unpacked, bottom first) after one `syncfs` of the
/// store's filesystem: a record never outlives its files on power loss, at the cost of one
/// flush for the batch (and a COPY's unmount later has that much less to write).
fn record_all(
    store: &Store,
    layers: &[RemoteLayer],
    ready: Vec<Done>,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    if ready.iter().any(|d| matches!(d, Done::Unpacked(_))) {
        store.sync_filesystem()?;
    }
    for (layer, done) in layers.iter().zip(ready) {
        if let Done::Unpacked(unpacked) = done {
            let name = layer.source.to_string();
            record(
                store,
                unpacked,
                &layer.blob,
                layer.parent.as_ref(),
                &name,
                reporter,
            )?;
        }
    }
    Ok(())
}

/// The claim held for a layer's fetch, extraction and record ([`fetch_and_extract`]).
fn claim(layer: &RemoteLayer) -> String {
    format!("materialize {}", layer.chain_id)
}

/// Bring `layer`'s blob into the store unless it or the layer is there, and unpack it
/// into a scratch dir.
fn fetch_and_unpack(
    store: &Store,
    registry: &crate::registry::Client,
    layer: &RemoteLayer,
    stop: &AtomicBool,
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<Done, BuildError> {
    if store.layer(&layer.chain_id).is_some() {
        return Ok(Done::Present);
    }
    if !store.has_blob(&layer.blob.digest) {
        return fetch_unpacking(store, registry, layer, stop, reporter, id).map(Done::Unpacked);
    }
    if stop.load(Ordering::SeqCst) {
        let path = store.blob_path(&layer.blob.digest);
        return Err(BuildError::io("extracting", &path)(stopped()));
    }
    reporter.status(id, &format!("extracting {}", layer.blob.digest));
    let unpacked = unpack(store, &layer.blob, &layer.diff_id, stop)?;
    Ok(Done::Unpacked(unpacked))
}

/// Bring `layer`'s blob into the store and unpack it while it downloads: this thread
/// fetches (the digest check, the store's copy), another inflates and writes the files
/// from the bytes as they arrive. The unpacked layer is only good once the whole blob
/// passed its digest, so it is returned only then, and the fetch's error comes first: a
/// cache blob whose bytes were changed is refused (the step is built again) even when the
/// bad bytes failed the extraction before the download ended.
fn fetch_unpacking(
    store: &Store,
    registry: &crate::registry::Client,
    layer: &RemoteLayer,
    stop: &AtomicBool,
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<Unpacked, BuildError> {
    reporter.status(
        id,
        &format!(
            "fetching {} ({}) from {}",
            layer.blob.digest,
            crate::output::human_size(layer.blob.size),
            layer.source
        ),
    );
    let (tx, rx) = std::sync::mpsc::sync_channel(FEED_CHUNKS);
    std::thread::scope(|scope| {
        let unpacking = scope.spawn(|| {
            reporter.status(id, &format!("extracting {}", layer.blob.digest));
            let path = store.blob_path(&layer.blob.digest);
            let feed = Feed {
                rx,
                chunk: Vec::new(),
                at: 0,
                left: layer.blob.size,
            };
            unpack_from(store, feed, &path, &layer.diff_id, stop)
        });
        let mut feeding = Feeding {
            tx: Some(tx),
            chunk: Vec::with_capacity(FEED_CHUNK),
            left: layer.blob.size,
            stop,
        };
        let fetched = fetch_blob(store, registry, layer, &mut feeding);
        // Ends the feed: an unpacking still waiting for bytes fails.
        drop(feeding);
        let unpacked = unpacking
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        fetched.and(unpacked)
    })
}

/// How many bytes go to the unpacking at once, and how many such chunks may wait for it.
const FEED_CHUNK: usize = 256 * 1024;
const FEED_CHUNKS: usize = 8;

/// The fetch's side of the feed: passes on the blob's `left` bytes, in chunks. Once the
/// unpacking has ended (done, or failed) the fetch goes on alone: the blob's digest decides
/// which error is reported. The batch's `stop` ends it.
struct Feeding<'a> {
    /// None once the unpacking is gone.
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    chunk: Vec<u8>,
    left: u64,
    stop: &'a AtomicBool,
}

impl std::io::Write for Feeding<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        // Bytes past the descriptor's size fail the fetch's size check; the unpacking
        // never sees them.
        let take = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.chunk.extend_from_slice(&buf[..take]);
        self.left -= take as u64;
        if self.chunk.len() >= FEED_CHUNK || (self.left == 0 && !self.chunk.is_empty()) {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(FEED_CHUNK));
            if self.tx.as_ref().is_some_and(|tx| tx.send(chunk).is_err()) {
                self.tx = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The unpacking's side of the feed: the blob's `left` bytes, then the end. Fails when the
/// fetch ends before (it failed; its error is the one reported).
struct Feed {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    left: u64,
}

impl std::io::Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.left == 0 {
                return Ok(0);
            }
            self.chunk = self
                .rx
                .recv()
                .map_err(|_| std::io::Error::other("the layer's download stopped"))?;
            self.at = 0;
            self.left = self.left.saturating_sub(self.chunk.len() as u64);
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Bring `layer`'s blob into the store, handing its bytes to `also` too. A cache blob that
/// fails its digest is refused for good ([`Store::refuse_remote_layer`]) and is the error.
fn fetch_blob(
    store: &Store,
    registry: &crate::registry::Client,
    layer: &RemoteLayer,
    also: &mut dyn std::io::Write,
) -> Result<(), BuildError> {
    cache::fetch_blob(registry, store, &layer.source, &layer.blob, also).map_err(|e| match e {
        CacheError::DigestMismatch { .. } => {
            match store.refuse_remote_layer(&layer.chain_id, &layer.blob.digest) {
                Ok(()) => e.into(),
                Err(refusing) => refusing.into(),
            }
        }
        // A base image's blob that fails its digest is a registry error like any other
        // (nothing can build it again); nothing was stored.
        CacheError::Registry(e) => BuildError::Registry(e),
        e => e.into(),
    })
}

/// A layer unpacked into a scratch dir, not recorded yet.
pub(super) struct Unpacked {
    /// Holds `diff`; removed when dropped (a layer not recorded leaves nothing).
    _scratch: tempfile::TempDir,
    diff: std::path::PathBuf,
    diff_id: Digest,
    tar_size: u64,
    stats: layer::ApplyStats,
}

/// Unpack the stored layer blob `desc` into a scratch dir of the store, checking its
/// diff_id on the way; `stop` set ends it at its next read.
pub(super) fn unpack(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    stop: &AtomicBool,
) -> Result<Unpacked, BuildError> {
    let path = store.blob_path(&desc.digest);
    let file = std::fs::File::open(&path).map_err(BuildError::io("opening", &path))?;
    unpack_from(store, file, &path, diff_id, stop)
}

/// [`unpack`] from `blob`, the bytes of the blob at `path` (named in errors).
fn unpack_from(
    store: &Store,
    blob: impl std::io::Read,
    path: &std::path::Path,
    diff_id: &Digest,
    stop: &AtomicBool,
) -> Result<Unpacked, BuildError> {
    let scratch = store.tmp_dir()?;
    let diff = scratch.path().join("diff");
    std::fs::create_dir(&diff).map_err(BuildError::io("creating", &diff))?;
    let plain = compress::decompressor(Stoppable { inner: blob, stop })
        .map_err(BuildError::io("reading", path))?;
    let mut verifying = layer::VerifyingReader::new(plain, diff_id.clone());
    let stats = layer::apply(&mut verifying, &diff)?;
    let tar_size = verifying.finish()?;
    Ok(Unpacked {
        _scratch: scratch,
        diff,
        diff_id: diff_id.clone(),
        tar_size,
        stats,
    })
}

/// Record `unpacked` (the layer of the blob `desc`) on `parent`, which is present. Device
/// nodes rootless rbuild cannot create were left out: a warning naming `image` says so.
pub(super) fn record(
    store: &Store,
    unpacked: Unpacked,
    desc: &Descriptor,
    parent: Option<&Digest>,
    image: &str,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let Unpacked {
        _scratch,
        diff,
        diff_id,
        tar_size,
        stats,
    } = unpacked;
    let record = store.commit_layer(diff, parent, diff_id, desc.clone())?;
    // For `rbuild history`; the layer is whole without it.
    let _ = store.record_tar_size(&record.chain_id, tar_size);
    if let Some(first) = &stats.first_skipped_device {
        reporter.warn(&format!(
            "{image} layer {}: left out {} device node(s) (first: /{}): rootless rbuild \
             cannot create devices, so RUN steps do not see them; the image keeps them",
            desc.digest,
            stats.skipped_devices,
            first.strip_prefix(".").unwrap_or(first).display()
        ));
    }
    Ok(())
}

/// Extract a stored layer blob into the store as the layer `diff_id` on `parent`, at once
/// (an OCI layout's import): [`unpack`] then [`record`].
pub fn extract_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    parent: Option<&Digest>,
    image: &str,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let unpacked = unpack(store, desc, diff_id, &AtomicBool::new(false))?;
    record(store, unpacked, desc, parent, image, reporter)
}

/// The error a reader gives once another layer failed.
fn stopped() -> std::io::Error {
    std::io::Error::other("stopped: another layer failed")
}

/// A reader that fails once `stop` is set.
struct Stoppable<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Stoppable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::exec::Silent;
    use crate::image::media;
    use crate::layer::compress::{Compression, Compressor};
    use crate::registry::{Client, RegistryOptions};
    use crate::store::{chain_id, BlobSource};

    /// Layers of one file each as an OCI layout's blobs in `dir` (`--cache-from
    /// type=local`), stacked: their remote records, bottom first.
    fn cached_layers(dir: &std::path::Path, names: &[&str]) -> Vec<RemoteLayer> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let mut parent: Option<Digest> = None;
        let mut out = Vec::new();
        for name in names {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_size(name.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, name.as_bytes()).unwrap();
            let tar = b.into_inner().unwrap();
            let diff_id = Digest::of(&tar);
            let mut gz = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
            gz.write_all(&tar).unwrap();
            let gz = gz.finish().unwrap();
            let digest = Digest::of(&gz);
            std::fs::write(blobs.join(digest.hex()), &gz).unwrap();
            let chain = chain_id(parent.as_ref(), &diff_id);
            out.push(RemoteLayer {
                chain_id: chain.clone(),
                diff_id,
                parent: parent.replace(chain),
                blob: Descriptor::new(media::OCI_LAYER_GZIP, digest, gz.len() as u64),
                source: BlobSource::Local(dir.to_path_buf()),
            });
        }
        out
    }

    /// One uncompressed layer blob in `dir`'s OCI layout holding `tar`: its remote record.
    fn plain_layer(dir: &std::path::Path, tar: &[u8]) -> RemoteLayer {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let digest = Digest::of(tar);
        std::fs::write(blobs.join(digest.hex()), tar).unwrap();
        RemoteLayer {
            chain_id: chain_id(None, &digest),
            diff_id: digest.clone(),
            parent: None,
            blob: Descriptor::new(media::OCI_LAYER, digest, tar.len() as u64),
            source: BlobSource::Local(dir.to_path_buf()),
        }
    }

    /// A tar of one file `name` of `size` zero bytes.
    fn tar_of(name: &str, size: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &vec![0u8; size][..]).unwrap();
        b.into_inner().unwrap()
    }

    /// What the store's scratch holds besides its lock.
    fn leftovers(store: &Store) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(store.session_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with(".lock"))
            .collect()
    }

    /// Whether any of `layers` was recorded when each extraction began.
    struct Watch<'a> {
        store: &'a Store,
        layers: &'a [RemoteLayer],
        seen: Mutex<Vec<bool>>,
    }

    impl Reporter for Watch<'_> {
        fn started(&self, _: StepId, _: &str) {}
        fn cached(&self, _: StepId) {}
        fn output(&self, _: StepId, _: &[u8]) {}
        fn status(&self, _: StepId, text: &str) {
            if text.starts_with("extracting") {
                let any = (self.layers.iter()).any(|l| self.store.layer(&l.chain_id).is_some());
                self.seen.lock().unwrap().push(any);
            }
        }
        fn done(&self, _: StepId, _: std::time::Duration) {}
        fn failed(&self, _: StepId, _: std::time::Duration, _: &str) {}
        fn warn(&self, _: &str) {}
    }

    /// The layers a step needs are one batch: all extracted, then synced, then recorded
    /// bottom first, each on its parent.
    #[test]
    fn layers_extracted_at_once_are_recorded_on_their_parents() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let names = ["a", "b", "c", "d", "e", "f"];
        let layers = cached_layers(&t.path().join("cache"), &names);
        let client = Client::new(RegistryOptions::default()).unwrap();
        let watch = Watch {
            store: &store,
            layers: &layers,
            seen: Mutex::new(Vec::new()),
        };
        fetch_and_extract(&store, &client, &layers, &watch, 1).unwrap();
        assert_eq!(*watch.seen.lock().unwrap(), vec![false; names.len()]);
        for (layer, name) in layers.iter().zip(names) {
            let record = store.layer(&layer.chain_id).unwrap();
            assert_eq!(record.parent, layer.parent);
            let file = store.present_layer(&layer.chain_id).unwrap().join(name);
            assert_eq!(std::fs::read(file).unwrap(), name.as_bytes());
        }
        assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
        // Present layers are not done again.
        fetch_and_extract(&store, &client, &layers, &Silent, 1).unwrap();
    }

    /// Two stages that need the same layers at once: both batches finish (their claims
    /// cannot deadlock), the layers are there once.
    #[test]
    fn two_batches_of_the_same_layers_at_once_both_finish() {
        for _ in 0..10 {
            let t = tempfile::tempdir().unwrap();
            let store = Store::open(&t.path().join("store")).unwrap();
            let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
            let layers = cached_layers(&t.path().join("cache"), &names);
            let client = Client::new(RegistryOptions::default()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let tx = tx.clone();
                    let (store, client, layers) = (&store, &client, &layers);
                    scope.spawn(move || {
                        let done = fetch_and_extract(store, client, layers, &Silent, 1);
                        tx.send(done.is_ok()).unwrap();
                    });
                }
                for _ in 0..2 {
                    let ok = rx.recv_timeout(std::time::Duration::from_secs(60));
                    assert_eq!(ok, Ok(true), "a batch failed or hung");
                }
            });
            assert!(store.present_layer(&layers[7].chain_id).is_some());
            assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
        }
    }

    /// A cache blob changed at its start fails the extraction at once, megabytes before its
    /// download ends: the download still decides, so the blob is refused (the step is built
    /// again) rather than the build failing on a broken archive.
    #[test]
    fn a_blob_bad_from_its_first_bytes_is_refused_not_an_extraction_error() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let cache = t.path().join("cache");
        let layer = plain_layer(&cache, &tar_of("big", 32 << 20));
        let path = cache.join("blobs/sha256").join(layer.blob.digest.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x20; // the first header's name: its checksum fails
        std::fs::write(&path, bytes).unwrap();
        let client = Client::new(RegistryOptions::default()).unwrap();
        let err = fetch_and_extract(&store, &client, std::slice::from_ref(&layer), &Silent, 1)
            .unwrap_err();
        assert!(super::super::remote_cache::refused(&err), "{err}");
        assert!(store.blob_refused(&layer.blob.digest));
        assert!(store.layer(&layer.chain_id).is_none());
        assert!(!store.has_blob(&layer.blob.digest));
        assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
    }

    /// A blob that is what the cache says but whose archive is hostile: the extraction's
    /// error, nothing recorded, nothing written outside the scratch dir.
    #[test]
    fn a_hostile_archive_with_a_good_digest_is_the_extraction_error() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let mut tar = tar_of("big", 4 << 20);
        // A second entry that climbs out: apply refuses `..`.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../../escaped");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        tar.truncate(tar.len() - 1024); // the end-of-archive blocks
        tar.extend(b.into_inner().unwrap());
        let layer = plain_layer(&t.path().join("cache"), &tar);
        let client = Client::new(RegistryOptions::default()).unwrap();
        let err = fetch_and_extract(&store, &client, std::slice::from_ref(&layer), &Silent, 1)
            .unwrap_err();
        assert!(!super::super::remote_cache::refused(&err), "{err}");
        assert!(err.to_string().contains("escaped"), "{err}");
        assert!(store.layer(&layer.chain_id).is_none());
        assert!(!store.blob_refused(&layer.blob.digest));
        assert!(!t.path().join("escaped").exists());
        assert!(!t.path().join("store/escaped").exists());
        assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
    }

    /// A streamed layer larger than the feed holds lands whole: its files, its size.
    #[test]
    fn a_layer_larger_than_the_feed_lands_whole() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let size = FEED_CHUNK * (FEED_CHUNKS + 3) + 12345;
        let layer = plain_layer(&t.path().join("cache"), &tar_of("big", size));
        let client = Client::new(RegistryOptions::default()).unwrap();
        fetch_and_extract(&store, &client, std::slice::from_ref(&layer), &Silent, 1).unwrap();
        let file = store.present_layer(&layer.chain_id).unwrap().join("big");
        assert_eq!(std::fs::metadata(file).unwrap().len(), size as u64);
        assert!(store.has_blob(&layer.blob.digest));
        assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
    }

    #[test]
    fn a_refused_blob_is_the_error_and_nothing_above_it_is_recorded() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let cache = t.path().join("cache");
        let layers = cached_layers(&cache, &["a", "b", "c", "d"]);
        let bad = &layers[1];
        let path = cache.join("blobs/sha256").join(bad.blob.digest.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let client = Client::new(RegistryOptions::default()).unwrap();
        let err = fetch_and_extract(&store, &client, &layers, &Silent, 1).unwrap_err();
        assert!(super::super::remote_cache::refused(&err), "{err}");
        assert!(store.blob_refused(&bad.blob.digest));
        for layer in &layers[1..] {
            assert!(store.layer(&layer.chain_id).is_none());
        }
        // Whatever was recorded stands on its parent; the rest left nothing behind.
        assert_eq!(leftovers(&store), Vec::<std::path::PathBuf>::new());
    }
}
