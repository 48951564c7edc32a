//! The bridge's fuzz targets on stable: every checked-in corpus entry under `bridge/fuzz/corpus`
//! (golden seeds and every crash a fuzzer run found) replayed through the targets' bodies, and the
//! same bodies driven by proptest — any mutation of a signed access token or client assertion is
//! rejected.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[path = "../../fuzz/harness.rs"]
mod fuzz_harness;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{}: the corpus lost its seeds", dir.display());
    files
}

fn replay(target: &str, body: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{} fails its fuzz target", path.display());
    }
}

#[test]
fn form_corpus_replays() {
    replay("form", fuzz_harness::form);
}

#[test]
fn access_token_corpus_replays() {
    replay("access_token", fuzz_harness::access_token);
}

#[test]
fn client_assertion_corpus_replays() {
    replay("client_assertion", fuzz_harness::client_assertion);
}

#[test]
fn config_corpus_replays() {
    replay("config", fuzz_harness::config);
}

/// One mutation: kind, position, value (see `fuzz_harness::mutate`).
fn mutation() -> impl Strategy<Value = [u8; 4]> {
    (0u8..6, any::<u16>(), any::<u8>()).prop_map(|(kind, pos, value)| {
        let [hi, lo] = pos.to_be_bytes();
        [kind, hi, lo, value]
    })
}

fn mutated(ops: Vec<[u8; 4]>) -> Vec<u8> {
    let mut data = vec![1u8];
    data.extend(ops.into_iter().flatten());
    data
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_mutation_of_a_signed_access_token_is_rejected(ops in proptest::collection::vec(mutation(), 1..4)) {
        fuzz_harness::access_token(&mutated(ops));
    }

    #[test]
    fn any_mutation_of_a_client_assertion_is_rejected(ops in proptest::collection::vec(mutation(), 1..4)) {
        fuzz_harness::client_assertion(&mutated(ops));
    }

    #[test]
    fn raw_candidate_tokens_are_never_active(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut data = vec![0u8];
        data.extend(bytes);
        fuzz_harness::access_token(&data);
    }

    #[test]
    fn forms_answer_consistently(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_harness::form(&bytes);
    }

    #[test]
    fn configuration_text_never_panics(text in "[a-z_:{} \\[\\],\\n0-9.\"-]{0,200}") {
        fuzz_harness::config(text.as_bytes());
    }
}
