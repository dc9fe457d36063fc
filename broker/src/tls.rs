//! The broker's TLS set-up, read once at start: the server side (`--tls-cert` and
//! `--tls-key`, for deployments without a TLS-terminating proxy) and the CA bundle
//! (`LEASH_CA_BUNDLE`) that every outbound connection trusts besides the platform's
//! roots — HTTP tools, MCP upstreams and the webhook through the one upstream client
//! ([`crate::upstream::client`]), PostgreSQL through `sslrootcert`.
//!
//! Every mistake (one of the pair missing, an unreadable file, a key that does not fit
//! the certificate, a bundle without certificates) stops `leash serve` with a message
//! naming the file; nothing falls back to plain HTTP or to fewer trusted roots silently.
//! The rules of the client side live in `leash_sdk::tls`, shared with the SDK.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate chain and key to serve HTTPS with, if both were given.
pub fn server_pair(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.to_path_buf(), key.to_path_buf()))),
        (None, None) => Ok(None),
        (Some(_), None) => bail!(
            "--tls-cert (LEASH_TLS_CERT) was given without --tls-key (LEASH_TLS_KEY): give both to serve HTTPS, or neither"
        ),
        (None, Some(_)) => bail!(
            "--tls-key (LEASH_TLS_KEY) was given without --tls-cert (LEASH_TLS_CERT): give both to serve HTTPS, or neither"
        ),
    }
}

/// The server configuration for `leash serve --tls-cert CERT --tls-key KEY`: the PEM
/// certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1),
/// TLS 1.2 and 1.3 with the ring provider, HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "the TLS certificate file {} holds no PEM certificate",
            cert.display()
        );
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(leash_sdk::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS server configuration")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the TLS key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The extra CA certificates of `LEASH_CA_BUNDLE` (none when unset).
pub fn ca_bundle(path: Option<&Path>) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    match path {
        None => Ok(Vec::new()),
        Some(path) => leash_sdk::tls::load_ca_bundle(path)
            .map_err(|e| anyhow::anyhow!("LEASH_CA_BUNDLE / --ca-bundle: {e}")),
    }
}
