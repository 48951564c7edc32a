//! The adapters' API against a fake upstream on loopback: discovery, JWKS cache, offline
//! verification, token forwarding, circuit breaker.

mod support;

mod cache_and_breaker;
mod login;
mod token;
mod verification;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adapters::Upstream;
use adapters::clock::ManualClock;
use adapters::config::{Issuer, Secret, SignatureAlgorithm, UpstreamConfig};
use serde_json::{Value, json};

use support::{CLIENT_ID, FakeIdp};

const NOW: u64 = 1_800_000_000;
const AUDIENCE: &str = "meshgate";

fn now() -> Duration {
    Duration::from_secs(NOW)
}

fn config(idp: &FakeIdp) -> UpstreamConfig {
    let mut config = UpstreamConfig::new("corp", Issuer::new(idp.url()).unwrap());
    config.audience = Some(AUDIENCE.into());
    config.algorithms = SignatureAlgorithm::ALL.to_vec();
    config.client_id = Some("meshgate-edge".into());
    config.client_secret = Some(Secret::new("meshgate-own-secret-Qp3"));
    config
}

fn upstream(config: &UpstreamConfig, clock: &ManualClock, cache: Option<PathBuf>) -> Upstream {
    Upstream::new(config, Arc::new(clock.clone()), cache).unwrap()
}

fn claims(idp: &FakeIdp) -> Value {
    json!({
        "iss": idp.url(),
        "sub": "agent-7",
        "aud": [AUDIENCE, "other"],
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "scope": "read write",
        "client_id": CLIENT_ID,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}
