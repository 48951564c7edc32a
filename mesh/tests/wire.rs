//! The mesh wire protocol through its public API: frames, handshake, datagrams, fuzz corpus.

use std::path::{Path, PathBuf};

use mesh::Error;
use mesh::did::DidKey;
use mesh::identity::NodeIdentity;
use mesh::state::{Change, State};
use mesh::wire::{
    Datagram, Frame, FrameDecoder, HANDSHAKE_MAX_PAYLOAD, Handshake, MAJOR, MAX_DATAGRAM_LEN, MAX_DATAGRAM_PAYLOAD,
    MINOR, Peers, ReplayWindow, Role, Step,
};
use proptest::prelude::*;

#[path = "../fuzz/harness.rs"]
mod harness;

#[path = "wire/corpus.rs"]
mod corpus;
#[path = "wire/datagrams.rs"]
mod datagrams;
#[path = "wire/frames.rs"]
mod frames;
#[path = "wire/handshake.rs"]
mod handshake;

const NOW: u64 = 1_750_000_000;

fn alice() -> NodeIdentity {
    NodeIdentity::from_seed([1; 32])
}

fn bob() -> NodeIdentity {
    NodeIdentity::from_seed([2; 32])
}

fn admit_all(_: &DidKey) -> bool {
    true
}

/// Peers that admit everyone and expect each DID's current key as `.0`'s key events say.
struct Knows(State);

impl Peers for Knows {
    fn is_admitted(&self, _: &DidKey) -> bool {
        true
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.0.current_key(did)
    }
}

/// Alice's identity rotated once, and what a peer knows before and after learning the rotation.
fn rotated_alice() -> (NodeIdentity, Knows, Knows) {
    let alice = alice();
    let mut state = State::default();
    state.apply(&Change::PutKeyEvent(alice.event()));
    let unaware = Knows(state.clone());
    state.apply(&Change::PutKeyEvent(alice.rotate_with_seed([7; 32])));
    (alice, unaware, Knows(state))
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(Frame::encode).collect()
}

/// Decodes a complete stream, or panics.
fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.push(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next().unwrap() {
        frames.push(frame);
    }
    assert_eq!(decoder.buffered(), 0);
    frames
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(major, minor, key, nonce)| {
            Frame::Hello {
                major,
                minor,
                did: DidKey::from_public_key(key),
                nonce,
                rotation: None,
            }
        }),
        prop::collection::vec(any::<u8>(), 64).prop_map(|bytes| Frame::Auth {
            signature: bytes.try_into().unwrap()
        }),
        prop::collection::vec(any::<u8>(), 0..2048).prop_map(Frame::Sync),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        "\\PC{0,64}".prop_map(|reason| Frame::Bye { reason }),
    ]
}
