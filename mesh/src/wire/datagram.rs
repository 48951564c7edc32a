//! Signed, self-contained datagrams for membership traffic over UDP.
//!
//! ```text
//! version u8 ‖ sender DID key [32] ‖ seq u64 BE ‖ timestamp u64 BE ‖ length u16 BE ‖ payload ‖ signature [64]
//! signature = ed25519(sender's current key, "meshgate-datagram-v1" ‖ every byte before the signature)
//! ```
//!
//! The sender field names the identifier (the DID's inception key); the signature is made with the
//! key that currently signs for it, which differs once the identity rotated ([`crate::kel`]).
//!
//! ```text
//! ```

use std::collections::HashMap;

use crate::Error;
use crate::did::DidKey;
use crate::identity::{self, NodeIdentity};
use crate::wire::Peers;

/// The datagram format version this build writes and reads (the first byte of every datagram).
pub const DATAGRAM_VERSION: u8 = 1;

/// The largest datagram sent or accepted, in bytes: below the path MTU of Ethernet (1500) minus
/// IPv6 and UDP headers and common tunnel overheads, so datagrams are not fragmented.
pub const MAX_DATAGRAM_LEN: usize = 1400;

/// The largest payload [`Datagram::seal`] accepts: [`MAX_DATAGRAM_LEN`] minus header and signature.
/// The membership layer's packet size limit must not exceed it.
pub const MAX_DATAGRAM_PAYLOAD: usize = MAX_DATAGRAM_LEN - HEADER_LEN - SIGNATURE_LEN;

/// Domain separation of datagram signatures; signed, not sent.
const DOMAIN: &[u8] = b"meshgate-datagram-v1";
/// version (1) ‖ sender (32) ‖ seq (8) ‖ timestamp (8) ‖ payload length (2).
const HEADER_LEN: usize = 51;
const SIGNATURE_LEN: usize = 64;
/// How many sequence numbers below the newest one a [`ReplayWindow`] remembers.
const WINDOW: u64 = 128;

/// The signed-datagram codec. It has no values: use [`Datagram::seal`] and [`Datagram::open`].
#[derive(Debug)]
pub enum Datagram {}

impl Datagram {
    /// Signs `payload` as datagram number `seq` from `identity` (its DID in the header, its current
    /// key signing), stamped `now` (Unix seconds).
    ///
    /// `seq` must grow with every datagram the node sends, across restarts too; start a process's
    /// counter at [`Datagram::first_seq`]. Fails with [`Error::DatagramTooLarge`] if `payload` is
    /// longer than [`MAX_DATAGRAM_PAYLOAD`].
    pub fn seal(identity: &NodeIdentity, seq: u64, now: u64, payload: &[u8]) -> Result<Vec<u8>, Error> {
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(Error::DatagramTooLarge {
                length: payload.len(),
                max: MAX_DATAGRAM_PAYLOAD,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SIGNATURE_LEN);
        out.push(DATAGRAM_VERSION);
        out.extend_from_slice(&identity.did().public_key());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        let signature = identity.sign(&signed_message(&out));
        out.extend_from_slice(&signature);
        Ok(out)
    }

    /// The first sequence number for a process started at `now` (Unix seconds): `now · 2²⁴`. A node
    /// that counts up from here and restarts at least a second later starts above every number it
    /// used before (unless it averaged more than 16 million datagrams a second), so receivers'
    /// [`ReplayWindow`]s accept it without persisted state.
    pub fn first_seq(now: u64) -> u64 {
        now.saturating_mul(1 << 24)
    }

    /// Checks and unwraps a received datagram: returns the sender and the payload.
    ///
    /// In order, cheapest first: size and layout ([`Error::DatagramTooLarge`],
    /// [`Error::MalformedDatagram`]), `peers.is_admitted(sender)` ([`Error::NotAdmitted`]), the
    /// timestamp within `max_skew_secs` of `now` ([`Error::DatagramSkew`]), the sequence number
    /// against `window` ([`Error::ReplayedDatagram`], [`Error::StaleDatagram`]), the signature
    /// against `peers.current_key(sender)` ([`Error::BadSignature`]). Only a datagram that passes
    /// all of them is recorded in `window`, so the window holds admitted senders only.
    pub fn open(
        bytes: &[u8],
        now: u64,
        max_skew_secs: u64,
        window: &mut ReplayWindow,
        peers: &dyn Peers,
    ) -> Result<(DidKey, Vec<u8>), Error> {
        if bytes.len() > MAX_DATAGRAM_LEN {
            return Err(Error::DatagramTooLarge {
                length: bytes.len(),
                max: MAX_DATAGRAM_LEN,
            });
        }
        if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(Error::MalformedDatagram("shorter than header and signature"));
        }
        if bytes[0] != DATAGRAM_VERSION {
            return Err(Error::MalformedDatagram("unknown format version"));
        }
        let sender = DidKey::from_public_key(array(&bytes[1..33]));
        let seq = u64::from_be_bytes(array(&bytes[33..41]));
        let timestamp = u64::from_be_bytes(array(&bytes[41..49]));
        let length = usize::from(u16::from_be_bytes(array(&bytes[49..51])));
        let signed_end = HEADER_LEN + length;
        if bytes.len() != signed_end + SIGNATURE_LEN {
            return Err(Error::MalformedDatagram(
                "payload length does not match the datagram size",
            ));
        }
        if !peers.is_admitted(&sender) {
            return Err(Error::NotAdmitted(sender));
        }
        if timestamp.abs_diff(now) > max_skew_secs {
            return Err(Error::DatagramSkew {
                sender,
                timestamp,
                now,
                max_skew_secs,
            });
        }
        window.check(&sender, seq)?;
        identity::verify_with(
            &[peers.current_key(&sender)],
            &signed_message(&bytes[..signed_end]),
            &bytes[signed_end..],
            &format!("datagram from {sender}"),
        )?;
        window.record(sender, seq);
        Ok((sender, bytes[HEADER_LEN..signed_end].to_vec()))
    }
}

/// The sequence numbers recently accepted from each sender, so that a datagram is accepted once.
///
/// Per sender it keeps the newest sequence number and a bitmap of the 128 below it. A number
/// above the newest is new; one within the window is new if its bit is clear; one below the window
/// is refused as stale. Together with the timestamp skew bound this limits replays after a
/// restart of the receiver (whose window starts empty) to datagrams stamped within the skew.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    senders: HashMap<DidKey, SenderWindow>,
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops what is remembered about `sender`, for instance when it leaves the mesh.
    pub fn forget(&mut self, sender: &DidKey) {
        self.senders.remove(sender);
    }

    /// How many senders the window remembers.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    fn check(&self, sender: &DidKey, seq: u64) -> Result<(), Error> {
        let Some(window) = self.senders.get(sender) else {
            return Ok(());
        };
        if seq > window.newest {
            return Ok(());
        }
        let age = window.newest - seq;
        if age >= WINDOW {
            return Err(Error::StaleDatagram {
                sender: *sender,
                seq,
                newest: window.newest,
            });
        }
        if window.seen & (1 << age) != 0 {
            return Err(Error::ReplayedDatagram { sender: *sender, seq });
        }
        Ok(())
    }

    fn record(&mut self, sender: DidKey, seq: u64) {
        let window = self
            .senders
            .entry(sender)
            .or_insert(SenderWindow { newest: seq, seen: 0 });
        if seq > window.newest {
            let shift = seq - window.newest;
            window.seen = if shift >= WINDOW { 0 } else { window.seen << shift };
            window.newest = seq;
        }
        window.seen |= 1 << (window.newest - seq);
    }
}

#[derive(Debug)]
struct SenderWindow {
    newest: u64,
    /// Bit `i` set: `newest - i` was accepted.
    seen: u128,
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + signed.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(signed);
    message
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides() {
        let did = DidKey::from_public_key([1; 32]);
        let mut window = ReplayWindow::new();
        window.record(did, 1000);
        window.record(did, 990);
        assert!(matches!(window.check(&did, 1000), Err(Error::ReplayedDatagram { .. })));
        assert!(matches!(window.check(&did, 990), Err(Error::ReplayedDatagram { .. })));
        window.check(&did, 995).unwrap();
        window.check(&did, 1000 - 127).unwrap();
        assert!(matches!(
            window.check(&did, 1000 - 128),
            Err(Error::StaleDatagram { .. })
        ));
        window.record(did, 1100);
        assert!(matches!(window.check(&did, 990), Err(Error::ReplayedDatagram { .. })));
        window.record(did, 1300);
        assert!(matches!(window.check(&did, 1100), Err(Error::StaleDatagram { .. })));
        window.check(&did, 1299).unwrap();
        assert!(matches!(window.check(&did, 1300), Err(Error::ReplayedDatagram { .. })));
    }

    #[test]
    fn first_seq_grows_across_restarts() {
        assert!(Datagram::first_seq(1_700_000_001) > Datagram::first_seq(1_700_000_000) + 1_000_000);
        assert_eq!(Datagram::first_seq(u64::MAX), u64::MAX);
    }
}
