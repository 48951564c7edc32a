//! The bodies of the bridge's fuzz targets, shared by `fuzz_targets/*.rs` and the API test binary
//! (`bridge/tests/api/fuzz_corpus.rs`, which replays the checked-in corpus on stable and runs the
//! same checks as property tests), so both run exactly the same checks.
//!
//! The token targets work on a fixture node (a fresh data directory, so it pulls in the replicated
//! store: the bridge crate cannot be reached without it) holding one secret client and one
//! `private_key_jwt` client. Their input is either a raw candidate (first byte even) or a list of
//! mutations applied to a token the fixture signed (first byte odd): every mutation that changes
//! the token must be rejected.
#![allow(dead_code)] // each fuzz target uses one part

use std::sync::{Arc, OnceLock};

use axum::http::HeaderMap;
use bridge::auth::{Audiences, ReplayCache, VerifiedSecrets, authenticate};
use bridge::form::Form;
use bridge::keys::{Alg, SigningKey};
use bridge::node::{AdminRequest, Node};
use bridge::token::{AccessClaims, Audience, validate};
use bridge::verified::{TokenDigest, VerifiedTokens};
use bridge::view::View;
use serde_json::json;

/// The fixture's issuer.
pub const ISSUER: &str = "http://fuzz.test";
/// The fixture's clock.
pub const NOW: u64 = 1_800_000_000;
const TTL: u64 = 600;

/// Parses `data` as a token-endpoint form body; a parsed form answers consistently and survives
/// a serialize/parse round trip.
pub fn form(data: &[u8]) {
    let Ok(form) = Form::parse(data) else {
        assert!(std::str::from_utf8(data).is_err(), "valid UTF-8 refused");
        return;
    };
    let names: Vec<String> = form_urlencoded::parse(data)
        .map(|(name, _)| name.into_owned())
        .collect();
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for name in &names {
        let values: Vec<&str> = form.all(name).collect();
        assert!(values.iter().all(|v| !v.is_empty()), "an empty value was kept");
        if let Some(known) = static_name(name) {
            match form.single(known) {
                Ok(Some(value)) => assert_eq!(values, [value]),
                Ok(None) => assert!(values.is_empty()),
                Err(e) => {
                    assert_eq!(e.code(), "invalid_request");
                    assert!(values.len() > 1);
                }
            }
        }
        for value in values {
            serializer.append_pair(name, value);
        }
    }
    let again = Form::parse(serializer.finish().as_bytes()).expect("a serialized form parses");
    for name in &names {
        let mut first: Vec<&str> = form.all(name).collect();
        let mut second: Vec<&str> = again.all(name).collect();
        first.dedup();
        second.dedup();
        assert!(
            first.iter().all(|v| second.contains(v)),
            "{name}: {first:?} became {second:?}"
        );
    }
}

/// `Form::single` takes protocol parameter names; these are the ones the endpoints ask for.
fn static_name(name: &str) -> Option<&'static str> {
    const NAMES: [&str; 10] = [
        "grant_type",
        "scope",
        "resource",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "token",
        "subject_token",
        "audience",
    ];
    NAMES.iter().find(|n| **n == name).copied()
}

/// Parses `data` as a YAML configuration: every outcome is a configuration or a list of problems.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > 64 * 1024 {
        return;
    }
    match bridge::config::from_yaml(text) {
        Ok(config) => {
            assert!(config.bridge.rate_limits.problems().is_empty());
            assert!(config.bridge.connections.problems().is_empty());
        }
        Err(bridge::error::Error::Config(problems)) => assert!(!problems.is_empty()),
        Err(other) => panic!("configuration parsing failed with {other}"),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    view: View,
    token: String,
    verified: VerifiedTokens,
    key_client: String,
    client_key: SigningKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let clock = mesh::clock::ManualClock::new(NOW);
        let mut node = Node::open(&dir.path().join("data"), Arc::new(clock), Alg::EdDSA, vec![]).expect("node");
        let add = |jwks| AdminRequest::ClientAdd {
            name: "fuzz".into(),
            grants: vec!["client_credentials".into()],
            scopes: vec!["read".into()],
            audiences: vec![],
            token_alg: None,
            jwks,
            secret: None,
            degradation: None,
        };
        let (answer, _) = node.execute(add(None)).expect("client");
        let client_id = answer["client_id"].as_str().expect("client_id").to_owned();
        let (client_key, _) = SigningKey::generate(Alg::EdDSA).expect("client key");
        let jwks = json!({"keys": [client_key.public_jwk()]});
        let (answer, _) = node.execute(add(Some(jwks))).expect("key client");
        let key_client = answer["client_id"].as_str().expect("client_id").to_owned();
        let view = node.view();
        let key = view.signing_key(Alg::EdDSA).expect("signing key").clone();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            sub: client_id.clone(),
            aud: Audience::One(ISSUER.into()),
            client_id,
            scope: "read".into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + TTL,
            jti: "fuzz-jti".into(),
            cap: vec![],
            node: node.did().to_string(),
            act: None,
            degraded: false,
        };
        let token = bridge::token::mint(&claims, &key).expect("mint");
        let verified = VerifiedTokens::new(1024);
        let fixture = Fixture {
            _dir: dir,
            view,
            token,
            verified,
            key_client,
            client_key,
        };
        assert!(
            fixture.check_token(&fixture.token),
            "the fixture's own token is not active"
        );
        fixture
    })
}

impl Fixture {
    fn check_token(&self, token: &str) -> bool {
        validate(token, &self.view, ISSUER, NOW + 1, TTL, &self.verified).is_ok()
    }

    fn assertion(&self) -> String {
        let claims = json!({
            "iss": self.key_client, "sub": self.key_client, "aud": ISSUER,
            "exp": NOW + 60, "jti": "fuzz-assertion",
        });
        self.client_key
            .sign_jwt(&serde_json::to_vec(&claims).expect("claims"))
            .expect("sign")
    }

    fn authenticate_form(&self, body: &[u8]) -> bool {
        let Ok(form) = Form::parse(body) else { return false };
        let audiences = Audiences {
            issuer: ISSUER,
            token_endpoint: "http://fuzz.test/token",
            endpoint: "http://fuzz.test/token",
        };
        let replay = ReplayCache::default();
        let verified = VerifiedSecrets::default();
        authenticate(
            &HeaderMap::new(),
            &form,
            &self.view,
            NOW,
            &audiences,
            &replay,
            &verified,
        )
        .is_ok()
    }

    fn authenticate_assertion(&self, assertion: &str) -> bool {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_assertion_type", bridge::auth::JWT_BEARER_ASSERTION)
            .append_pair("client_assertion", assertion)
            .finish();
        self.authenticate_form(body.as_bytes())
    }
}

/// Applies the mutations `ops` (4 bytes each: kind, position high, position low, value) to `token`.
pub fn mutate(token: &str, ops: &[u8]) -> Vec<u8> {
    let mut bytes = token.as_bytes().to_vec();
    for op in ops.chunks_exact(4) {
        let len = bytes.len().max(1);
        let pos = (usize::from(op[1]) << 8 | usize::from(op[2])) % len;
        let value = op[3];
        match op[0] % 6 {
            0 if !bytes.is_empty() => bytes[pos] ^= 1 << (value % 8),
            1 if !bytes.is_empty() => bytes[pos] = value,
            2 => bytes.truncate(pos),
            3 => bytes.insert(pos.min(bytes.len()), value),
            4 if !bytes.is_empty() => {
                bytes.remove(pos);
            }
            5 => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut parts: Vec<&str> = text.split('.').collect();
                let n = parts.len();
                parts.swap(usize::from(op[1]) % n, usize::from(value) % n);
                bytes = parts.join(".").into_bytes();
            }
            _ => {}
        }
    }
    bytes
}

/// Checks a candidate access token: raw (first byte even) must not panic and is active only if it
/// is the fixture's own token; mutated (first byte odd) must be rejected unless unchanged.
pub fn access_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let candidate = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        mutate(&fixture.token, rest)
    };
    let Ok(candidate) = std::str::from_utf8(&candidate) else {
        return;
    };
    let active = fixture.check_token(candidate);
    if candidate == fixture.token {
        assert!(active, "the fixture's token became inactive");
        assert!(fixture.verified.contains(&TokenDigest::of(candidate)));
    } else {
        assert!(!active, "an altered token was accepted: {candidate:?}");
    }
}

/// Checks client authentication: raw (first byte even) is a whole form body, which must not
/// panic; mutated (first byte odd) alters a valid `private_key_jwt` assertion, which must then be
/// refused.
pub fn client_assertion(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    if mode % 2 == 0 {
        fixture.authenticate_form(rest);
        return;
    }
    let original = fixture.assertion();
    let mutated = mutate(&original, rest);
    let Ok(mutated) = std::str::from_utf8(&mutated) else {
        return;
    };
    let accepted = fixture.authenticate_assertion(mutated);
    if mutated == original {
        assert!(accepted, "the fixture's assertion was refused");
    } else {
        assert!(!accepted, "an altered assertion was accepted: {mutated:?}");
    }
}
