//! Client ID metadata documents (the MCP authorization spec's preferred way for a client
//! to identify itself): the `client_id` is an `https://` URL, and the document found
//! there names the client and its redirect URIs. Leash fetches it when the client first
//! asks to authorize, and caches it for five minutes.
//!
//! Fetching a URL a stranger chose is a server-side request forgery risk, so the fetch
//! is fenced: `https://` only, a path required, no credentials or fragment; the host's
//! addresses are resolved by Leash's own resolver, which drops every private, loopback,
//! link-local and otherwise non-public address (so a name that resolves there is never
//! connected to, and DNS cannot change the answer between a check and the connection);
//! no redirects, no proxies; 5 seconds and 16 KiB at most. Only hosts an operator lists
//! (`LEASH_CLIENT_METADATA_PRIVATE_HOSTS`) may resolve to private addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;

use crate::oauth::clients::{MAX_REDIRECT_URIS, MAX_URI_BYTES, check_redirect_uri, display_name};
use crate::store::OAuthClient;

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Time allowed for the whole fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched document is trusted before it is fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a document that could not be used stays refused without a new fetch.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);

/// Whether `client_id` names a metadata document (rather than a registered client).
pub fn is_document_id(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// Whether `ip` is an address on the public internet (not private, loopback, link-local,
/// shared, documentation, multicast, reserved, or an IPv4-mapped form of one).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // IPv4-compatible (::a.b.c.d, deprecated): judge the IPv4 address inside.
            if segments[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)
                || first == 0x0100
                // 6to4 and Teredo carry an IPv4 address inside; site-local is private.
                || first == 0x2002
                || (first == 0x2001 && v6.segments()[1] == 0x0000)
                || (first & 0xffc0) == 0xfec0)
        }
    }
}

/// Leash's resolver for document fetches: public addresses only, except for the hosts an
/// operator allowed.
struct PublicOnly {
    private_hosts: Arc<Vec<String>>,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let allowed = self.private_hosts.contains(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allowed || is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// A metadata document, as far as Leash reads it.
#[derive(Deserialize)]
struct Document {
    client_id: String,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    client_secret: Option<serde_json::Value>,
}

/// Fetches and caches client ID metadata documents.
pub struct ClientDocuments {
    client: reqwest::Client,
    private_hosts: Arc<Vec<String>>,
    cache: moka::future::Cache<String, Arc<OAuthClient>>,
    /// Why a URL failed, for a minute: a stranger cannot make Leash fetch it again and
    /// again by reloading the authorization page.
    failures: moka::future::Cache<String, String>,
}

impl ClientDocuments {
    /// A fetcher trusting the platform's roots plus `extra_roots`; `private_hosts` may
    /// resolve to private addresses (and be written as private IP literals).
    pub fn new(
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
        private_hosts: &[String],
    ) -> anyhow::Result<Self> {
        let private_hosts = Arc::new(
            private_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect::<Vec<_>>(),
        );
        let client = leash_sdk::tls::client_builder(extra_roots)?
            .dns_resolver(Arc::new(PublicOnly {
                private_hosts: private_hosts.clone(),
            }))
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .build()?;
        Ok(ClientDocuments {
            client,
            private_hosts,
            cache: moka::future::Cache::builder()
                .max_capacity(1000)
                .time_to_live(CACHE_TTL)
                .build(),
            failures: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(FAILURE_TTL)
                .build(),
        })
    }

    /// The client a document URL names. `Err` says why it cannot be used (shown to the
    /// person, never redirected).
    pub async fn client(&self, client_id: &str, now_ms: i64) -> Result<OAuthClient, String> {
        if let Some(why) = self.failures.get(client_id).await {
            return Err(why);
        }
        let found = self
            .cache
            .try_get_with(client_id.to_string(), async {
                self.fetch(client_id, now_ms).await.map(Arc::new)
            })
            .await;
        match found {
            Ok(client) => Ok(client.as_ref().clone()),
            Err(why) => {
                let why: String = why.as_ref().clone();
                self.failures
                    .insert(client_id.to_string(), why.clone())
                    .await;
                Err(why)
            }
        }
    }

    /// Checks the URL itself before anything is fetched.
    fn check_url(&self, client_id: &str) -> Result<Url, String> {
        if client_id.len() > MAX_URI_BYTES {
            return Err("the client_id URL is longer than 2000 bytes".into());
        }
        let url = Url::parse(client_id).map_err(|e| format!("the client_id is not a URL: {e}"))?;
        if url.scheme() != "https" {
            return Err("a client_id URL must be https".into());
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err("a client_id URL must carry no fragment or user information".into());
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err("a client_id URL must have a path".into());
        }
        // The parsed form normalises dot segments: a URL that needed normalising is
        // not the document's own id.
        if url.as_str() != client_id {
            return Err("the client_id URL is not in its normal form".into());
        }
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && !is_public(ip)
            && !self.private_hosts.contains(&host)
        {
            return Err(format!("{host} is not a public address"));
        }
        Ok(url)
    }

    async fn fetch(&self, client_id: &str, now_ms: i64) -> Result<OAuthClient, String> {
        let url = self.check_url(client_id)?;
        let cannot = |why: &str| format!("the client's metadata document at {client_id} {why}");
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    cannot("did not arrive within 5 seconds")
                } else if e.is_connect() {
                    // One answer for "no such name", "only private addresses" and
                    // "refused": the page must not tell a stranger which internal names
                    // exist.
                    cannot("could not be fetched from a public address")
                } else {
                    cannot(&format!(
                        "could not be fetched ({})",
                        leash_sdk::tls::describe(&e)
                    ))
                }
            })?;
        if !response.status().is_success() {
            return Err(cannot(&format!(
                "answered HTTP {}",
                response.status().as_u16()
            )));
        }
        if response
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOCUMENT_BYTES)
        {
            return Err(cannot("is larger than 16 KiB"));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(cannot("is larger than 16 KiB"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(cannot("did not arrive within 5 seconds")),
                Err(_) => return Err(cannot("broke off")),
            }
        }
        let document: Document = serde_json::from_slice(&body)
            .map_err(|e| cannot(&format!("is not a client metadata JSON object: {e}")))?;
        if document.client_id != client_id {
            return Err(cannot("names another client_id"));
        }
        if document.client_secret.is_some() {
            return Err(cannot(
                "carries a client_secret, which a public document must not",
            ));
        }
        if document
            .token_endpoint_auth_method
            .as_deref()
            .is_some_and(|m| m != "none")
        {
            return Err(cannot(
                "asks for a client authentication method Leash does not support (only \"none\")",
            ));
        }
        if document.redirect_uris.is_empty() || document.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(cannot("must list 1 to 10 redirect_uris"));
        }
        for uri in &document.redirect_uris {
            check_redirect_uri(uri)
                .map_err(|why| cannot(&format!("lists a bad redirect URI: {why}")))?;
        }
        let host = Url::parse(client_id)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let name = display_name(document.client_name.as_deref(), &host);
        Ok(OAuthClient {
            client_id: client_id.to_string(),
            client_name: name,
            redirect_uris: document.redirect_uris,
            created_at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "::7f00:1",
            "::a00:1",
            "2002:7f00:1::1",
            "2001:0:1::1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn document_urls_are_checked_before_any_fetch() {
        let documents = ClientDocuments::new(&[], &[]).unwrap();
        for bad in [
            "http://app.example.com/client.json",
            "https://app.example.com/",
            "https://app.example.com",
            "https://user@app.example.com/c.json",
            "https://app.example.com/c.json#x",
            "https://app.example.com/a/../c.json",
            "https://127.0.0.1/c.json",
            "https://[::1]/c.json",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert!(documents.check_url(bad).is_err(), "{bad}");
        }
        assert!(
            documents
                .check_url("https://app.example.com/client.json")
                .is_ok()
        );
        let allowed = ClientDocuments::new(&[], &["127.0.0.1".to_string()]).unwrap();
        assert!(allowed.check_url("https://127.0.0.1/c.json").is_ok());
    }
}
