//! The side effects of a step, behind one small trait (openshift/imagebuilder's `Executor`):
//! run a RUN step in the sandbox, copy files for COPY/ADD, create a WORKDIR, and snapshot an
//! upperdir into a committed layer. Everything else the executor does (cache lookup, cache
//! keys, whether a step makes a layer, history and config) stays in steps.rs, where a
//! recording fake ([`fake::Recording`]) lets unit tests watch it without root.

use std::path::PathBuf;

use crate::context::copier::CopyJob;
use crate::image::Digest;
use crate::layer::{self, SnapshotOptions};
use crate::sandbox::{self, Exit, FsSource, Overlay, RunSpec};
use crate::store::{DiffTar, Store};

use super::BuildError;

pub trait Executor: Sync {
    /// Run a RUN step's process over `spec.rootfs`; `output` gets what it prints.
    fn run(&self, spec: &RunSpec, output: &mut dyn FnMut(&[u8])) -> Result<Exit, BuildError>;

    /// Copy `job`'s sources from `source` into `rootfs` (COPY and ADD).
    fn copy(&self, rootfs: &Overlay, source: &FsSource, job: &CopyJob) -> Result<(), BuildError>;

    /// Create WORKDIR `path` (owned by `user`) in `rootfs` if it is missing.
    fn workdir(&self, rootfs: &Overlay, path: &str, user: &str) -> Result<(), BuildError>;

    /// Snapshot a step's upperdir and commit it to the store as a layer on `parent`:
    /// (chain id, diff id).
    fn commit(
        &self,
        store: &Store,
        upper: PathBuf,
        parent: Option<&Digest>,
        source_date_epoch: Option<i64>,
    ) -> Result<(Digest, Digest), BuildError>;
}

/// The real one: the sandbox helper runs steps and file jobs; layers go to the store.
pub struct Sandboxed;

impl Executor for Sandboxed {
    fn run(&self, spec: &RunSpec, output: &mut dyn FnMut(&[u8])) -> Result<Exit, BuildError> {
        Ok(sandbox::run(spec, output)?)
    }

    fn copy(&self, rootfs: &Overlay, source: &FsSource, job: &CopyJob) -> Result<(), BuildError> {
        let job = serde_json::to_value(job).expect("a copy job serializes");
        sandbox::fs_job(rootfs, std::slice::from_ref(source), job, "copy")?;
        Ok(())
    }

    fn workdir(&self, rootfs: &Overlay, path: &str, user: &str) -> Result<(), BuildError> {
        let job = serde_json::json!({ "path": path, "user": user });
        sandbox::fs_job(rootfs, &[], job, "workdir")?;
        Ok(())
    }

    fn commit(
        &self,
        store: &Store,
        upper: PathBuf,
        parent: Option<&Digest>,
        source_date_epoch: Option<i64>,
    ) -> Result<(Digest, Digest), BuildError> {
        commit_upper(store, upper, parent, source_date_epoch)
    }
}

/// Snapshot an upperdir (hashing its tar, storing none of it: [`crate::store::DiffTar`])
/// and commit it to the store as a layer.
fn commit_upper(
    store: &Store,
    upper: PathBuf,
    parent: Option<&Digest>,
    source_date_epoch: Option<i64>,
) -> Result<(Digest, Digest), BuildError> {
    let opts = SnapshotOptions {
        source_date_epoch,
        skip: Vec::new(),
    };
    let (diff_id, size) = layer::snapshot_digest(&upper, &opts)?;
    let tar = DiffTar {
        size,
        source_date_epoch: opts.source_date_epoch,
    };
    let record = store.commit_built_layer(upper, parent, diff_id, tar)?;
    Ok((record.chain_id, record.diff_id))
}

#[cfg(test)]
pub(super) mod fake {
    //! A recording executor: it does in the upperdir what a step would (a file per RUN and
    //! COPY, the directory for a WORKDIR that is missing), so commits make real layers, and
    //! records every call.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// The spec without its rootfs (scratch paths differ run to run).
        Run(Box<RunSpec>),
        Copy {
            dest: String,
            add: bool,
        },
        Workdir {
            path: String,
        },
        Commit,
    }

    pub struct Recording {
        pub calls: Mutex<Vec<Call>>,
        /// Whether a WORKDIR finds its directory missing (and creates it).
        pub workdir_missing: AtomicBool,
        /// Whether a RUN changes the rootfs (writes a file named `ran`).
        pub run_writes: AtomicBool,
        /// The exit status every RUN gets.
        pub exit: Mutex<Exit>,
    }

    impl Default for Recording {
        fn default() -> Recording {
            Recording {
                calls: Mutex::default(),
                workdir_missing: AtomicBool::new(true),
                run_writes: AtomicBool::new(true),
                exit: Mutex::new(Exit::Code(0)),
            }
        }
    }

    impl Recording {
        /// The calls so far, and forget them.
        pub fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        fn record(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }
    }

    fn write(upper: &std::path::Path, name: &str, content: &str) {
        std::fs::write(
            upper.join(name.trim_matches('/').replace('/', "_")),
            content,
        )
        .unwrap();
    }

    impl Executor for Recording {
        fn run(&self, spec: &RunSpec, output: &mut dyn FnMut(&[u8])) -> Result<Exit, BuildError> {
            if self.run_writes.load(Ordering::SeqCst) {
                write(&spec.rootfs.upper, "ran", &spec.argv.join(" "));
            }
            output(b"fake output\n");
            let mut recorded = spec.clone();
            recorded.rootfs = Overlay {
                lowers: Vec::new(),
                upper: PathBuf::new(),
                work: PathBuf::new(),
            };
            self.record(Call::Run(Box::new(recorded)));
            Ok(*self.exit.lock().unwrap())
        }

        fn copy(
            &self,
            rootfs: &Overlay,
            _source: &FsSource,
            job: &CopyJob,
        ) -> Result<(), BuildError> {
            write(&rootfs.upper, &job.dest, &format!("{:?}", job.sources));
            self.record(Call::Copy {
                dest: job.dest.clone(),
                add: job.add,
            });
            Ok(())
        }

        fn workdir(&self, rootfs: &Overlay, path: &str, _user: &str) -> Result<(), BuildError> {
            if self.workdir_missing.load(Ordering::SeqCst) {
                let dir = rootfs.upper.join(path.trim_start_matches('/'));
                std::fs::create_dir_all(dir).unwrap();
            }
            self.record(Call::Workdir {
                path: path.to_string(),
            });
            Ok(())
        }

        fn commit(
            &self,
            store: &Store,
            upper: PathBuf,
            parent: Option<&Digest>,
            source_date_epoch: Option<i64>,
        ) -> Result<(Digest, Digest), BuildError> {
            self.record(Call::Commit);
            commit_upper(store, upper, parent, source_date_epoch)
        }
    }
}
