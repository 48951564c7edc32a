//! The `plugin_manifest` fuzz target on stable: golden seeds under `mesh/fuzz/corpus/plugin_manifest`
//! (and every entry a fuzzer run added) replayed through the target's body, and the same body
//! driven by proptest: any mutation of a signed manifest is refused unless it leaves the manifest
//! unchanged.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[path = "../fuzz/plugin_harness.rs"]
mod plugin_harness;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/plugin_manifest")
}

/// Golden seeds (name, bytes, whether it must verify): the fixture as is and mutated, plus raw
/// candidates a parser must survive.
fn golden() -> Vec<(&'static str, Vec<u8>, bool)> {
    let fixture = serde_json::to_vec(&plugin_harness::fixture()).unwrap();
    let raw = |json: &[u8]| [&[0u8][..], json].concat();
    let mut tampered: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
    tampered["fail_open"] = true.into();
    let mut other_hook = tampered.clone();
    other_hook["fail_open"] = false.into();
    other_hook["hooks"] = serde_json::json!(["on_token_request", "map_upstream_claims"]);
    vec![
        ("fixture", raw(&fixture), true),
        // A mutation list that changes nothing (an odd mode byte, no operations).
        ("fixture-unmutated", vec![1], true),
        // Flip a bit in the signature's last character; set a byte of the name.
        ("fixture-bitflip", vec![1, 0, 0xff, 0xff, 0x01], false),
        ("fixture-overwrite", vec![1, 1, 0, 10, b'X'], false),
        ("fail-open-tampered", raw(&serde_json::to_vec(&tampered).unwrap()), false),
        ("hooks-tampered", raw(&serde_json::to_vec(&other_hook).unwrap()), false),
        ("empty-object", raw(b"{}"), false),
        ("not-json", raw(b"\xff\xfe{\"name\":"), false),
        (
            "bad-fields",
            raw(br#"{"name":"A B","version":"","abi":99,"hooks":["rm -rf"],"sha256":"zz","signer":"did:key:z6Mk","signature":"!!"}"#),
            false,
        ),
    ]
}

/// Checks the golden files; `MESHGATE_BLESS=1 cargo test -p mesh --test plugin_fuzz` rewrites them.
#[test]
fn plugin_manifest_golden_files_are_current() {
    let bless = std::env::var_os("MESHGATE_BLESS").is_some();
    for (name, bytes, _) in golden() {
        let path = corpus_dir().join(format!("{name}.bin"));
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let found =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run with MESHGATE_BLESS=1", path.display()));
        assert!(found == bytes, "{} drifted; run with MESHGATE_BLESS=1", path.display());
    }
}

/// Every corpus file through the fuzz target's body; golden ones verify exactly when they should.
#[test]
fn plugin_manifest_corpus_replays() {
    let golden = golden();
    let mut replayed = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let verified = plugin_harness::plugin_manifest(&bytes);
        if let Some((_, _, expected)) = golden
            .iter()
            .find(|(name, _, _)| path.file_name().is_some_and(|f| f == format!("{name}.bin").as_str()))
        {
            assert_eq!(verified, *expected, "{}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed >= golden.len(), "the corpus lost its seeds");
}

fn mutation() -> impl Strategy<Value = [u8; 4]> {
    (0u8..5, any::<u16>(), any::<u8>()).prop_map(|(kind, pos, value)| {
        let [hi, lo] = pos.to_be_bytes();
        [kind, hi, lo, value]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_mutation_of_a_signed_manifest_is_refused(ops in proptest::collection::vec(mutation(), 1..4)) {
        let mut data = vec![1u8];
        data.extend(ops.into_iter().flatten());
        plugin_harness::plugin_manifest(&data);
    }
}

/// A signer that is a small-order point (the identity) with the signature (R = identity, S = 0)
/// satisfies the unreduced verification equation for every message: such a manifest must be
/// refused, so nobody can make a manifest "signed" by a key whose signatures anyone can forge.
#[test]
fn a_weak_signer_key_cannot_sign_a_manifest() {
    use base64::Engine;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut manifest = plugin_harness::fixture();
    manifest.signer = mesh::did::DidKey::from_public_key(identity);
    let mut signature = [0u8; 64];
    signature[0] = 1;
    manifest.signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
    assert!(manifest.verify().is_err(), "a weak-key signature verified");
}
