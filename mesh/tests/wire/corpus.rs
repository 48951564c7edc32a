//! The fuzz corpus: golden files checked in under `mesh/fuzz/corpus`, replayed on stable.

use super::*;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// The corpus files this test writes and checks: valid encodings built from fixed seeds and nonces
/// (ed25519 is deterministic, so they never drift unless the format does).
fn golden() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let (alice, bob) = (alice(), bob());
    let (mut initiator, hello) = Handshake::initiator(&alice, [0xa1; 32]);
    let (mut responder, _) = Handshake::responder(&bob, [0xb0; 32]);
    let Ok(Step::Send(reply)) = responder.handle(hello[0].clone(), &admit_all) else {
        panic!()
    };
    initiator.handle(reply[0].clone(), &admit_all).unwrap();
    let Ok(Step::Done { send: auth, .. }) = initiator.handle(reply[1].clone(), &admit_all) else {
        panic!()
    };
    let frames = [
        ("hello", hello[0].clone()),
        ("auth", auth[0].clone()),
        ("sync", Frame::Sync(b"\x42automerge sync message".to_vec())),
        ("ping", Frame::Ping(1)),
        ("pong", Frame::Pong(1)),
        (
            "bye",
            Frame::Bye {
                reason: "shutting down".into(),
            },
        ),
    ];
    let mut files: Vec<_> = frames
        .iter()
        .map(|(name, frame)| ("frame_decoder", *name, frame.encode()))
        .collect();
    files.push(("frame_decoder", "responder-flight", encode_all(&reply)));
    files.push(("frame_decoder", "stream", encode_all(&frames.map(|(_, frame)| frame))));
    let now = harness::DATAGRAM_NOW;
    let seq = Datagram::first_seq(now);
    for (name, payload) in [
        ("swim-ping", &b"swim ping"[..]),
        ("empty", b""),
        ("full", &[0x5a; MAX_DATAGRAM_PAYLOAD]),
    ] {
        files.push((
            "datagram_open",
            name,
            Datagram::seal(&alice, seq, now, payload).unwrap(),
        ));
    }
    files
}

/// Checks the golden corpus files; `MESHGATE_BLESS=1 cargo test -p mesh --test wire` rewrites them.
#[test]
fn corpus_golden_files_are_current() {
    let bless = std::env::var_os("MESHGATE_BLESS").is_some();
    for (target, name, bytes) in golden() {
        let path = corpus_dir(target).join(format!("{name}.bin"));
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let found =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run with MESHGATE_BLESS=1", path.display()));
        assert!(
            found == bytes,
            "{} drifted from the wire format; run with MESHGATE_BLESS=1",
            path.display()
        );
    }
}

/// Every corpus file (golden ones and any a fuzzer run added) through the fuzz targets' bodies.
#[test]
fn corpus_replays_through_the_fuzz_targets() {
    let golden: Vec<_> = golden()
        .into_iter()
        .map(|(target, name, _)| (target, format!("{name}.bin")))
        .collect();
    let mut replayed = 0;
    for target in ["frame_decoder", "datagram_open"] {
        for entry in std::fs::read_dir(corpus_dir(target)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let is_golden = golden.iter().any(|(t, name)| *t == target && path.ends_with(name));
            match target {
                "frame_decoder" => {
                    let (frames, failed) = harness::frame_decoder(&bytes);
                    assert!(!is_golden || (!frames.is_empty() && !failed), "{}", path.display());
                }
                _ => {
                    let opened = harness::datagram_open(&bytes);
                    assert!(!is_golden || opened, "{}", path.display());
                }
            }
            replayed += 1;
        }
    }
    assert!(replayed >= golden.len());
}
