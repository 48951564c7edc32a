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

/// The major version of the mesh protocol this build speaks. Nodes of different majors refuse each
/// other at the handshake.
pub const MAJOR: u16 = 1;

/// The minor version of the mesh protocol this build speaks. Minors of one major interoperate: a
/// newer minor only adds what an older one can ignore.
pub const MINOR: u16 = 0;
