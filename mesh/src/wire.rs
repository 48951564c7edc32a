//! The mesh wire protocol, sans-IO: bytes in, bytes and events out; no sockets, no clock.
//!
//! # Layout
//!
//! - [`Frame`] and [`FrameDecoder`]: the length-prefixed frames of the per-peer sync stream (TCP).
//! - [`Handshake`]: mutual authentication of two nodes at the start of a stream, yielding a [`Step`]
//!   per received frame.
//! - [`Datagram`] and [`ReplayWindow`]: self-contained signed datagrams for membership (UDP), with
//!   replay and clock-skew protection.
//!
//! Byte layouts and the reasoning behind them are in `mesh/ALGORITHM.md` ("Wire protocol",
//! "Handshake and trust").

mod datagram;
mod frame;
mod handshake;

pub use datagram::{DATAGRAM_VERSION, Datagram, MAX_DATAGRAM_LEN, MAX_DATAGRAM_PAYLOAD, ReplayWindow};
pub use frame::{Frame, FrameDecoder, HANDSHAKE_MAX_PAYLOAD};
pub use handshake::{Handshake, Role, Step};

use crate::did::DidKey;

/// What the wire protocol asks the replicated state about a peer: whether it is admitted, and
/// which key signs for it now (its identity may have rotated, see [`crate::kel`]).
///
/// A closure `Fn(&DidKey) -> bool` is a `Peers` that admits what it returns `true` for and
/// expects every DID's own key (no rotation).
pub trait Peers {
    /// Whether `did` may join the mesh.
    fn is_admitted(&self, did: &DidKey) -> bool;
    /// The ed25519 key that signs for `did` now: the last key of its chain, or the DID's own key
    /// when it has no key events.
    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        did.public_key()
    }
    /// Whether `event`, carried by a peer's `Hello`, is the next rotation of its DID after what is
    /// known here (`State::extends_chain`): the handshake then accepts an `Auth` signed with its
    /// key. The default accepts none.
    fn extends_chain(&self, event: &crate::kel::KeyEvent) -> bool {
        let _ = event;
        false
    }
}

impl<F: Fn(&DidKey) -> bool + ?Sized> Peers for F {
    fn is_admitted(&self, did: &DidKey) -> bool {
        self(did)
    }
}

/// The major version of the mesh protocol this build speaks. Nodes of different majors refuse each
/// other at the handshake.
pub const MAJOR: u16 = 1;

/// The minor version of the mesh protocol this build speaks. Minors of one major interoperate: a
/// newer minor only adds what an older one can ignore. Minor 1 adds epochs ([`Frame::Epoch`],
/// [`Frame::EpochSync`]); a session of minor 0 syncs the genesis epoch's document only.
pub const MINOR: u16 = 1;
