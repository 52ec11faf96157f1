//! Multi-platform images: an OCI index blob listing one stored image per platform, tagged
//! like a single image (index.json's entry then has the index media type), as containerd's
//! image store and `buildah manifest` keep them.

use super::{ImageRecord, Result, Store, StoreError};
use crate::image::annotations::non_empty;
use crate::image::{canonical_json, media, Annotations, Descriptor, Digest, Index, Platform};

/// A stored index and the images it lists, in its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// The index blob.
    pub index: Descriptor,
    pub body: Index,
    pub images: Vec<ImageRecord>,
}

impl IndexRecord {
    /// The platforms of its images, in order (`linux/amd64`, `linux/arm64`).
    pub fn platforms(&self) -> Vec<Platform> {
        self.images.iter().map(|i| i.config.platform()).collect()
    }

    /// The image that stands for the index where one image is asked for (`history`, `save`
    /// without a platform): the host's, else the first, as docker with the containerd store.
    pub fn default_image(&self) -> &ImageRecord {
        let host = Platform::host();
        self.images
            .iter()
            .find(|i| i.config.platform().same_as(&host))
            .unwrap_or(&self.images[0])
    }

    /// The annotations it was written with (its `index` and `manifest-descriptor` ones), for
    /// writing it out again.
    pub fn annotations(&self) -> Annotations {
        let mut out = Annotations {
            index: self.body.annotations.clone().unwrap_or_default(),
            ..Annotations::default()
        };
        for d in &self.body.manifests {
            if let (Some(p), Some(a)) = (&d.platform, &d.annotations) {
                out.manifest_descriptor.insert(p.to_spec(), a.clone());
            }
        }
        out
    }

    /// Content bytes of its images' layers, each layer counted once.
    pub fn size(&self, store: &Store) -> u64 {
        let mut seen = std::collections::BTreeSet::new();
        self.images
            .iter()
            .flat_map(|i| i.chains.iter().zip(i.layer_sizes(store)))
            .filter(|(chain, _)| seen.insert((*chain).clone()))
            .map(|(_, size)| size)
            .sum()
    }
}

/// What a tag or digest names in the store: one image, or an index of several.
// A few at a time (one per tag or lookup): boxing the image would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Image(ImageRecord),
    Index(IndexRecord),
}

impl Stored {
    /// The manifest or index blob the tag points at.
    pub fn descriptor(&self) -> &Descriptor {
        match self {
            Stored::Image(i) => &i.manifest,
            Stored::Index(x) => &x.index,
        }
    }

    /// Every image it holds: the one, or the index's.
    pub fn images(&self) -> &[ImageRecord] {
        match self {
            Stored::Image(i) => std::slice::from_ref(i),
            Stored::Index(x) => &x.images,
        }
    }

    /// The image that stands for it where one is asked for (see
    /// [`IndexRecord::default_image`]).
    pub fn default_image(&self) -> &ImageRecord {
        match self {
            Stored::Image(i) => i,
            Stored::Index(x) => x.default_image(),
        }
    }

    /// What `images` shows as IMAGE ID: the config digest of an image (docker's image id),
    /// the index digest of an index (docker's with the containerd store).
    pub fn id(&self) -> &Digest {
        match self {
            Stored::Image(i) => &i.config_digest,
            Stored::Index(x) => &x.index.digest,
        }
    }
}

impl Store {
    /// Write an OCI index of `images` (already stored by [`Store::put_image`]), each entry
    /// with its image's platform and `manifest-descriptor` annotations, and the `index`
    /// annotations on it.
    pub fn put_index(
        &self,
        images: &[ImageRecord],
        annotations: &Annotations,
    ) -> Result<IndexRecord> {
        let manifests = images
            .iter()
            .map(|i| {
                let mut d = Descriptor::new(
                    &i.manifest.media_type,
                    i.manifest.digest.clone(),
                    i.manifest.size,
                );
                let platform = i.config.platform();
                d.annotations = non_empty(annotations.manifest_descriptor_for(&platform));
                d.platform = Some(platform);
                d
            })
            .collect();
        let body = Index {
            manifests,
            annotations: non_empty(annotations.index.clone()),
            ..Index::default()
        };
        let bytes = canonical_json(&body);
        let digest = self.put_blob_bytes(&bytes)?;
        Ok(IndexRecord {
            index: Descriptor::new(media::OCI_INDEX, digest, bytes.len() as u64),
            body,
            images: images.to_vec(),
        })
    }

    /// Load what the blob `digest` is: an image manifest, or an index whose images are all
    /// in the store.
    pub fn stored_by_digest(&self, digest: &Digest) -> Result<Stored> {
        match self.image_by_manifest(digest) {
            Ok(image) => Ok(Stored::Image(image)),
            Err(StoreError::NotAnImageManifest { media_type, .. })
                if media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST =>
            {
                self.index_by_digest(digest).map(Stored::Index)
            }
            Err(e) => Err(e),
        }
    }

    fn index_by_digest(&self, digest: &Digest) -> Result<IndexRecord> {
        let bytes = self.read_blob(digest)?;
        let body: Index = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            path: self.blob_path(digest),
            source,
        })?;
        let images = body
            .manifests
            .iter()
            .map(|d| self.image_by_manifest(&d.digest))
            .collect::<Result<Vec<_>>>()?;
        if images.is_empty() {
            return Err(StoreError::NotAnImageManifest {
                digest: digest.clone(),
                media_type: "an empty index".to_string(),
            });
        }
        let media_type = body
            .media_type
            .clone()
            .unwrap_or_else(|| media::OCI_INDEX.to_string());
        Ok(IndexRecord {
            index: Descriptor::new(&media_type, digest.clone(), bytes.len() as u64),
            body,
            images,
        })
    }
}
