//! The bodies of the fuzz targets, shared by `fuzz_targets/*.rs` and `mesh/tests/wire.rs` (which
//! replays the checked-in corpus on stable), so both run exactly the same checks.
#![allow(dead_code)] // each fuzz target uses one half

use mesh::wire::{Datagram, Frame, FrameDecoder, MAX_DATAGRAM_PAYLOAD, ReplayWindow};

/// The payload limit the `frame_decoder` target decodes with.
pub const FRAME_MAX_PAYLOAD: usize = 64 * 1024;

/// The receiver's clock in the `datagram_open` target; corpus datagrams are sealed at this time.
pub const DATAGRAM_NOW: u64 = 1_750_000_000;

/// The skew the `datagram_open` target allows.
pub const DATAGRAM_MAX_SKEW: u64 = 60;

/// Decodes `data` whole and in chunks (of a size taken from the first byte); both must agree, and
/// every decoded frame must survive an encode/decode round trip. Returns the frames decoded and
/// whether the stream failed.
pub fn frame_decoder(data: &[u8]) -> (Vec<Frame>, bool) {
    let whole = decode(data, data.len().max(1));
    let chunk = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    let chunked = decode(data, chunk);
    assert_eq!(whole, chunked, "decoding must not depend on how the input is split");
    for frame in &whole.0 {
        let mut decoder = FrameDecoder::new(FRAME_MAX_PAYLOAD);
        decoder.push(&frame.encode());
        assert_eq!(
            decoder.next().expect("a decoded frame re-encodes validly").as_ref(),
            Some(frame)
        );
        assert_eq!(decoder.buffered(), 0);
    }
    whole
}

fn decode(data: &[u8], chunk: usize) -> (Vec<Frame>, bool) {
    let mut decoder = FrameDecoder::new(FRAME_MAX_PAYLOAD);
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => {
                    assert!(decoder.next().is_err(), "a failed decoder stays failed");
                    return (frames, true);
                }
            }
        }
    }
    (frames, false)
}

/// Opens `data` as a datagram from any sender at [`DATAGRAM_NOW`]; an accepted datagram must carry
/// a payload within the limit and be refused when replayed. Returns whether it was accepted.
pub fn datagram_open(data: &[u8]) -> bool {
    let mut window = ReplayWindow::new();
    let admit_all = |_: &mesh::did::DidKey| true;
    let Ok((sender, payload)) = Datagram::open(data, DATAGRAM_NOW, DATAGRAM_MAX_SKEW, &mut window, &admit_all) else {
        assert_eq!(window.senders(), 0, "a refused datagram leaves no trace in the window");
        return false;
    };
    assert!(payload.len() <= MAX_DATAGRAM_PAYLOAD);
    assert_eq!(sender.public_key()[..], data[1..33]);
    let replay = Datagram::open(data, DATAGRAM_NOW, DATAGRAM_MAX_SKEW, &mut window, &admit_all);
    assert!(
        matches!(replay, Err(mesh::Error::ReplayedDatagram { .. })),
        "{replay:?}"
    );
    true
}
