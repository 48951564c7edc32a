//! The sandbox and the hooks against small WAT modules: verification before compiling, the limits
//! (memory, time, output size) and the narrowing rules; and the two example plugins.

use std::collections::BTreeSet;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use mesh::did::DidKey;
use mesh::plugin::PluginManifest;
use plugins::digest::sha256_hex;
use plugins::hooks::{TokenRequest, UpstreamClaims, Verdict};
use plugins::{Error, Limits, Sandbox};
use serde_json::json;

fn developer() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn trusted() -> BTreeSet<DidKey> {
    [DidKey::from_public_key(developer().verifying_key().to_bytes())].into()
}

fn sandbox() -> Sandbox {
    Sandbox::new(Limits {
        memory_bytes: 8 * 1024 * 1024,
        deadline: Duration::from_millis(5),
        max_document_bytes: 64 * 1024,
    })
    .unwrap()
}

fn signed(bytes: &[u8], hook: &str) -> PluginManifest {
    PluginManifest::sign(
        &developer(),
        "test".into(),
        "1".into(),
        vec![hook.into()],
        sha256_hex(bytes),
        false,
    )
    .unwrap()
}

/// A module whose `on_token_request` answers the constant `answer` after running `body`.
fn module(body: &str, answer: &str) -> Vec<u8> {
    let escaped = answer.replace('\\', "\\\\").replace('"', "\\\"");
    let wat = format!(
        r#"(module
          (memory (export "memory") 1)
          (data (i32.const 0) "{escaped}")
          (func (export "alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "on_token_request") (param i32 i32) (result i64)
            {body}
            (i64.const {len})))"#,
        len = answer.len()
    );
    plugins::build(wat.as_bytes()).unwrap()
}

fn request<'a>(scopes: &'a [String], audiences: &'a [String]) -> TokenRequest<'a> {
    TokenRequest {
        client_id: "c1",
        grant_type: "client_credentials",
        sub: "c1",
        scopes,
        audiences,
        now: 1_700_000_000,
    }
}

fn call(bytes: &[u8]) -> Result<plugins::hooks::Decision, Error> {
    let sandbox = sandbox();
    let plugin = sandbox.load(&signed(bytes, "on_token_request"), bytes, &trusted())?;
    let scopes = vec!["a".to_owned(), "b".to_owned()];
    let aud = vec!["https://api".to_owned()];
    plugin.on_token_request(&request(&scopes, &aud))
}

#[test]
fn narrows_scopes_and_adds_claims() {
    let bytes = module("", r#"{"decision":"allow","scopes":["a"],"claims":{"tenant":"acme"}}"#);
    let decision = call(&bytes).unwrap();
    assert_eq!(decision.decision, Verdict::Allow);
    assert_eq!(decision.scopes, Some(vec!["a".to_owned()]));
    assert_eq!(decision.claims["tenant"], "acme");
    let deny = module("", r#"{"decision":"deny","reason":"tenant suspended"}"#);
    assert_eq!(call(&deny).unwrap().reason.as_deref(), Some("tenant suspended"));
}

#[test]
fn never_widens() {
    let widen = module("", r#"{"decision":"allow","scopes":["a","admin"]}"#);
    assert!(matches!(call(&widen), Err(Error::Call { reason, .. }) if reason.contains("widen")));
    let reserved = module("", r#"{"decision":"allow","claims":{"sub":"root"}}"#);
    assert!(matches!(call(&reserved), Err(Error::Call { reason, .. }) if reason.contains("reserved")));
    let caps = module("", r#"{"decision":"allow","cap":[{"with":"https://api","can":"x"}]}"#);
    assert!(matches!(call(&caps), Err(Error::Call { .. })));
}

#[test]
fn tampered_unsigned_and_untrusted_modules_are_refused_before_compiling() {
    let sandbox = sandbox();
    let bytes = module("", r#"{"decision":"allow"}"#);
    let manifest = signed(&bytes, "on_token_request");
    let mut tampered = bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(matches!(
        sandbox.load(&manifest, &tampered, &trusted()),
        Err(Error::DigestMismatch { .. })
    ));
    let mut unsigned = manifest.clone();
    unsigned.signature = String::new();
    assert!(matches!(
        sandbox.load(&unsigned, &bytes, &trusted()),
        Err(Error::BadManifest { .. })
    ));
    let other = SigningKey::from_bytes(&[7; 32]);
    let wrong_signer = PluginManifest::sign(
        &other,
        "test".into(),
        "1".into(),
        vec!["on_token_request".into()],
        sha256_hex(&bytes),
        false,
    )
    .unwrap();
    let error = sandbox.load(&wrong_signer, &bytes, &trusted()).unwrap_err();
    assert!(matches!(error, Error::UntrustedSigner { .. }));
    assert!(error.to_string().contains("plugin trust"), "{error}");
    assert!(sandbox.load(&manifest, &bytes, &BTreeSet::new()).is_err());
    sandbox.load(&manifest, &bytes, &trusted()).unwrap();
}

#[test]
fn modules_that_import_anything_are_refused() {
    let sandbox = sandbox();
    let bytes = plugins::build(
        br#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "alloc") (param i32) (result i32) (i32.const 0))
            (func (export "on_token_request") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let error = sandbox
        .load(&signed(&bytes, "on_token_request"), &bytes, &trusted())
        .unwrap_err();
    assert!(error.to_string().contains("no imports"), "{error}");
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let bytes = module("(loop $forever (br $forever))", r#"{"decision":"allow"}"#);
    let error = call(&bytes).unwrap_err();
    assert!(error.to_string().contains("deadline"), "{error}");
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    // Grows by 1 MiB until growing fails, then traps: the cap is 8 MiB.
    let body = "(block $full (loop $grow (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1))) (br $grow))) unreachable";
    let error = call(&module(body, r#"{"decision":"allow"}"#)).unwrap_err();
    assert!(error.to_string().contains("memory cap"), "{error}");
}

#[test]
fn huge_and_malformed_output_fail() {
    let huge = plugins::build(
        br#"(module (memory (export "memory") 1)
            (func (export "alloc") (param i32) (result i32) (i32.const 0))
            (func (export "on_token_request") (param i32 i32) (result i64) (i64.const 0x7fffffff)))"#,
    )
    .unwrap();
    let error = call(&huge).unwrap_err();
    assert!(error.to_string().contains("larger than"), "{error}");
    let outside = plugins::build(
        br#"(module (memory (export "memory") 1)
            (func (export "alloc") (param i32) (result i32) (i32.const 0))
            (func (export "on_token_request") (param i32 i32) (result i64) (i64.const 0x0010000000000100)))"#,
    )
    .unwrap();
    assert!(call(&outside).unwrap_err().to_string().contains("outside"));
    let malformed = module("", "not json");
    assert!(call(&malformed).unwrap_err().to_string().contains("malformed"));
}

fn example(file: &str) -> Vec<u8> {
    let path = format!("{}/../examples/plugins/{file}", env!("CARGO_MANIFEST_DIR"));
    let bytes = plugins::build(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(
        bytes,
        plugins::build(&std::fs::read(format!("{}/../examples/plugins/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap())
            .unwrap()
    );
    bytes
}

#[test]
fn example_read_only_after_hours() {
    let sandbox = sandbox();
    let bytes = example("read_only_after_hours.wat");
    let plugin = sandbox
        .load(&signed(&bytes, "on_token_request"), &bytes, &trusted())
        .unwrap();
    let scopes = vec![
        "orders:read".to_owned(),
        "orders:write".to_owned(),
        "stock:read".to_owned(),
    ];
    let aud = vec!["https://api".to_owned()];
    let mut request = request(&scopes, &aud);
    request.now = 1_700_000_000 - 1_700_000_000 % 86_400 + 10 * 3600; // 10:00 UTC
    let day = plugin.on_token_request(&request).unwrap();
    assert_eq!((day.scopes, day.claims["shift"].clone()), (None, json!("day")));
    request.now += 12 * 3600; // 22:00 UTC
    let night = plugin.on_token_request(&request).unwrap();
    assert_eq!(
        night.scopes,
        Some(vec!["orders:read".to_owned(), "stock:read".to_owned()])
    );
    assert_eq!(night.claims["shift"], "night");
}

#[test]
fn example_groups_to_cap() {
    let sandbox = sandbox();
    let bytes = example("groups_to_cap.wat");
    let plugin = sandbox
        .load(&signed(&bytes, "map_upstream_claims"), &bytes, &trusted())
        .unwrap();
    let scopes = vec!["orders:read".to_owned()];
    let aud = vec!["https://api".to_owned(), "https://other".to_owned()];
    let upstream = json!({"sub": "alice", "groups": ["ops", "billing"]});
    let input = UpstreamClaims {
        client_id: "c1",
        sub: "alice",
        upstream: &upstream,
        scopes: &scopes,
        audiences: &aud,
        now: 1,
    };
    let decision = plugin.map_upstream_claims(&input).unwrap();
    let caps: Vec<(String, String)> = decision.cap.into_iter().map(|c| (c.with, c.can)).collect();
    assert_eq!(
        caps,
        [
            ("https://api".to_owned(), "group:ops".to_owned()),
            ("https://api".to_owned(), "group:billing".to_owned())
        ]
    );
    let none = json!({"sub": "bob"});
    let decision = plugin
        .map_upstream_claims(&UpstreamClaims {
            upstream: &none,
            ..input
        })
        .unwrap();
    assert!(decision.cap.is_empty());
}

/// Per-call cost of the example plugin (a measurement, not a test):
/// `cargo test -p plugins --release --test sandbox -- --ignored --nocapture measure_call`.
#[test]
#[ignore = "a measurement; run it by hand in release"]
fn measure_call() {
    let sandbox = Sandbox::new(Limits::default()).unwrap();
    let bytes = example("read_only_after_hours.wat");
    let plugin = sandbox
        .load(&signed(&bytes, "on_token_request"), &bytes, &trusted())
        .unwrap();
    let scopes = vec!["orders:read".to_owned(), "orders:write".to_owned()];
    let aud = vec!["https://api".to_owned()];
    let request = request(&scopes, &aud);
    let input = br#"{"abi":1,"hook":"on_token_request","now":1700000000,"scopes":["orders:read"]}"#;
    for (what, n) in [("warm-up", 1000u32), ("measured", 20_000)] {
        let start = std::time::Instant::now();
        for _ in 0..n {
            plugin.on_token_request(&request).unwrap();
        }
        let hook = start.elapsed() / n;
        let start = std::time::Instant::now();
        for _ in 0..n {
            plugin.call("on_token_request", input).unwrap();
        }
        println!(
            "{what}: on_token_request {hook:?}/call, raw call {:?}/call",
            start.elapsed() / n
        );
    }
}

#[test]
fn on_introspect_adds_claims_or_denies_and_a_failed_call_leaves_no_broken_instance() {
    let sandbox = sandbox();
    // Answers allow with a claim when the input's first byte is '{', and traps on every third call.
    let bytes = plugins::build(
        br#"(module
          (memory (export "memory") 1)
          (global $calls (mut i32) (i32.const 0))
          (data (i32.const 0) "{\"decision\":\"allow\",\"claims\":{\"tier\":\"gold\"}}")
          (func (export "alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "on_introspect") (param i32 i32) (result i64)
            (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
            (if (i32.eq (global.get $calls) (i32.const 3)) (then unreachable))
            (i64.const 45)))"#,
    )
    .unwrap();
    let plugin = sandbox
        .load(&signed(&bytes, "on_introspect"), &bytes, &trusted())
        .unwrap();
    let claims = json!({"sub": "c1"});
    let input = plugins::hooks::Introspection {
        client_id: "rs",
        claims: &claims,
        now: 1,
    };
    let mut failures = 0;
    for _ in 0..10 {
        match plugin.on_introspect(&input) {
            Ok(decision) => assert_eq!(decision.claims["tier"], "gold"),
            Err(error) => {
                assert!(error.to_string().contains("trapped"), "{error}");
                failures += 1;
            }
        }
    }
    // The warm instance traps on its third call, is dropped, and a fresh one (counting from zero
    // again) takes over: one failure in every three calls, never a stuck instance.
    assert_eq!(failures, 3);
    let deny = plugins::build(
        br#"(module (memory (export "memory") 1)
            (data (i32.const 0) "{\"decision\":\"deny\",\"scopes\":[]}")
            (func (export "alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "on_introspect") (param i32 i32) (result i64) (i64.const 31)))"#,
    )
    .unwrap();
    let plugin = sandbox
        .load(&signed(&deny, "on_introspect"), &deny, &trusted())
        .unwrap();
    assert!(plugin.on_introspect(&input).unwrap_err().to_string().contains("scopes"));
}
