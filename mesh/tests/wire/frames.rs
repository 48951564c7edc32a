//! Stream frames: round trips, splitting, limits, malformed and truncated input.

use super::*;

proptest! {
    #[test]
    fn every_frame_kind_round_trips(frame in frame_strategy()) {
        let bytes = frame.encode();
        let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(length + 5, bytes.len());
        prop_assert_eq!(decode_all(&bytes), vec![frame]);
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_split(
        frames in prop::collection::vec(frame_strategy(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let bytes = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut decoded = Vec::new();
        for piece in cuts.windows(2) {
            decoder.push(&bytes[piece[0]..piece[1]]);
            while let Some(frame) = decoder.next().unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        harness::frame_decoder(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic_the_decoder(
        frame in frame_strategy(),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = frame.encode();
        bytes.extend_from_slice(&tail);
        let (frames, _) = harness::frame_decoder(&bytes);
        prop_assert_eq!(&frames[0], &frame);
    }
}

#[test]
fn decoder_fed_byte_by_byte() {
    let frames = vec![
        Frame::Hello {
            major: MAJOR,
            minor: MINOR,
            did: alice().did(),
            nonce: [9; 32],
            rotation: None,
        },
        Frame::Auth { signature: [7; 64] },
        Frame::Sync(b"automerge sync message".to_vec()),
        Frame::Sync(Vec::new()),
        Frame::Ping(u64::MAX),
        Frame::Pong(0),
        Frame::Bye {
            reason: "shutting down — bientôt".into(),
        },
        Frame::Bye { reason: String::new() },
    ];
    let bytes = encode_all(&frames);
    let mut decoder = FrameDecoder::new(1024);
    let mut decoded = Vec::new();
    for byte in &bytes {
        decoder.push(std::slice::from_ref(byte));
        while let Some(frame) = decoder.next().unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
}

#[test]
fn oversize_frame_is_refused_from_its_length_prefix() {
    let mut decoder = FrameDecoder::new(100);
    decoder.push(&Frame::Sync(vec![0; 100]).encode());
    assert_eq!(decoder.next().unwrap(), Some(Frame::Sync(vec![0; 100])));
    // Only the 4 length bytes of a 4 GiB frame: refused before anything else arrives.
    decoder.push(&u32::MAX.to_be_bytes());
    let error = decoder.next().unwrap_err();
    assert!(
        matches!(
            error,
            Error::FrameTooLarge {
                length: 0xffff_ffff,
                max: 100
            }
        ),
        "{error}"
    );
    assert_eq!(decoder.buffered(), 0);
    // The stream is out of sync from here on: the decoder stays failed and buffers nothing.
    decoder.push(&Frame::Ping(1).encode());
    assert!(decoder.next().is_err());
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn the_limit_can_be_raised_after_the_handshake() {
    let big = Frame::Sync(vec![1; 4096]).encode();
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_PAYLOAD);
    decoder.push(&big);
    assert!(matches!(decoder.next(), Err(Error::FrameTooLarge { .. })));
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_PAYLOAD);
    decoder.set_max_payload(1 << 20);
    decoder.push(&big);
    assert_eq!(decoder.next().unwrap(), Some(Frame::Sync(vec![1; 4096])));
}

#[test]
fn malformed_frames_are_errors() {
    let frame = |length: u32, kind: u8, payload: &[u8]| {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(payload);
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("kind 0", frame(0, 0, &[])),
        ("kind 7", frame(0, 7, &[])),
        ("kind 255 with a payload", frame(3, 255, b"abc")),
        ("short Hello", frame(67, 1, &[0; 67])),
        ("short Auth", frame(63, 2, &[0; 63])),
        ("long Auth", frame(65, 2, &[0; 65])),
        ("short Ping", frame(7, 4, &[0; 7])),
        ("long Pong", frame(9, 5, &[0; 9])),
        ("Bye not UTF-8", frame(2, 6, &[0xc3, 0x28])),
    ];
    for (name, bytes) in cases {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&bytes);
        assert!(decoder.next().is_err(), "{name}");
    }
    // An unknown kind is refused from the header, before its payload arrives.
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&frame(1000, 9, &[]));
    assert!(matches!(decoder.next(), Err(Error::UnknownFrameKind(9))));
}

#[test]
fn truncated_frames_wait_for_more_bytes() {
    let bytes = Frame::Hello {
        major: 1,
        minor: 0,
        did: bob().did(),
        nonce: [3; 32],
        rotation: None,
    }
    .encode();
    for end in 0..bytes.len() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&bytes[..end]);
        assert_eq!(decoder.next().unwrap(), None, "{end} bytes");
        assert_eq!(decoder.buffered(), end);
    }
}
