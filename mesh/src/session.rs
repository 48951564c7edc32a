//! One sync session with one peer, sans-IO: everything that happens on a stream once a connection
//! exists — the [`Handshake`], then Automerge sync, pings and the silence timeout — as a state
//! machine fed [`Event`]s and answering [`Output`]s. It opens no socket, reads no clock (time is
//! passed in as a [`Duration`] since an origin of the caller's choice) and draws no randomness (the
//! handshake nonce comes with [`Event::Connected`]).
//!
//! The session does not own the document: each call to [`Session::handle`] lends it a
//! [`Document`], through which it checks admission, applies the peer's sync messages and generates
//! its own. The tokio driver ([`crate::driver`]) lends the node's replica; tests and the simulator
//! lend a plain [`crate::doc::Doc`].
//!
//! ```text
//! Connected ─▶ handshaking ──Done──▶ established ──▶ closed
//!                  │                    │ Bytes: Sync → receive, generate; Ping → Pong
//!                  │                    │ LocalChange → generate
//!                  │                    │ Tick: ping every ping_interval; silent > dead_after → close
//!                  └─ refused / timed out / Eof ─────▶ closed
//! ```
//!
//! Which of two sessions between the same nodes survives is the owner's choice (it alone sees
//! every session); [`supersedes`] is the rule both ends apply.

use std::fmt;
use std::time::Duration;

use crate::Error;
use crate::did::DidKey;
use crate::doc::PeerSync;
use crate::epoch::{Announce, Epoch};
use crate::identity::NodeIdentity;
use crate::wire::{Frame, FrameDecoder, HANDSHAKE_MAX_PAYLOAD, Handshake, MINOR, Peers, Step};

/// The document as a session sees it: admission, the keys peers sign with, and the two halves of
/// Automerge's sync protocol.
pub trait Document {
    /// Whether `did` is a member of the mesh (may complete a handshake).
    fn is_member(&self, did: &DidKey) -> bool;
    /// The key that signs for `did` now (its handshake `Auth` must verify with it): the last key of
    /// its key event chain. The default, the DID's own key, suits a document without rotations.
    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        did.public_key()
    }
    /// Whether `event`, carried by a peer's `Hello`, is the next rotation of its DID after the
    /// events known here (`State::extends_chain`); the default accepts none.
    fn extends_chain(&self, event: &crate::kel::KeyEvent) -> bool {
        let _ = event;
        false
    }
    /// The next sync message for `peer`, if any.
    fn generate(&mut self, peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>>;
    /// Applies (and persists) a sync message from `peer`; an error closes the session.
    fn receive(&mut self, peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String>;
    /// The epochs the document holds (see [`crate::epoch`]). The default, the genesis epoch
    /// alone, suits a document without epochs.
    fn epochs(&self) -> Announce {
        Announce::genesis()
    }
    /// The next sync message of epoch `seed` for `peer`, if that epoch is held. The default
    /// serves the genesis epoch through [`Document::generate`].
    fn generate_in(&mut self, peer: &DidKey, seed: &[u8; 32], sync: &mut PeerSync) -> Option<Vec<u8>> {
        (*seed == Epoch::genesis().seed).then(|| self.generate(peer, sync))?
    }
    /// Applies (and persists) a sync message of epoch `seed` from `peer`; a message of an epoch
    /// not held is ignored. The default serves the genesis epoch through [`Document::receive`].
    fn receive_in(
        &mut self,
        peer: &DidKey,
        seed: &[u8; 32],
        sync: &mut PeerSync,
        message: &[u8],
    ) -> Result<(), String> {
        if *seed == Epoch::genesis().seed {
            return self.receive(peer, sync, message);
        }
        Ok(())
    }
    /// `peer` announced its epochs: move to its current one if it is better and can be built or
    /// received ([`crate::epoch::Replicas::offer`]). The default never moves.
    fn offer(&mut self, peer: &DidKey, announce: &Announce) {
        let _ = (peer, announce);
    }
}

/// A [`Document`] as the handshake's [`Peers`].
struct DocumentPeers<'d>(&'d dyn Document);

impl Peers for DocumentPeers<'_> {
    fn is_admitted(&self, did: &DidKey) -> bool {
        self.0.is_member(did)
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.0.current_key(did)
    }

    fn extends_chain(&self, event: &crate::kel::KeyEvent) -> bool {
        self.0.extends_chain(event)
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest accepted frame payload once the peer is authenticated (before, the limit is
    /// [`HANDSHAKE_MAX_PAYLOAD`]).
    pub max_frame: usize,
    /// How often an established session pings.
    pub ping_interval: Duration,
    /// A peer silent this long is dropped (checked at each ping).
    pub dead_after: Duration,
    /// The handshake must finish this long after [`Event::Connected`].
    pub handshake_timeout: Duration,
    /// At most this many sync messages are generated at once.
    pub max_batch: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame: 64 * 1024 * 1024,
            ping_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(8),
            handshake_timeout: Duration::from_secs(10),
            max_batch: 16,
        }
    }
}

/// What happened to the session.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'b> {
    /// The connection exists; `initiator` if this side opened it. `nonce` must be 32 fresh random
    /// bytes.
    Connected {
        /// Whether this side opened the connection.
        initiator: bool,
        /// Fresh randomness for the handshake.
        nonce: [u8; 32],
    },
    /// Bytes arrived from the peer, split however the transport split them.
    Bytes(&'b [u8]),
    /// The peer closed the connection (end of stream).
    Eof,
    /// The local document changed: send the peer what it lacks.
    LocalChange,
    /// Time passed; due when [`Session::next_timeout`] says.
    Tick,
    /// This node is shutting down: say `Bye` and close.
    Shutdown,
}

/// What the owner must do, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Write these bytes to the peer. `sync_messages` counts the [`Frame::Sync`] frames in them; a
    /// transmit carrying sync messages carries nothing else.
    Transmit {
        /// Encoded frames.
        bytes: Vec<u8>,
        /// How many of them are sync messages.
        sync_messages: usize,
    },
    /// The peer is authenticated and admitted. The owner decides whether to keep this session
    /// ([`supersedes`]); if not, it drops the session and ignores the outputs after this one.
    Established {
        /// The peer.
        peer: DidKey,
    },
    /// A sync message from the peer was applied to the document: other sessions may now have news
    /// for their peers.
    Applied,
    /// The session is over; the owner closes the connection. Always the last output.
    Closed(CloseReason),
}

/// Why a session closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handshake failed (version, own DID, not admitted, bad signature, out of order, or the
    /// peer's `Bye`); a `Bye` with the error's message was sent.
    Refused(Error),
    /// The stream does not decode (oversized frame, unknown kind, malformed payload).
    Malformed(Error),
    /// A frame other than `Sync`, `Ping`, `Pong` or `Bye` arrived after the handshake.
    UnexpectedFrame(&'static str),
    /// The document refused a sync message from the peer.
    SyncRefused(String),
    /// The peer said `Bye` after the handshake.
    PeerSaidBye(String),
    /// The handshake did not finish within [`SessionConfig::handshake_timeout`].
    HandshakeTimedOut,
    /// Nothing arrived from the peer for longer than [`SessionConfig::dead_after`].
    PeerSilent,
    /// The connection ended during the handshake.
    ClosedDuringHandshake,
    /// The connection ended after the handshake.
    ConnectionClosed,
    /// [`Event::Bytes`] or [`Event::Eof`] came before [`Event::Connected`].
    NotConnected,
    /// This node shut down ([`Event::Shutdown`]); a `Bye` was sent.
    Shutdown,
}

/// The sync session with one peer over one connection.
pub struct Session<'a> {
    identity: &'a NodeIdentity,
    config: SessionConfig,
    decoder: FrameDecoder,
    phase: Phase<'a>,
}

/// Whether a session to `peer` opened by `new_initiator` replaces an established one opened by
/// `existing_initiator`, on node `me`. Both ends keep the session opened by the smaller DID, so
/// when two nodes dial each other at once they settle on the same one.
pub fn supersedes(me: DidKey, peer: DidKey, existing_initiator: DidKey, new_initiator: DidKey) -> bool {
    let preferred = me.min(peer);
    existing_initiator != preferred && new_initiator == preferred
}

impl<'a> Session<'a> {
    /// A session of the node `identity`, waiting for [`Event::Connected`].
    pub fn new(identity: &'a NodeIdentity, config: SessionConfig) -> Self {
        Self {
            identity,
            decoder: FrameDecoder::new(HANDSHAKE_MAX_PAYLOAD),
            config,
            phase: Phase::Idle,
        }
    }

    /// Handles `event` at time `now` (a [`Duration`] since the caller's origin, never going
    /// backwards), using `doc` for admission and sync, and returns what to do, in order. After
    /// [`Output::Closed`] every event is ignored.
    pub fn handle(&mut self, event: Event<'_>, now: Duration, doc: &mut dyn Document) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Closed) {
            return out;
        }
        if let Err(reason) = self.step(event, now, doc, &mut out) {
            self.phase = Phase::Closed;
            out.push(Output::Closed(reason));
        }
        out
    }

    /// When the session next needs an [`Event::Tick`]: the handshake deadline, or the next ping.
    pub fn next_timeout(&self) -> Option<Duration> {
        match &self.phase {
            Phase::Handshaking { deadline, .. } => Some(*deadline),
            Phase::Established(link) => Some(link.next_ping),
            Phase::Idle | Phase::Closed => None,
        }
    }

    /// The authenticated peer, once established.
    pub fn peer(&self) -> Option<DidKey> {
        match &self.phase {
            Phase::Established(link) => Some(link.peer),
            _ => None,
        }
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn step(
        &mut self,
        event: Event<'_>,
        now: Duration,
        doc: &mut dyn Document,
        out: &mut Vec<Output>,
    ) -> Result<(), CloseReason> {
        match event {
            Event::Connected { initiator, nonce } => {
                if !matches!(self.phase, Phase::Idle) {
                    return Ok(());
                }
                let (handshake, first) = if initiator {
                    Handshake::initiator(self.identity, nonce)
                } else {
                    Handshake::responder(self.identity, nonce)
                };
                transmit(out, &first);
                self.phase = Phase::Handshaking {
                    handshake,
                    deadline: now + self.config.handshake_timeout,
                };
                Ok(())
            }
            Event::Bytes(bytes) => {
                match &mut self.phase {
                    Phase::Idle => return Err(CloseReason::NotConnected),
                    Phase::Established(link) => link.last_heard = now,
                    Phase::Handshaking { .. } | Phase::Closed => {}
                }
                self.decoder.push(bytes);
                while let Some(frame) = self.decoder.next().map_err(CloseReason::Malformed)? {
                    self.frame(frame, now, doc, out)?;
                }
                Ok(())
            }
            Event::Eof => Err(match self.phase {
                Phase::Idle => CloseReason::NotConnected,
                Phase::Handshaking { .. } => CloseReason::ClosedDuringHandshake,
                Phase::Established(_) | Phase::Closed => CloseReason::ConnectionClosed,
            }),
            Event::LocalChange => {
                if let Phase::Established(link) = &mut self.phase {
                    link.send_generated(doc, self.config.max_batch, out);
                }
                Ok(())
            }
            Event::Tick => match &mut self.phase {
                Phase::Handshaking { deadline, .. } if now >= *deadline => Err(CloseReason::HandshakeTimedOut),
                Phase::Established(link) if now >= link.next_ping => {
                    if now.saturating_sub(link.last_heard) > self.config.dead_after {
                        return Err(CloseReason::PeerSilent);
                    }
                    link.pings += 1;
                    transmit(out, &[Frame::Ping(link.pings)]);
                    link.next_ping = now + self.config.ping_interval;
                    Ok(())
                }
                _ => Ok(()),
            },
            Event::Shutdown => {
                if !matches!(self.phase, Phase::Idle) {
                    transmit(
                        out,
                        &[Frame::Bye {
                            reason: CloseReason::Shutdown.to_string(),
                        }],
                    );
                }
                Err(CloseReason::Shutdown)
            }
        }
    }

    /// Handles one decoded frame.
    fn frame(
        &mut self,
        frame: Frame,
        now: Duration,
        doc: &mut dyn Document,
        out: &mut Vec<Output>,
    ) -> Result<(), CloseReason> {
        match &mut self.phase {
            Phase::Handshaking { handshake, .. } => {
                match handshake.handle(frame, &DocumentPeers(&*doc)) {
                    Ok(Step::Send(frames)) => transmit(out, &frames),
                    Ok(Step::Done { peer, send, peer_minor }) => {
                        transmit(out, &send);
                        self.decoder.set_max_payload(self.config.max_frame);
                        out.push(Output::Established { peer });
                        let mut link = Link {
                            peer,
                            minor: peer_minor.min(MINOR),
                            announced: None,
                            theirs: None,
                            syncs: Vec::new(),
                            last_heard: now,
                            // Ping at once, as a fresh interval timer would.
                            next_ping: now,
                            pings: 0,
                        };
                        link.send_generated(doc, self.config.max_batch, out);
                        self.phase = Phase::Established(link);
                    }
                    Err(error) => {
                        transmit(
                            out,
                            &[Frame::Bye {
                                reason: error.to_string(),
                            }],
                        );
                        return Err(CloseReason::Refused(error));
                    }
                }
                Ok(())
            }
            Phase::Established(link) => match frame {
                Frame::Sync(message) => {
                    let (peer, seed) = (link.peer, Epoch::genesis().seed);
                    doc.receive_in(&peer, &seed, link.sync(seed), &message)
                        .map_err(CloseReason::SyncRefused)?;
                    out.push(Output::Applied);
                    link.send_generated(doc, self.config.max_batch, out);
                    Ok(())
                }
                Frame::EpochSync { seed, message } if link.minor >= 1 => {
                    if link.announced.as_ref().is_some_and(|a| a.held().any(|s| s == seed)) {
                        let peer = link.peer;
                        doc.receive_in(&peer, &seed, link.sync(seed), &message)
                            .map_err(CloseReason::SyncRefused)?;
                        out.push(Output::Applied);
                        // The cut of a better epoch the peer announced may have arrived with it.
                        if let Some(theirs) = &link.theirs
                            && theirs.current.id().better_than(&doc.epochs().current.id())
                        {
                            doc.offer(&link.peer, theirs);
                        }
                    }
                    link.send_generated(doc, self.config.max_batch, out);
                    Ok(())
                }
                Frame::Epoch(announce) if link.minor >= 1 => {
                    doc.offer(&link.peer, &announce);
                    link.theirs = Some(announce);
                    link.send_generated(doc, self.config.max_batch, out);
                    Ok(())
                }
                Frame::Ping(n) => {
                    transmit(out, &[Frame::Pong(n)]);
                    Ok(())
                }
                Frame::Pong(_) => Ok(()),
                Frame::Bye { reason } => Err(CloseReason::PeerSaidBye(reason)),
                other => Err(CloseReason::UnexpectedFrame(other.name())),
            },
            Phase::Idle | Phase::Closed => Err(CloseReason::NotConnected),
        }
    }
}

impl fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match &self.phase {
            Phase::Idle => "idle",
            Phase::Handshaking { .. } => "handshaking",
            Phase::Established(_) => "established",
            Phase::Closed => "closed",
        };
        f.debug_struct("Session")
            .field("node", &self.identity.did())
            .field("phase", &phase)
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Refused(error) | CloseReason::Malformed(error) => error.fmt(f),
            CloseReason::UnexpectedFrame(name) => write!(f, "unexpected frame after handshake: {name}"),
            CloseReason::SyncRefused(reason) => f.write_str(reason),
            CloseReason::PeerSaidBye(reason) => write!(f, "peer said bye: {reason}"),
            CloseReason::HandshakeTimedOut => f.write_str("handshake timed out"),
            CloseReason::PeerSilent => f.write_str("peer silent"),
            CloseReason::ClosedDuringHandshake => f.write_str("closed during handshake"),
            CloseReason::ConnectionClosed => f.write_str("peer closed the connection"),
            CloseReason::NotConnected => f.write_str("the session is not connected"),
            CloseReason::Shutdown => f.write_str("shutting down"),
        }
    }
}

enum Phase<'a> {
    Idle,
    Handshaking {
        handshake: Handshake<'a>,
        deadline: Duration,
    },
    Established(Link),
    Closed,
}

/// The state of an established session.
struct Link {
    peer: DidKey,
    /// The minor version the session speaks: `min(ours, the peer's)`.
    minor: u16,
    /// The epochs last announced to the peer (minor 1).
    announced: Option<Announce>,
    /// The epochs the peer last announced (minor 1).
    theirs: Option<Announce>,
    /// The sync protocol's state per epoch document (by seed) synced with the peer.
    syncs: Vec<([u8; 32], PeerSync)>,
    last_heard: Duration,
    next_ping: Duration,
    pings: u64,
}

impl Link {
    /// The sync state of epoch `seed`, created fresh when first needed.
    fn sync(&mut self, seed: [u8; 32]) -> &mut PeerSync {
        let index = match self.syncs.iter().position(|(s, _)| *s == seed) {
            Some(index) => index,
            None => {
                self.syncs.push((seed, PeerSync::default()));
                self.syncs.len() - 1
            }
        };
        &mut self.syncs[index].1
    }

    /// Generates what the peer lacks (at most `max` messages) and queues it as one transmit. With
    /// minor 1, first announces the document's epochs if they changed since the last announcement,
    /// then syncs every epoch both sides hold; with minor 0, only the genesis epoch (a minor-0
    /// peer knows no other).
    fn send_generated(&mut self, doc: &mut dyn Document, max: usize, out: &mut Vec<Output>) {
        let seeds: Vec<[u8; 32]> = if self.minor == 0 {
            vec![Epoch::genesis().seed]
        } else {
            let now = doc.epochs();
            if self.announced.as_ref() != Some(&now) {
                transmit(out, &[Frame::Epoch(now.clone())]);
                self.syncs.retain(|(seed, _)| now.held().any(|s| s == *seed));
                self.announced = Some(now);
            }
            match (&self.announced, &self.theirs) {
                (Some(ours), Some(theirs)) => ours.held().filter(|s| theirs.held().any(|t| t == *s)).collect(),
                _ => Vec::new(),
            }
        };
        let mut bytes = Vec::new();
        let mut sync_messages = 0;
        for seed in seeds {
            while sync_messages < max {
                let peer = self.peer;
                let Some(message) = doc.generate_in(&peer, &seed, self.sync(seed)) else {
                    break;
                };
                let frame = if self.minor == 0 {
                    Frame::Sync(message)
                } else {
                    Frame::EpochSync { seed, message }
                };
                bytes.extend_from_slice(&frame.encode());
                sync_messages += 1;
            }
        }
        if sync_messages > 0 {
            out.push(Output::Transmit { bytes, sync_messages });
        }
    }
}

/// Queues `frames` (if any) as one transmit.
fn transmit(out: &mut Vec<Output>, frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(&frame.encode());
    }
    out.push(Output::Transmit {
        bytes,
        sync_messages: 0,
    });
}
