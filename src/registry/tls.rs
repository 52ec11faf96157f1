//! TLS on a machine without CA certificates. reqwest's default verifier loads the system's
//! CA certificates when the client is built and fails the build when it finds none, which
//! made every registry operation fail, plain-HTTP loopback registries included. Without a
//! CA bundle the client gets a verifier that refuses every certificate instead: plain HTTP
//! works, and each HTTPS connection fails with an error that [`no_ca_certificates`] finds
//! in the error chain, so the message names the server and what to install.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, OtherError, SignatureScheme};

/// The error each HTTPS handshake fails with when the machine has no CA certificates.
#[derive(Debug)]
struct NoCaCertificates;

impl fmt::Display for NoCaCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no CA certificates to verify the server's certificate with")
    }
}

impl Error for NoCaCertificates {}

/// A TLS configuration whose every handshake fails with [`NoCaCertificates`].
pub(super) fn refusing_all() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RefuseAll { schemes }))
        .with_no_client_auth())
}

/// Whether a request failed because the machine has no CA certificates. TLS errors reach
/// reqwest's error chain inside `io::Error`s (two, nested), whose `source()` skips the
/// error they carry, so each `io::Error` is opened.
pub(super) fn no_ca_certificates(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::Other(OtherError(inner))) = err.downcast_ref::<rustls::Error>() {
            if inner.is::<NoCaCertificates>() {
                return true;
            }
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    false
}

#[derive(Debug)]
struct RefuseAll {
    schemes: Vec<SignatureScheme>,
}

impl RefuseAll {
    fn refuse<T>(&self) -> Result<T, rustls::Error> {
        Err(rustls::Error::Other(OtherError(Arc::new(NoCaCertificates))))
    }
}

impl ServerCertVerifier for RefuseAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.refuse()
    }

    // The handshake stops at the certificate; these are never reached.
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refuse()
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refuse()
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
