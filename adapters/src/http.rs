//! The outbound HTTP client shared by every upstream adapter.
//!
//! [`HttpClient`] wraps one [`reqwest::Client`] (one connection pool) configured by [`HttpConfig`]:
//! short connect and total timeouts, so a dark upstream costs a bounded wait and the circuit breaker
//! sees it quickly; redirects are never followed (an OAuth endpoint that redirects is answered as
//! is, never chased with credentials attached); TLS is rustls with the platform's roots plus an
//! optional extra root CA; response bodies are bounded.
//!
//! It implements [`oauth2::AsyncHttpClient`], so the `oauth2` crate (built without its own
//! reqwest) sends its requests through it:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use adapters::http::{HttpClient, HttpConfig};
//! use oauth2::{basic::BasicClient, ClientId, ClientSecret, Scope, TokenUrl};
//!
//! let http = HttpClient::new(&HttpConfig::default())?;
//! let client = BasicClient::new(ClientId::new("agent".into()))
//!     .set_client_secret(ClientSecret::new("s3cret".into()))
//!     .set_token_uri(TokenUrl::new("https://idp.example/token".into())?);
//! let token = client
//!     .exchange_client_credentials()
//!     .add_scope(Scope::new("read".into()))
//!     .request_async(&http)
//!     .await?;
//! # drop(token);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

use crate::Error;

/// Settings of an [`HttpClient`]. Every field has a default suited to calling an identity
/// provider on the same network: see [`HttpConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Longest time to establish a connection (TCP and TLS handshake). Default: 200 ms.
    pub connect_timeout: Duration,
    /// Longest time for a whole exchange, from connecting until the last byte of the response
    /// body. Default: 2 s.
    pub timeout: Duration,
    /// PEM bytes of one or more root CA certificates trusted in addition to the platform's roots,
    /// e.g. a private mesh CA. Default: none.
    pub extra_root_ca_pem: Option<Vec<u8>>,
    /// Largest response body accepted, in bytes; a larger one fails with
    /// [`Error::ResponseTooLarge`]. Default: 1 MiB.
    pub max_response_bytes: usize,
}

impl Default for HttpConfig {
    /// Connect timeout 200 ms, total timeout 2 s, no extra root CA, bodies up to 1 MiB.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            extra_root_ca_pem: None,
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// An HTTP client for upstream calls: one connection pool, never follows redirects.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    timeout: Duration,
    max_response_bytes: usize,
}

impl HttpClient {
    /// Builds a client from `config`.
    ///
    /// Fails with [`Error::NoRootCertificate`] or [`Error::InvalidRootCertificate`] when the extra
    /// root CA is unusable, and with [`Error::ClientBuild`] when the TLS setup fails.
    pub fn new(config: &HttpConfig) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.extra_root_ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(Error::InvalidRootCertificate)?;
            if certificates.is_empty() {
                return Err(Error::NoRootCertificate);
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let inner = builder.build().map_err(Error::ClientBuild)?;
        Ok(Self {
            inner,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Sends `request` and reads the whole response.
    ///
    /// Any status is a successful exchange, including redirects (3xx), which are returned as they
    /// are. Fails with [`Error::Connect`], [`Error::Timeout`], [`Error::Transport`] or
    /// [`Error::ResponseTooLarge`]; [`Error::InvalidRequest`] when `request`'s URI is not absolute.
    pub async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, Error> {
        let request = reqwest::Request::try_from(request).map_err(|error| Error::InvalidRequest(redact(error)))?;
        let mut response = self
            .inner
            .execute(request)
            .await
            .map_err(|error| self.classify(error))?;
        if response
            .content_length()
            .is_some_and(|length| length > self.max_response_bytes as u64)
        {
            return Err(Error::ResponseTooLarge {
                limit: self.max_response_bytes,
            });
        }
        let mut builder = ::http::Response::builder()
            .status(response.status())
            .version(response.version());
        if let Some(headers) = builder.headers_mut() {
            *headers = std::mem::take(response.headers_mut());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| self.classify(error))? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(Error::ResponseTooLarge {
                    limit: self.max_response_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(body).map_err(Error::InvalidResponse)
    }

    fn classify(&self, error: reqwest::Error) -> Error {
        if error.is_connect() {
            Error::Connect(redact(error))
        } else if error.is_timeout() {
            Error::Timeout(self.timeout)
        } else {
            Error::Transport(redact(error))
        }
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

/// Removes what may carry a credential from the URL an error reports: user name, password, query
/// and fragment.
fn redact(mut error: reqwest::Error) -> reqwest::Error {
    if let Some(url) = error.url_mut() {
        url.set_query(None);
        url.set_fragment(None);
        // Both fail only for URLs that cannot have credentials, which then have none to remove.
        let _ = url.set_password(None);
        let _ = url.set_username("");
    }
    error
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use oauth2::basic::BasicClient;
    use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Mutex;

    use super::*;

    /// A self-signed P-256 CA certificate, valid until 2126; only parsed, never used for a handshake.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUTQmBGbMefmHR4Xmqe1ODKtEajrswCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZbWVzaGdhdGUgYWRhcHRlcnMgdGVzdCBDQTAgFw0yNjExMzAx
MTM4MTJaGA8yMTI2MTEwNjExMzgxMlowJDEiMCAGA1UEAwwZbWVzaGdhdGUgYWRh
cHRlcnMgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKPFbpsyocBQ
NA2qlpvRiWaJkFzdw3AIzVQw7ZJSzQ/mWYNNCfM0hH3mVaIYJox6MroFwollyNtw
Np0VjFBQHj+jUzBRMB0GA1UdDgQWBBQ2B5vMue1fkSt+e41LFApPdOWeJTAfBgNV
HSMEGDAWgBQ2B5vMue1fkSt+e41LFApPdOWeJTAPBgNVHRMBAf8EBTADAQH/MAoG
CCqGSM49BAMCA0gAMEUCIGIJwdy9mT5uOQycs+oXfUPRHcnwKFb9ulP5qx0Byr2L
AiEAu2l9akEvWWH4sBv/AqzLQN31Oq2rEuR8YV82ZZa0qnI=
-----END CERTIFICATE-----
";

    /// A one-route HTTP/1.1 server on 127.0.0.1:0 that answers every request with `response`
    /// (or never answers when `response` is `None`) and records the raw requests it read.
    struct CannedServer {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
    }

    impl CannedServer {
        async fn start(response: Option<String>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let (recorded, counted) = (requests.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (response, recorded) = (response.clone(), recorded.clone());
                    tokio::spawn(async move {
                        answer(stream, response, recorded).await;
                    });
                }
            });
            Self {
                addr,
                requests,
                connections,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    async fn answer(mut stream: TcpStream, response: Option<String>, recorded: Arc<Mutex<Vec<String>>>) {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            request.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        recorded
            .lock()
            .await
            .push(String::from_utf8_lossy(&request).into_owned());
        match response {
            Some(response) => {
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            // Hold the connection open without a byte of answer until the client gives up.
            None => {
                let _ = stream.read(&mut buffer).await;
            }
        }
    }

    fn canned(status: &str, headers: &[&str], body: &str) -> String {
        let mut response = format!("HTTP/1.1 {status}\r\n");
        for header in headers {
            response.push_str(header);
            response.push_str("\r\n");
        }
        response.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        response
    }

    fn get(url: &str) -> HttpRequest {
        ::http::Request::get(url).body(Vec::new()).unwrap()
    }

    fn quick_config() -> HttpConfig {
        HttpConfig {
            timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = HttpConfig::default();
        assert_eq!(config.connect_timeout, Duration::from_millis(200));
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.extra_root_ca_pem, None);
        assert_eq!(config.max_response_bytes, 1024 * 1024);
    }

    #[tokio::test]
    async fn returns_status_headers_and_body() {
        let server = CannedServer::start(Some(canned(
            "200 OK",
            &["Content-Type: application/json", "X-Test: yes"],
            r#"{"ok":true}"#,
        )))
        .await;
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let response = client.execute(get(&server.url("/hello"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-test"], "yes");
        assert_eq!(response.body(), br#"{"ok":true}"#);
        let requests = server.requests.lock().await;
        assert!(requests[0].starts_with("GET /hello HTTP/1.1\r\n"), "{requests:?}");
    }

    #[tokio::test]
    async fn redirect_is_returned_not_followed() {
        let server = CannedServer::start(None).await;
        let redirecting = CannedServer::start(Some(canned(
            "302 Found",
            &[&format!("Location: {}", server.url("/elsewhere"))],
            "",
        )))
        .await;
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let response = client.execute(get(&redirecting.url("/token"))).await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], server.url("/elsewhere").as_str());
        assert_eq!(redirecting.requests.lock().await.len(), 1);
        assert_eq!(server.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn silent_server_hits_the_total_timeout() {
        let server = CannedServer::start(None).await;
        let client = HttpClient::new(&quick_config()).unwrap();
        let started = Instant::now();
        let error = client.execute(get(&server.url("/slow"))).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(error, Error::Timeout(limit) if limit == Duration::from_millis(300)),
            "{error:?}"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error_without_the_query() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let url = format!("http://user:hunter2@{addr}/token?code=secret-code");
        let error = client.execute(get(&url)).await.unwrap_err();
        assert!(matches!(error, Error::Connect(_)), "{error:?}");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("secret-code"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn oversized_body_is_refused() {
        let body = "x".repeat(2048);
        let server = CannedServer::start(Some(canned("200 OK", &[], &body))).await;
        let config = HttpConfig {
            max_response_bytes: 1024,
            ..HttpConfig::default()
        };
        let client = HttpClient::new(&config).unwrap();
        let error = client.execute(get(&server.url("/big"))).await.unwrap_err();
        assert!(matches!(error, Error::ResponseTooLarge { limit: 1024 }), "{error:?}");
    }

    #[tokio::test]
    async fn relative_uri_is_an_invalid_request() {
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let error = client.execute(get("/relative")).await.unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    }

    #[test]
    fn extra_root_ca_is_accepted() {
        let config = HttpConfig {
            extra_root_ca_pem: Some(TEST_CA_PEM.as_bytes().to_vec()),
            ..HttpConfig::default()
        };
        HttpClient::new(&config).unwrap();
    }

    #[test]
    fn extra_root_ca_without_certificate_is_refused() {
        let config = HttpConfig {
            extra_root_ca_pem: Some(b"not a certificate".to_vec()),
            ..HttpConfig::default()
        };
        let error = HttpClient::new(&config).unwrap_err();
        assert!(matches!(error, Error::NoRootCertificate), "{error:?}");
    }

    #[tokio::test]
    async fn oauth2_client_credentials_run_over_it() {
        let server = CannedServer::start(Some(canned(
            "200 OK",
            &["Content-Type: application/json", "Cache-Control: no-store"],
            r#"{"access_token":"at-123","token_type":"Bearer","expires_in":300,"scope":"read"}"#,
        )))
        .await;
        let http = HttpClient::new(&HttpConfig::default()).unwrap();
        let client = BasicClient::new(ClientId::new("agent".into()))
            .set_client_secret(ClientSecret::new("s3cret".into()))
            .set_token_uri(TokenUrl::new(server.url("/token")).unwrap());
        let token = client
            .exchange_client_credentials()
            .add_scope(Scope::new("read".into()))
            .request_async(&http)
            .await
            .unwrap();
        assert_eq!(token.access_token().secret(), "at-123");
        let requests = server.requests.lock().await;
        let request = &requests[0];
        assert!(request.starts_with("POST /token HTTP/1.1\r\n"), "{request}");
        // RFC 6749 §2.3.1: HTTP Basic with the form-urlencoded id and secret.
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: basic ywdlbnq6cznjcmv0"),
            "{request}"
        );
        assert!(request.contains("grant_type=client_credentials"), "{request}");
        assert!(request.contains("scope=read"), "{request}");
    }

    #[tokio::test]
    async fn timeout_applies_through_the_oauth2_trait() {
        let server = CannedServer::start(None).await;
        let http = HttpClient::new(&quick_config()).unwrap();
        let error = http.call(get(&server.url("/token"))).await.unwrap_err();
        assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    }
}
