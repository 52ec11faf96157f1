//! A recording [`Executor`] for unit tests: it does in the upperdir what a step would (a
//! file per RUN and COPY, the directory for a WORKDIR that is missing), so commits make
//! real layers, and records every call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use super::executor::{commit_upper, Executor, Upper};
use super::BuildError;
use crate::fileop::CopyJob;
use crate::image::Digest;
use crate::sandbox::{Exit, FsSource, Overlay, RunSpec};
use crate::store::Store;

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

#[derive(Default)]
pub struct Recording {
    pub calls: Mutex<Vec<Call>>,
    /// Whether a WORKDIR finds its directory there already (else it creates it).
    pub workdir_exists: AtomicBool,
    /// Whether a RUN changes nothing (else it writes a file named `ran`).
    pub run_writes_nothing: AtomicBool,
    /// The exit code every RUN gets.
    pub exit_code: AtomicI32,
    /// Added to what every COPY writes: a copy that comes out different under the same
    /// key, as when a source changes while the build runs.
    pub copy_extra: Mutex<String>,
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
    let path = upper.join(name.trim_matches('/').replace('/', "_"));
    std::fs::write(&path, content).unwrap();
    fixed_mtime(&path);
}

/// What the fake makes gets one mtime, as a real copy keeps its sources': the same step run
/// again makes the same layer, in whichever second it runs (a test that compared the layers
/// of two builds failed when they straddled a second).
fn fixed_mtime(path: &std::path::Path) {
    let t = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
}

impl Executor for Recording {
    fn run(
        &self,
        spec: &RunSpec,
        _scratch: &Path,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, BuildError> {
        if !self.run_writes_nothing.load(Ordering::SeqCst) {
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
        Ok(Exit::Code(self.exit_code.load(Ordering::SeqCst)))
    }

    fn copy(
        &self,
        rootfs: &Overlay,
        _source: &FsSource,
        job: &CopyJob,
        _scratch: &Path,
    ) -> Result<(), BuildError> {
        let extra = self.copy_extra.lock().unwrap().clone();
        write(
            &rootfs.upper,
            &job.dest,
            &format!("{:?}{extra}", job.sources),
        );
        self.record(Call::Copy {
            dest: job.dest.clone(),
            add: job.add,
        });
        Ok(())
    }

    fn workdir(
        &self,
        rootfs: &Overlay,
        path: &str,
        _user: &str,
        _scratch: &Path,
    ) -> Result<(), BuildError> {
        if !self.workdir_exists.load(Ordering::SeqCst) {
            let dir = rootfs.upper.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).unwrap();
            fixed_mtime(&dir);
        }
        self.record(Call::Workdir {
            path: path.to_string(),
        });
        Ok(())
    }

    fn commit(&self, store: &Store, upper: Upper<'_>) -> Result<(Digest, Digest), BuildError> {
        self.record(Call::Commit);
        commit_upper(store, upper)
    }
}
