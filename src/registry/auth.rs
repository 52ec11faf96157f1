//! Authentication: `WWW-Authenticate` challenges (RFC 7235 as registries send them) and
//! credentials from docker's config.json (`auths` with `auth` or username/password,
//! identity tokens, credential helpers via `docker_credential`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm="..",service="..",scope=".."`: get a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm=".."`: send the credentials with every request.
    Basic,
}

/// Parse the first supported challenge of a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        "basic" => Some(Challenge::Basic),
        _ => None,
    }
}

/// `k="v", k2=v2` with quoted strings (backslash escapes) or tokens; keys lowercased.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.insert(key, value);
    }
    out
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An identity (refresh) token, exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// The docker config directory: the option, else $DOCKER_CONFIG, else ~/.docker.
pub fn config_dir(opt: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = opt {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker"))
}

/// The key docker uses in config.json for a registry (Docker Hub keeps its v1 URL).
fn server_key(registry: &str) -> &str {
    if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

/// Look up credentials for `registry` in `dir/config.json`. A missing file or entry is
/// `Ok(None)`; an unreadable or malformed file is an error (so a typo is not silently
/// anonymous).
pub fn lookup(dir: &Path, registry: &str) -> Result<Option<Credentials>, String> {
    let path = dir.join("config.json");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential_from_reader(
        std::io::BufReader::new(file),
        server_key(registry),
    ) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credentials::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(t)) => Ok(Some(Credentials::IdentityToken(t))),
        Err(E::NoCredentialConfigured) => Ok(None),
        Err(E::ConfigReadError) => Err("not a valid docker config.json".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        let c = parse_challenge(r#"bearer realm=http://x/t, service="a \"b\"""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("a \"b\"".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = r#"{"auths":{"r.example:5000":{"auth":"dTpwOng="},
            "https://index.docker.io/v1/":{"username":"hub","password":"pw"}}}"#;
        std::fs::write(dir.path().join("config.json"), cfg).unwrap();
        assert_eq!(
            lookup(dir.path(), "r.example:5000").unwrap(),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p:x".into()
            })
        );
        assert_eq!(
            lookup(dir.path(), "docker.io").unwrap(),
            Some(Credentials::Basic {
                username: "hub".into(),
                password: "pw".into()
            })
        );
        assert_eq!(lookup(dir.path(), "other.example").unwrap(), None);
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(lookup(dir.path(), "other.example").is_err());
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(lookup(empty.path(), "x.example").unwrap(), None);
    }
}
