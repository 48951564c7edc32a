//! Rate limits: keyed token buckets (GCRA) in a sharded table of bounded size, and the axum
//! middleware that applies them to the OAuth endpoints.
//!
//! Four limits, each keyed separately:
//! - requests per source address and per client id — flood protection, set far above what a
//!   legitimate high-rate client sends (the throughput benchmark runs on the defaults);
//! - failed client authentications per source address and per client id — credential guessing.
//!   A request whose source or client has used up its failure budget is refused with 429 *before*
//!   its credentials are checked, so guessing stops at the budget. (The per-client failure limit
//!   lets someone who knows a client id slow that client's authentication down; the budget refills
//!   in seconds, and the per-source limit is what stops most guessing.)
//!
//! [`limit`] is one middleware for the whole router; other endpoints (`/authorize`, `/register`)
//! are covered by it once routed, and may charge their own named budget with
//! [`RateLimits::check_registration`] or a [`Limiter`] of their own.
//!
//! Memory is bounded: each limiter holds at most `max_keys` keys; when a shard is full, the key
//! whose bucket is fullest (the least throttled) is evicted, so a flood of new keys cannot push
//! out the keys that are being throttled.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

use crate::error::OAuthError;
use crate::http::AppState;
use crate::metrics::Metrics;

/// One bucket's shape: `rate` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Refill rate, tokens per second (may be fractional: `0.2` is one every 5 s).
    pub rate: f64,
    /// Bucket size: how many may be spent at once.
    pub burst: u32,
}

impl Bucket {
    const fn new(rate: f64, burst: u32) -> Self {
        Self { rate, burst }
    }
}

/// `bridge.rate_limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Apply rate limits at all (default true).
    pub enabled: bool,
    /// Requests per source address.
    pub per_source: Bucket,
    /// Requests per client id (from Basic credentials or the form's `client_id`).
    pub per_client: Bucket,
    /// Failed client authentications per source address.
    pub auth_failures_per_source: Bucket,
    /// Failed client authentications per client id.
    pub auth_failures_per_client: Bucket,
    /// Registrations per source address (for `/register`).
    pub registrations_per_source: Bucket,
    /// Failed password logins per source address (the login page; see [`crate::login_throttle`]).
    pub login_failures_per_source: Bucket,
    /// Failed password logins per username: slows guessing, never locks out a source without
    /// recent failures (see [`crate::login_throttle`]).
    pub login_failures_per_user: Bucket,
    /// Most keys each limiter remembers.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_source: Bucket::new(200_000.0, 400_000),
            per_client: Bucket::new(200_000.0, 400_000),
            auth_failures_per_source: Bucket::new(0.5, 20),
            auth_failures_per_client: Bucket::new(0.5, 10),
            registrations_per_source: Bucket::new(0.2, 20),
            login_failures_per_source: Bucket::new(0.1, 10),
            login_failures_per_user: Bucket::new(0.05, 5),
            max_keys: 65_536,
        }
    }
}

impl RateLimitConfig {
    /// Every problem with the values, each naming its key under `bridge.rate_limits`.
    pub fn problems(&self) -> Vec<String> {
        let buckets = [
            ("per_source", self.per_source),
            ("per_client", self.per_client),
            ("auth_failures_per_source", self.auth_failures_per_source),
            ("auth_failures_per_client", self.auth_failures_per_client),
            ("registrations_per_source", self.registrations_per_source),
            ("login_failures_per_source", self.login_failures_per_source),
            ("login_failures_per_user", self.login_failures_per_user),
        ];
        let mut problems: Vec<String> = buckets
            .iter()
            .filter(|(_, b)| !(b.rate.is_finite() && b.rate > 0.0 && b.burst > 0))
            .map(|(name, _)| format!("bridge.rate_limits.{name}: rate and burst must be positive"))
            .collect();
        if self.max_keys < SHARDS {
            problems.push(format!("bridge.rate_limits.max_keys: must be at least {SHARDS}"));
        }
        problems
    }
}

/// Which limit refused a request; the label of `meshgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Requests per source address.
    Source,
    /// Requests per client id.
    Client,
    /// Failed authentications per source address.
    AuthFailuresSource,
    /// Failed authentications per client id.
    AuthFailuresClient,
    /// Registrations per source address.
    Registration,
    /// Failed password logins per source address.
    LoginFailuresSource,
    /// Failed password logins per username.
    LoginFailuresUser,
}

impl Scope {
    /// Every scope, in label order.
    pub const ALL: [Scope; 7] = [
        Scope::Source,
        Scope::Client,
        Scope::AuthFailuresSource,
        Scope::AuthFailuresClient,
        Scope::Registration,
        Scope::LoginFailuresSource,
        Scope::LoginFailuresUser,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Source => "source",
            Scope::Client => "client",
            Scope::AuthFailuresSource => "auth_failures_source",
            Scope::AuthFailuresClient => "auth_failures_client",
            Scope::Registration => "registration",
            Scope::LoginFailuresSource => "login_failures_source",
            Scope::LoginFailuresUser => "login_failures_user",
        }
    }
}

const SHARDS: usize = 64;

/// A keyed GCRA limiter: per key, the "theoretical arrival time" of the next request, in
/// nanoseconds since the limiter started. A key that is absent has a full bucket.
pub struct Limiter {
    interval_ns: u64,
    tolerance_ns: u64,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<u64, u64>>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("interval_ns", &self.interval_ns)
            .field("tolerance_ns", &self.tolerance_ns)
            .field("keys", &self.len())
            .finish()
    }
}

impl Limiter {
    /// A limiter of `bucket` remembering at most `max_keys` keys (rounded up to a multiple of the
    /// shard count).
    pub fn new(bucket: Bucket, max_keys: usize) -> Self {
        let interval_ns = (1e9 / bucket.rate.max(1e-9)).clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(bucket.burst.max(1))),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Spends one token of `key`'s bucket at `now_ns`; `Err(retry_after)` when it is empty.
    pub fn check(&self, key: &[u8], now_ns: u64) -> Result<(), Duration> {
        self.spend(key, now_ns, true)
    }

    /// Whether `key` has a token left at `now_ns`, without spending it.
    pub fn peek(&self, key: &[u8], now_ns: u64) -> Result<(), Duration> {
        self.spend(key, now_ns, false)
    }

    /// Whether `key`'s bucket is full at `now_ns` (nothing spent that has not refilled).
    pub fn is_full(&self, key: &[u8], now_ns: u64) -> bool {
        let hash = self.hash(key);
        let map = self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(&hash).is_none_or(|tat| *tat <= now_ns)
    }

    fn spend(&self, key: &[u8], now_ns: u64, spend: bool) -> Result<(), Duration> {
        let hash = self.hash(key);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(&hash).copied().unwrap_or(0).max(now_ns);
        let next = tat + self.interval_ns;
        if next > now_ns + self.tolerance_ns {
            return Err(Duration::from_nanos(next - now_ns - self.tolerance_ns));
        }
        if !spend {
            return Ok(());
        }
        if map.len() >= self.per_shard && !map.contains_key(&hash) {
            // Forget full buckets first (they are the same as absent ones), then the fullest.
            map.retain(|_, t| *t > now_ns);
            if map.len() >= self.per_shard
                && let Some((&victim, _)) = map.iter().min_by_key(|(_, t)| **t)
            {
                map.remove(&victim);
            }
        }
        map.insert(hash, next);
        Ok(())
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the request path needs of `bridge.rate_limits` and `bridge.connections`, attached to the
/// listener's state at start ([`AppState::set_hardening`]); a state without it limits nothing.
#[derive(Debug, Default)]
pub struct Hardening {
    /// The rate limits, if enabled.
    pub limits: Option<RateLimits>,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Option<Duration>,
}

/// The limiters of one listener and their counters.
#[derive(Debug)]
pub struct RateLimits {
    start: Instant,
    per_source: Limiter,
    per_client: Limiter,
    failures_source: Limiter,
    failures_client: Limiter,
    registrations: Limiter,
    login: crate::login_throttle::LoginThrottle,
    metrics: Arc<Metrics>,
}

impl RateLimits {
    /// Limiters for `config`.
    pub fn new(config: &RateLimitConfig, metrics: Arc<Metrics>) -> Self {
        let n = config.max_keys;
        Self {
            start: Instant::now(),
            per_source: Limiter::new(config.per_source, n),
            per_client: Limiter::new(config.per_client, n),
            failures_source: Limiter::new(config.auth_failures_per_source, n),
            failures_client: Limiter::new(config.auth_failures_per_client, n),
            registrations: Limiter::new(config.registrations_per_source, n),
            login: crate::login_throttle::LoginThrottle::new(config),
            metrics,
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn refuse(&self, scope: Scope, retry: Duration) -> OAuthError {
        self.metrics.rate_limited(scope);
        tracing::debug!(scope = scope.label(), "rate limited");
        OAuthError::too_many_requests(retry.as_secs() + u64::from(retry.subsec_nanos() > 0))
    }

    /// Charges one request from `source` for `client` (either may be unknown); refuses it when a
    /// request budget is spent or the source's or client's authentication-failure budget is.
    pub fn check_request(&self, source: Option<IpAddr>, client: Option<&str>) -> Result<(), OAuthError> {
        let now = self.now_ns();
        let source_key = source.map(ip_key);
        if let Some(key) = &source_key {
            self.failures_source
                .peek(key, now)
                .map_err(|r| self.refuse(Scope::AuthFailuresSource, r))?;
        }
        if let Some(id) = client {
            self.failures_client
                .peek(id.as_bytes(), now)
                .map_err(|r| self.refuse(Scope::AuthFailuresClient, r))?;
        }
        if let Some(key) = &source_key {
            self.per_source
                .check(key, now)
                .map_err(|r| self.refuse(Scope::Source, r))?;
        }
        if let Some(id) = client {
            self.per_client
                .check(id.as_bytes(), now)
                .map_err(|r| self.refuse(Scope::Client, r))?;
        }
        Ok(())
    }

    /// Records one failed client authentication from `source` for `client`.
    pub fn auth_failed(&self, source: Option<IpAddr>, client: Option<&str>) {
        let now = self.now_ns();
        if let Some(ip) = source {
            let _ = self.failures_source.check(&ip_key(ip), now);
        }
        if let Some(id) = client {
            let _ = self.failures_client.check(id.as_bytes(), now);
        }
    }

    /// The login page's throttle of failed password logins.
    pub fn login(&self) -> &crate::login_throttle::LoginThrottle {
        &self.login
    }

    /// Counts a request refused by `scope` (for limits applied outside this module).
    pub fn count_refusal(&self, scope: Scope) {
        self.metrics.rate_limited(scope);
        tracing::debug!(scope = scope.label(), "rate limited");
    }

    /// Charges one registration from `source` (one line in a registration handler).
    pub fn check_registration(&self, source: Option<IpAddr>) -> Result<(), OAuthError> {
        let Some(ip) = source else { return Ok(()) };
        self.registrations
            .check(&ip_key(ip), self.now_ns())
            .map_err(|r| self.refuse(Scope::Registration, r))
    }
}

/// The key of a source address: IPv4 whole, IPv6 by its /64 (one host usually holds a whole /64).
pub(crate) fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

/// The source address of a request, when the listener recorded it.
pub fn source(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The client id a request names: Basic credentials, else the form's `client_id`, else the `sub`
/// of a client assertion. Only a hint for the limiter: authentication decides who the client is.
fn client_hint(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    use base64::engine::general_purpose::STANDARD;
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, encoded)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
        && let Ok(decoded) = STANDARD.decode(encoded.trim())
        && let Ok(decoded) = String::from_utf8(decoded)
        && let Some((id, _)) = decoded.split_once(':')
    {
        let plus = id.replace('+', " ");
        return Some(
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    let mut assertion = None;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "client_id" if !value.is_empty() => return Some(value.into_owned()),
            "client_assertion" => assertion = Some(value),
            _ => {}
        }
    }
    let payload = assertion?.split('.').nth(1)?.to_owned();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// A refused body up to this size is read and discarded before the `413` is sent.
///
/// The connection is closed after a refused body; if unread bytes of it are still arriving then,
/// the kernel answers them with a reset, which can destroy the `413` before the client has read it
/// (a client then sees "connection reset" instead of the error). Larger bodies are not worth the
/// bandwidth: they get the `413` at once.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// How long a refused body is drained at most when no body read timeout is configured.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The `413` for a body above `max` bytes, on a connection that will be closed.
fn too_large(max: usize) -> Response {
    let mut response = OAuthError::payload_too_large(max).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Reads `body` whole if it holds at most `max` bytes. `Err(Some(rest))`: it is larger, and `rest`
/// is what was not read yet; `Err(None)`: it failed to arrive (the client went away).
async fn read_body(mut body: Body, max: usize) -> Result<axum::body::Bytes, Option<Body>> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(None) };
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                return Err(Some(body));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.into())
}

/// Reads and discards what is left of a refused body: at most [`DRAIN_LIMIT`] bytes, within
/// `timeout` (or [`DRAIN_TIME`]).
async fn drain(mut body: Body, timeout: Option<Duration>) {
    use http_body_util::BodyExt;
    let discard = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout.unwrap_or(DRAIN_TIME), discard).await;
}

/// The middleware: reads the body within the body read timeout and size limit, charges the
/// request to its source and client, and charges a failed client authentication (a 401) to both.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = state.rate_limits();
    let body_timeout = state.body_read_timeout();
    if limits.is_none() && body_timeout.is_none() {
        return next.run(request).await;
    }
    let source = source(&request);
    let (parts, body) = request.into_parts();
    let max = state.max_body_bytes();
    let has_body = parts.method == Method::POST || parts.method == Method::PUT || parts.method == Method::PATCH;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(body, body_timeout).await;
        }
        return too_large(max);
    }
    let bytes = if has_body {
        let read = read_body(body, max);
        let result = match body_timeout {
            Some(timeout) => match tokio::time::timeout(timeout, read).await {
                Ok(result) => result,
                Err(_) => return OAuthError::request_timeout().into_response(),
            },
            None => read.await,
        };
        match result {
            Ok(bytes) => bytes,
            Err(Some(rest)) => {
                drain(rest, body_timeout).await;
                return too_large(max);
            }
            Err(None) => return OAuthError::invalid_request("the request body could not be read").into_response(),
        }
    } else {
        axum::body::Bytes::new()
    };
    let Some(limits) = limits else {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    };
    let client = client_hint(&parts.headers, &bytes);
    if let Err(refused) = limits.check_request(source, client.as_deref()) {
        return refused.into_response();
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.auth_failed(source, client.as_deref());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = Limiter::new(Bucket::new(2.0, 4), 1024);
        for _ in 0..4 {
            limiter.check(b"k", 0).unwrap();
        }
        let retry = limiter.check(b"k", 0).unwrap_err();
        assert_eq!(retry, Duration::from_millis(500));
        limiter.check(b"other", 0).unwrap();
        limiter.check(b"k", SECOND / 2).unwrap();
        assert!(limiter.check(b"k", SECOND / 2).is_err());
        limiter.check(b"k", 10 * SECOND).unwrap();
    }

    #[test]
    fn peeking_spends_nothing() {
        let limiter = Limiter::new(Bucket::new(1.0, 1), 1024);
        for _ in 0..10 {
            limiter.peek(b"k", 0).unwrap();
        }
        limiter.check(b"k", 0).unwrap();
        assert!(limiter.peek(b"k", 0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_throttled_keys_survive_a_flood_of_new_ones() {
        let limiter = Limiter::new(Bucket::new(1.0, 100), 2 * SHARDS);
        while limiter.check(b"attacker", 0).is_ok() {}
        for i in 0..100_000u32 {
            let _ = limiter.check(&i.to_be_bytes(), u64::from(i) * 1000);
            assert!(limiter.len() <= 2 * SHARDS, "{}", limiter.len());
        }
        assert!(
            limiter.check(b"attacker", SECOND / 2).is_err(),
            "the flood evicted a throttled key"
        );
    }

    #[test]
    fn failures_throttle_before_credentials_are_checked() {
        let config = RateLimitConfig::default();
        let metrics = Arc::new(Metrics::default());
        let limits = RateLimits::new(&config, metrics.clone());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..config.auth_failures_per_source.burst {
            limits.check_request(Some(ip), Some("guess")).unwrap();
            limits.auth_failed(Some(ip), None);
        }
        let refused = limits.check_request(Some(ip), Some("other")).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after().unwrap() >= 1);
        limits
            .check_request(Some("192.0.2.8".parse().unwrap()), Some("other"))
            .unwrap();
        assert_eq!(metrics.rate_limited_counts()[Scope::AuthFailuresSource as usize], 1);
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        assert_eq!(
            ip_key("2001:db8::1".parse().unwrap()),
            ip_key("2001:db8::ffff:1".parse().unwrap())
        );
        assert_eq!(ip_key("::ffff:192.0.2.1".parse().unwrap()), vec![192, 0, 2, 1]);
    }

    #[test]
    fn client_hints_come_from_basic_form_or_assertion() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(client_hint(&headers, b"client_id=a%20b&x=1").as_deref(), Some("a b"));
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"c"}"#);
        let body = format!("client_assertion=x.{payload}.y");
        assert_eq!(client_hint(&headers, body.as_bytes()).as_deref(), Some("c"));
        headers.insert(header::AUTHORIZATION, "Basic aWQ6c2VjcmV0".parse().unwrap());
        assert_eq!(client_hint(&headers, b"").as_deref(), Some("id"));
        assert_eq!(client_hint(&axum::http::HeaderMap::new(), b"\xff\xfe"), None);
    }

    #[test]
    fn bad_values_are_named() {
        let config = RateLimitConfig {
            per_client: Bucket::new(0.0, 1),
            max_keys: 1,
            ..Default::default()
        };
        let problems = config.problems().join("\n");
        assert!(problems.contains("bridge.rate_limits.per_client"), "{problems}");
        assert!(problems.contains("bridge.rate_limits.max_keys"), "{problems}");
    }
}
