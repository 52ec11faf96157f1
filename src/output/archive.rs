//! Docker archives and OCI image layouts.
//!
//! The docker archive is an OCI layout plus docker-save's `manifest.json` and `repositories`,
//! whose Config/Layers paths point into `blobs/sha256/`: docker 20.10 reads manifest.json,
//! OCI tools (skopeo, umoci, docker 25+) read index.json.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;

use super::provenance::Provenance;
use super::OutputError;
use crate::image::annotations::non_empty;
use crate::image::{
    canonical_json, media, Annotations, Descriptor, Digest, Index, Manifest, Reference,
    SourceDateEpoch,
};
use crate::layer::compress::Compression;
use crate::layer::tar::{Entry, Writer};
use crate::store::{ImageRecord, LayerBytes, Store};

/// Where a blob's bytes come from.
enum Blob {
    Layer(LayerBytes),
    Bytes(Vec<u8>),
}

/// Everything an archive or layout holds, by path.
struct Layout {
    /// Sorted by digest, each once, with its size.
    blobs: BTreeMap<Digest, (u64, Blob)>,
    /// Other files (index.json, oci-layout, manifest.json, repositories), sorted by name.
    files: BTreeMap<&'static str, Vec<u8>>,
}

/// docker-save's manifest.json entry.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// How an archive or layout encodes the image: the layers' codec and level, and the
/// `--annotation`s outside the manifests, put where BuildKit's OCI exporter puts them:
/// `manifest-descriptor` on the descriptors pointing at a manifest (index.json's entry of a
/// single image, the index's entries of several), `index` on the index, `index-descriptor`
/// on index.json's entry pointing at it.
pub(super) struct Encoding<'a> {
    pub compression: Compression,
    pub level: Option<i32>,
    pub annotations: &'a Annotations,
}

/// The layout of `images`: one image's manifest, or for several (one per platform) an index
/// blob listing their manifests with their platforms, as BuildKit's OCI exporter writes a
/// multi-platform build. index.json points at that manifest or index.
///
/// With `provenance` (one per image, in their order), an OCI layout also gets an attestation manifest per
/// image after the images' manifests, and is an index even for one image, as BuildKit's OCI
/// exporter writes it. A docker archive leaves them out: BuildKit's docker exporter keeps
/// only the host platform's manifest of that index, so `docker load` never sees them.
fn build_layout(
    store: &Store,
    images: &[ImageRecord],
    provenance: &[Provenance],
    tags: &[Reference],
    enc: &Encoding,
    docker: bool,
) -> Result<Layout, OutputError> {
    let attested = !docker && !provenance.is_empty();
    let mut blobs = BTreeMap::new();
    let mut manifests = Vec::with_capacity(images.len());
    let mut layers = Vec::with_capacity(images.len());
    for image in images {
        let (mut desc, image_layers) = add_image(store, image, enc, &mut blobs)?;
        let platform = image.config.platform();
        desc.annotations = non_empty(enc.annotations.manifest_descriptor_for(&platform));
        if images.len() > 1 || attested {
            desc.platform = Some(platform);
        }
        manifests.push(desc);
        layers.push(image_layers);
    }
    if attested {
        let mut attestations = Vec::with_capacity(images.len());
        // `provenance` is in the images' order, one each.
        for (((image, p), desc), image_layers) in
            images.iter().zip(provenance).zip(&manifests).zip(&layers)
        {
            let a = p.attestation(desc, image_layers, &image.config.platform(), tags);
            for (digest, bytes) in [
                a.statement,
                a.config,
                (a.descriptor.digest.clone(), a.manifest),
            ] {
                blobs.insert(digest, (bytes.len() as u64, Blob::Bytes(bytes)));
            }
            attestations.push(a.descriptor);
        }
        manifests.extend(attestations);
    }
    let manifest_desc = match &manifests[..] {
        [one] => one.clone(),
        _ => {
            let index_bytes = canonical_json(&Index {
                manifests,
                annotations: non_empty(enc.annotations.index.clone()),
                ..Index::default()
            });
            let mut desc = Descriptor::new(
                media::OCI_INDEX,
                Digest::of(&index_bytes),
                index_bytes.len() as u64,
            );
            desc.annotations = non_empty(enc.annotations.index_descriptor.clone());
            blobs.insert(desc.digest.clone(), (desc.size, Blob::Bytes(index_bytes)));
            desc
        }
    };
    // Only a single image is written as a docker archive (the caller refuses more).
    let image = &images[0];
    index_files(image, &layers[0], manifest_desc, tags, docker, blobs)
}

/// One image's layers, config and manifest into `blobs`: its manifest's descriptor and layers.
fn add_image(
    store: &Store,
    image: &ImageRecord,
    enc: &Encoding,
    blobs: &mut BTreeMap<Digest, (u64, Blob)>,
) -> Result<(Descriptor, Vec<Descriptor>), OutputError> {
    let (compression, level) = (enc.compression, enc.level);
    let mut layers = Vec::with_capacity(image.chains.len());
    for chain in &image.chains {
        let (desc, bytes) = store.layer_bytes(chain, compression, level)?;
        blobs.insert(desc.digest.clone(), (desc.size, Blob::Layer(bytes)));
        layers.push(desc);
    }
    // The stored config bytes, so the image id stays the same.
    let config_bytes = store.read_blob(&image.config_digest)?;
    let config = Descriptor::new(
        media::OCI_CONFIG,
        image.config_digest.clone(),
        config_bytes.len() as u64,
    );
    blobs.insert(
        image.config_digest.clone(),
        (config.size, Blob::Bytes(config_bytes)),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        config,
        layers: layers.clone(),
        // `--annotation manifest:K=V`, kept in the stored manifest.
        annotations: image.manifest_body.annotations.clone(),
    };
    let manifest_bytes = canonical_json(&manifest);
    let manifest_desc = Descriptor::new(
        media::OCI_MANIFEST,
        Digest::of(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    blobs.insert(
        manifest_desc.digest.clone(),
        (manifest_desc.size, Blob::Bytes(manifest_bytes)),
    );
    Ok((manifest_desc, layers))
}

/// index.json (pointing at `manifest_desc`, with its annotations, once per tag), oci-layout,
/// and for a docker archive manifest.json and repositories.
fn index_files(
    image: &ImageRecord,
    layers: &[Descriptor],
    manifest_desc: Descriptor,
    tags: &[Reference],
    docker: bool,
    blobs: BTreeMap<Digest, (u64, Blob)>,
) -> Result<Layout, OutputError> {
    // As BuildKit's exporters: the ref name is the tag, the full name goes in containerd's
    // annotation; one index entry per tag.
    let named: Vec<&Reference> = tags.iter().filter(|t| t.tag.is_some()).collect();
    let mut index = Index::default();
    if named.is_empty() {
        index.manifests.push(manifest_desc.clone());
    }
    for t in &named {
        let mut d = manifest_desc.clone();
        // The names are set last, so they win over a user's annotation of the same key.
        let annotations = d.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert("io.containerd.image.name".to_string(), t.to_string());
        annotations.insert(
            media::REF_NAME_ANNOTATION.to_string(),
            t.tag_or_latest().to_string(),
        );
        index.manifests.push(d);
    }

    let mut files = BTreeMap::new();
    files.insert("index.json", canonical_json(&index));
    files.insert("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    if docker {
        let repo_tags: Vec<String> = named
            .iter()
            .map(|t| {
                let mut t = (*t).clone();
                t.digest = None;
                t.familiar()
            })
            .collect();
        let entry = DockerSaveEntry {
            config: blob_name(&image.config_digest),
            repo_tags,
            layers: layers.iter().map(|l| blob_name(&l.digest)).collect(),
        };
        files.insert("manifest.json", canonical_json(&vec![entry]));
        // Legacy `repositories`: repo -> tag -> top layer id; docker load ignores it when
        // manifest.json is present, older tools read it.
        if let Some(top) = layers.last() {
            let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for t in &named {
                let mut bare = (*t).clone();
                bare.tag = None;
                bare.digest = None;
                repos
                    .entry(bare.familiar())
                    .or_default()
                    .insert(t.tag_or_latest().to_string(), top.digest.hex().to_string());
            }
            if !repos.is_empty() {
                files.insert("repositories", canonical_json(&repos));
            }
        }
    }
    Ok(Layout { blobs, files })
}

/// Write a docker archive (`docker: true`) or an OCI layout tar to `w`.
pub(super) fn write_archive(
    store: &Store,
    images: &[ImageRecord],
    provenance: &[Provenance],
    tags: &[Reference],
    enc: &Encoding,
    docker: bool,
    mut tar: DeterministicTar<&mut dyn Write>,
) -> Result<(), OutputError> {
    let layout = build_layout(store, images, provenance, tags, enc, docker)?;
    let out = "<archive>";
    tar.dir("blobs/").map_err(OutputError::io("writing", out))?;
    tar.dir("blobs/sha256/")
        .map_err(OutputError::io("writing", out))?;
    for (digest, (size, blob)) in &layout.blobs {
        let name = blob_name(digest);
        match blob {
            Blob::Bytes(b) => tar
                .file(&name, b.len() as u64, &b[..])
                .map_err(OutputError::io("writing", out))?,
            Blob::Layer(bytes) => {
                let mut reader = bytes.open()?;
                match tar.file_from(&name, *size, |w| reader.copy_to(w, *size)) {
                    Ok(()) => reader.finish()?,
                    // Short: the layer's verdict (a changed diff dir) explains it best.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        reader.finish()?;
                        return Err(OutputError::io("writing", out)(e));
                    }
                    // The archive failed (a full disk): no need to read the rest.
                    Err(e) => return Err(OutputError::io("writing", out)(e)),
                }
            }
        }
    }
    for (name, bytes) in &layout.files {
        tar.file(name, bytes.len() as u64, &bytes[..])
            .map_err(OutputError::io("writing", out))?;
    }
    tar.finish().map_err(OutputError::io("writing", out))
}

/// Write an OCI layout directory into `dir` (empty).
pub(super) fn write_layout_dir(
    store: &Store,
    images: &[ImageRecord],
    provenance: &[Provenance],
    tags: &[Reference],
    enc: &Encoding,
    dir: &Path,
) -> Result<(), OutputError> {
    let layout = build_layout(store, images, provenance, tags, enc, false)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(OutputError::io("creating", &blobs))?;
    for (digest, (_, blob)) in &layout.blobs {
        let dest = blobs.join(digest.hex());
        match blob {
            Blob::Bytes(b) => fs::write(&dest, b).map_err(OutputError::io("writing", &dest))?,
            Blob::Layer(LayerBytes::Blob(p)) => {
                fs::copy(p, &dest).map_err(OutputError::io("copying blob to", &dest))?;
            }
            Blob::Layer(bytes) => {
                let mut reader = bytes.open()?;
                let mut f = fs::File::create(&dest).map_err(OutputError::io("creating", &dest))?;
                reader
                    .copy_to(&mut f, u64::MAX)
                    .map_err(OutputError::io("writing", &dest))?;
                reader.finish()?;
            }
        }
    }
    for (name, bytes) in &layout.files {
        let dest = dir.join(name);
        fs::write(&dest, bytes).map_err(OutputError::io("writing", &dest))?;
    }
    Ok(())
}

/// The archive's own entries, through the layers' tar encoder: uid/gid 0, no user names,
/// fixed modes, mtime the build's SOURCE_DATE_EPOCH or 0.
pub(super) struct DeterministicTar<W: Write> {
    tar: Writer<W>,
    mtime: u64,
}

impl<W: Write> DeterministicTar<W> {
    pub(super) fn new(w: W, epoch: Option<SourceDateEpoch>) -> Self {
        DeterministicTar {
            tar: Writer::new(w),
            mtime: epoch.map_or(0, SourceDateEpoch::tar_mtime),
        }
    }

    fn entry(&self, name: &str, kind: tar::EntryType, mode: u32, size: u64) -> Entry {
        let mut e = Entry::new(name, kind, mode);
        e.mtime = self.mtime;
        e.size = size;
        e
    }

    pub(super) fn dir(&mut self, name: &str) -> io::Result<()> {
        let e = self.entry(name, tar::EntryType::Directory, 0o755, 0);
        self.tar.append(&e, io::empty())
    }

    pub(super) fn file(&mut self, name: &str, size: u64, data: impl Read) -> io::Result<()> {
        let e = self.entry(name, tar::EntryType::Regular, 0o644, size);
        self.tar.append(&e, data)
    }

    /// A regular file whose `size` bytes `copy` writes (returning how many it wrote): for
    /// data that comes in chunks, written on as they are. Fewer bytes than `size` is an error.
    pub(super) fn file_from(
        &mut self,
        name: &str,
        size: u64,
        copy: impl FnOnce(&mut dyn Write) -> io::Result<u64>,
    ) -> io::Result<()> {
        let e = self.entry(name, tar::EntryType::Regular, 0o644, size);
        self.tar.append_with(&e, |w| copy(w))
    }

    pub(super) fn finish(self) -> io::Result<()> {
        self.tar.finish().map(drop)
    }
}
