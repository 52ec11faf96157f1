//! Image writers for `--output` and `save` (design.md "Outputs"): docker archive (also an OCI
//! layout), OCI layout (tar or directory), and the merged root filesystem (directory or tar).
//!
//! Every output is written under a temporary name beside its destination and renamed into
//! place, so a failed write leaves nothing at the destination. Archive metadata entries are
//! deterministic (sorted, uid/gid 0, mtime SOURCE_DATE_EPOCH or 0): the same image gives the
//! same bytes.

mod archive;
mod commands;
mod history;
pub mod provenance;
mod rootfs;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::image::{Annotations, Digest, Reference, SourceDateEpoch};
use crate::layer::compress::Compression;
use crate::store::{ImageRecord, Store, StoreError};

pub use commands::{
    format_images, format_usage, human_size, image_rows, inspect, inspect_index, save, ImageRow,
};
pub use history::{
    build_cost_line, history, render_history, HistoryEntry, HistoryReport, LayerReport, Summary,
    HISTORY_SCHEMA,
};
pub use rootfs::{merged_entries, MergedEntry};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// docker-save archive that is also an OCI layout.
    Docker { dest: PathBuf },
    /// OCI image layout, as a tar (`tar: true`) or a directory.
    Oci { dest: PathBuf, tar: bool },
    /// The image's root filesystem as a directory.
    Local { dest: PathBuf },
    /// The image's root filesystem as a tar.
    Tar { dest: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    /// Layer codec; `None` is the kind's default (docker: uncompressed, OCI: gzip).
    pub compression: Option<Compression>,
    /// Level for layer blobs that must be made (an existing blob in the codec is reused).
    pub level: Option<i32>,
    /// `--annotation`: the descriptor and index ones are the outputs' to write (the
    /// manifest's own are in the stored manifest).
    pub annotations: Annotations,
}

impl OutputSpec {
    /// `kind` with its default codec and no annotations.
    pub fn plain(kind: OutputKind) -> OutputSpec {
        OutputSpec {
            kind,
            compression: None,
            level: None,
            annotations: Annotations::default(),
        }
    }

    fn encoding(&self, default: Compression) -> archive::Encoding<'_> {
        archive::Encoding {
            compression: self.compression.unwrap_or(default),
            level: self.level,
            annotations: &self.annotations,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("invalid output `{spec}`: {reason}")]
    Parse { spec: String, reason: String },
    #[error("{action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error("layer {chain} has no extracted directory in the store")]
    LayerMissing { chain: Digest },
    #[error("no image `{0}` in the store")]
    NoSuchImage(String),
    #[error("output to `{0}` is a directory and cannot be streamed")]
    NotAStream(PathBuf),
    #[error("destination `{0}` is a directory; this output writes a file")]
    DestIsDir(PathBuf),
    #[error(
        "a docker archive holds one platform, and this build made several ({0}): \
         use `-o type=oci,dest=FILE` (an index of them) or `--push`"
    )]
    MultiPlatformDocker(String),
}

impl OutputError {
    /// The same error naming the user's destination instead of where the output was staged:
    /// a path under `staged` becomes the same path under `dest`, and a stream label
    /// (`<archive>`, `<rootfs tar>`) becomes `dest` itself.
    fn at_dest(self, staged: &Path, dest: &Path) -> OutputError {
        match self {
            OutputError::Io {
                action,
                path,
                source,
            } => {
                let is_label = path
                    .to_str()
                    .is_some_and(|p| p.starts_with('<') && p.ends_with('>'));
                let path = match path.strip_prefix(staged) {
                    Ok(rest) if rest.as_os_str().is_empty() => dest.to_path_buf(),
                    Ok(rest) => dest.join(rest),
                    Err(_) if is_label => dest.to_path_buf(),
                    Err(_) => path,
                };
                OutputError::Io {
                    action,
                    path,
                    source,
                }
            }
            other => other,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> OutputError {
        let path = path.into();
        move |source| OutputError::Io {
            action,
            path,
            source,
        }
    }
}

/// Parse an `--output` value: `type=docker|oci|local|tar,dest=..[,tar=false][,compression=..]
/// [,compression-level=N]`, or the shorthands `F.tar` (docker archive), `-` (rootfs tar on
/// stdout) and `DIR` (local).
pub fn parse_output(s: &str) -> Result<OutputSpec, OutputError> {
    let err = |reason: &str| OutputError::Parse {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(err("empty"));
    }
    if !s.contains('=') {
        let dest = PathBuf::from(s);
        let kind = if s == "-" {
            OutputKind::Tar { dest }
        } else if s.ends_with(".tar") {
            OutputKind::Docker { dest }
        } else {
            OutputKind::Local { dest }
        };
        return Ok(OutputSpec::plain(kind));
    }
    let mut kind = None;
    let mut dest = None;
    let mut tar = None;
    let mut compression = None;
    let mut level = None;
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| err(&format!("`{field}` is not key=value")))?;
        match k.trim() {
            "type" => kind = Some(v.to_string()),
            "dest" => dest = Some(PathBuf::from(v)),
            "tar" => {
                tar = Some(match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(err("tar must be true or false")),
                })
            }
            "compression" => {
                compression = Some(
                    Compression::parse(v)
                        .ok_or_else(|| err("compression must be gzip, zstd or uncompressed"))?,
                )
            }
            "compression-level" => {
                level = Some(
                    v.parse::<i32>()
                        .map_err(|_| err("compression-level must be an integer"))?,
                )
            }
            other => return Err(err(&format!("unknown option `{other}`"))),
        }
    }
    let kind = kind.ok_or_else(|| err("missing type="))?;
    let dest = dest.ok_or_else(|| err("missing dest="))?;
    let kind = match kind.as_str() {
        "docker" => OutputKind::Docker { dest },
        "oci" => OutputKind::Oci {
            dest,
            tar: tar.unwrap_or(true),
        },
        "local" => OutputKind::Local { dest },
        "tar" => OutputKind::Tar { dest },
        "image" | "registry" => return Err(err("use --push to send the image to a registry")),
        other => {
            return Err(err(&format!(
                "unknown type `{other}` (docker, oci, local, tar)"
            )))
        }
    };
    if tar.is_some() && !matches!(kind, OutputKind::Oci { .. }) {
        return Err(err("tar= only applies to type=oci"));
    }
    // The rootfs outputs write files, not layer blobs: a codec would be silently ignored.
    if let OutputKind::Local { .. } | OutputKind::Tar { .. } = kind {
        let rootfs_type = if matches!(kind, OutputKind::Local { .. }) {
            "type=local"
        } else {
            "type=tar"
        };
        for (option, given) in [
            ("compression=", compression.is_some()),
            ("compression-level=", level.is_some()),
        ] {
            if given {
                return Err(err(&format!(
                    "{option} only applies to type=docker and type=oci ({rootfs_type} writes \
                     files, not layer blobs)"
                )));
            }
        }
    }
    Ok(OutputSpec {
        kind,
        compression,
        level,
        annotations: Annotations::default(),
    })
}

/// Write `image` (tagged `tags`, which name it inside archives) as `spec` asks; `epoch`
/// (the build's SOURCE_DATE_EPOCH) dates an archive's own entries, else they get 0.
pub fn write(
    store: &Store,
    image: &ImageRecord,
    tags: &[Reference],
    spec: &OutputSpec,
    epoch: Option<SourceDateEpoch>,
) -> Result<(), OutputError> {
    write_all(store, std::slice::from_ref(image), &[], tags, spec, epoch)
}

/// [`write`] for the images of a multi-platform build, one per platform: OCI outputs get an
/// index of them, `local` and `tar` a directory per platform (`linux_arm64/`); a docker
/// archive holds one image only and is refused. With `provenance` (one per image, in their
/// order, or none) OCI outputs also get an attestation manifest per image in their index and
/// `local` a `provenance.json` beside each image's files (output/provenance.rs); a docker
/// archive and `tar` leave them out.
pub fn write_all(
    store: &Store,
    images: &[ImageRecord],
    provenance: &[provenance::Provenance],
    tags: &[Reference],
    spec: &OutputSpec,
    epoch: Option<SourceDateEpoch>,
) -> Result<(), OutputError> {
    check_platforms(images, spec)?;
    match &spec.kind {
        OutputKind::Docker { dest }
        | OutputKind::Oci { dest, tar: true }
        | OutputKind::Tar { dest } => write_file(dest, |w| {
            write_all_to(store, images, provenance, tags, spec, epoch, w)
        }),
        OutputKind::Oci { dest, tar: false } => write_dir(dest, |dir| {
            let enc = spec.encoding(Compression::Gzip);
            archive::write_layout_dir(store, images, provenance, tags, &enc, dir)
        }),
        OutputKind::Local { dest } => write_dir(dest, |dir| {
            for (i, (image, prefix)) in images.iter().zip(platform_dirs(images)).enumerate() {
                let root = dir.join(&prefix);
                if !prefix.as_os_str().is_empty() {
                    fs::create_dir(&root).map_err(OutputError::io("creating", &root))?;
                }
                let entries = rootfs::merged_entries(store, &image.chains)?;
                rootfs::materialize(&entries, &root)?;
                if let Some(p) = provenance.get(i) {
                    provenance::write_beside_files(p, &image.manifest_body.layers, &root)?;
                }
            }
            Ok(())
        }),
    }
}

/// Where each image's files go in a `local` or `tar` output: the root for a single image,
/// `os_arch[_variant]` for each of several.
fn platform_dirs(images: &[ImageRecord]) -> Vec<PathBuf> {
    match images {
        [_] => vec![PathBuf::new()],
        _ => images
            .iter()
            .map(|i| PathBuf::from(i.config.platform().dir_name()))
            .collect(),
    }
}

fn check_platforms(images: &[ImageRecord], spec: &OutputSpec) -> Result<(), OutputError> {
    let names: Vec<String> = images
        .iter()
        .map(|i| i.config.platform().to_spec())
        .collect();
    check_platform_count(spec, &names)
}

/// Whether `spec` can hold the images of `platforms` (`os/arch` each): a docker archive holds
/// one. Checked before a build, so that it does not run for nothing.
pub fn check_platform_count(spec: &OutputSpec, platforms: &[String]) -> Result<(), OutputError> {
    if platforms.len() > 1 && matches!(spec.kind, OutputKind::Docker { .. }) {
        return Err(OutputError::MultiPlatformDocker(platforms.join(", ")));
    }
    Ok(())
}

/// Stream a file-shaped output (docker archive, OCI tar, rootfs tar) into `w`, e.g. a pipe
/// to `docker load`; `spec`'s destination is ignored. Directory outputs are refused.
pub fn write_to(
    store: &Store,
    image: &ImageRecord,
    tags: &[Reference],
    spec: &OutputSpec,
    epoch: Option<SourceDateEpoch>,
    w: &mut dyn Write,
) -> Result<(), OutputError> {
    write_all_to(
        store,
        std::slice::from_ref(image),
        &[],
        tags,
        spec,
        epoch,
        w,
    )
}

/// [`write_to`] for several images, with their provenance (see [`write_all`]).
pub fn write_all_to(
    store: &Store,
    images: &[ImageRecord],
    provenance: &[provenance::Provenance],
    tags: &[Reference],
    spec: &OutputSpec,
    epoch: Option<SourceDateEpoch>,
    w: &mut dyn Write,
) -> Result<(), OutputError> {
    check_platforms(images, spec)?;
    match &spec.kind {
        OutputKind::Docker { .. } => {
            let enc = spec.encoding(Compression::Uncompressed);
            let tar = archive::DeterministicTar::new(w, epoch);
            archive::write_archive(store, images, provenance, tags, &enc, true, tar)
        }
        OutputKind::Oci { tar: true, .. } => {
            let enc = spec.encoding(Compression::Gzip);
            let tar = archive::DeterministicTar::new(w, epoch);
            archive::write_archive(store, images, provenance, tags, &enc, false, tar)
        }
        OutputKind::Tar { .. } => {
            let mut entries = Vec::new();
            for (image, prefix) in images.iter().zip(platform_dirs(images)) {
                let mut mine = rootfs::merged_entries(store, &image.chains)?;
                if !prefix.as_os_str().is_empty() {
                    for e in &mut mine {
                        e.path = prefix.join(&e.path);
                    }
                }
                entries.extend(mine);
            }
            rootfs::write_tar(&entries, w)
        }
        OutputKind::Oci { dest, tar: false } | OutputKind::Local { dest } => {
            Err(OutputError::NotAStream(dest.clone()))
        }
    }
}

/// Write a file output via a temporary file beside `dest` (or to stdout for `-`).
fn write_file(
    dest: &Path,
    f: impl FnOnce(&mut dyn Write) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    if dest == Path::new("-") {
        let stdout = io::stdout();
        let mut lock = io::BufWriter::new(stdout.lock());
        f(&mut lock)?;
        return lock.flush().map_err(OutputError::io("writing", "<stdout>"));
    }
    if dest.is_dir() {
        return Err(OutputError::DestIsDir(dest.to_path_buf()));
    }
    let parent = parent_dir(dest);
    fs::create_dir_all(&parent).map_err(OutputError::io("creating", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".rbuild-out-")
        .tempfile_in(&parent)
        .map_err(|e| OutputError::io("writing", dest)(without_path(e)))?;
    // Like `docker save -o`: complete before it is renamed into place, so a failed or
    // killed build never leaves part of an archive at `dest`; not fsynced, which would
    // wait ~2 s per 600 MB here for a file that can be written again (docs/performance.md).
    {
        let mut w = io::BufWriter::with_capacity(256 * 1024, tmp.as_file());
        f(&mut w)
            .and_then(|()| w.flush().map_err(OutputError::io("writing", tmp.path())))
            .map_err(|e| e.at_dest(tmp.path(), dest))?;
    }
    tmp.persist(dest)
        .map_err(|e| OutputError::io("renaming into", dest)(e.error))?;
    // tempfile creates 0600 files; an image archive is not a secret.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o644))
        .map_err(OutputError::io("setting permissions of", dest))
}

/// Write a directory output in a temporary directory beside `dest`, then move it into place.
/// An existing `dest` is merged into as BuildKit does: each top-level entry we write replaces
/// the one of the same name; others are left alone.
pub(crate) fn write_dir(
    dest: &Path,
    f: impl FnOnce(&Path) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let parent = parent_dir(dest);
    fs::create_dir_all(&parent).map_err(OutputError::io("creating", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".rbuild-out-")
        .tempdir_in(&parent)
        .map_err(|e| OutputError::io("writing", dest)(without_path(e)))?;
    let staged = tmp.path().join("out");
    fs::create_dir(&staged).map_err(OutputError::io("writing", dest))?;
    f(&staged).map_err(|e| e.at_dest(&staged, dest))?;
    let is_empty_dir = |p: &Path| {
        fs::read_dir(p)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    };
    if !dest.exists() || (dest.is_dir() && is_empty_dir(dest)) {
        if dest.exists() {
            fs::remove_dir(dest).map_err(OutputError::io("replacing", dest))?;
        }
        // The root dir of the image keeps its mode (tempdir made it 0700).
        return fs::rename(&staged, dest).map_err(OutputError::io("renaming into", dest));
    }
    if !dest.is_dir() {
        return Err(OutputError::Io {
            action: "writing directory output to",
            path: dest.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        });
    }
    let trash = tmp.path().join("old");
    fs::create_dir(&trash).map_err(OutputError::io("creating", &trash))?;
    let mut names: Vec<_> = fs::read_dir(&staged)
        .map_err(OutputError::io("listing", &staged))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(OutputError::io("listing", &staged))?;
    names.sort();
    for name in names {
        let target = dest.join(&name);
        if target.symlink_metadata().is_ok() {
            fs::rename(&target, trash.join(&name))
                .map_err(OutputError::io("replacing", &target))?;
        }
        fs::rename(staged.join(&name), &target)
            .map_err(OutputError::io("renaming into", &target))?;
    }
    Ok(())
}

/// tempfile's errors end in `at path "/dir/.rbuild-out-XXXX"`, a name the user never gave:
/// keep only the system's error. (tempfile wraps it in a private type whose `source()` skips
/// the `io::Error` itself, so the text is all there is to go by.)
fn without_path(e: io::Error) -> io::Error {
    let text = e.to_string();
    match text.rsplit_once(" at path \"") {
        Some((system, _)) => io::Error::new(e.kind(), system.to_string()),
        None => e,
    }
}

fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests;
