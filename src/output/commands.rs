//! Library side of the `images`, `inspect` and `save` subcommands (`rmi` and `prune` are
//! [`Store::rmi`] and [`Store::prune`]). Nothing here prints; the CLI does.

use std::time::{Duration, SystemTime};

use super::{write, write_all, OutputError, OutputKind, OutputSpec};
use crate::image::{Reference, SourceDateEpoch};
use crate::store::{Store, Stored};

/// One line of `rbuild images`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRow {
    /// Familiar repository name (`busybox`, `localhost:5000/app`).
    pub repository: String,
    /// The tag, `<none>` for a digest-only reference.
    pub tag: String,
    /// 12 hex digits of the config digest, or of a multi-platform image's index digest.
    pub image_id: String,
    /// The config's `created` (RFC 3339), if any (of a multi-platform image: the newest).
    pub created: Option<String>,
    /// Content bytes of the image's layers (each layer once).
    pub size: u64,
    /// The image's platforms (`linux/amd64`), one per image of a multi-platform image.
    pub platforms: Vec<String>,
}

/// Rows for every tag, sorted by reference: one per tag, a multi-platform image's too.
pub fn image_rows(store: &Store) -> Result<Vec<ImageRow>, OutputError> {
    let mut rows = Vec::new();
    for (reference, stored) in store.tagged()? {
        let mut bare = reference.clone();
        bare.tag = None;
        bare.digest = None;
        let images = stored.images();
        let size = match &stored {
            Stored::Image(image) => image.size(store),
            Stored::Index(index) => index.size(store),
        };
        rows.push(ImageRow {
            repository: bare.familiar(),
            tag: reference
                .tag
                .clone()
                .unwrap_or_else(|| "<none>".to_string()),
            image_id: stored.id().short().to_string(),
            created: images.iter().filter_map(|i| i.config.created.clone()).max(),
            size,
            platforms: images
                .iter()
                .map(|i| i.config.platform().to_spec())
                .collect(),
        });
    }
    Ok(rows)
}

/// Docker's size format: decimal units, three significant digits (`5.23MB`, `812kB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    // Go's %.3g, as docker's CLI (units.HumanSizeWithPrecision(size, 3)): three
    // significant digits, no trailing zeros.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[unit])
}

/// "5 minutes ago" style, as `docker images` shows CREATED.
fn ago(created: Option<&str>, now: SystemTime) -> String {
    let Some(then) = created.and_then(|c| humantime::parse_rfc3339_weak(c).ok()) else {
        return "N/A".to_string();
    };
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    let (n, unit) = match secs {
        0..=59 => return "Less than a minute ago".to_string(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=1_209_599 => (secs / 86_400, "day"),
        1_209_600..=5_183_999 => (secs / 604_800, "week"),
        5_184_000..=63_071_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// The `images` table (header included), columns padded as docker pads them. When a
/// multi-platform image is among them, a last column PLATFORMS lists each row's platforms
/// (docker 20.10's table has no such column, and keeps its five otherwise).
pub fn format_images(rows: &[ImageRow], now: SystemTime) -> String {
    let several = rows.iter().any(|r| r.platforms.len() > 1);
    let mut header = vec![
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "CREATED".to_string(),
        "SIZE".to_string(),
    ];
    if several {
        header.push("PLATFORMS".to_string());
    }
    let mut table = vec![header];
    for r in rows {
        let mut row = vec![
            r.repository.clone(),
            r.tag.clone(),
            r.image_id.clone(),
            ago(r.created.as_deref(), now),
            human_size(r.size),
        ];
        if several {
            row.push(r.platforms.join(","));
        }
        table.push(row);
    }
    columns(&table)
}

/// A table as docker prints one: every column but the last padded to its widest cell and
/// followed by three spaces, lines trimmed at the end (`images`, `history`).
pub(super) fn columns<R: AsRef<[String]>>(rows: &[R]) -> String {
    let count = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; count];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let r = r.as_ref();
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `inspect`: the image as JSON: `Id` (config digest), `RepoTags`, `Digest` (manifest),
/// `Manifest`, `Config`, `Size`.
/// `rbuild du`: TYPE, COUNT, SIZE per kind. Images share layers with each other and are
/// the layers' content again, so the total is what is on disk: everything but images.
/// The reclaimable row (what a prune could free) comes after the total.
pub fn format_usage(usage: &[crate::store::Usage]) -> String {
    use crate::store::RECLAIMABLE;
    let row = |u: &crate::store::Usage| {
        vec![u.kind.to_string(), u.count.to_string(), human_size(u.bytes)]
    };
    let (reclaimable, kinds): (Vec<_>, Vec<_>) = usage.iter().partition(|u| u.kind == RECLAIMABLE);
    let mut rows = vec![vec!["TYPE".to_string(), "COUNT".into(), "SIZE".into()]];
    rows.extend(kinds.iter().map(|u| row(u)));
    let total: u64 = kinds
        .iter()
        .filter(|u| u.kind != "Images")
        .map(|u| u.bytes)
        .sum();
    rows.push(vec![
        "Total on disk".into(),
        String::new(),
        human_size(total),
    ]);
    rows.extend(reclaimable.iter().map(|u| row(u)));
    columns(&rows)
}

/// The tags naming the manifest or index `digest`, familiar (`RepoTags`).
fn tags_of(store: &Store, digest: &crate::image::Digest) -> Result<Vec<String>, OutputError> {
    Ok(store
        .tags()?
        .into_iter()
        .filter(|(_, d)| &d.digest == digest)
        .map(|(r, _)| r.familiar())
        .collect())
}

pub fn inspect(store: &Store, reference_or_id: &str) -> Result<serde_json::Value, OutputError> {
    let image = store
        .resolve(reference_or_id)?
        .ok_or_else(|| OutputError::NoSuchImage(reference_or_id.to_string()))?;
    Ok(serde_json::json!({
        "Id": image.config_digest.to_string(),
        "RepoTags": tags_of(store, &image.manifest.digest)?,
        "Digest": image.manifest.digest.to_string(),
        "Manifest": image.manifest_body,
        "Config": image.config,
        "Size": image.size(store),
    }))
}

/// `inspect` of a multi-platform image: `Id` and `Digest` (the index digest, docker's
/// image id with the containerd store), `RepoTags`, `MediaType`, `Index` (the index as
/// stored), `Platforms`, and per platform its manifest digest and image id (`Manifests`),
/// `Size` (each layer once).
pub fn inspect_index(
    store: &Store,
    index: &crate::store::IndexRecord,
) -> Result<serde_json::Value, OutputError> {
    let manifests: Vec<serde_json::Value> = index
        .images
        .iter()
        .map(|i| {
            serde_json::json!({
                "Platform": i.config.platform().to_spec(),
                "Digest": i.manifest.digest.to_string(),
                "Id": i.config_digest.to_string(),
                "Size": i.size(store),
            })
        })
        .collect();
    let platforms: Vec<String> = index.platforms().iter().map(|p| p.to_spec()).collect();
    Ok(serde_json::json!({
        "Id": index.index.digest.to_string(),
        "RepoTags": tags_of(store, &index.index.digest)?,
        "Digest": index.index.digest.to_string(),
        "MediaType": index.index.media_type,
        "Index": index.body,
        "Platforms": platforms,
        "Manifests": manifests,
        "Size": index.size(store),
    }))
}

/// `save`: write the image `reference_or_id` names as a docker archive or OCI layout. When
/// it is a tag, that tag names the image inside the archive; given an id, all its tags do.
pub fn save(
    store: &Store,
    reference_or_id: &str,
    spec: &OutputSpec,
    epoch: Option<SourceDateEpoch>,
) -> Result<(), OutputError> {
    if matches!(spec.kind, OutputKind::Local { .. } | OutputKind::Tar { .. }) {
        return Err(OutputError::Parse {
            spec: reference_or_id.to_string(),
            reason: "save writes docker or oci archives".to_string(),
        });
    }
    let stored = store
        .lookup(reference_or_id)?
        .ok_or_else(|| OutputError::NoSuchImage(reference_or_id.to_string()))?;
    let all_tags = store.tags()?;
    let named: Vec<Reference> = match reference_or_id.parse::<Reference>() {
        // Compared as strings, as Store::resolve does (`busybox` means `busybox:latest`).
        Ok(r) if all_tags.iter().any(|(t, _)| t.to_string() == r.to_string()) => all_tags
            .into_iter()
            .filter(|(t, _)| t.to_string() == r.to_string())
            .map(|(t, _)| t)
            .collect(),
        _ => all_tags
            .into_iter()
            .filter(|(_, d)| d.digest == stored.descriptor().digest)
            .map(|(r, _)| r)
            .collect(),
    };
    // A multi-platform image: an OCI archive of its index; a docker archive holds one image,
    // the host's (as `docker save` of docker 20.10 can only).
    match (&stored, &spec.kind) {
        (Stored::Index(index), OutputKind::Oci { .. }) => {
            let spec = OutputSpec {
                annotations: index.annotations(),
                ..spec.clone()
            };
            write_all(store, &index.images, &[], &named, &spec, epoch)
        }
        _ => write(store, stored.default_image(), &named, spec, epoch),
    }
}
