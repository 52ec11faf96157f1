//! Content-addressed blobs under blobs/sha256/.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::{Result, Store, StoreError};
use crate::image::{Descriptor, Digest, Sha256Writer};

impl Store {
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stream a blob produced by `f` into the store: hashed while written, fsynced, renamed
    /// to blobs/sha256/<digest>. Returns its digest, size and `f`'s result. If the blob is
    /// already there (another build made it), ours is dropped.
    pub fn write_blob<T, E>(
        &self,
        f: impl FnOnce(&mut dyn Write) -> std::result::Result<T, E>,
    ) -> Result<(Digest, u64, T)>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.write_blob_checked(f, |_, _| Ok(()))
    }

    /// [`Store::write_blob`] for a producer that hashes its bytes itself and returns the
    /// digest with its value: the layer snapshot hashes the tar for the diff_id, which for an
    /// uncompressed layer is the blob digest, so hashing it again here would only cost CPU
    /// (~0.45 s per 600 MB; docs/performance.md).
    pub fn write_blob_prehashed<T, E>(
        &self,
        f: impl FnOnce(&mut dyn Write) -> std::result::Result<(T, Digest), E>,
    ) -> Result<(Digest, u64, T)>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let tmp = self.blob_tmp()?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(StoreError::io("opening", tmp.path()))?;
        let mut writer = Counting {
            inner: BufWriter::with_capacity(256 * 1024, file),
            written: 0,
        };
        let (value, digest) = f(&mut writer).map_err(|e| StoreError::Producer(Box::new(e)))?;
        let Counting {
            inner,
            written: size,
        } = writer;
        sync_blob_file(inner, tmp.as_file(), tmp.path())?;
        self.publish_blob(tmp, &digest)?;
        Ok((digest, size, value))
    }

    /// [`Store::write_blob`] with a check on (digest, size) before the blob becomes visible.
    fn write_blob_checked<T, E>(
        &self,
        f: impl FnOnce(&mut dyn Write) -> std::result::Result<T, E>,
        check: impl FnOnce(&Digest, u64) -> Result<()>,
    ) -> Result<(Digest, u64, T)>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let tmp = self.blob_tmp()?;
        let mut writer = Sha256Writer::new(BufWriter::with_capacity(256 * 1024, tmp.as_file()));
        let value = f(&mut writer).map_err(|e| StoreError::Producer(Box::new(e)))?;
        let (digest, size, buf) = writer.finish();
        sync_blob_file(buf, tmp.as_file(), tmp.path())?;
        check(&digest, size)?;
        self.publish_blob(tmp, &digest)?;
        Ok((digest, size, value))
    }

    fn blob_tmp(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(&self.session)
            .map_err(StoreError::io("creating temp file in", &self.session))
    }

    /// Rename a written and synced blob to blobs/sha256/<digest>. The data was fsynced
    /// before (no renamed-but-empty blob after a crash); the directory is synced later, once
    /// per build ([`Store::sync_pending`]).
    fn publish_blob(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            // Same digest, same bytes: keep the one that is there (tmp is removed on drop).
            return Ok(());
        }
        tmp.persist(&dest)
            .map_err(|e| StoreError::io("renaming into", &dest)(e.error))?;
        self.sync_parent_later(&dest);
        Ok(())
    }

    /// Store `bytes` as a blob.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let (d, _, ()) = self.write_blob(|w| w.write_all(bytes))?;
        Ok(d)
    }

    /// Store the blob `expected` describes from `reader`, checking digest and size while
    /// streaming. On a mismatch nothing is stored. Reads at most `expected.size + 1` bytes.
    pub fn put_blob_verified(&self, expected: &Descriptor, reader: impl Read) -> Result<()> {
        let mut limited = reader.take(expected.size.saturating_add(1));
        self.write_blob_checked(
            |w| io::copy(&mut limited, w).map(|_| ()),
            |digest, size| {
                if *digest == expected.digest && size == expected.size {
                    Ok(())
                } else {
                    Err(StoreError::DigestMismatch {
                        expected: expected.digest.clone(),
                        expected_size: expected.size,
                        actual: digest.clone(),
                        actual_size: size,
                    })
                }
            },
        )
        .map(|_| ())
    }

    /// The whole blob in memory (configs, manifests: small blobs only).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        fs::read(&path).map_err(|e| self.missing_or_io(d, &path, e))
    }

    /// The blob as a file to stream from.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| self.missing_or_io(d, &path, e))
    }

    fn missing_or_io(&self, d: &Digest, path: &std::path::Path, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::BlobMissing { digest: d.clone() }
        } else {
            StoreError::io("reading", path)(e)
        }
    }
}

/// A writer that counts what goes through.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Flush a blob's buffer, make it 0644 and fsync it.
fn sync_blob_file<W: Write>(buf: BufWriter<W>, file: &File, path: &std::path::Path) -> Result<()> {
    // Blobs are content, not secrets: 0644 rather than tempfile's 0600, so copies made
    // from them (OCI directory outputs) are readable.
    buf.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|_| {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            file.sync_all()
        })
        .map_err(StoreError::io("writing", path))
}
