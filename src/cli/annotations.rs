//! `--annotation KEY=VALUE` or `TYPE[,TYPE...]:KEY=VALUE`, each TYPE optionally qualified by
//! a platform in brackets (`manifest[linux/amd64]`), as buildx's ParseAnnotations, sorted
//! into [`Annotations`] by where BuildKit's exporters put them.

use crate::image::{Annotations, Platform};

/// Parse every `--annotation` of a build for `platforms`. A qualifier must name one of them;
/// the index types need several, as BuildKit fails them for a single-platform export.
pub fn parse(specs: &[String], platforms: &[Platform]) -> Result<Annotations, String> {
    let mut out = Annotations::default();
    for spec in specs {
        parse_one(spec, platforms, &mut out).map_err(|e| format!("--annotation {spec}: {e}"))?;
    }
    Ok(out)
}

fn parse_one(spec: &str, platforms: &[Platform], out: &mut Annotations) -> Result<(), String> {
    let (k, v) = spec
        .split_once('=')
        .ok_or("expected KEY=VALUE or TYPE:KEY=VALUE")?;
    let (types, key) = k.split_once(':').unwrap_or(("manifest", k));
    if key.is_empty() {
        return Err("empty key".into());
    }
    let (key, value) = (key.to_string(), v.to_string());
    for typ in types.split(',') {
        let (name, qualifier) = match typ.split_once('[') {
            Some((n, rest)) => {
                let q = rest.strip_suffix(']').ok_or(format!(
                    "invalid annotation type `{typ}`, expected type and optional platform in \
                     square brackets"
                ))?;
                (n, Some(q))
            }
            None => (typ, None),
        };
        let platform = match qualifier {
            None => String::new(),
            Some(q) => {
                let wanted = Platform::parse(q)?;
                let names: Vec<String> = platforms.iter().map(Platform::to_spec).collect();
                platforms
                    .iter()
                    .find(|p| p.same_as(&wanted))
                    .ok_or(format!(
                        "no platform {q} in this build (it builds {})",
                        names.join(", ")
                    ))?
                    .to_spec()
            }
        };
        let map = match name {
            "manifest" => out.manifest.entry(platform).or_default(),
            "manifest-descriptor" => out.manifest_descriptor.entry(platform).or_default(),
            "index" | "index-descriptor" if platforms.len() < 2 => {
                return Err(format!(
                    "index annotations not supported for single platform export (`{name}`: \
                     a build of one --platform makes one manifest, no index)"
                ))
            }
            // BuildKit takes a platform qualifier on an index type, and ignores it.
            "index" => &mut out.index,
            "index-descriptor" => &mut out.index_descriptor,
            other => {
                return Err(format!(
                    "unknown annotation type `{other}` (manifest, manifest-descriptor, index, \
                     index-descriptor)"
                ))
            }
        };
        map.insert(key.clone(), value.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_parse_like_buildx() {
        let host = [Platform::host()];
        let one = |s: &str| parse(&[s.to_string()], &host);
        let all = map(&[("a", "b")]);
        assert_eq!(one("a=b").unwrap().manifest[""], all);
        assert_eq!(one("a=b=c").unwrap().manifest[""], map(&[("a", "b=c")]));
        let both = one("manifest,manifest-descriptor:org.x=1").unwrap();
        assert_eq!(both.manifest[""], map(&[("org.x", "1")]));
        assert_eq!(both.manifest_descriptor[""], map(&[("org.x", "1")]));
        let qualified = one(&format!("manifest-descriptor[{}]:k=v", host[0].to_spec())).unwrap();
        assert_eq!(
            qualified.manifest_descriptor_for(&host[0]),
            map(&[("k", "v")])
        );
        assert!(one("manifest[plan9/mips]:k=v")
            .unwrap_err()
            .contains("no platform plan9/mips"));
        assert!(one("index:k=v")
            .unwrap_err()
            .contains("index annotations not supported for single platform export"));
        for bad in [
            "novalue",
            "=v",
            "manifest:=v",
            "bogus:k=v",
            "manifest[linux:k=v",
        ] {
            assert!(one(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_platforms_take_index_types_and_per_platform_ones() {
        let platforms = [
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
        ];
        let specs: Vec<String> = [
            "index:i=1",
            "index-descriptor:d=2",
            "manifest[linux/aarch64]:m=arm",
            "manifest:m=all",
            "manifest-descriptor[linux/amd64]:md=amd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = parse(&specs, &platforms).unwrap();
        assert_eq!(a.index, map(&[("i", "1")]));
        assert_eq!(a.index_descriptor, map(&[("d", "2")]));
        // The platform's own wins over the one for all.
        assert_eq!(a.manifest_for(&platforms[1]), map(&[("m", "arm")]));
        assert_eq!(a.manifest_for(&platforms[0]), map(&[("m", "all")]));
        assert_eq!(
            a.manifest_descriptor_for(&platforms[0]),
            map(&[("md", "amd")])
        );
        assert!(a.manifest_descriptor_for(&platforms[1]).is_empty());
        assert!(parse(&["manifest[linux/s390x]:k=v".into()], &platforms)
            .unwrap_err()
            .contains("it builds linux/amd64, linux/arm64"));
    }
}
