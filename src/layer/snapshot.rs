//! Snapshot: an overlay upperdir -> an OCI tar layer, streamed.
//!
//! The walk lists one directory at a time, sorted byte-wise (memory grows with the widest
//! directory, never with the tree or file sizes), and looks each entry up on its own
//! thread while another encodes the tar. Headers are encoded by [`crate::layer::tar`]
//! (ustar + PAX), so the bytes depend only on the tree: same input, same digest.
//! See design.md "Layers" and the OCI image spec, "Representing Changes".

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::fs::{Mode, OFlags};

use crate::context::meta::Meta;
use crate::image::{Digest, Sha256Writer, SourceDateEpoch};
use crate::layer::compress::{Compression, Compressor};
use crate::layer::order::SortedNames;
use crate::layer::tar::{encode_header, padding, read_xattrs, Entry, Xattrs, END_OF_ARCHIVE};
use crate::layer::{opaque_xattr, LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX};

/// How to snapshot an upperdir.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH, reproducible builds).
    pub source_date_epoch: Option<SourceDateEpoch>,
    /// Relative paths to leave out, with everything below them (the sandbox's mount stubs).
    pub skip: Vec<PathBuf>,
}

/// The digests of a layer blob written by [`snapshot_blob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the blob as written (compressed).
    pub digest: Digest,
    /// Size of the blob as written.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// The OCI layer media type for the codec used.
    pub media_type: String,
}

/// One path of the upperdir, as it will appear in the tar.
struct Item<'d> {
    /// The tar name without a trailing slash; the sort key.
    tar_path: Vec<u8>,
    /// The path relative to the upperdir.
    rel: PathBuf,
    /// The directory the walk holds open where the entry is, for looking it up by its name
    /// alone: its whole path walked again for every entry was a fifth of a snapshot of
    /// 100,000 files (issue 23). `None` below [`HELD_DEPTH`] levels: the full path then.
    dir: Option<&'d Arc<OwnedFd>>,
    /// An overlay whiteout (char device 0/0): written as an empty `.wh.NAME` file.
    whiteout: bool,
}

impl Item<'_> {
    /// Where to look the entry up: its name in [`Item::dir`], or `path`, its full path.
    fn at<'p>(&'p self, path: &'p Path) -> (BorrowedFd<'p>, &'p Path) {
        match self.dir {
            Some(dir) => (
                dir.as_fd(),
                Path::new(self.rel.file_name().unwrap_or_default()),
            ),
            None => (rustix::fs::CWD, path),
        }
    }
}

/// The walk holds at most this many directories open, the top ones: a tree a step made
/// deeper than the process may open files would otherwise fail its snapshot.
const HELD_DEPTH: usize = 128;

/// Write the layer tar of `upper` to `out`. Returns the diff_id (sha256 of the tar), its
/// size, and `out` back.
pub fn snapshot<W: Write>(
    upper: &Path,
    opts: &SnapshotOptions,
    mut out: W,
) -> Result<(Digest, u64, W), LayerError> {
    let mut hasher = Sha256Writer::new(io::sink());
    let size = write_tar(upper, opts, &mut |chunk| {
        hasher.write_all(&chunk)?;
        out.write_all(&chunk)
    })?
    .size;
    out.flush().map_err(LayerError::Write)?;
    let (diff_id, _, _) = hasher.finish();
    Ok((diff_id, size, out))
}

/// What [`snapshot_digest`] measured of an upperdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarDigest {
    /// sha256 of the layer tar: its diff_id.
    pub diff_id: Digest,
    /// Bytes of the tar.
    pub size: u64,
    /// Bytes of the tree's regular files, a file with several links once: the layer's size
    /// in the store, counted by the walk that made the tar instead of by another walk.
    pub content: u64,
}

/// The diff_id and sizes of the layer tar of `upper`, without keeping the tar: reading the
/// files and hashing run on two threads.
pub fn snapshot_digest(upper: &Path, opts: &SnapshotOptions) -> Result<TarDigest, LayerError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let producer = scope.spawn(move || {
            write_tar(upper, opts, &mut |chunk| {
                tx.send(chunk).map_err(|_| closed())
            })
        });
        let mut hasher = Sha256Writer::new(io::sink());
        for chunk in rx.iter() {
            // A sink cannot fail.
            let _ = hasher.write_all(&chunk);
        }
        let written = match producer.join() {
            Ok(result) => result?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (diff_id, hashed, _) = hasher.finish();
        debug_assert_eq!(hashed, written.size);
        Ok(TarDigest {
            diff_id,
            size: written.size,
            content: written.content,
        })
    })
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "layer consumer stopped")
}

/// The sizes [`write_tar`] wrote: the tar's, and its regular files' contents ([`TarDigest`]).
struct Written {
    size: u64,
    content: u64,
}

/// Walk, sort and encode the tar of `upper`, handing it to `emit` in chunks of [`CHUNK`]
/// bytes (the last one shorter). File data is read straight into the chunks.
///
/// Two threads (issue 23: a snapshot of many small files is their system calls): the
/// walk's stats every entry and hands over [`BATCH`] at a time, each regular file with the
/// directory the walk holds open, while this one opens those files there, reads their
/// xattrs and bytes, and encodes the headers. The entries come in order, so the tar and
/// the first error are those of one thread doing both.
fn write_tar(
    upper: &Path,
    opts: &SnapshotOptions,
    emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>,
) -> Result<Written, LayerError> {
    let mut w = TarWriter {
        out: ChunkOut {
            buf: Vec::with_capacity(CHUNK),
            total: 0,
            emit,
        },
        header: Vec::new(),
    };
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Result<Vec<Prepared>, LayerError>>(BATCHES_AHEAD);
        let walker = s.spawn(move || {
            let mut looks = Inspector {
                upper,
                epoch: opts.source_date_epoch,
                links: HashMap::new(),
                content: 0,
                batch: Vec::with_capacity(BATCH),
            };
            let walked = walk(upper, opts, &mut |item| {
                looks.inspect(&item)?;
                if looks.batch.len() >= BATCH {
                    let full = std::mem::replace(&mut looks.batch, Vec::with_capacity(BATCH));
                    // The encoding stopped (its error is the tar's): stop walking.
                    tx.send(Ok(full)).map_err(|_| LayerError::Write(closed()))?;
                }
                Ok(())
            });
            // What was looked up before an error is written before it, as by one thread.
            let _ = tx.send(Ok(std::mem::take(&mut looks.batch)));
            if let Err(e) = walked {
                let _ = tx.send(Err(e));
            }
            looks.content
        });
        for batch in rx.iter() {
            for Prepared { mut entry, data } in batch? {
                match data {
                    Some(data) => {
                        // An empty file has no bytes to read, and the step's processes are
                        // gone: its xattrs are read by path, without a file opened and
                        // closed (issue 23: a fifth of the snapshot of 100,000 empty files).
                        let file = (entry.size > 0).then(|| data.open()).transpose()?;
                        let opaque = opaque_xattr().as_bytes();
                        entry.xattrs = read_xattrs(&data.path, file.as_ref(), opaque)?.0;
                        w.write_entry(&entry, file.map(|f| (f, data.path.as_path())))?
                    }
                    None => w.write_entry(&entry, None)?,
                }
            }
        }
        let content = match walker.join() {
            Ok(content) => content,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        w.put(&END_OF_ARCHIVE)?;
        w.out.send().map_err(LayerError::Write)?;
        Ok(Written {
            size: w.out.total,
            content,
        })
    })
}

/// Entries the walk's thread hands over at once. A regular file's keeps its directory open
/// until written, so this bounds the directories a snapshot holds open beyond the walk's:
/// BATCH times ([`BATCHES_AHEAD`] + 2).
const BATCH: usize = 32;
/// Batches the walk's thread may be ahead of the encoding.
const BATCHES_AHEAD: usize = 2;

/// Snapshot `upper` into a compressed blob written to `out`, computing the diff_id and the
/// blob digest in the same pass. The tar is produced on a second thread so that walking and
/// hashing overlap with compression; a bounded channel keeps memory flat.
pub fn snapshot_blob<W: Write>(
    upper: &Path,
    opts: &SnapshotOptions,
    compression: Compression,
    level: Option<i32>,
    out: W,
) -> Result<LayerDigests, LayerError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let producer = scope.spawn(move || {
            let mut hasher = Sha256Writer::new(io::sink());
            let tar_size = write_tar(upper, opts, &mut |chunk| {
                hasher.write_all(&chunk)?;
                tx.send(chunk).map_err(|_| closed())
            })?
            .size;
            let (diff_id, _, _) = hasher.finish();
            Ok::<_, LayerError>((diff_id, tar_size))
        });
        let consumed = (move || -> io::Result<Option<(Digest, u64)>> {
            if compression == Compression::Uncompressed {
                // The blob is the tar: its digest is the diff_id the producer computes, and
                // hashing it twice would cost ~0.45 s per 600 MB (docs/performance.md).
                let mut out = out;
                for chunk in rx.iter() {
                    out.write_all(&chunk)?;
                }
                out.flush()?;
                return Ok(None);
            }
            let mut compressor = Compressor::new(Sha256Writer::new(out), compression, level)?;
            for chunk in rx.iter() {
                compressor.write_all(&chunk)?;
            }
            let (digest, size, mut out) = compressor.finish()?.finish();
            out.flush()?;
            Ok(Some((digest, size)))
        })();
        let produced = match producer.join() {
            Ok(result) => result,
            // A panic in the walk is a bug, not an input error: keep it a panic.
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // If the consumer failed, the producer only saw a closed channel: report the cause.
        let consumed = consumed.map_err(LayerError::Write)?;
        let (diff_id, tar_size) = produced?;
        let (digest, size) = consumed.unwrap_or_else(|| (diff_id.clone(), tar_size));
        Ok(LayerDigests {
            diff_id,
            digest,
            size,
            tar_size,
            media_type: compression.oci_media_type().to_string(),
        })
    })
}

/// The layer tar of a directory as a reader, for copying a stored layer into an output
/// without storing its tar (docs/performance.md): the tar is made and hashed on two threads
/// of its own while the caller reads, and [`TarStream::finish`] checks what came out against the diff_id and
/// size recorded when the layer was built. A diff dir changed or damaged since then fails
/// the copy instead of passing other bytes under the layer's digest.
pub struct TarStream {
    dir: PathBuf,
    expected: (Digest, u64),
    rx: Option<Receiver<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    producer: Option<JoinHandle<Made>>,
    /// The producer's verdict, once it is reaped.
    outcome: Option<Result<(), LayerError>>,
}

/// What a [`TarStream`]'s producer made: the tar's digest (when verifying) and size.
type Made = Result<(Option<Digest>, u64), LayerError>;

impl TarStream {
    /// Start making the tar of `dir` with `opts`; it must be `size` bytes long and, with
    /// `verify`, hash to `diff_id`. Reading the files and hashing run on two threads of their
    /// own, so the reader's thread only copies. Without `verify` there is no hashing at all:
    /// for a layer this process built and hashed moments ago.
    pub fn new(
        dir: PathBuf,
        opts: SnapshotOptions,
        diff_id: Digest,
        size: u64,
        verify: bool,
    ) -> TarStream {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let walk = dir.clone();
        let producer = if verify {
            std::thread::spawn(move || {
                let (raw_tx, raw_rx) = sync_channel::<Vec<u8>>(4);
                let reader = std::thread::spawn(move || {
                    write_tar(&walk, &opts, &mut |chunk| {
                        raw_tx.send(chunk).map_err(|_| closed())
                    })
                });
                let mut hasher = Sha256Writer::new(io::sink());
                for chunk in raw_rx.iter() {
                    let _ = hasher.write_all(&chunk);
                    if tx.send(chunk).is_err() {
                        // The reader is gone: stop the walk too (it sees a closed channel).
                        break;
                    }
                }
                drop(raw_rx);
                let size = match reader.join() {
                    Ok(result) => result?.size,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                let (diff_id, _, _) = hasher.finish();
                Ok((Some(diff_id), size))
            })
        } else {
            std::thread::spawn(move || {
                let size = write_tar(&walk, &opts, &mut |chunk| {
                    tx.send(chunk).map_err(|_| closed())
                })?
                .size;
                Ok((None, size))
            })
        };
        TarStream {
            dir,
            expected: (diff_id, size),
            rx: Some(rx),
            chunk: Vec::new(),
            pos: 0,
            producer: Some(producer),
            outcome: None,
        }
    }

    /// Read what is left, wait for the producer and check the tar it made. Call it after
    /// copying, also when the copy failed: a reader limited to the expected size never sees
    /// the end of a longer tar, and a short one is explained by what this returns.
    pub fn finish(mut self) -> Result<(), LayerError> {
        self.finish_inner();
        self.outcome.take().unwrap_or(Ok(()))
    }

    /// Drain the channel, reap the producer and keep its verdict in `outcome`.
    fn finish_inner(&mut self) {
        if let Some(rx) = self.rx.take() {
            // Drain: the producer's digest and size then cover everything it made.
            for _ in rx.iter() {}
        }
        let Some(producer) = self.producer.take() else {
            return;
        };
        let verdict = match producer.join() {
            Ok(Ok((digest, size))) => {
                let same_digest = digest.as_ref().is_none_or(|d| *d == self.expected.0);
                if same_digest && size == self.expected.1 {
                    Ok(())
                } else if let Some(actual) = digest {
                    Err(LayerError::DiffChanged {
                        dir: self.dir.clone(),
                        expected: self.expected.0.clone(),
                        actual,
                    })
                } else {
                    Err(LayerError::DiffResized {
                        dir: self.dir.clone(),
                        expected: self.expected.1,
                        actual: size,
                    })
                }
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        self.outcome = Some(verdict);
    }
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for TarStream {
    /// The rest of the current chunk: callers can write it on without another copy.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => {
                    // The producer is done or failed; `finish` tells which.
                    self.finish_inner();
                    return Ok(&[]);
                }
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Drop for TarStream {
    fn drop(&mut self) {
        // Closing the channel stops the producer at its next chunk; then reap it.
        self.rx = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

const CHUNK: usize = 256 * 1024;

/// Why [`ChunkOut::copy_from`] stopped: the file, or whoever takes the chunks.
enum CopyError {
    Read(io::Error),
    Emit(io::Error),
}

/// The tar as it is encoded: bytes gather in a chunk of [`CHUNK`] bytes, which goes to
/// `emit` when full.
struct ChunkOut<'a> {
    buf: Vec<u8>,
    total: u64,
    emit: &'a mut dyn FnMut(Vec<u8>) -> io::Result<()>,
}

impl ChunkOut<'_> {
    fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&bytes[..n]);
            self.total += n as u64;
            bytes = &bytes[n..];
            if self.buf.len() >= CHUNK {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Read up to `len` bytes of `file` straight into the chunks; returns how many it had.
    fn copy_from(&mut self, file: &mut File, len: u64) -> Result<u64, CopyError> {
        let mut left = len;
        while left > 0 {
            let start = self.buf.len();
            let want = left.min((CHUNK - start) as u64);
            // Into the chunk's spare capacity, which `want` never exceeds: no growth, no
            // zeroing, no intermediate buffer.
            let got = (&mut *file)
                .take(want)
                .read_to_end(&mut self.buf)
                .map_err(CopyError::Read)?;
            self.total += got as u64;
            left -= got as u64;
            if self.buf.len() >= CHUNK {
                self.send().map_err(CopyError::Emit)?;
            }
            if (got as u64) < want {
                break; // The file is shorter than it was.
            }
        }
        Ok(len - left)
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        (self.emit)(chunk)
    }
}

/// Walk `upper` and hand `each` what goes into the layer, sorted by tar name, as it goes:
/// nothing per entry is kept (issue 23), one directory's names per level.
fn walk(
    upper: &Path,
    opts: &SnapshotOptions,
    each: &mut dyn FnMut(Item<'_>) -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    // Accept container paths (`/proc`) as well as relative ones (`proc`).
    let skip: Vec<&Path> = opts
        .skip
        .iter()
        .map(|p| p.strip_prefix("/").unwrap_or(p))
        .collect();
    let open_dir = |at: BorrowedFd, name: &Path, rel: &Path| {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io("opening", upper.join(rel), e.into()))
    };
    let top = open_dir(rustix::fs::CWD, upper, Path::new(""))?;
    let mut stack = vec![(
        PathBuf::new(),
        list(upper, Path::new(""), &skip)?,
        Some(Arc::new(top)),
    )];
    while let Some(depth) = stack.len().checked_sub(1) {
        let (dir_rel, names, dir) = &mut stack[depth];
        let Some(visit) = names.next() else {
            stack.pop();
            continue;
        };
        let tar_name = names.name(&visit);
        let whiteout = visit.tag == WHITEOUT;
        let name = if whiteout {
            &tar_name[WHITEOUT_PREFIX.len()..]
        } else {
            tar_name
        };
        let rel = dir_rel.join(OsStr::from_bytes(name));
        if visit.contents {
            let sub = match dir {
                Some(dir) if depth + 1 < HELD_DEPTH => Some(Arc::new(open_dir(
                    dir.as_fd(),
                    Path::new(OsStr::from_bytes(name)),
                    &rel,
                )?)),
                _ => None,
            };
            let names = list(upper, &rel, &skip)?;
            stack.push((rel, names, sub));
            continue;
        }
        let mut tar_path = dir_rel.as_os_str().as_bytes().to_vec();
        if !tar_path.is_empty() {
            tar_path.push(b'/');
        }
        tar_path.extend_from_slice(tar_name);
        each(Item {
            tar_path,
            rel,
            dir: dir.as_ref(),
            whiteout,
        })?;
    }
    Ok(())
}

/// The tag of a whiteout's name (its tar name: `.wh.` and the name).
const WHITEOUT: u8 = 1;

/// The names of directory `dir_rel` of `upper` that go into the layer, by tar name.
fn list(upper: &Path, dir_rel: &Path, skip: &[&Path]) -> Result<SortedNames, LayerError> {
    let dir = upper.join(dir_rel);
    let entries = fs::read_dir(&dir).map_err(|e| LayerError::io("reading directory", &dir, e))?;
    let mut names = SortedNames::default();
    for entry in entries {
        let entry = entry.map_err(|e| LayerError::io("reading directory", &dir, e))?;
        let rel = dir_rel.join(entry.file_name());
        if skip.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let ft = entry
            .file_type()
            .map_err(|e| LayerError::io("inspecting", upper.join(&rel), e))?;
        if ft.is_socket() {
            // Sockets cannot be archived (tar has no type for them); docker skips them too.
            continue;
        }
        let mut whiteout = false;
        if ft.is_char_device() {
            let meta = entry
                .metadata()
                .map_err(|e| LayerError::io("inspecting", upper.join(&rel), e))?;
            whiteout = meta.rdev() == 0;
        }
        let file_name = entry.file_name();
        if whiteout {
            let mut tar_name = WHITEOUT_PREFIX.to_vec();
            tar_name.extend_from_slice(file_name.as_bytes());
            names.add(&tar_name, false, WHITEOUT);
        } else {
            names.add(file_name.as_bytes(), ft.is_dir(), 0);
        }
    }
    names.sort();
    Ok(names)
}

/// A tar entry as the walk's thread looked it up: its header, and for a regular file where
/// the encoding opens it to read its xattrs and bytes.
struct Prepared {
    entry: Entry,
    data: Option<Data>,
}

/// A regular file to open: by name in its directory, which the walk held open, or by
/// `path` (also what errors name).
struct Data {
    dir: Option<Arc<OwnedFd>>,
    path: PathBuf,
}

impl Data {
    fn open(&self) -> Result<File, LayerError> {
        let (at, name) = match &self.dir {
            Some(dir) => (
                dir.as_fd(),
                Path::new(self.path.file_name().unwrap_or_default()),
            ),
            None => (rustix::fs::CWD, self.path.as_path()),
        };
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| LayerError::io("opening", &self.path, e.into()))
    }
}

/// The walk's side of [`write_tar`]: what each entry becomes in the tar.
struct Inspector<'u> {
    upper: &'u Path,
    epoch: Option<SourceDateEpoch>,
    /// (dev, ino) -> tar name of the first path written for a multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Bytes of the regular files written with their data so far.
    content: u64,
    /// Entries not handed over yet, in order.
    batch: Vec<Prepared>,
}

impl Inspector<'_> {
    /// An mtime as the layer keeps it: clamped to SOURCE_DATE_EPOCH, and never before 1970
    /// (ustar cannot express it, nor can most image tooling).
    fn mtime(&self, mtime: i64) -> u64 {
        let mtime = mtime.max(0) as u64;
        match self.epoch {
            Some(epoch) => mtime.min(epoch.tar_mtime()),
            None => mtime,
        }
    }

    fn push(&mut self, entry: Entry) {
        self.batch.push(Prepared { entry, data: None });
    }

    /// Add `item`'s entries (a directory made opaque has two) to the batch.
    fn inspect(&mut self, item: &Item<'_>) -> Result<(), LayerError> {
        let path = self.upper.join(&item.rel);
        let (at, name) = item.at(&path);
        let meta = Meta::at(at, name, false).map_err(|e| LayerError::io("inspecting", &path, e))?;
        let ft = meta.file_type();
        let mut entry = Entry {
            name: item.tar_path.clone(),
            kind: tar::EntryType::Regular,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: self.mtime(meta.mtime()),
            size: 0,
            link: None,
            device: None,
            xattrs: Xattrs::new(),
        };

        if item.whiteout {
            // Docker's overlay2 differ writes whiteouts as mode 0600 empty files with the
            // whiteout's owner and mtime.
            entry.mode = 0o600;
            self.push(entry);
            return Ok(());
        }

        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                entry.kind = tar::EntryType::Link;
                entry.link = Some(first.clone());
                self.push(entry);
                return Ok(());
            }
            self.links.insert(key, item.tar_path.clone());
        }

        if ft.is_file() {
            entry.size = meta.size();
            self.content += entry.size;
            // Opened by the encoding thread, which reads its xattrs through the open file:
            // the walk's thread has the most to do.
            self.batch.push(Prepared {
                entry,
                data: Some(Data {
                    dir: item.dir.cloned(),
                    path,
                }),
            });
            return Ok(());
        }

        let (xattrs, opaque) = read_xattrs(&path, None, opaque_xattr().as_bytes())?;
        entry.xattrs = xattrs;

        if ft.is_dir() {
            entry.kind = tar::EntryType::Directory;
            entry.name.push(b'/');
            let marker = opaque.then(|| {
                let mut name = item.tar_path.clone();
                name.push(b'/');
                name.extend_from_slice(OPAQUE_MARKER);
                Entry {
                    name,
                    kind: tar::EntryType::Regular,
                    mode: entry.mode & 0o777,
                    xattrs: Xattrs::new(),
                    ..entry.clone()
                }
            });
            self.push(entry);
            if let Some(marker) = marker {
                self.push(marker);
            }
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&path).map_err(|e| LayerError::io("reading link", &path, e))?;
            entry.kind = tar::EntryType::Symlink;
            entry.link = Some(target.as_os_str().as_bytes().to_vec());
            self.push(entry);
        } else if ft.is_char_device() || ft.is_block_device() {
            entry.kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let rdev = meta.rdev();
            entry.device = Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
            self.push(entry);
        } else if ft.is_fifo() {
            entry.kind = tar::EntryType::Fifo;
            self.push(entry);
        }
        // Only sockets are left, and walk() already dropped them.
        Ok(())
    }
}

/// The encoding side of [`write_tar`].
struct TarWriter<'a> {
    out: ChunkOut<'a>,
    /// Reused for each entry's header blocks.
    header: Vec<u8>,
}

impl TarWriter<'_> {
    /// Encode `entry` (PAX header first when needed) and copy `data` for regular files.
    fn write_entry(
        &mut self,
        entry: &Entry,
        data: Option<(File, &Path)>,
    ) -> Result<(), LayerError> {
        self.header.clear();
        encode_header(entry, &mut self.header).map_err(LayerError::Write)?;
        let header = std::mem::take(&mut self.header);
        let put = self.put(&header);
        self.header = header;
        put?;

        if let Some((mut file, path)) = data {
            let copied = self
                .out
                .copy_from(&mut file, entry.size)
                .map_err(|e| match e {
                    CopyError::Read(e) => LayerError::io("reading", path, e),
                    CopyError::Emit(e) => LayerError::Write(e),
                })?;
            if copied != entry.size {
                return Err(LayerError::Changed {
                    path: path.to_path_buf(),
                });
            }
            self.put(padding(entry.size))?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), LayerError> {
        self.out.put(bytes).map_err(LayerError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::*;
    use pretty_assertions::assert_eq;

    fn tar_of(root: &Path, opts: &SnapshotOptions) -> (Digest, Vec<u8>) {
        let (digest, size, bytes) = snapshot(root, opts, Vec::new()).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(digest, Digest::of(&bytes));
        (digest, bytes)
    }

    #[test]
    #[ignore = "needs root"]
    fn rich_tree_listing() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        rich_tree(root);
        // Things that must not reach the layer.
        std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
        set_xattr(&root.join("bin/su"), "trusted.overlay.origin", b"x");
        set_xattr(&root.join("bin/su"), "trusted.other", b"x");
        // An empty file's xattrs are read without opening it.
        set_xattr(&root.join("home/big-ids"), "user.comment", b"empty");
        set_xattr(&root.join("home/big-ids"), "trusted.overlay.origin", b"x");
        fs::create_dir(root.join("proc")).unwrap();
        write_file(&root.join("resolv.conf"), b"", 0o644);
        let opts = SnapshotOptions {
            source_date_epoch: None,
            skip: vec!["proc".into(), "/resolv.conf".into()],
        };
        let (_, bytes) = tar_of(root, &opts);
        let d = "d".repeat(60);
        let e = "e".repeat(60);
        let f = "f".repeat(50);
        let t = "t".repeat(150);
        let expected = format!(
            "\
Directory bin/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Regular bin/ping size=10 mode=755 0:0 mtime=1000000 sha=a95ee8e36c68 xattrs[security.capability=\"\\0\\0\\0\\u{{2}}\\0 \\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\"]
Regular bin/su size=13 mode=4755 0:0 mtime=1000000 sha=51bfab4b04ea xattrs[]
Regular bin/wall size=13 mode=2755 0:0 mtime=1000000 sha=f148f1ff2bcb xattrs[]
Directory {d}/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Directory {d}/{e}/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Regular {d}/{e}/{f} size=4 mode=644 0:0 mtime=1000000 sha=fc66f021c67d xattrs[]
Directory dev/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Fifo dev/fifo size=0 mode=644 0:0 mtime=1000000 xattrs[]
Block dev/loop0 size=0 mode=660 0:0 mtime=1000000 dev=7,0 xattrs[]
Char dev/null size=0 mode=666 0:0 mtime=1000000 dev=1,3 xattrs[]
Regular hard-a size=12 mode=644 0:0 mtime=1000000 sha=f147d7ad38d0 xattrs[]
Link hard-b -> hard-a size=0 mode=644 0:0 mtime=1000000 xattrs[]
Directory home/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Regular home/.wh.deleted size=0 mode=600 0:0 mtime=1000000 xattrs[]
Regular home/big-ids size=0 mode=600 3000000:2100000 mtime=1000000 xattrs[user.comment=\"empty\"]
Symlink home/su-link -> ../bin/su size=0 mode=777 0:0 mtime=1000000 xattrs[]
Directory home/user/ size=0 mode=755 1000:1000 mtime=1000000 xattrs[]
Regular home/user/notes size=6 mode=640 1000:100 mtime=1000000 sha=5891b5b522d5 xattrs[user.comment=\"kept\"]
Symlink long-link -> {t} size=0 mode=777 0:0 mtime=1000000 xattrs[]
Directory opaque/ size=0 mode=755 0:0 mtime=1000000 xattrs[]
Regular opaque/.wh..wh..opq size=0 mode=755 0:0 mtime=1000000 xattrs[]
Regular opaque/new size=3 mode=644 0:0 mtime=1000000 sha=11507a0e2f5e xattrs[]
Directory tmp/ size=0 mode=1777 0:0 mtime=1000000 xattrs[]
Regular ünïcødé-名前 size=7 mode=644 0:0 mtime=1000000 sha=2fcf76a4c3c7 xattrs[]"
        );
        assert_eq!(list_tar(&bytes), expected);
    }

    #[test]
    #[ignore = "needs root"]
    fn same_tree_same_bytes_and_blob_digests_match() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        rich_tree(tmp.path());
        let opts = SnapshotOptions::default();
        let (d1, b1) = tar_of(tmp.path(), &opts);
        let (d2, b2) = tar_of(tmp.path(), &opts);
        assert_eq!(d1, d2);
        assert!(b1 == b2);
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let mut blob = Vec::new();
            let got = snapshot_blob(tmp.path(), &opts, c, None, &mut blob).unwrap();
            assert_eq!(got.diff_id, d1, "{c:?}");
            assert_eq!(got.tar_size, b1.len() as u64);
            assert_eq!(got.digest, Digest::of(&blob), "{c:?}");
            assert_eq!(got.size, blob.len() as u64);
            assert_eq!(got.media_type, c.oci_media_type());
            let back = read_all(crate::layer::compress::decompressor(&blob[..]).unwrap());
            assert!(back == b1, "{c:?} blob must decompress to the tar");
            let mut again = Vec::new();
            let got2 = snapshot_blob(tmp.path(), &opts, c, None, &mut again).unwrap();
            assert_eq!(got, got2);
        }
    }

    #[test]
    fn entries_are_sorted_bytewise_by_full_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("a")).unwrap();
        fs::write(root.join("a/x"), "").unwrap();
        fs::write(root.join("a-b"), "").unwrap();
        fs::write(root.join("B"), "").unwrap();
        fs::write(root.join("a.c"), "").unwrap();
        let (_, bytes) = tar_of(root, &SnapshotOptions::default());
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["B", "a/", "a-b", "a.c", "a/x"]);
    }

    #[test]
    #[ignore = "needs root"]
    fn source_date_epoch_clamps_only_newer_mtimes() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("old"), "o").unwrap();
        fs::write(root.join("new"), "n").unwrap();
        set_mtime(&root.join("old"), 2_000);
        set_mtime(&root.join("new"), 5_000);
        let opts = SnapshotOptions {
            source_date_epoch: Some(SourceDateEpoch::from_seconds(3_000)),
            skip: Vec::new(),
        };
        let (_, bytes) = tar_of(root, &opts);
        let listing = list_tar(&bytes);
        assert!(
            listing.contains("Regular new size=1 mode=644 0:0 mtime=3000"),
            "{listing}"
        );
        assert!(
            listing.contains("Regular old size=1 mode=644 0:0 mtime=2000"),
            "{listing}"
        );
    }

    /// A writer that fails once `limit` bytes went through.
    struct Failing {
        limit: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.limit {
                return Err(io::Error::other("disk full"));
            }
            self.limit -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blob_errors_surface_from_either_side_of_the_pipeline() {
        let tmp = tempfile::tempdir().unwrap();
        // Incompressible data, so that the compressed output overflows the writer.
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(tmp.path().join("big"), &data).unwrap();
        let opts = SnapshotOptions::default();
        let err = snapshot_blob(
            tmp.path(),
            &opts,
            Compression::Gzip,
            None,
            Failing { limit: 100_000 },
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let err = snapshot_blob(
            &tmp.path().join("missing"),
            &opts,
            Compression::Zstd,
            None,
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::Io { .. }), "{err}");
    }

    /// A tree deeper than [`HELD_DEPTH`]: the walk keeps only the top directories open
    /// (a step's deep tree must not run the process out of files), and the entries below
    /// are read by their full paths, all of them into the tar.
    #[test]
    fn deep_trees_hold_few_directories_open_and_are_whole() {
        let t = tempfile::tempdir().unwrap();
        let depth = HELD_DEPTH + 72;
        let mut dir = t.path().to_path_buf();
        for i in 0..depth {
            dir.push("d");
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("f"), i.to_string()).unwrap();
        }
        // Directories of this tree open in this process, at the deepest file.
        let open_here = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|p| p.starts_with(t.path()) && p.is_dir())
                .count()
        };
        let mut most = 0;
        let mut files = 0;
        walk(t.path(), &SnapshotOptions::default(), &mut |item| {
            most = most.max(open_here());
            if item.rel.ends_with("f") {
                files += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(files, depth);
        assert!(most <= HELD_DEPTH, "{most} directories open");
        let (_, tar) = tar_of(t.path(), &SnapshotOptions::default());
        let mut ar = tar::Archive::new(&tar[..]);
        let mut seen = 0;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().into_owned();
            if path.ends_with("f") {
                let mut content = String::new();
                e.read_to_string(&mut content).unwrap();
                let level = path.components().count() - 2;
                assert_eq!(content, level.to_string(), "{}", path.display());
                seen += 1;
            }
        }
        assert_eq!(seen, depth);
    }

    #[test]
    fn empty_upper_is_an_empty_tar() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, bytes) = tar_of(tmp.path(), &SnapshotOptions::default());
        assert!(bytes == vec![0u8; 1024]);
    }

    /// Real overlayfs: deleting a lower file and replacing a lower directory must show up as
    /// a `.wh.` file and an opaque marker.
    #[test]
    fn real_overlay_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper, work, merged) = (
            tmp.path().join("lower"),
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("merged"),
        );
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        fs::write(lower.join("gone"), "x").unwrap();
        fs::write(lower.join("gone-too"), "x").unwrap();
        fs::create_dir(lower.join("dir")).unwrap();
        fs::write(lower.join("dir/old"), "x").unwrap();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &data])
            .arg(&merged)
            .status()
            .unwrap();
        if !status.success() {
            assert!(
                !rustix::process::geteuid().is_root(),
                "mounting overlayfs failed as root"
            );
            eprintln!("skipping: cannot mount overlayfs without root");
            return;
        }
        let changes = (|| -> io::Result<()> {
            fs::remove_file(merged.join("gone"))?;
            fs::remove_file(merged.join("gone-too"))?;
            fs::remove_dir_all(merged.join("dir"))?;
            fs::create_dir(merged.join("dir"))?;
            fs::write(merged.join("dir/new"), "y")
        })();
        let umount = std::process::Command::new("umount")
            .arg(&merged)
            .status()
            .unwrap();
        changes.unwrap();
        assert!(umount.success());
        let (_, bytes) = tar_of(&upper, &SnapshotOptions::default());
        let names: Vec<(String, tar::EntryType)> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect();
        use tar::EntryType::{Directory, Regular};
        let expected: Vec<(String, tar::EntryType)> = [
            (".wh.gone", Regular),
            (".wh.gone-too", Regular),
            ("dir/", Directory),
            ("dir/.wh..wh..opq", Regular),
            ("dir/new", Regular),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
        assert_eq!(names, expected);
    }
}
