//! The side effects of a step, behind one small trait (openshift/imagebuilder's `Executor`):
//! run a RUN step in the sandbox, copy files for COPY/ADD, create a WORKDIR, and snapshot an
//! upperdir into a committed layer. Everything else the executor does (cache lookup, cache
//! keys, whether a step makes a layer, history and config) stays in steps.rs, where a
//! recording fake (`exec::fake::Recording`) lets unit tests watch it without root.

use std::path::{Path, PathBuf};

use crate::fileop::{CopyJob, FileJob, WorkdirJob};
use crate::image::Digest;
use crate::layer::{self, SnapshotOptions};
use crate::sandbox::{self, Exit, FsSource, Overlay, RunSpec};
use crate::store::{DiffTar, Store};

use super::BuildError;

/// `scratch` is the build's directory in the store's tmp session: the sandbox keeps its
/// per-step scratch directories there, so a killed build's leftovers are swept with it.
pub trait Executor: Sync {
    /// Run a RUN step's process over `spec.rootfs`; `output` gets what it prints.
    fn run(
        &self,
        spec: &RunSpec,
        scratch: &Path,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, BuildError>;

    /// Copy `job`'s sources from `source` into `rootfs` (COPY and ADD).
    fn copy(
        &self,
        rootfs: &Overlay,
        source: &FsSource,
        job: &CopyJob,
        scratch: &Path,
    ) -> Result<(), BuildError>;

    /// Create WORKDIR `path` (owned by `user`) in `rootfs` if it is missing.
    fn workdir(
        &self,
        rootfs: &Overlay,
        path: &str,
        user: &str,
        scratch: &Path,
    ) -> Result<(), BuildError>;

    /// Snapshot a step's upperdir and commit it to the store as a layer: (chain id,
    /// diff id).
    fn commit(&self, store: &Store, upper: Upper<'_>) -> Result<(Digest, Digest), BuildError>;
}

/// A step's upperdir, to become a layer on `parent`.
pub struct Upper<'a> {
    pub dir: PathBuf,
    pub parent: Option<&'a Digest>,
    /// Clamps the snapshot's mtimes.
    pub source_date_epoch: Option<crate::image::SourceDateEpoch>,
    /// The layer (chain id) this step made last time, when it is a file operation run
    /// again: it most likely makes that layer again.
    pub expect: Option<Digest>,
}

/// The real one: the sandbox helper runs steps and file jobs; layers go to the store.
pub struct Sandboxed;

impl Executor for Sandboxed {
    fn run(
        &self,
        spec: &RunSpec,
        scratch: &Path,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, BuildError> {
        Ok(sandbox::run(spec, Some(scratch), output)?)
    }

    fn copy(
        &self,
        rootfs: &Overlay,
        source: &FsSource,
        job: &CopyJob,
        scratch: &Path,
    ) -> Result<(), BuildError> {
        let sources = std::slice::from_ref(source);
        sandbox::fs_job(Some(scratch), rootfs, sources, FileJob::Copy(job.clone()))??;
        Ok(())
    }

    fn workdir(
        &self,
        rootfs: &Overlay,
        path: &str,
        user: &str,
        scratch: &Path,
    ) -> Result<(), BuildError> {
        let job = FileJob::Workdir(WorkdirJob {
            path: path.to_string(),
            user: user.to_string(),
        });
        sandbox::fs_job(Some(scratch), rootfs, &[], job)??;
        Ok(())
    }

    fn commit(&self, store: &Store, upper: Upper<'_>) -> Result<(Digest, Digest), BuildError> {
        commit_upper(store, upper)
    }
}

/// Snapshot an upperdir (hashing its tar, storing none of it: [`crate::store::DiffTar`])
/// and commit it to the store as a layer.
pub(super) fn commit_upper(
    store: &Store,
    upper: Upper<'_>,
) -> Result<(Digest, Digest), BuildError> {
    let opts = SnapshotOptions {
        source_date_epoch: upper.source_date_epoch,
        skip: Vec::new(),
    };
    // The sandbox mounts a step's overlay `volatile`, so its files may not be on disk yet:
    // they get there while the snapshot reads them back from the page cache, and before
    // the record names them (design.md "Store"). A copy of a layer the store has already
    // never becomes a record, so a step expected to make one again hashes first and leaves
    // the sync to `commit_built_layer`, which makes it only if the layer is new after all.
    let expected = upper.expect.as_ref().and_then(|c| store.layer(c)).is_some();
    let snap = if expected {
        layer::snapshot_digest(&upper.dir, &opts)?
    } else {
        let (digest, synced) = std::thread::scope(|s| {
            let sync = s.spawn(|| store.sync_filesystem());
            let digest = layer::snapshot_digest(&upper.dir, &opts);
            let synced = sync
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (digest, synced)
        });
        let digest = digest?;
        synced?;
        digest
    };
    let tar = DiffTar {
        size: snap.size,
        source_date_epoch: opts.source_date_epoch,
    };
    let record = store.commit_built_layer(
        upper.dir,
        upper.parent,
        snap.diff_id,
        tar,
        snap.content,
        !expected,
    )?;
    Ok((record.chain_id, record.diff_id))
}
