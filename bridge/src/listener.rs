//! The OAuth listener's accept loop: a connection cap, a header read timeout (which is also the
//! keep-alive idle timeout: hyper starts it whenever a connection waits for the next request's
//! headers), the source address of each connection for the rate limits, and graceful shutdown.
//!
//! The body read timeout is applied per request by [`crate::ratelimit::limit`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Deserializer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// `bridge.connections`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Most connections served at once; more wait in the kernel's accept queue.
    pub max: usize,
    /// How long a client may take to send a request's headers, and how long an idle keep-alive
    /// connection stays open (humantime).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body (humantime).
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionConfig {
    /// Every problem with the values, each naming its key under `bridge.connections`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max == 0 || self.max > u32::MAX as usize {
            problems.push("bridge.connections.max: must be between 1 and 4294967295".to_owned());
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("bridge.connections.{name}: must be positive"));
            }
        }
        problems
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish.
///
/// With `tls`, each connection's TLS handshake runs in the connection's own task, bounded by
/// [`crate::tls::HANDSHAKE_TIMEOUT`], so a slow handshake holds nobody else up.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ConnectionConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let max = config.max.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (closing, closing_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
            app.clone().oneshot(request)
        });
        let (builder, closing_rx, acceptor) = (builder.clone(), closing_rx.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(&builder, stream, service, closing_rx).await,
                Some(acceptor) => {
                    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&builder, stream, service, closing_rx).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    let _ = closing.send(true);
    // Every connection holds a slot until it has finished.
    let _ = slots.acquire_many(max as u32).await;
}

/// Serves one connection until it closes, or shuts it down gracefully once `closing` flips.
async fn serve_connection<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    mut closing: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = async { closing.wait_for(|closing| *closing).await.map(|_| ()) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
