//! Serde adapters for the typed errors that file jobs send back from the sandbox helper
//! (`#[serde(with = "...")]` on their fields), so an error crosses the pipe as its variant
//! and data rather than as a string.

/// An `io::Error` as its errno (when it has one) and message. An OS error comes back as the
/// same errno, so its kind and wording are the original's; any other comes back as
/// `ErrorKind::Other` with the original message.
pub mod io_error {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::io;

    #[derive(Serialize, Deserialize)]
    struct Wire {
        errno: Option<i32>,
        message: String,
    }

    pub fn serialize<S: Serializer>(e: &io::Error, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<io::Error, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(match w.errno {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::other(w.message),
        })
    }
}

/// `&'static str` under a name serde's derive does not take for a borrowed `&str` (which
/// would tie a deserialized error to its input's lifetime): for fields with [`static_str`].
pub type StaticStr = &'static str;

/// A `&'static str` (an error's fixed wording, like a layer entry's `reason`). Those are
/// literals of rbuild's source, so the strings that come back are interned: the memory
/// they take is bounded by that set, not by the number of errors.
pub mod static_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::HashSet;
    use std::sync::Mutex;

    static INTERNED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

    pub fn serialize<S: Serializer>(v: &&'static str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let v = String::deserialize(d)?;
        let mut set = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let set = set.get_or_insert_with(HashSet::new);
        if let Some(s) = set.get(v.as_str()) {
            return Ok(s);
        }
        let leaked: &'static str = Box::leak(v.into_boxed_str());
        set.insert(leaked);
        Ok(leaked)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use std::io;

    #[derive(Serialize, Deserialize)]
    struct E {
        #[serde(with = "super::io_error")]
        io: io::Error,
        #[serde(with = "super::static_str")]
        reason: super::StaticStr,
    }

    #[test]
    fn errors_round_trip() {
        let e = E {
            io: io::Error::from_raw_os_error(libc::ENOENT),
            reason: "absolute path",
        };
        let back: E = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back.io.kind(), io::ErrorKind::NotFound);
        assert_eq!(back.io.to_string(), e.io.to_string());
        assert_eq!(back.reason, "absolute path");
        let other = E {
            io: io::Error::other("custom"),
            reason: "absolute path",
        };
        let again: E = serde_json::from_slice(&serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(again.io.to_string(), "custom");
        assert!(std::ptr::eq(again.reason, back.reason), "interned");
    }
}
