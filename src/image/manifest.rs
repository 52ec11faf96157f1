//! Manifests, indexes and descriptors (OCI image spec and Docker schema 2 share the shape).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Digest;

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: None,
            urls: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI terms (`linux/amd64`, `linux/arm64/v8`...).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// `os/arch[/variant]` as `--platform` and `FROM --platform` give it, normalized as
    /// containerd's platforms.Normalize: `aarch64` is `arm64` (whose `v8` is its default
    /// and dropped), `x86_64` is `amd64`, a bare `arm` means `arm/v7`.
    pub fn parse(spec: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = spec.trim().split('/').collect();
        let (os, arch, variant) = match parts[..] {
            [os, arch] => (os, arch, None),
            [os, arch, variant] => (os, arch, Some(variant)),
            _ => {
                return Err(format!(
                    "invalid platform `{spec}`: expected OS/ARCH[/VARIANT]"
                ))
            }
        };
        if os.is_empty() || arch.is_empty() || variant == Some("") {
            return Err(format!(
                "invalid platform `{spec}`: expected OS/ARCH[/VARIANT]"
            ));
        }
        let os = os.to_ascii_lowercase();
        let (architecture, variant) = match (arch.to_ascii_lowercase().as_str(), variant) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64".to_string(), v),
            ("aarch64" | "arm64", Some("8" | "v8") | None) => ("arm64".to_string(), None),
            ("aarch64" | "arm64", v) => ("arm64".to_string(), v),
            ("armhf", _) => ("arm".to_string(), Some("v7")),
            ("armel", _) => ("arm".to_string(), Some("v6")),
            ("arm", None) => ("arm".to_string(), Some("v7")),
            ("i386" | "i686", v) => ("386".to_string(), v),
            (other, v) => (other.to_string(), v),
        };
        Ok(Platform {
            architecture,
            os,
            variant: variant.map(|v| v.to_ascii_lowercase()),
            os_version: None,
        })
    }

    /// Whether `other` names the same platform (the default variants spelt out or not).
    pub fn same_as(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| Platform::parse(&p.to_spec()).unwrap_or_else(|_| p.clone());
        norm(self) == norm(other)
    }

    /// `os_arch[_variant]`: the directory a local export writes this platform's files to.
    pub fn dir_name(&self) -> String {
        self.to_spec().replace('/', "_")
    }

    /// `os/arch[/variant]`.
    pub fn to_spec(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        }
    }
}
