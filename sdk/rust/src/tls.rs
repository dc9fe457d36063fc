//! TLS for every HTTP client Leash builds (the broker's upstream client, the agent client,
//! the tool-server verifier): one trust rule and one hardening, written once.
//!
//! - **rustls with the ring provider.** ring builds with a small C/assembly part and no
//!   cmake; aws-lc-rs (rustls' default) needs a large C build. The provider is passed
//!   explicitly to every configuration built here, so nothing depends on a process-wide
//!   default.
//! - **Trust: the platform's roots plus the caller's extra CA certificates.** The roots
//!   come from `rustls-platform-verifier` (on Linux: the system store, e.g.
//!   `/etc/ssl/certs`, read once when the client is built; on macOS and Windows: the OS
//!   verifier), so operators manage trust the way they manage it for everything else.
//!   Extra certificates (a private CA: `LEASH_CA_BUNDLE` in the broker) are added on top.
//! - **Hardened:** no redirects (an upstream must not send a call, and the credentials
//!   Leash injects into it, to another host) and no environment proxies (`HTTP_PROXY` and
//!   friends must not reroute calls that carry credentials or revocation feeds).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A TLS set-up problem (an unreadable or invalid CA bundle, a client that cannot be
/// built). The message names the file and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider of every TLS configuration Leash builds: ring (see the module
/// documentation for why).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider unless one is installed already.
///
/// Leash's own clients never need it (they carry their provider); it exists for other
/// `reqwest` clients in the same process (an application's, a test's), which would
/// otherwise find no provider, since reqwest is built without one.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: some provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Reads a PEM file of CA certificates (one or more `CERTIFICATE` blocks). A file that
/// cannot be read, holds no certificate, or holds one that cannot be a trust anchor is
/// an error naming the file: a typo in a bundle must not silently trust nothing extra.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read the CA bundle {shown}: {e}")))?;
    let mut certs = Vec::new();
    for (index, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| {
            TlsError(format!(
                "the CA bundle {shown} is not valid PEM (certificate {}): {e}",
                index + 1
            ))
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the CA bundle {shown} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    let mut store = rustls::RootCertStore::empty();
    for (index, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            TlsError(format!(
                "certificate {} of the CA bundle {shown} cannot be a trust anchor: {e}",
                index + 1
            ))
        })?;
    }
    Ok(certs)
}

/// A client TLS configuration: ring, TLS 1.2 and 1.3, the platform's roots plus
/// `extra_roots`, HTTP/1.1 by ALPN. Built once per client and shared by its connections.
///
/// If the platform has no root certificate and no extra one is given, every server
/// certificate is refused with a message saying so (plain `http://` keeps working).
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        ) {
            Ok(verifier) => Arc::new(verifier),
            Err(err) if extra_roots.is_empty() => {
                tracing::warn!(error = %err, "no trusted CA certificate; https will be refused");
                Arc::new(NoRoots(provider.clone()))
            }
            Err(err) => {
                return Err(TlsError(format!(
                    "cannot use the extra CA certificates: {err}"
                )));
            }
        };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A `reqwest` client builder with Leash's TLS ([`client_config`]), no redirects and no
/// environment proxies. Callers add their timeouts and pool settings.
pub fn client_builder(
    extra_roots: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, TlsError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(extra_roots)?)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none()))
}

/// Describes a failed request for a log line or an error message: a certificate or
/// handshake problem is named as one (e.g. "TLS: invalid peer certificate:
/// UnknownIssuer"), otherwise the innermost cause. Never includes the URL (which may hold
/// a secret) or any header.
pub fn describe(err: &reqwest::Error) -> String {
    if let Some(status) = err.status() {
        return format!("answered HTTP {}", status.as_u16());
    }
    if let Some(tls) = tls_cause(err) {
        return format!("TLS: {tls}");
    }
    let mut innermost: Option<String> = None;
    let mut source = std::error::Error::source(err);
    while let Some(current) = source {
        innermost = Some(current.to_string());
        source = current.source();
    }
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_redirect() {
        "redirected"
    } else if err.is_body() || err.is_decode() {
        "broke off its answer"
    } else {
        "request failed"
    };
    match innermost {
        Some(inner) => format!("{what}: {inner}"),
        None => what.to_string(),
    }
}

/// The rustls error behind `err`, if any. `io::Error` hides a wrapped error from
/// `source()` (it returns the wrapped error's own source), so it is opened explicitly,
/// and io errors may be nested.
fn tls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(tls) = tls_cause(inner)
    {
        return Some(tls);
    }
    err.source().and_then(tls_cause)
}

/// The verifier used when no root certificate exists at all: refuses every server
/// certificate with a clear reason (rustls cannot build a WebPKI verifier without roots).
#[derive(Debug)]
struct NoRoots(Arc<CryptoProvider>);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "no trusted CA certificate: the system has none and no CA bundle was given".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("leash-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = load_ca_bundle(&path).unwrap_err();
        assert!(err.0.contains("empty.pem"), "{err}");
        assert!(err.0.contains("no PEM certificate"), "{err}");
        let missing = load_ca_bundle(&dir.join("missing.pem")).unwrap_err();
        assert!(missing.0.contains("cannot read"), "{missing}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_ca_bundle(&garbage).unwrap_err();
        assert!(err.0.contains("garbage.pem"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_redirect_is_answered_not_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let followed = Arc::new(AtomicUsize::new(0));
        let seen = followed.clone();
        let app = axum::Router::new()
            .route(
                "/from",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::FOUND, [("location", "/to")], "")
                }),
            )
            .route(
                "/to",
                axum::routing::get(move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async { "followed" }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = client_builder(&[]).unwrap().build().unwrap();
        let answer = client
            .get(format!("http://{addr}/from"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 302);
        assert_eq!(followed.load(Ordering::SeqCst), 0);
        server.abort();
    }

    #[test]
    fn the_platform_config_builds() {
        let config = client_config(&[]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        client_builder(&[]).unwrap().build().unwrap();
    }
}
