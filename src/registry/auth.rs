//! Authentication: `WWW-Authenticate` challenges (RFC 7235 as registries send them),
//! credentials from docker's config.json (`auths` with `auth` or username/password,
//! identity tokens, credential helpers via `docker_credential`), and the token flow: a
//! request answered 401 gets a bearer token (cached per registry and scopes) or basic
//! credentials, and is sent again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use super::client::{Client, Target};
use super::error::Cause;
use super::transport::{net_err, read_limited, status_cause};

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

// ---- the token flow ------------------------------------------------------------------

#[derive(Clone)]
enum AuthHeader {
    Bearer(String),
    Basic(String, String),
}

/// What the client learnt about authenticating, shared by its threads.
#[derive(Default)]
pub(super) struct AuthState {
    /// Tokens per (registry, scopes).
    tokens: HashMap<(String, String), AuthHeader>,
    /// Registries that asked for Basic auth: send credentials up front.
    basic: HashMap<String, AuthHeader>,
    /// config.json lookups per registry.
    creds: HashMap<String, Option<Credentials>>,
}

impl Client {
    fn credentials(&self, registry: &str) -> Result<Option<Credentials>, Cause> {
        if let Some(c) = self.state.lock().unwrap().creds.get(registry) {
            return Ok(c.clone());
        }
        let found = match &self.config_dir {
            Some(dir) => lookup(dir, registry).map_err(|detail| Cause::Config {
                path: dir.join("config.json").display().to_string(),
                detail,
            })?,
            None => None,
        };
        self.state
            .lock()
            .unwrap()
            .creds
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    fn config_name(&self) -> String {
        match &self.config_dir {
            Some(d) => d.join("config.json").display().to_string(),
            None => "docker config (no $HOME or $DOCKER_CONFIG)".to_string(),
        }
    }

    /// Get a bearer token for `scopes` from `realm` (docker's token protocol; identity
    /// tokens go through the OAuth2 refresh-token POST).
    async fn fetch_token(
        &self,
        t: &Target<'_>,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<String, Cause> {
        let token_err = |detail: String| Cause::Token {
            realm: realm.to_string(),
            detail,
        };
        let mut url = Url::parse(realm).map_err(|e| token_err(format!("invalid realm: {e}")))?;
        let req = match creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = Url::parse("x:/").expect("static URL");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh);
                    q.append_pair("client_id", "rbuild");
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scopes.join(" "));
                }
                self.http()
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or("").to_string())
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                let req = self.http().get(url);
                match creds {
                    Some(Credentials::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                }
            }
        };
        let resp = req.send().await.map_err(|e| net_err(t.peer(), &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = match status_cause(resp).await {
                Cause::Status { message, .. } | Cause::Denied(message) => message,
                other => other.to_string(),
            };
            return Err(if creds.is_some() {
                Cause::AuthRefused {
                    host: t.r.api_host().to_string(),
                    detail,
                }
            } else {
                Cause::NoCredentials {
                    host: t.r.api_host().to_string(),
                    config: self.config_name(),
                }
            });
        }
        if !status.is_success() {
            return Err(token_err(status_cause(resp).await.to_string()));
        }
        let body = read_limited(&t.peer(), resp, 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let tr: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("invalid token response: {e}")))?;
        tr.token
            .filter(|s| !s.is_empty())
            .or(tr.access_token)
            .ok_or_else(|| token_err("no token in the response".to_string()))
    }

    /// Send a request built by `make`, answering one 401 challenge (bearer token or basic
    /// credentials) and retrying once. Any other status is returned to the caller.
    pub(super) async fn send(
        &self,
        t: &Target<'_>,
        make: &dyn Fn() -> Result<RequestBuilder, Cause>,
    ) -> Result<Response, Cause> {
        let registry = t.r.registry.clone();
        let scopes = t.scopes();
        let key = (registry.clone(), scopes.join(" "));
        let mut authed = false;
        loop {
            let cached = {
                let st = self.state.lock().unwrap();
                st.tokens
                    .get(&key)
                    .or_else(|| st.basic.get(&registry))
                    .cloned()
            };
            let mut req = make()?;
            req = match &cached {
                Some(AuthHeader::Bearer(tok)) => req.bearer_auth(tok),
                Some(AuthHeader::Basic(u, p)) => req.basic_auth(u, Some(p)),
                None => req,
            };
            let resp = req.send().await.map_err(|e| net_err(t.peer(), &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let creds = self.credentials(&registry)?;
            if authed {
                // Fresh credentials were refused.
                return Err(match creds {
                    None => Cause::NoCredentials {
                        host: t.r.api_host().to_string(),
                        config: self.config_name(),
                    },
                    Some(_) => Cause::AuthRefused {
                        host: t.r.api_host().to_string(),
                        detail: status_cause(resp).await.to_string(),
                    },
                });
            }
            let challenge = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(parse_challenge);
            match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    // Our own scopes, not the challenge's: a HEAD before a push must get
                    // a token that also allows the push.
                    let tok = self
                        .fetch_token(t, &realm, service.as_deref(), &scopes, creds.as_ref())
                        .await?;
                    self.state
                        .lock()
                        .unwrap()
                        .tokens
                        .insert(key.clone(), AuthHeader::Bearer(tok));
                }
                Some(Challenge::Basic) => match creds {
                    Some(Credentials::Basic { username, password }) => {
                        self.state
                            .lock()
                            .unwrap()
                            .basic
                            .insert(registry.clone(), AuthHeader::Basic(username, password));
                    }
                    _ => {
                        return Err(Cause::NoCredentials {
                            host: t.r.api_host().to_string(),
                            config: self.config_name(),
                        })
                    }
                },
                None => {
                    return Err(Cause::AuthRefused {
                        host: t.r.api_host().to_string(),
                        detail: "401 without a supported WWW-Authenticate challenge".into(),
                    })
                }
            }
            authed = true;
        }
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
