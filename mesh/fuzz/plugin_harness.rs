//! The body of the `plugin_manifest` fuzz target, shared by `fuzz_targets/plugin_manifest.rs` and
//! `mesh/tests/plugin_fuzz.rs` (which replays the checked-in corpus on stable and runs the same
//! checks as property tests). It exercises only the manifest's parsing and verification
//! (`mesh::plugin`), never the wasmtime sandbox, so the sanitizer build stays small.
//!
//! Input: first byte even, the rest is a candidate manifest (JSON, as `meshgate plugin install`
//! reads it); first byte odd, the rest is a list of 4-byte mutations applied to the JSON of a
//! manifest the fixture developer key signed. A candidate must never panic; one that verifies must
//! pass `check`, survive a serialize/parse round trip, and — when it is a mutation of the fixture
//! — be the fixture's manifest itself: no change to a signed manifest is accepted.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use mesh::plugin::PluginManifest;

/// The fixture: a manifest signed by a developer key derived from a fixed seed (ed25519 signing is
/// deterministic, so it never changes unless the format does).
pub fn fixture() -> PluginManifest {
    let key = SigningKey::from_bytes(&[7; 32]);
    PluginManifest::sign(
        &key,
        "fuzz-plugin".into(),
        "1.0.0".into(),
        vec!["on_token_request".into(), "on_introspect".into()],
        "ab".repeat(32),
        false,
    )
    .expect("the fixture manifest is valid")
}

/// Applies 4-byte mutations (kind, position high, position low, value) to `json`.
pub fn mutate(json: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut bytes = json.to_vec();
    for op in ops.chunks_exact(4) {
        let len = bytes.len().max(1);
        let pos = (usize::from(op[1]) << 8 | usize::from(op[2])) % len;
        let value = op[3];
        match op[0] % 5 {
            0 if !bytes.is_empty() => bytes[pos] ^= 1 << (value % 8),
            1 if !bytes.is_empty() => bytes[pos] = value,
            2 => bytes.truncate(pos),
            3 => bytes.insert(pos.min(bytes.len()), value),
            4 if !bytes.is_empty() => {
                bytes.remove(pos);
            }
            _ => {}
        }
    }
    bytes
}

/// Checks one input (see the module doc); returns whether the candidate verified.
pub fn plugin_manifest(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let fixture = (mode % 2 == 1).then(fixture);
    let candidate = match &fixture {
        Some(fixture) => mutate(&serde_json::to_vec(fixture).expect("serializes"), rest),
        None => rest.to_vec(),
    };
    let Ok(manifest) = serde_json::from_slice::<PluginManifest>(&candidate) else {
        return false;
    };
    let checked = manifest.check().is_ok();
    let verified = manifest.verify().is_ok();
    let _ = manifest.implements("on_introspect");
    let _ = mesh::plugin::valid_name(&manifest.name);
    if !verified {
        return false;
    }
    assert!(checked, "a manifest that verifies must pass check: {manifest:?}");
    let again: PluginManifest =
        serde_json::from_slice(&serde_json::to_vec(&manifest).expect("serializes")).expect("round trip parses");
    assert_eq!(again, manifest, "round trip");
    assert!(again.verify().is_ok(), "round trip verifies");
    if let Some(fixture) = fixture {
        assert_eq!(manifest, fixture, "a changed signed manifest verified");
    }
    true
}
