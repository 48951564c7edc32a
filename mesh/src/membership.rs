//! SWIM membership and failure detection, sans-IO: a wrapper over [`foca`] whose every datagram is
//! a signed [`Datagram`] from an admitted member.
//!
//! ```text
//! Membership::new(identity, sync_addr, config, seed, unix_now)
//! membership.handle_datagram(from, bytes, unix_now, peers) -> Result<sender>       // UDP in
//! membership.handle_timer(timer, unix_now)                                         // a timer fired
//! membership.bootstrap(targets, unix_now) / announce(..) / leave(..)
//! membership.poll_output() -> Transmit { to, bytes } | Schedule { after, timer }   // carry out
//! membership.liveness(did) -> Alive | Suspect | Down | Unknown
//! ```
//!
//! It opens no socket, reads no clock (Unix seconds come in with each call, for the datagrams'
//! timestamps; foca itself only asks for delays) and draws randomness only from the seed it is
//! given. The tokio driver ([`crate::driver`]) binds the UDP socket and runs the timers; tests run
//! several instances over an in-memory exchange in virtual time.
//!
//! What reaches foca has passed, in order: [`Datagram::open`] (layout, sender admitted, clock
//! skew, [`ReplayWindow`], signature), then a screen of the SWIM payload: the header's sender is
//! the datagram's signer, it is addressed to this node (or is an announce to "whoever listens
//! here"), every node it names is a member, and updates about non-members are dropped. So foca's
//! member list only ever holds members. The algorithm notes are in `mesh/ALGORITHM.md`
//! ("Membership (SWIM)").

mod codec;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Codec, Foca, Message, NoCustomBroadcast, OwnedNotification, PeriodicParams, State};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use self::codec::{MemberCodec, MemberId, Reader};
use crate::Error;
use crate::did::DidKey;
use crate::identity::NodeIdentity;
use crate::wire::{Datagram, MAX_DATAGRAM_PAYLOAD, Peers, ReplayWindow};

/// The DID an announce is addressed to when only the address of the node is known (bootstrap
/// addresses): the receiver reads it as "whoever listens here". No node has this key.
fn anyone() -> DidKey {
    DidKey::from_public_key([0; 32])
}

/// Membership settings. The defaults suit a LAN or a single host; every node of a mesh should use
/// the same values.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often a random member is probed (foca's `probe_period`).
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly
    /// (foca's `probe_rtt`); must be well below `probe_period`.
    pub probe_rtt: Duration,
    /// How long a member stays suspect before it is declared down.
    pub suspect_to_down_after: Duration,
    /// Largest accepted difference between a datagram's timestamp and this node's clock.
    pub max_skew_secs: u64,
    /// How often the owner should call [`Membership::bootstrap`].
    pub announce_interval: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(400),
            suspect_to_down_after: Duration::from_secs(4),
            max_skew_secs: 30,
            announce_interval: Duration::from_secs(2),
        }
    }
}

/// What membership knows about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Liveness {
    /// It answered probes (directly or through other members) recently.
    Alive,
    /// A probe went unanswered; it is declared down unless it refutes within
    /// `suspect_to_down_after`.
    Suspect,
    /// Declared down (by this node or by gossip); it must rejoin under a new generation.
    Down,
    /// Never heard of (or forgotten).
    Unknown,
}

/// A foca timer the owner must hand back through [`Membership::handle_timer`] once its delay
/// has passed. Opaque.
#[derive(Clone, PartialEq, Eq)]
pub struct TimerEvent(foca::Timer<MemberId>);

impl fmt::Debug for TimerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerEvent({:?})", self.0)
    }
}

/// What the owner must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `bytes` (a sealed datagram) to `to` over UDP.
    Transmit {
        /// The destination.
        to: SocketAddr,
        /// The sealed datagram.
        bytes: Vec<u8>,
    },
    /// Call [`Membership::handle_timer`] with `timer` after `after`.
    Schedule {
        /// The delay.
        after: Duration,
        /// What to hand back.
        timer: TimerEvent,
    },
}

/// One node's SWIM membership: foca plus the signed-datagram layer. See the module docs.
pub struct Membership {
    identity: Arc<NodeIdentity>,
    foca: Foca<MemberId, MemberCodec, SmallRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<MemberId>,
    window: ReplayWindow,
    next_seq: u64,
    max_skew_secs: u64,
    /// The address each member's last authenticated datagram came from: where to reach it.
    routes: HashMap<DidKey, SocketAddr>,
    outputs: VecDeque<Output>,
    refused: u64,
}

impl Membership {
    /// A node listening on `addr` (its sync address; UDP shares the TCP port), not yet in touch
    /// with anyone. `unix_now` stamps the first datagram sequence number and the node's
    /// generation, so both grow across restarts; `seed` drives foca's random choices.
    pub fn new(
        identity: Arc<NodeIdentity>,
        addr: SocketAddr,
        config: &MembershipConfig,
        seed: u64,
        unix_now: u64,
    ) -> Self {
        let id = MemberId {
            did: identity.did(),
            addr,
            // Seconds · 2¹⁶: a restart a second later starts above every rejoin of the previous
            // process (each rejoin adds one).
            generation: unix_now.saturating_mul(1 << 16),
        };
        let foca = Foca::new(id, foca_config(config), SmallRng::seed_from_u64(seed), MemberCodec);
        Self {
            identity,
            foca,
            runtime: AccumulatingRuntime::new(),
            window: ReplayWindow::new(),
            next_seq: Datagram::first_seq(unix_now),
            max_skew_secs: config.max_skew_secs,
            routes: HashMap::new(),
            outputs: VecDeque::new(),
            refused: 0,
        }
    }

    /// Asks the node at `to` to let this node join. `did`, when known, names it; otherwise the
    /// announce is addressed to whoever listens there.
    pub fn announce(&mut self, to: SocketAddr, did: Option<DidKey>, unix_now: u64) {
        if did == Some(self.identity.did()) || to == self.foca.identity().addr {
            return;
        }
        let dst = MemberId {
            did: did.unwrap_or_else(anyone),
            addr: to,
            generation: 0,
        };
        if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
            tracing::debug!(%to, error = %e, "membership announce failed");
        }
        self.flush(unix_now);
    }

    /// Announces to every target membership does not consider alive or suspect: members (by DID,
    /// at their announced sync address) and bootstrap addresses (no DID) no live member was heard
    /// from. Call it every [`MembershipConfig::announce_interval`]; it is how a node joins at
    /// start, after a partition, and when it learns of a newly admitted member.
    pub fn bootstrap(&mut self, targets: impl IntoIterator<Item = (Option<DidKey>, SocketAddr)>, unix_now: u64) {
        for (did, addr) in targets {
            let known_live = match did {
                Some(did) => self.is_active(&did),
                None => self
                    .routes
                    .iter()
                    .any(|(did, route)| *route == addr && self.is_active(did)),
            };
            if !known_live {
                self.announce(addr, did, unix_now);
            }
        }
    }

    /// Opens and screens a datagram received from `from`, then hands it to foca. Returns the
    /// authenticated sender. A refused datagram is counted ([`Membership::refused`]), logged at
    /// debug, and never reaches foca.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        unix_now: u64,
        peers: &dyn Peers,
    ) -> Result<DidKey, Error> {
        let result = self.receive(from, bytes, unix_now, peers);
        if let Err(e) = &result {
            self.refused += 1;
            tracing::debug!(%from, error = %e, "membership datagram refused");
        }
        self.flush(unix_now);
        result
    }

    /// Runs a timer previously handed out in [`Output::Schedule`].
    pub fn handle_timer(&mut self, timer: TimerEvent, unix_now: u64) {
        if let Err(e) = self.foca.handle_timer(timer.0, &mut self.runtime) {
            tracing::debug!(error = %e, "membership timer failed");
        }
        self.flush(unix_now);
    }

    /// Tells the members this node is leaving (at shutdown), so they mark it down at once.
    pub fn leave(&mut self, unix_now: u64) {
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(error = %e, "membership leave failed");
        }
        self.flush(unix_now);
    }

    /// The next thing to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// What membership knows about `did`.
    pub fn liveness(&self, did: &DidKey) -> Liveness {
        self.foca
            .iter_membership_state()
            .find(|m| m.id().did == *did)
            .map_or(Liveness::Unknown, |m| liveness(m.state()))
    }

    /// Every node foca knows of (down ones included), with its liveness.
    pub fn members(&self) -> HashMap<DidKey, Liveness> {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id().did, liveness(m.state())))
            .collect()
    }

    /// How many received datagrams were refused since start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// This node's current generation (it grows when the node rejoins after being declared down).
    pub fn generation(&self) -> u64 {
        self.foca.identity().generation
    }

    fn is_active(&self, did: &DidKey) -> bool {
        matches!(self.liveness(did), Liveness::Alive | Liveness::Suspect)
    }

    fn receive(&mut self, from: SocketAddr, bytes: &[u8], unix_now: u64, peers: &dyn Peers) -> Result<DidKey, Error> {
        let (sender, payload) = Datagram::open(bytes, unix_now, self.max_skew_secs, &mut self.window, peers)?;
        let is_member = |did: &DidKey| peers.is_admitted(did);
        let payload = self.screen(sender, &payload, &is_member)?;
        self.routes.insert(sender, from);
        self.foca.handle_data(&payload, &mut self.runtime).map_err(|e| {
            tracing::debug!(%sender, error = %e, "SWIM refused a datagram");
            Error::MalformedDatagram("refused by the SWIM state machine")
        })?;
        Ok(sender)
    }

    /// Checks the SWIM payload of an authenticated datagram from `sender` and rewrites it for
    /// foca: an announce to [`anyone`] is addressed to this node, updates about non-members are
    /// dropped.
    fn screen(&self, sender: DidKey, payload: &[u8], is_member: &dyn Fn(&DidKey) -> bool) -> Result<Vec<u8>, Error> {
        let undecodable = |_| Error::MalformedDatagram("undecodable SWIM payload");
        let me = self.foca.identity();
        let mut reader = Reader(payload);
        if sender == me.did {
            return Err(Error::OwnDid(sender));
        }
        let mut header = reader.header().map_err(undecodable)?;
        if header.src.did != sender {
            return Err(Error::MalformedDatagram("the SWIM sender is not the datagram's signer"));
        }
        if header.dst.did == anyone() && header.message == Message::Announce {
            header.dst = me.clone();
        } else if header.dst.did != me.did {
            return Err(Error::MalformedDatagram("addressed to another node"));
        }
        let named = match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => Some(id),
            _ => None,
        };
        if let Some(id) = named.filter(|id| !is_member(&id.did)) {
            return Err(Error::NotAdmitted(id.did));
        }
        let mut out = Vec::with_capacity(payload.len());
        codec::write_header(&mut out, &header);
        if reader.0.len() < 2 || header.message == Message::Broadcast {
            out.extend_from_slice(reader.0);
            return Ok(out);
        }
        let count = reader.u16().map_err(undecodable)?;
        let mut kept = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let member = reader.member().map_err(undecodable)?;
            if member.id().did == me.did || is_member(&member.id().did) {
                kept.push(member);
            } else {
                tracing::debug!(%sender, about = %member.id().did, "dropped a SWIM update about a non-member");
            }
        }
        out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for member in &kept {
            MemberCodec
                .encode_member(member, &mut out)
                .map_err(|_| Error::MalformedDatagram("unencodable SWIM update"))?;
        }
        out.extend_from_slice(reader.0);
        Ok(out)
    }

    /// Seals what foca sent, queues its timers, logs its notifications.
    fn flush(&mut self, unix_now: u64) {
        while let Some((to, data)) = self.runtime.to_send() {
            let addr = self.routes.get(&to.did).copied().unwrap_or(to.addr);
            match Datagram::seal(&self.identity, self.next_seq, unix_now, &data) {
                Ok(bytes) => {
                    self.next_seq += 1;
                    self.outputs.push_back(Output::Transmit { to: addr, bytes });
                }
                Err(e) => tracing::warn!(to = ?to, error = %e, "membership datagram not sent"),
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.outputs.push_back(Output::Schedule {
                after,
                timer: TimerEvent(timer),
            });
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => tracing::info!(peer = %id.did, "mesh member up"),
                OwnedNotification::MemberDown(id) => tracing::info!(peer = %id.did, "mesh member down"),
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(generation = id.generation, "declared down by the mesh; rejoined")
                }
                OwnedNotification::Defunct => tracing::warn!("membership: declared down, cannot rejoin"),
                other => tracing::debug!(notification = ?other, "membership"),
            }
        }
    }
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

fn liveness(state: State) -> Liveness {
    match state {
        State::Alive => Liveness::Alive,
        State::Suspect => Liveness::Suspect,
        State::Down => Liveness::Down,
    }
}

/// foca's settings: SWIM with foca's extensions that suit a small mesh — periodic gossip (fast
/// dissemination), periodic announces (discovery, and healing after partitions, also towards
/// members believed down), telling a down member it is down (so it rejoins at once).
fn foca_config(config: &MembershipConfig) -> foca::Config {
    let params = |frequency, n| PeriodicParams {
        frequency,
        num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    };
    let mut foca = foca::Config::simple();
    foca.probe_period = config.probe_period;
    foca.probe_rtt = config.probe_rtt;
    foca.suspect_to_down_after = config.suspect_to_down_after;
    foca.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    foca.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
    foca.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM_PAYLOAD).unwrap_or(NonZeroUsize::MIN);
    foca.notify_down_members = true;
    foca.periodic_announce = Some(params(Duration::from_secs(30), 1));
    foca.periodic_announce_to_down_members = Some(params(Duration::from_secs(10), 2));
    foca.periodic_gossip = Some(params(Duration::from_millis(200), 3));
    foca
}
