//! `--chmod` of COPY and ADD: octal (`0755`) or symbolic (`u+x,g-w`, `a=rX`), parsed once
//! into a [`Chmod`] that validation (instructions), planning and the copier share.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `--chmod` value: the text as written (what history and cache keys show) and the mode
/// it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chmod {
    text: String,
    spec: ModeSpec,
}

/// A `--chmod` that is neither octal up to 07777 nor symbolic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --chmod `{0}`: expected octal (0755) or symbolic (u+x,g-w)")]
pub struct BadChmod(pub String);

impl Chmod {
    pub fn parse(text: &str) -> Result<Chmod, BadChmod> {
        Ok(Chmod {
            text: text.to_string(),
            spec: ModeSpec::parse(text)?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The mode of an entry whose mode was `mode`: an octal value as it is, a symbolic one
    /// applied to `mode` (`X` counts for directories and already executable files).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        self.spec.apply(mode, is_dir)
    }

    /// An octal value, `None` for a symbolic one.
    pub fn octal(&self) -> Option<u32> {
        match self.spec {
            ModeSpec::Octal(m) => Some(m),
            ModeSpec::Symbolic(_) => None,
        }
    }
}

impl std::fmt::Display for Chmod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// As the text: cache keys and plan snapshots see what they always saw.
impl Serialize for Chmod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Chmod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chmod, D::Error> {
        let text = String::deserialize(d)?;
        Chmod::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a `--chmod` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModeSpec {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    who: u32,
    ops: Vec<(char, Perm)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    Bits(String),
    Copy(char),
}

impl ModeSpec {
    fn parse(spec: &str) -> Result<ModeSpec, BadChmod> {
        let bad = || BadChmod(spec.to_string());
        if !spec.is_empty() && spec.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            let m = u32::from_str_radix(spec, 8).map_err(|_| bad())?;
            if m > 0o7777 {
                return Err(bad());
            }
            return Ok(ModeSpec::Octal(m));
        }
        let mut clauses = Vec::new();
        for part in spec.split(',') {
            let chars: Vec<char> = part.chars().collect();
            let mut i = 0;
            let mut who = 0u32;
            while i < chars.len() && "ugoa".contains(chars[i]) {
                who |= match chars[i] {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => 0o7777,
                };
                i += 1;
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut ops = Vec::new();
            while i < chars.len() {
                let op = chars[i];
                if !"+-=".contains(op) {
                    return Err(bad());
                }
                i += 1;
                if i < chars.len() && "ugo".contains(chars[i]) {
                    ops.push((op, Perm::Copy(chars[i])));
                    i += 1;
                    continue;
                }
                let start = i;
                while i < chars.len() && "rwxXst".contains(chars[i]) {
                    i += 1;
                }
                ops.push((op, Perm::Bits(chars[start..i].iter().collect())));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, ops });
        }
        Ok(ModeSpec::Symbolic(clauses))
    }

    fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            ModeSpec::Octal(m) => *m,
            ModeSpec::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for c in clauses {
                    for (op, perm) in &c.ops {
                        let bits = match perm {
                            Perm::Bits(s) => {
                                let mut b = 0;
                                for ch in s.chars() {
                                    b |= match ch {
                                        'r' => 0o444,
                                        'w' => 0o222,
                                        'x' => 0o111,
                                        'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                        's' => 0o6000,
                                        't' => 0o1000,
                                        _ => 0,
                                    };
                                }
                                b
                            }
                            Perm::Copy(from) => {
                                let shift = match from {
                                    'u' => 6,
                                    'g' => 3,
                                    _ => 0,
                                };
                                let p = (mode >> shift) & 7;
                                p << 6 | p << 3 | p
                            }
                        } & c.who;
                        mode = match op {
                            '+' => mode | bits,
                            '-' => mode & !bits,
                            _ => (mode & !(c.who & 0o777)) | bits,
                        };
                    }
                }
                mode
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from the copier, which parsed --chmod itself.
    #[test]
    fn symbolic_modes_apply_like_chmod() {
        let spec = Chmod::parse("a+X").unwrap();
        assert_eq!(spec.apply(0o644, false), 0o644);
        assert_eq!(spec.apply(0o744, false), 0o755);
        assert_eq!(spec.apply(0o600, true), 0o711);
        assert_eq!(Chmod::parse("g=u").unwrap().apply(0o640, false), 0o660);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
        for bad in ["", "u", "9", "u+q", "77777"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
        // The instruction check once let this through to fail in the copier.
        assert!(Chmod::parse("u+gx").is_err());
        assert!(!crate::dockerfile::instructions::valid_chmod("u+gx"));
        assert!(crate::dockerfile::instructions::valid_chmod("${MODE}"));
        assert_eq!(Chmod::parse("0640").unwrap().octal(), Some(0o640));
        assert_eq!(Chmod::parse("u+x").unwrap().octal(), None);
    }

    #[test]
    fn serializes_as_written() {
        let c = Chmod::parse("go-w,u=rwX").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"go-w,u=rwX\"");
        assert_eq!(serde_json::from_str::<Chmod>("\"go-w,u=rwX\"").unwrap(), c);
        assert!(serde_json::from_str::<Chmod>("\"u+q\"").is_err());
        assert_eq!(c.to_string(), "go-w,u=rwX");
    }
}
