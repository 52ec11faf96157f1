//! Registry errors: one line naming what was being done, with which reference, and why.

use std::fmt;

use crate::image::Digest;

/// What the client was doing when it failed; the first word of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pulling,
    Pushing,
    Checking,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Pulling => "pulling",
            Action::Pushing => "pushing",
            Action::Checking => "checking",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A request about one reference failed.
    #[error("{action} `{reference}`: {cause}")]
    Op {
        action: Action,
        reference: String,
        cause: Cause,
    },
    /// A plain download (`ADD <url>`) failed.
    #[error("downloading `{url}`: {cause}")]
    Download { url: String, cause: Cause },
    /// The client itself could not be built (TLS setup, runtime).
    #[error("setting up the registry client: {0}")]
    Setup(String),
}

impl RegistryError {
    /// The cause of a failed operation (None for set-up errors).
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            RegistryError::Op { cause, .. } | RegistryError::Download { cause, .. } => Some(cause),
            RegistryError::Setup(_) => None,
        }
    }
}

/// Why a registry operation failed. Messages are lowercase fragments that follow
/// "pulling `ref`: ".
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A 404 for a manifest: the registry's own message (`manifest unknown`), then what was
    /// looked for where.
    #[error("{message}: {wanted} not found in repository `{repository}`")]
    ManifestUnknown {
        message: String,
        wanted: ManifestRef,
        repository: String,
    },
    #[error("blob unknown: {0}")]
    BlobUnknown(Digest),
    /// No connection could be made (refused, no route, name not resolved, TLS handshake):
    /// asking again at once would get the same answer.
    #[error("cannot reach {host}: {detail}")]
    Unreachable { host: Peer, detail: String },
    /// An HTTPS server on a machine without CA certificates (registry/tls.rs).
    #[error("cannot verify the TLS certificate of {host}: no CA certificates found on this machine (the system's bundle, or SSL_CERT_FILE/SSL_CERT_DIR where set); install them (Debian: `apt-get install ca-certificates`) or point SSL_CERT_FILE at a CA bundle")]
    NoCaCertificates { host: Peer },
    /// A connection that was made broke (reset, closed mid-response).
    #[error("connection to {host} lost: {detail}")]
    ConnectionLost { host: Peer, detail: String },
    /// A transient failure that persisted through every retry.
    #[error("{last} (gave up after {attempts} attempts)")]
    Retried { attempts: u32, last: Box<Cause> },
    #[error("authentication required by {host} and no credentials found in {config}")]
    NoCredentials { host: String, config: String },
    #[error("authentication refused by {host}: {detail}")]
    AuthRefused { host: String, detail: String },
    #[error("access denied: {0}")]
    Denied(String),
    #[error("token endpoint {realm}: {detail}")]
    Token { realm: String, detail: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("schema 1 manifests are not supported (media type `{0}`); push the image again with a current docker or buildah")]
    Schema1(String),
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("no matching manifest for {wanted} (available: {available})")]
    NoMatchingPlatform { wanted: String, available: String },
    #[error("registry answered {status}: {message}")]
    Status { status: u16, message: String },
    /// A web server's answer to a download (no distribution error body to read).
    #[error("HTTP {status} {reason}")]
    Http { status: u16, reason: String },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("reading {path}: {detail}")]
    Config { path: String, detail: String },
}

/// The other end of a connection, as messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A registry's API host (`127.0.0.1:5000`, `registry-1.docker.io`).
    Registry(String),
    /// Any other web server (`ADD <url>`), `host[:port]`.
    Server(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Registry(host) => write!(f, "registry {host}"),
            Peer::Server(host) => f.write_str(host),
        }
    }
}

/// A manifest asked for by tag or by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => write!(f, "tag `{t}`"),
            ManifestRef::Digest(d) => write!(f, "digest `{d}`"),
        }
    }
}

impl Cause {
    /// Worth retrying: server overload (5xx, 429) or a connection that broke. A refused or
    /// unresolvable host is not: it fails at once (issue 14: 3 s on loopback, 18 s for an
    /// unreachable docker.io), and neither is a failure already retried.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Cause::Status { status, .. } | Cause::Http { status, .. } => {
                *status == 429 || *status >= 500
            }
            Cause::ConnectionLost { .. } => true,
            _ => false,
        }
    }

    /// How many times the request was made (1 unless a transient failure was retried).
    pub fn attempts(&self) -> u32 {
        match self {
            Cause::Retried { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// The cause after `attempts` tries of a retry loop.
    pub(crate) fn after(self, attempts: u32) -> Cause {
        if attempts > 1 {
            Cause::Retried {
                attempts,
                last: Box::new(self),
            }
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cause, Peer};

    #[test]
    fn only_overload_and_broken_connections_are_retried() {
        let status = |status| Cause::Status {
            status,
            message: String::new(),
        };
        let refused = Cause::Unreachable {
            host: Peer::Registry("127.0.0.1:1".into()),
            detail: "Connection refused (os error 111)".into(),
        };
        let reset = Cause::ConnectionLost {
            host: Peer::Registry("127.0.0.1:1".into()),
            detail: "Connection reset by peer (os error 104)".into(),
        };
        assert!(status(500).is_transient());
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(reset.is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(401).is_transient());
        // Regression (issue 14): a refused connection was retried for 3 s.
        assert!(!refused.is_transient());
        // A failure that went through one retry loop is not retried again by another.
        let retried = reset.after(5);
        assert!(!retried.is_transient());
        assert_eq!(retried.attempts(), 5);
        assert_eq!(
            retried.to_string(),
            "connection to registry 127.0.0.1:1 lost: Connection reset by peer (os error 104) \
             (gave up after 5 attempts)"
        );
        assert_eq!(refused.after(1).attempts(), 1);
    }
}
