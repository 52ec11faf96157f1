//! HTTP for the registry client and for `ADD <url>`: one reqwest client (rustls on ring,
//! proxies from the environment, timeouts), one runtime driving it, one retry rule and one
//! classification of failures into [`Cause`]s.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Response, StatusCode, Url};

use super::error::{Cause, Peer, RegistryError};
use super::tls;
use crate::image::{Digest, Sha256Writer};

/// Attempts after the first for transient failures (5xx, 429, dropped connections).
pub(super) const RETRIES: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(200);

/// Make ring rustls's process-wide crypto provider (reqwest is built without one, see
/// Cargo.toml). Installing twice keeps the first, which is this same provider.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTP client and the current-thread runtime that drives it (see the module docs of
/// `registry` for why the API is synchronous).
pub(super) struct Transport {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Transport {
    pub(super) fn new() -> Result<Transport, RegistryError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Setup(format!("tokio runtime: {e}")))?;
        install_crypto_provider();
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(120))
        };
        let http = match builder().build() {
            Ok(http) => http,
            // Loading the system's CA certificates is the one step the client below skips:
            // if it builds, the machine has none (tls.rs). Plain HTTP still works.
            Err(e) => builder()
                .use_preconfigured_tls(tls::refusing_all().map_err(RegistryError::Setup)?)
                .build()
                .map_err(|_| RegistryError::Setup(root_cause(&e)))?,
        };
        Ok(Transport { rt, http })
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// GET `url` into a new file at `dest` and return the digest of its content. A
    /// transient failure (5xx, 429, a dropped connection) starts the download again.
    pub(super) fn download(&self, url: &str, dest: &Path) -> Result<Digest, Cause> {
        let url = Url::parse(url).map_err(|e| Cause::Invalid {
            what: "URL",
            detail: e.to_string(),
        })?;
        let host = url.host_str().unwrap_or_default();
        let peer = Peer::Server(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        });
        self.block_on(with_retries(|| self.download_once(&url, &peer, dest)))
    }

    async fn download_once(&self, url: &Url, peer: &Peer, dest: &Path) -> Result<Digest, Cause> {
        let mut resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| net_err(peer.clone(), &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Cause::Http {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_string(),
            });
        }
        let what = || format!("writing {}", dest.display());
        let file = std::fs::File::create(dest).map_err(|e| io_err(what(), e))?;
        let mut out = Sha256Writer::new(std::io::BufWriter::new(file));
        while let Some(chunk) = resp.chunk().await.map_err(|e| net_err(peer.clone(), &e))? {
            out.write_all(&chunk).map_err(|e| io_err(what(), e))?;
        }
        let (digest, _, mut inner) = out.finish();
        inner.flush().map_err(|e| io_err(what(), e))?;
        Ok(digest)
    }
}

/// Run `op` until it succeeds or fails for good; a transient failure is tried again
/// `RETRIES` times with exponential backoff, then reported with the number of attempts.
pub(super) async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, Cause>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Cause>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(c) if c.is_transient() && attempt < RETRIES => {
                attempt += 1;
                backoff(attempt).await;
            }
            Err(c) if c.is_transient() => return Err(c.after(attempt + 1)),
            res => return res,
        }
    }
}

/// The pause before retry number `attempt` (from 1): 200 ms, doubling.
pub(super) async fn backoff(attempt: u32) {
    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
}

/// The innermost message of an error chain ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A transport error: no connection at all (not retried), or one that broke (retried).
pub(super) fn net_err(peer: Peer, e: &reqwest::Error) -> Cause {
    if tls::no_ca_certificates(e) {
        return Cause::NoCaCertificates { host: peer };
    }
    let detail = if e.is_timeout() {
        "timed out".to_string()
    } else {
        root_cause(e)
    };
    if e.is_connect() {
        Cause::Unreachable { host: peer, detail }
    } else {
        Cause::ConnectionLost { host: peer, detail }
    }
}

pub(super) fn io_err(what: impl Into<String>, error: std::io::Error) -> Cause {
    Cause::Io {
        what: what.into(),
        error,
    }
}

/// The cause for an unexpected response: the first message of the distribution error body.
pub(super) async fn status_cause(resp: Response) -> Cause {
    let (status, message) = error_message(resp).await;
    match status {
        StatusCode::FORBIDDEN => Cause::Denied(message),
        _ => Cause::Status {
            status: status.as_u16(),
            message,
        },
    }
}

/// The status and the first message of the distribution error body (`manifest unknown`),
/// else the start of the body, else the status's reason phrase.
pub(super) async fn error_message(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| {
            if e.message.is_empty() {
                e.code
            } else {
                e.message
            }
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                text.to_string()
            }
        });
    (status, message)
}

/// Read a whole (small) body, refusing more than `max` bytes.
pub(super) async fn read_limited(
    peer: &Peer,
    mut resp: Response,
    max: u64,
) -> Result<Vec<u8>, Cause> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| net_err(peer.clone(), &e))? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(Cause::Invalid {
                what: "response",
                detail: format!("larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(super) fn content_type(h: &HeaderMap) -> Option<String> {
    let v = h.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim().to_string())
}

/// A request body streaming `len` bytes of `path` from `offset`.
pub(super) fn file_body(path: &Path, offset: u64, len: u64) -> std::io::Result<reqwest::Body> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let reader = file.take(len);
    let stream = futures_util::stream::try_unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 256 << 10];
        // A blocking read inside the runtime: local file reads are short and the runtime
        // is ours alone, so a blocking pool hop would only add latency.
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), reader)))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// Answer one connection after another with `responses`, in order.
    fn serve(responses: Vec<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for response in responses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut request = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while request.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                conn.write_all(response.as_bytes()).unwrap();
            }
        });
        port
    }

    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    /// ADD <url> follows the registry's retry rule (it gave up on the first 503 when it
    /// had an HTTP client of its own).
    #[test]
    fn downloads_retry_overloaded_servers() {
        let port = serve(vec![
            UNAVAILABLE,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let digest = Transport::new()
            .unwrap()
            .download(&format!("http://127.0.0.1:{port}/f"), &dest)
            .unwrap();
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
    }

    #[test]
    fn download_failures_name_the_server_and_the_status() {
        let port = serve(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let transport = Transport::new().unwrap();
        let err = transport
            .download(&format!("http://127.0.0.1:{port}/f"), &dir.path().join("f"))
            .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 404 Not Found");

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = transport
            .download(&format!("http://127.0.0.1:{port}/f"), &dir.path().join("f"))
            .unwrap_err();
        // A web server, not a registry; refused at once, not retried.
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach 127.0.0.1:{port}: ")),
            "{err}"
        );
        assert_eq!(err.attempts(), 1);
    }
}
