//! `rbuild history`: what each layer of an image costs (docs/explain.md), and the one line
//! a build ends with. Made from the layers' statistics and listings in the store
//! ([`Store::layer_files`]); no layer is read.

use serde::Serialize;

use super::{human_size, OutputError};
use crate::image::Digest;
use crate::layer::compress::Compression;
use crate::layer::stats::{image_cost, LargeFile, Listing, Removal};
use crate::store::{ImageRecord, Store};

/// Version of the JSON below; bumped when a field changes meaning or goes away.
pub const HISTORY_SCHEMA: u32 = 1;

/// `rbuild history --format json`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryReport {
    pub schema: u32,
    /// The config digest (the image id).
    pub id: String,
    /// One per entry of the config's history, bottom first.
    pub history: Vec<HistoryEntry>,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_by: String,
    pub comment: Option<String>,
    pub empty_layer: bool,
    /// The layer this entry made; null for an empty layer.
    pub layer: Option<LayerReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Position among the image's layers, from 0 at the bottom.
    pub index: usize,
    pub diff_id: String,
    /// Bytes of file data (hard links once): docker history's SIZE. Null when the store
    /// has the layer's blob only (not extracted).
    pub size: Option<u64>,
    /// Bytes of the uncompressed tar, when the store knows it.
    pub tar_size: Option<u64>,
    /// The compressed blob the store has (or the manifest names), if any.
    pub compressed: Option<Compressed>,
    /// Null when the layer is not extracted.
    pub files: Option<FileCounts>,
    /// Bytes this layer adds that later layers delete or overwrite.
    pub wasted: u64,
    /// Who deletes or overwrites them, largest first.
    pub wasted_by: Vec<WastedBy>,
    /// The largest files of the layer, largest first.
    pub largest: Vec<LargeFile>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compressed {
    /// `gzip` or `zstd`.
    pub compression: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileCounts {
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WastedBy {
    /// The layer that deletes or overwrites (its `index`).
    pub layer: usize,
    /// `deleted` or `overwritten`.
    pub how: Removal,
    pub bytes: u64,
    /// Paths removed.
    pub files: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub layers: usize,
    /// Sum of the layers' `size` (a layer not extracted counts its blob's size).
    pub size: u64,
    pub wasted: u64,
    /// 1 - wasted / size (1 for an empty image), as dive reports it.
    pub efficiency: f64,
}

/// The history of `image`, costed.
pub fn history(store: &Store, image: &ImageRecord) -> Result<HistoryReport, OutputError> {
    let mut listed: Vec<Option<Listing>> = Vec::with_capacity(image.chains.len());
    let mut layers = Vec::with_capacity(image.chains.len());
    for (i, chain) in image.chains.iter().enumerate() {
        let desc = image.manifest_body.layers.get(i);
        let record = store.layer(chain);
        let files = store.layer_files(chain)?;
        let (mut tar_size, mut compressed) = (None, None);
        if let Some(r) = &record {
            tar_size = r
                .tar_size
                .or(r.blobs.get(Compression::Uncompressed).map(|b| b.size));
            compressed = [Compression::Gzip, Compression::Zstd]
                .into_iter()
                .find_map(|c| r.blobs.get(c).map(|b| (c, b.size)));
        }
        if let Some(d) = desc {
            match Compression::from_media_type(&d.media_type) {
                Some(Compression::Uncompressed) => tar_size = tar_size.or(Some(d.size)),
                Some(c) => compressed = compressed.or(Some((c, d.size))),
                None => {}
            }
        }
        let (size, largest) = match &files {
            Some((stats, _)) => (Some(stats.bytes), stats.largest.clone()),
            None => (None, Vec::new()),
        };
        layers.push(LayerReport {
            index: i,
            diff_id: image
                .config
                .rootfs
                .diff_ids
                .get(i)
                .map(Digest::to_string)
                .unwrap_or_default(),
            size,
            tar_size,
            compressed: compressed.map(|(c, size)| Compressed {
                compression: codec_name(c).to_string(),
                size,
            }),
            files: None,
            wasted: 0,
            wasted_by: Vec::new(),
            largest,
        });
        listed.push(files.map(|(_, f)| f));
    }
    let have_listing: Vec<bool> = listed.iter().map(Option::is_some).collect();
    let cost = image_cost(listed)?;
    for (layer, c) in layers.iter_mut().zip(&cost.layers) {
        layer.wasted = c.wasted;
        if have_listing[layer.index] {
            layer.files = Some(FileCounts {
                added: c.added,
                changed: c.changed,
                deleted: c.deleted,
            });
        }
    }
    for w in &cost.waste {
        layers[w.added_in].wasted_by.push(WastedBy {
            layer: w.removed_in,
            how: w.how,
            bytes: w.bytes,
            files: w.files,
        });
    }
    let size: u64 = layers
        .iter()
        .map(|l| {
            l.size
                .or(l.compressed.as_ref().map(|c| c.size))
                .or(l.tar_size)
                .unwrap_or(0)
        })
        .sum();
    let wasted: u64 = layers.iter().map(|l| l.wasted).sum();
    let summary = Summary {
        layers: layers.len(),
        size,
        wasted,
        efficiency: if size == 0 {
            1.0
        } else {
            1.0 - wasted as f64 / size as f64
        },
    };

    // History entries that are not empty take the layers in order, as docker history pairs
    // them; layers the history does not account for get an entry of their own.
    let mut layers = layers.into_iter();
    let mut entries = Vec::new();
    for h in &image.config.history {
        entries.push(HistoryEntry {
            created: h.created.clone(),
            created_by: h.created_by.clone().unwrap_or_default(),
            comment: h.comment.clone(),
            empty_layer: h.empty_layer,
            layer: if h.empty_layer { None } else { layers.next() },
        });
    }
    entries.extend(layers.map(|l| HistoryEntry {
        created: None,
        created_by: String::new(),
        comment: None,
        empty_layer: false,
        layer: Some(l),
    }));
    Ok(HistoryReport {
        schema: HISTORY_SCHEMA,
        id: image.config_digest.to_string(),
        history: entries,
        summary,
    })
}

fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::Uncompressed => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// `text` cut to `max` characters, with `...` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let head: String = text.chars().take(max.saturating_sub(3)).collect();
        format!("{}...", head.trim_end())
    }
}

fn opt_size(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), human_size)
}

/// The text `rbuild history` prints: a table, bottom layer first, then the largest files,
/// the wasted bytes and the summary.
pub fn render_history(report: &HistoryReport) -> String {
    let mut rows = vec![[
        "LAYER",
        "SIZE",
        "TAR",
        "COMPRESSED",
        "ADDED",
        "CHANGED",
        "DELETED",
        "WASTED",
        "CREATED BY",
    ]
    .map(String::from)];
    for e in &report.history {
        let created_by = cut(&e.created_by, 70);
        rows.push(match &e.layer {
            None => {
                let mut r = ["-", "0B", "-", "-", "-", "-", "-", "-", ""].map(String::from);
                r[8] = created_by;
                r
            }
            Some(l) => {
                let (a, c, d) = match &l.files {
                    Some(f) => (
                        f.added.to_string(),
                        f.changed.to_string(),
                        f.deleted.to_string(),
                    ),
                    None => ("?".into(), "?".into(), "?".into()),
                };
                [
                    l.index.to_string(),
                    opt_size(l.size),
                    opt_size(l.tar_size),
                    opt_size(l.compressed.as_ref().map(|c| c.size)),
                    a,
                    c,
                    d,
                    human_size(l.wasted),
                    created_by,
                ]
            }
        });
    }
    let mut out = super::commands::columns(&rows);
    let layers: Vec<&LayerReport> = report
        .history
        .iter()
        .filter_map(|e| e.layer.as_ref())
        .collect();
    let by_index = |i: usize| -> String {
        let created = report
            .history
            .iter()
            .find(|e| e.layer.as_ref().is_some_and(|l| l.index == i))
            .map_or("", |e| e.created_by.as_str());
        format!("layer {i} ({})", cut(created, 50))
    };
    if layers.iter().any(|l| !l.largest.is_empty()) {
        out.push_str("\nlargest files:\n");
        for l in &layers {
            if l.largest.is_empty() {
                continue;
            }
            let files: Vec<String> = l
                .largest
                .iter()
                .map(|f| format!("{} /{}", human_size(f.size), f.path))
                .collect();
            out.push_str(&format!("  layer {}: {}\n", l.index, files.join(", ")));
        }
    }
    let mut waste: Vec<(usize, &WastedBy)> = layers
        .iter()
        .flat_map(|l| l.wasted_by.iter().map(move |w| (l.index, w)))
        .collect();
    waste.sort_by_key(|(_, w)| std::cmp::Reverse(w.bytes));
    if !waste.is_empty() {
        out.push_str("\nwasted:\n");
        for (added, w) in waste {
            out.push_str(&format!(
                "  {} added in {} is {} by {}\n",
                human_size(w.bytes),
                by_index(added),
                how(w.how),
                by_index(w.layer)
            ));
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "\ntotal {} in {}, {} wasted, efficiency {:.2}%\n",
        human_size(s.size),
        plural(s.layers, "layer"),
        human_size(s.wasted),
        s.efficiency * 100.0
    ));
    out
}

fn how(h: Removal) -> &'static str {
    match h {
        Removal::Deleted => "deleted",
        Removal::Overwritten => "overwritten",
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The line a build ends with: `size 14.8MB, 3 layers`, and when more than 1% of it is
/// wasted, the largest waste: `; 10.5MB added in #3 (RUN ...) is deleted by #5`. `steps`
/// gives, per layer, the build step that made it (`#N`, its text); none for the base
/// image's layers.
pub fn build_cost_line(report: &HistoryReport, steps: &[Option<(usize, String)>]) -> String {
    let s = &report.summary;
    let mut line = format!(
        "image size {}, {}",
        human_size(s.size),
        plural(s.layers, "layer")
    );
    // Over 1%: an integer comparison, so 1% exactly is not reported.
    if s.wasted.saturating_mul(100) <= s.size {
        return line;
    }
    let worst = report
        .history
        .iter()
        .filter_map(|e| e.layer.as_ref())
        .flat_map(|l| l.wasted_by.iter().map(move |w| (l.index, w)))
        .max_by_key(|(added, w)| (w.bytes, std::cmp::Reverse((*added, w.layer))));
    let Some((added, w)) = worst else {
        return line;
    };
    let step = |i: usize| match steps.get(i) {
        Some(Some((id, text))) => format!("#{id} ({})", cut(text, 40)),
        _ => "the base image".to_string(),
    };
    line.push_str(&format!(
        ", {} wasted: {} added in {} is {} by {}",
        human_size(s.wasted),
        human_size(w.bytes),
        step(added),
        how(w.how),
        step(w.layer)
    ));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(index: usize, size: u64, wasted_by: Vec<WastedBy>) -> HistoryEntry {
        HistoryEntry {
            created: None,
            created_by: format!("layer {index}"),
            comment: None,
            empty_layer: false,
            layer: Some(LayerReport {
                index,
                diff_id: String::new(),
                size: Some(size),
                tar_size: None,
                compressed: None,
                files: None,
                wasted: wasted_by.iter().map(|w| w.bytes).sum(),
                wasted_by,
                largest: Vec::new(),
            }),
        }
    }

    fn report(history: Vec<HistoryEntry>) -> HistoryReport {
        let layers: Vec<&LayerReport> = history.iter().filter_map(|e| e.layer.as_ref()).collect();
        let size = layers.iter().map(|l| l.size.unwrap()).sum();
        let wasted = layers.iter().map(|l| l.wasted).sum();
        HistoryReport {
            schema: HISTORY_SCHEMA,
            id: String::new(),
            summary: Summary {
                layers: layers.len(),
                size,
                wasted,
                efficiency: 0.0,
            },
            history,
        }
    }

    fn by(layer: usize, how: Removal, bytes: u64) -> WastedBy {
        WastedBy {
            layer,
            how,
            bytes,
            files: 1,
        }
    }

    #[test]
    fn the_cost_line_names_steps_and_the_base_image() {
        let r = report(vec![
            layer(0, 5_000_000, vec![by(2, Removal::Deleted, 3_000_000)]),
            layer(1, 1_000_000, vec![by(2, Removal::Overwritten, 1_000_000)]),
            layer(2, 10, vec![]),
        ]);
        let steps = [
            None,
            Some((3, "COPY a /a".to_string())),
            Some((
                5,
                "RUN rm /usr/share/doc -rf && apt-get clean && more".to_string(),
            )),
        ];
        assert_eq!(
            build_cost_line(&r, &steps),
            "image size 6MB, 3 layers, 4MB wasted: 3MB added in the base image is deleted by #5 \
             (RUN rm /usr/share/doc -rf && apt-get...)"
        );
        let r = report(vec![
            layer(0, 5_000_000, vec![]),
            layer(1, 1_000_000, vec![by(2, Removal::Overwritten, 1_000_000)]),
            layer(2, 10, vec![]),
        ]);
        assert_eq!(
            build_cost_line(&r, &steps),
            "image size 6MB, 3 layers, 1MB wasted: 1MB added in #3 (COPY a /a) is overwritten \
             by #5 (RUN rm /usr/share/doc -rf && apt-get...)"
        );
    }

    #[test]
    fn the_cost_line_is_quiet_up_to_one_percent() {
        let r = report(vec![
            layer(0, 990, vec![by(1, Removal::Deleted, 10)]),
            layer(1, 10, vec![]),
        ]);
        assert_eq!(build_cost_line(&r, &[]), "image size 1kB, 2 layers");
        let r = report(vec![
            layer(0, 989, vec![by(1, Removal::Deleted, 11)]),
            layer(1, 0, vec![]),
        ]);
        assert!(build_cost_line(&r, &[])
            .ends_with("11B added in the base image is deleted by the base image"));
    }
}
