//! The connection edge: accepts TCP connections up to a cap, completes the TLS handshake
//! when the broker serves HTTPS itself (`--tls-cert`/`--tls-key`), serves HTTP/1 on each
//! with a bounded request head and a header-read timeout, stamps every request with its
//! peer address, and drains connections on shutdown.
//!
//! The cap is enforced before `accept`: connections past it wait in the kernel's listen
//! queue instead of costing memory here. A client that opens connections and sends
//! nothing (slowloris) is cut off after the client timeout, so it cannot hold the cap —
//! the TLS handshake included: it runs on the connection's own task, under the same
//! client timeout, holding the connection's slot.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ServeConfig;

/// How long shutdown waits for open requests (long-polls, event streams) before it
/// drops them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` resolves, then drains. With `tls`, every
/// connection is HTTPS (a client speaking plain HTTP fails the handshake).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_address = crate::http::slots::Slots::new(config.max_connections_per_address, 0);
    let graceful = GracefulShutdown::new();
    // hyper answers a bare 431 past its buffer; the router's own check (routes::limits)
    // answers in the API's error format below it, so hyper's is only a backstop.
    let buffer = (config.max_header_bytes * 2).max(16 * 1024);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // One address may not hold every connection: past its share, a short refusal.
        let Some(address_slot) = per_address.try_take(peer.ip()) else {
            drop(slot);
            if acceptor.is_none() {
                tokio::spawn(refuse_busy(stream, config.client_timeout));
            }
            continue;
        };
        let edge = Edge {
            app: app.clone(),
            peer,
            client_timeout: config.client_timeout,
            buffer,
            watcher: graceful.watcher(),
            slot,
            address_slot,
        };
        match acceptor.clone() {
            None => {
                tokio::spawn(edge.serve(stream));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // Bounded like the request head: a client that connects and never
                    // completes a handshake gives its slot back after the client timeout.
                    match tokio::time::timeout(edge.client_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => edge.serve(tls).await,
                        Ok(Err(err)) => {
                            tracing::debug!(peer = %edge.peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(peer = %edge.peer, "TLS handshake timed out")
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("shutdown: dropped requests still open after {DRAIN_TIMEOUT:?}");
    }
}

/// One accepted connection: what serving it needs, and its slot under the cap (given
/// back when the connection ends).
struct Edge {
    app: Router,
    peer: SocketAddr,
    client_timeout: Duration,
    buffer: usize,
    watcher: Watcher,
    slot: OwnedSemaphorePermit,
    address_slot: crate::http::slots::Slot,
}

impl Edge {
    /// Serves HTTP/1 on `io` (TCP or TLS) until the connection ends.
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Edge {
            app,
            peer,
            client_timeout,
            buffer,
            watcher,
            slot,
            address_slot,
        } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(client_timeout)
            .max_buf_size(buffer)
            .serve_connection(TokioIo::new(io), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
        }
        drop(slot);
        drop(address_slot);
    }
}

/// Answers a connection over its address's share with a 429 in the error format (plain
/// HTTP only; a TLS client just sees the connection close) and closes it.
async fn refuse_busy(mut stream: tokio::net::TcpStream, client_timeout: Duration) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"budget_exhausted","message":"too many connections from this address; close some and retry"}}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(client_timeout, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The peer address of a request, when it came through [`serve`].
pub fn peer_of<B>(request: &axum::http::Request<B>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}
