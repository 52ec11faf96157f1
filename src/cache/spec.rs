//! `--cache-to` and `--cache-from` values, as `docker buildx build` spells them.

use std::path::PathBuf;

use crate::image::Reference;
use crate::layer::Compression;

/// Which steps an export holds: the exported image's (`min`, BuildKit's default) or every
/// step of every stage built (`max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    Min,
    Max,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// `type=registry,ref=R`: a cache manifest pushed to R.
    Registry(Reference),
    /// `type=local,dest=DIR`: an OCI layout directory.
    Local(PathBuf),
    /// `type=inline`: the cache rides in the pushed image's manifest, in the annotation
    /// [`super::INLINE_ANNOTATION`] (mode=min only, as BuildKit's inline cache).
    Inline,
}

/// One `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    pub target: ExportTarget,
    pub mode: CacheMode,
    /// Of the layer blobs the export adds (gzip unless `compression=zstd`).
    pub compression: Compression,
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    pub ignore_error: bool,
}

/// One `--cache-from`: where to look for records, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheImport {
    /// `type=registry,ref=R` or a bare `R`.
    Registry(Reference),
    /// `type=local,src=DIR`.
    Local(PathBuf),
}

/// BuildKit attributes that change nothing here (rbuild always writes OCI media types and
/// an image manifest): accepted so buildx command lines work unchanged.
const IGNORED: &[&str] = &[
    "oci-mediatypes",
    "image-manifest",
    "compression-level",
    "force-compression",
];

/// `KEY=VALUE,...` into pairs; a value may not be empty.
fn fields(spec: &str) -> Result<Vec<(&str, &str)>, String> {
    spec.split(',')
        .map(|f| match f.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.trim(), v.trim())),
            _ => Err(format!("`{f}`: expected KEY=VALUE")),
        })
        .collect()
}

/// The `type=` of `fields`, one of `known`.
fn kind_of<'a>(fields: &[(&str, &'a str)], known: &[&str]) -> Result<&'a str, String> {
    let expected = known.join(" or ");
    match fields.iter().find(|(k, _)| *k == "type").map(|(_, v)| *v) {
        Some(t) if known.contains(&t) => Ok(t),
        Some("inline") => Err(format!(
            "type=inline is not a source: name the image (`--cache-from REF`) or use {expected}"
        )),
        Some(t) => Err(format!("type `{t}`: expected {expected}")),
        None => Err(format!("missing type= ({expected})")),
    }
}

fn reference(value: &str) -> Result<Reference, String> {
    value
        .parse::<Reference>()
        .map_err(|e| format!("ref `{value}`: {e}"))
}

/// Parse a `--cache-to` value.
pub fn parse_cache_to(spec: &str) -> Result<CacheExport, String> {
    let fields = fields(spec)?;
    let kind = kind_of(&fields, &["registry", "local", "inline"])?;
    let (mut reference_, mut dest) = (None, None);
    let mut mode = CacheMode::Min;
    let mut compression = Compression::Gzip;
    let mut ignore_error = false;
    for (k, v) in fields {
        match k {
            "type" => {}
            "ref" => reference_ = Some(reference(v)?),
            "dest" => dest = Some(PathBuf::from(v)),
            "mode" => {
                mode = match v {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    _ => return Err(format!("mode `{v}`: expected min or max")),
                }
            }
            "compression" => {
                compression = match v {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    _ => return Err(format!("compression `{v}`: expected gzip or zstd")),
                }
            }
            "ignore-error" => {
                ignore_error = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("ignore-error `{v}`: expected true or false")),
                }
            }
            k if IGNORED.contains(&k) => {}
            _ => return Err(format!("unknown attribute `{k}`")),
        }
    }
    let target = match kind {
        "registry" => ExportTarget::Registry(
            reference_.ok_or("type=registry needs ref=REGISTRY/REPOSITORY[:TAG]")?,
        ),
        "inline" if mode == CacheMode::Max => {
            return Err(
                "type=inline supports mode=min only (as BuildKit's); use type=registry \
                        for mode=max"
                    .to_string(),
            )
        }
        "inline" => ExportTarget::Inline,
        _ => ExportTarget::Local(dest.ok_or("type=local needs dest=DIR")?),
    };
    Ok(CacheExport {
        target,
        mode,
        compression,
        ignore_error,
    })
}

/// Parse a `--cache-from` value: `type=registry,ref=R`, `type=local,src=DIR` or a bare
/// reference.
pub fn parse_cache_from(spec: &str) -> Result<CacheImport, String> {
    if !spec.contains('=') {
        return Ok(CacheImport::Registry(reference(spec)?));
    }
    let fields = fields(spec)?;
    let kind = kind_of(&fields, &["registry", "local"])?;
    let (mut reference_, mut src) = (None, None);
    for (k, v) in fields {
        match k {
            "type" => {}
            "ref" => reference_ = Some(reference(v)?),
            "src" => src = Some(PathBuf::from(v)),
            // BuildKit's local cache picks a tag or digest of its index; rbuild writes one.
            "tag" | "digest" => {}
            _ => return Err(format!("unknown attribute `{k}`")),
        }
    }
    match kind {
        "registry" => Ok(CacheImport::Registry(
            reference_.ok_or("type=registry needs ref=REGISTRY/REPOSITORY[:TAG]")?,
        )),
        _ => Ok(CacheImport::Local(src.ok_or("type=local needs src=DIR")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_to_as_buildx_spells_it() {
        let e = parse_cache_to("type=registry,ref=localhost:5000/app:cache,mode=max").unwrap();
        assert_eq!(
            e.target,
            ExportTarget::Registry("localhost:5000/app:cache".parse().unwrap())
        );
        assert_eq!(e.mode, CacheMode::Max);
        assert_eq!(e.compression, Compression::Gzip);
        assert!(!e.ignore_error);
        let e = parse_cache_to(
            "type=local,dest=/tmp/c,compression=zstd,ignore-error=true,oci-mediatypes=true",
        )
        .unwrap();
        assert_eq!(e.target, ExportTarget::Local("/tmp/c".into()));
        assert_eq!(e.mode, CacheMode::Min);
        assert_eq!(e.compression, Compression::Zstd);
        assert!(e.ignore_error);
    }

    #[test]
    fn cache_to_errors_name_the_value() {
        for (spec, want) in [
            ("type=registry", "needs ref="),
            ("type=local", "needs dest="),
            ("type=s3,bucket=x", "type `s3`"),
            ("type=inline,mode=max", "mode=min only"),
            ("type=registry,ref=r/x,mode=all", "mode `all`"),
            ("type=local,dest=d,compression=lz4", "compression `lz4`"),
            ("type=local,dest=d,ignore-error=yes", "ignore-error `yes`"),
            ("type=local,dest=d,colour=red", "`colour`"),
            ("ref=r/x", "missing type="),
            ("type=local,dest", "`dest`"),
            ("type=registry,ref=UPPER/x", "ref `UPPER/x`"),
        ] {
            let e = parse_cache_to(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn cache_from_bare_reference_registry_and_local() {
        assert_eq!(
            parse_cache_from("localhost:5000/app:1").unwrap(),
            CacheImport::Registry("localhost:5000/app:1".parse().unwrap())
        );
        assert_eq!(
            parse_cache_from("type=registry,ref=localhost:5000/c").unwrap(),
            CacheImport::Registry("localhost:5000/c".parse().unwrap())
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            CacheImport::Local("/c".into())
        );
        assert!(parse_cache_from("type=local").unwrap_err().contains("src="));
        assert!(parse_cache_from("type=gha").unwrap_err().contains("`gha`"));
        assert_eq!(
            parse_cache_to("type=inline").unwrap().target,
            ExportTarget::Inline
        );
    }
}
