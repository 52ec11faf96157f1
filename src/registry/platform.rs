//! Choosing one manifest from a manifest list / image index for a platform, variant-aware
//! as containerd's matcher: `arm64` with no variant means `v8`, an `arm/v7` host also runs
//! `arm/v6` and `arm/v5`, and an exact variant wins over a compatible one.

use crate::image::{Descriptor, Index, Platform};

/// The variant a platform means when none is given.
fn normalized_variant(p: &Platform) -> String {
    match (p.architecture.as_str(), p.variant.as_deref()) {
        (_, Some(v)) if !v.is_empty() => v.to_string(),
        ("arm64", _) => "v8".to_string(),
        ("arm", _) => "v7".to_string(),
        _ => String::new(),
    }
}

/// How well `candidate` fits `wanted`: None if it cannot run, higher is better.
fn score(wanted: &Platform, candidate: &Platform) -> Option<u32> {
    if wanted.os != candidate.os || wanted.architecture != candidate.architecture {
        return None;
    }
    let want = normalized_variant(wanted);
    let have = normalized_variant(candidate);
    if want == have {
        return Some(100);
    }
    if wanted.architecture == "arm" {
        // An armv7 CPU runs v6 and v5 code; prefer the newest that fits.
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        if let (Some(w), Some(h)) = (level(&want), level(&have)) {
            if h <= w {
                return Some(h);
            }
        }
    }
    None
}

/// Whether an image for `candidate` serves `wanted`.
pub fn runs(wanted: &Platform, candidate: &Platform) -> bool {
    score(wanted, candidate).is_some()
}

/// The best manifest for `wanted`, or the list of platforms the index offers.
pub fn choose<'a>(index: &'a Index, wanted: &Platform) -> Result<&'a Descriptor, Vec<String>> {
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in &index.manifests {
        if let Some(p) = &d.platform {
            if let Some(s) = score(wanted, p) {
                // The first of equal scores wins, as docker does.
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, d));
                }
            }
        }
    }
    match best {
        Some((_, d)) => Ok(d),
        None => Err(available(index)),
    }
}

/// `os/arch[/variant]` of every runnable entry (attestation entries `unknown/unknown` left out).
pub fn available(index: &Index) -> Vec<String> {
    let mut out: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(Platform::to_spec)
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{media, Digest};

    fn plat(spec: &str) -> Platform {
        let mut parts = spec.split('/');
        Platform {
            os: parts.next().unwrap().to_string(),
            architecture: parts.next().unwrap().to_string(),
            variant: parts.next().map(str::to_string),
            os_version: None,
        }
    }

    fn index(specs: &[&str]) -> Index {
        Index {
            manifests: specs
                .iter()
                .map(|s| {
                    let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::of(s.as_bytes()), 1);
                    d.platform = Some(plat(s));
                    d
                })
                .collect(),
            ..Index::default()
        }
    }

    fn pick(specs: &[&str], wanted: &str) -> Result<String, Vec<String>> {
        let idx = index(specs);
        choose(&idx, &plat(wanted)).map(|d| d.platform.as_ref().unwrap().to_spec())
    }

    #[test]
    fn exact_and_default_variants() {
        let specs = [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v6",
            "linux/arm/v7",
        ];
        assert_eq!(pick(&specs, "linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick(&specs, "linux/arm64").unwrap(), "linux/arm64/v8");
        assert_eq!(
            pick(&["linux/arm64"], "linux/arm64/v8").unwrap(),
            "linux/arm64"
        );
        assert_eq!(pick(&specs, "linux/arm/v7").unwrap(), "linux/arm/v7");
        assert_eq!(pick(&specs, "linux/arm/v6").unwrap(), "linux/arm/v6");
    }

    #[test]
    fn arm_falls_back_to_older_variants_only() {
        assert_eq!(
            pick(&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7").unwrap(),
            "linux/arm/v6"
        );
        assert!(pick(&["linux/arm/v7"], "linux/arm/v6").is_err());
    }

    #[test]
    fn no_match_lists_platforms_without_attestations() {
        let err = pick(
            &["linux/amd64", "unknown/unknown", "linux/arm64/v8"],
            "linux/s390x",
        )
        .unwrap_err();
        assert_eq!(err, vec!["linux/amd64", "linux/arm64/v8"]);
        assert!(pick(&["windows/amd64"], "linux/amd64").is_err());
    }
}
