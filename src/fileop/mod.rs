//! File operations that write an image root: COPY and ADD (`copy`), WORKDIR's directory,
//! run inside the sandbox helper over the step's overlay as one typed job ([`FileJob`]).
//! Reading the build context (ignore files, walking, digests) is `context`'s; this module
//! only writes.

pub mod copy;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use copy::{copy, CopyError, CopyJob, CopySrc, CopyStats};

use crate::sandbox::root::{Created, Kind, Root};
use crate::sandbox::user::UserError;
use crate::sandbox::FsJob;

/// A file operation for the sandbox helper; the rbuild binary's helper runs these
/// (`sandbox::helper_main::<FileJob>()`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FileJob {
    /// COPY/ADD from the job's one source.
    Copy(CopyJob),
    /// `mkdir -p` inside the root, symlinks resolved inside it.
    Mkdir(MkdirJob),
    /// WORKDIR's directory, owned by the stage's USER.
    Workdir(WorkdirJob),
}

/// `mkdir -p` of `path`, created directories owned by uid:gid with `mode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MkdirJob {
    pub path: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default = "default_dir_mode")]
    pub mode: u32,
}

fn default_dir_mode() -> u32 {
    0o755
}

/// WORKDIR creates its directory owned by the stage's USER (names resolved from the
/// image's passwd and group), as BuildKit does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkdirJob {
    pub path: String,
    pub user: String,
}

/// What a [`FileJob`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileJobOutput {
    Copied(CopyStats),
    /// The root-relative paths a mkdir or WORKDIR created, parents first.
    Created(Vec<String>),
}

/// Why a [`FileJob`] failed; it crosses the pipe from the helper as this type.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum FileJobError {
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("opening {}: {source}", root.display())]
    OpenRoot {
        root: PathBuf,
        #[serde(with = "crate::sandbox::wire::io_error")]
        source: io::Error,
    },
    #[error("mkdir {path}: {source}")]
    Mkdir {
        path: String,
        #[serde(with = "crate::sandbox::wire::io_error")]
        source: io::Error,
    },
    /// WORKDIR's USER (runc's wording).
    #[error(transparent)]
    User(#[from] UserError),
    #[error("the copy job has no source")]
    NoSource,
}

impl FsJob for FileJob {
    type Output = FileJobOutput;
    type Error = FileJobError;

    fn run(self, root: &Path, sources: &[PathBuf]) -> Result<FileJobOutput, FileJobError> {
        match self {
            FileJob::Copy(job) => {
                let source = sources.first().ok_or(FileJobError::NoSource)?;
                Ok(FileJobOutput::Copied(copy(&job, source, root)?))
            }
            FileJob::Mkdir(job) => mkdir(root, &job.path, job.mode, (job.uid, job.gid)),
            FileJob::Workdir(job) => {
                let image = open(root)?;
                // Files that cannot be read count as absent here, as they always have.
                let user = image.user_db().unwrap_or_default().resolve(&job.user)?;
                mkdir(root, &job.path, default_dir_mode(), (user.uid, user.gid))
            }
        }
    }
}

fn open(root: &Path) -> Result<Root, FileJobError> {
    Root::open(root).map_err(|source| FileJobError::OpenRoot {
        root: root.to_path_buf(),
        source,
    })
}

fn mkdir(
    root: &Path,
    path: &str,
    mode: u32,
    owner: (u32, u32),
) -> Result<FileJobOutput, FileJobError> {
    let mut created = Vec::new();
    open(root)?
        .ensure(
            path,
            Kind::Dir,
            mode,
            Created {
                owner: Some(owner),
                ..Created::default()
            },
            &mut created,
        )
        .map_err(|source| FileJobError::Mkdir {
            path: path.to_string(),
            source,
        })?;
    Ok(FileJobOutput::Created(created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Jobs and their errors cross the pipe typed: what the helper sends is what the parent
    /// gets back, variant and data.
    #[test]
    fn jobs_and_errors_round_trip_typed() {
        let job = FileJob::Workdir(WorkdirJob {
            path: "/w".into(),
            user: "app".into(),
        });
        let back: FileJob = serde_json::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        assert!(matches!(back, FileJob::Workdir(w) if w.path == "/w" && w.user == "app"));
        let errors = [
            FileJobError::User(UserError::NoUser("app".into())),
            FileJobError::Copy(CopyError::UnknownGroup("g".into())),
            FileJobError::Copy(CopyError::Context(crate::context::ContextError::NotFound(
                "x".into(),
            ))),
            FileJobError::Mkdir {
                path: "/a".into(),
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            },
        ];
        for e in errors {
            let wire = serde_json::to_vec(&e).unwrap();
            let back: FileJobError = serde_json::from_slice(&wire).unwrap();
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e}"
            );
        }
        let err: FileJobError = serde_json::from_slice(
            &serde_json::to_vec(&FileJobError::Copy(CopyError::UnknownUser("nobody".into())))
                .unwrap(),
        )
        .unwrap();
        assert!(matches!(err, FileJobError::Copy(CopyError::UnknownUser(u)) if u == "nobody"));
    }

    #[test]
    #[ignore = "needs root"]
    fn workdir_is_owned_by_the_user_and_stays_inside() {
        crate::layer::testutil::needs_root();
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "app:x:7:8::/home/app:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../..", root.join("esc")).unwrap();
        let job = FileJob::Workdir(WorkdirJob {
            path: "/esc/w/x".into(),
            user: "app".into(),
        });
        let out = job.run(&root, &[]).unwrap();
        assert_eq!(out, FileJobOutput::Created(vec!["w".into(), "w/x".into()]));
        let m = std::fs::metadata(root.join("w/x")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o755));
        let job = FileJob::Workdir(WorkdirJob {
            path: "/v".into(),
            user: "nobody".into(),
        });
        assert!(matches!(
            job.run(&root, &[]),
            Err(FileJobError::User(UserError::NoUser(_)))
        ));
    }
}
