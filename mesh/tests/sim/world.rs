//! The simulated world: nodes running [`Session`]s over an in-memory transport, in virtual time.
//!
//! Everything is driven by one event queue ordered by (virtual time, insertion order) and one seeded
//! random generator, so a run is a pure function of its seed and its steps.
//!
//! - **Nodes** each own a [`Doc`], an identity, a membership view ([`State::members`] over a fixed
//!   trusted list) and one endpoint per connection. Like the tokio driver they keep one session
//!   per peer ([`supersedes`]), dial the peers on their list every 200 ms with backoff (250 ms
//!   doubling up to 10 s; dial attempts over a cut link time out after 3 s), and tell every
//!   session when the document changed (coalesced, like the driver's watch channel).
//! - **Links** between two nodes deliver bytes in order after the link's latency. A cut link holds
//!   what is sent over it and delivers it, in order, when healed (TCP retransmitting); sessions
//!   across it notice the silence and close on their own.
//! - **Crash** drops every connection of the node (its peers see the connections end, as when a
//!   process dies) and keeps only its saved document. Every change a node makes or receives is
//!   persisted before the call returns (`Replica::receive` contract), so saving at the moment of
//!   the crash is the same as saving after every call. **Restart** loads it back.

#[path = "net.rs"]
mod net;
#[path = "replica.rs"]
mod replica;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use mesh::did::DidKey;
use mesh::doc::Doc;
use mesh::epoch::Replicas;
use mesh::identity::NodeIdentity;
use mesh::session::{self, Event, Output, Session, SessionConfig};
use mesh::state::{Change, State};

use super::rng::Rng;
use net::{Conn, Link, Payload, key};
use replica::{Replica, actor};

/// Unix seconds at virtual time zero (stamped on local changes).
const EPOCH_UNIX: u64 = 1_750_000_000;

/// A node's index in the world.
pub type NodeId = usize;
type ConnId = u64;

/// Settings of the simulated network and of every node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Latency of a link (one way) unless set per link.
    pub latency: Duration,
    /// The sessions' settings.
    pub session: SessionConfig,
    /// How often a node looks for peers to dial.
    pub dial_interval: Duration,
    /// First wait before redialing an address.
    pub first_backoff: Duration,
    /// Longest wait between redials.
    pub max_backoff: Duration,
    /// A dial over a cut link fails after this long.
    pub connect_timeout: Duration,
    /// With a bound, every node runs maintenance each second, as a real node does: it drops expired
    /// revocations and starts a new epoch once its document's saved size passes half the bound
    /// (and twice its size when its epoch started), like [`mesh::store::Store`].
    pub epoch_bound: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            session: SessionConfig::default(),
            dial_interval: Duration::from_millis(200),
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            epoch_bound: None,
        }
    }
}

/// Counters over the whole run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Sessions registered (established and kept).
    pub sessions: u64,
    /// Sync messages sent.
    pub sync_messages: u64,
    /// Bytes handed to links.
    pub bytes: u64,
    /// Closed sessions by reason.
    pub closed: BTreeMap<String, u64>,
    /// The largest saved document any node held at a maintenance run.
    pub max_document: usize,
    /// Epochs started by maintenance (competing proposals counted each).
    pub epochs_started: u64,
}

/// The simulated mesh.
pub struct World<'a> {
    identities: &'a [NodeIdentity],
    /// Who the admitted nodes trust (every admitted identity, fixed for the run).
    trusted: Vec<DidKey>,
    config: Config,
    now: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: Rng,
    nodes: Vec<Node<'a>>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    links: HashMap<(NodeId, NodeId), Link>,
    /// Nodes whose document changed since their sessions were last told.
    changed: Vec<NodeId>,
    /// Set whenever some document's heads moved; cleared by [`World::run_until`].
    heads_moved: bool,
    stats: Stats,
}

struct Node<'a> {
    identity: &'a NodeIdentity,
    admitted: bool,
    alive: bool,
    /// Incarnation: bumped by each crash so stale timers are ignored.
    epoch: u64,
    replica: Replica,
    /// The documents (current, previous) as persisted at the last crash.
    saved: (Vec<u8>, Option<Vec<u8>>),
    /// The saved size of the document when its epoch started here.
    epoch_floor: usize,
    /// Whom this node dials.
    peers: Vec<NodeId>,
    endpoints: HashMap<ConnId, Endpoint<'a>>,
    /// The one kept session per peer: its connection and who opened it.
    registry: HashMap<DidKey, (ConnId, DidKey)>,
    dialing: HashSet<NodeId>,
    backoff: HashMap<NodeId, (Duration, Duration)>,
    /// Sessions ever registered.
    sessions_ever: u64,
    notify_pending: bool,
}

struct Endpoint<'a> {
    session: Session<'a>,
    peer: NodeId,
    initiator: bool,
    registered: Option<DidKey>,
    /// The latest Tick scheduled for this endpoint.
    timer: Option<Duration>,
}

enum Action {
    DialTick {
        node: NodeId,
        epoch: u64,
    },
    DialFailed {
        node: NodeId,
        epoch: u64,
        peer: NodeId,
    },
    Accept {
        conn: ConnId,
    },
    Open {
        conn: ConnId,
    },
    Deliver {
        conn: ConnId,
        side: usize,
        payload: Payload,
    },
    Timer {
        node: NodeId,
        conn: ConnId,
    },
    Maintain {
        node: NodeId,
        epoch: u64,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<'a> World<'a> {
    /// An empty world whose nodes take their identities from `identities`, in the order they are
    /// added; admitted nodes trust `trusted`.
    pub fn new(identities: &'a [NodeIdentity], trusted: Vec<DidKey>, seed: u64, config: Config) -> Self {
        Self {
            identities,
            trusted,
            config,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: Rng::new(seed),
            nodes: Vec::new(),
            conns: HashMap::new(),
            next_conn: 1,
            links: HashMap::new(),
            changed: Vec::new(),
            heads_moved: false,
            stats: Stats::default(),
        }
    }

    /// Adds a node, with the next identity, that dials `peers`. An admitted node is trusted by
    /// every admitted node; an outsider trusts every admitted node, but none of them trusts it.
    pub fn add_node(&mut self, admitted: bool, peers: Vec<NodeId>) -> NodeId {
        let id = self.nodes.len();
        let identity = &self.identities[id];
        let trusted = if admitted {
            self.trusted.clone()
        } else {
            self.trusted.iter().copied().chain([identity.did()]).collect()
        };
        assert_eq!(
            admitted,
            self.trusted.contains(&identity.did()),
            "node {id}: admitted exactly when trusted"
        );
        let docs = Replicas::new(Doc::new(actor(identity)), None, actor(identity));
        let replica = Replica::new(docs, identity.did(), trusted);
        let epoch = 1;
        self.nodes.push(Node {
            identity,
            admitted,
            alive: true,
            epoch,
            replica,
            saved: (Vec::new(), None),
            epoch_floor: 0,
            peers,
            endpoints: HashMap::new(),
            registry: HashMap::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            sessions_ever: 0,
            notify_pending: false,
        });
        let offset = Duration::from_micros(self.rng.below(self.config.dial_interval.as_micros() as usize) as u64);
        self.schedule(offset, Action::DialTick { node: id, epoch });
        if self.config.epoch_bound.is_some() {
            self.schedule(offset + Duration::from_secs(1), Action::Maintain { node: id, epoch });
        }
        id
    }

    /// Adds `peer` to the list `node` dials.
    pub fn add_peer(&mut self, node: NodeId, peer: NodeId) {
        if node != peer && !self.nodes[node].peers.contains(&peer) {
            self.nodes[node].peers.push(peer);
        }
    }

    /// How many nodes were added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether `node` is running.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.nodes[node].alive
    }

    /// Whether `node` is admitted (trusted by the others).
    pub fn is_admitted(&self, node: NodeId) -> bool {
        self.nodes[node].admitted
    }

    /// How many sessions `node` ever registered.
    pub fn sessions_ever(&self, node: NodeId) -> u64 {
        self.nodes[node].sessions_ever
    }

    /// The materialized state of `node`'s document.
    pub fn state(&self, node: NodeId) -> State {
        self.nodes[node].replica.doc().state()
    }

    /// The epoch number of `node`'s current document.
    pub fn epoch_of(&self, node: NodeId) -> u64 {
        self.nodes[node].replica.doc().epoch().number
    }

    /// The heads of `node`'s document.
    pub fn heads(&self, node: NodeId) -> &[String] {
        &self.nodes[node].replica.heads
    }

    /// Sets the latency of the link between `a` and `b`.
    pub fn set_latency(&mut self, a: NodeId, b: NodeId, latency: Duration) {
        self.links.entry(key(a, b)).or_default().latency = Some(latency);
    }

    /// Cuts the link between `a` and `b`: what is sent is held until [`World::heal`].
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.links.entry(key(a, b)).or_default().cut = true;
    }

    /// Heals the link between `a` and `b`, delivering what it held, in order.
    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        let Some(link) = self.links.get_mut(&key(a, b)) else {
            return;
        };
        link.cut = false;
        let held = std::mem::take(&mut link.held);
        let latency = self.latency(a, b);
        for (conn, side, payload) in held {
            self.schedule(latency, Action::Deliver { conn, side, payload });
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        let cut: Vec<(NodeId, NodeId)> = self.links.iter().filter(|(_, l)| l.cut).map(|(k, _)| *k).collect();
        for (a, b) in cut {
            self.heal(a, b);
        }
    }

    /// Crashes `node`: its connections end, only its saved document survives.
    pub fn crash(&mut self, node: NodeId) {
        assert!(self.nodes[node].alive, "node {node} is already down");
        let conns: Vec<ConnId> = self.nodes[node].endpoints.keys().copied().collect();
        for conn in conns {
            self.close_end(node, conn);
        }
        // Connections still being set up towards or from it.
        let pending: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ends.contains(&node))
            .map(|(id, _)| *id)
            .collect();
        for conn in pending {
            let c = self.conns.get_mut(&conn).expect("listed");
            for (end, open) in c.ends.iter().zip(c.open.iter_mut()) {
                if *end == node {
                    *open = false;
                }
            }
        }
        let n = &mut self.nodes[node];
        n.saved = (
            n.replica.docs.current().save(),
            n.replica.docs.previous().map(Doc::save),
        );
        n.alive = false;
        n.epoch += 1;
        n.registry.clear();
        n.dialing.clear();
        n.backoff.clear();
        n.notify_pending = false;
    }

    /// Restarts a crashed `node` from its saved document.
    pub fn restart(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        assert!(!n.alive, "node {node} is running");
        let doc = Doc::load(&n.saved.0, actor(n.identity)).expect("the saved document loads");
        let previous = n
            .saved
            .1
            .as_ref()
            .map(|bytes| Doc::load(bytes, actor(n.identity)).expect("the saved previous document loads"));
        let trusted = std::mem::take(&mut n.replica.trusted);
        let docs = Replicas::new(doc, previous, actor(n.identity));
        n.replica = Replica::new(docs, n.identity.did(), trusted);
        n.alive = true;
        let epoch = n.epoch;
        self.schedule(Duration::ZERO, Action::DialTick { node, epoch });
        if self.config.epoch_bound.is_some() {
            self.schedule(Duration::from_secs(1), Action::Maintain { node, epoch });
        }
    }

    /// The identity of `node`.
    pub fn identity(&self, node: NodeId) -> &'a NodeIdentity {
        self.nodes[node].identity
    }

    /// Applies one local change on `node` and tells its sessions.
    pub fn change(&mut self, node: NodeId, change: Change) {
        self.changes(node, &[change]);
    }

    /// Applies local changes on `node` as one document change and tells its sessions.
    pub fn changes(&mut self, node: NodeId, changes: &[Change]) {
        assert!(self.nodes[node].alive, "node {node} is down");
        let now = self.unix_now();
        let replica = &mut self.nodes[node].replica;
        replica
            .docs
            .current_mut()
            .apply(changes, now)
            .expect("a local change applies");
        replica.changed(changes);
        self.heads_moved |= std::mem::take(&mut replica.heads_moved);
        self.mark_changed(node);
        self.notify();
    }

    /// Unix seconds now (virtual time zero is a fixed date).
    pub fn unix_now(&self) -> u64 {
        EPOCH_UNIX + self.now.as_secs()
    }

    /// Runs the world for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= end) {
            self.step();
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked whenever some document's heads moved) or `max` passed;
    /// returns the virtual time it took.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Self) -> bool) -> Option<Duration> {
        let start = self.now;
        let end = start + max;
        self.heads_moved = false;
        if done(self) {
            return Some(Duration::ZERO);
        }
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= end) {
            self.step();
            if std::mem::take(&mut self.heads_moved) && done(self) {
                return Some(self.now - start);
            }
        }
        self.now = end;
        None
    }

    /// Whether every live admitted node holds the same heads as `node`.
    pub fn all_match(&self, node: NodeId) -> bool {
        let target = self.heads(node);
        self.nodes
            .iter()
            .filter(|n| n.alive && n.admitted)
            .all(|n| n.replica.heads == target)
    }

    fn step(&mut self) {
        let Some(Reverse(scheduled)) = self.queue.pop() else {
            return;
        };
        self.now = scheduled.at;
        self.stats.events += 1;
        match scheduled.action {
            Action::DialTick { node, epoch } => self.dial_tick(node, epoch),
            Action::DialFailed { node, epoch, peer } => {
                if self.nodes[node].epoch == epoch {
                    self.nodes[node].dialing.remove(&peer);
                }
            }
            Action::Accept { conn } => self.accept(conn),
            Action::Open { conn } => self.open(conn),
            Action::Deliver { conn, side, payload } => {
                let Some(c) = self.conns.get(&conn).filter(|c| c.open[side]) else {
                    return;
                };
                let node = c.ends[side];
                match payload {
                    Payload::Bytes(bytes) => self.feed(node, conn, Event::Bytes(&bytes)),
                    Payload::Eof => self.feed(node, conn, Event::Eof),
                }
            }
            Action::Maintain { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].alive {
                    self.maintain(node);
                    self.schedule(Duration::from_secs(1), Action::Maintain { node, epoch });
                }
            }
            Action::Timer { node, conn } => {
                let due = self.nodes[node]
                    .endpoints
                    .get(&conn)
                    .and_then(|e| e.session.next_timeout())
                    .is_some_and(|t| t <= self.now);
                if due {
                    self.feed(node, conn, Event::Tick);
                }
            }
        }
        self.notify();
    }

    fn start_endpoint(&mut self, node: NodeId, conn: ConnId, peer: NodeId, initiator: bool) {
        let n = &mut self.nodes[node];
        let session = Session::new(n.identity, self.config.session.clone());
        n.endpoints.insert(
            conn,
            Endpoint {
                session,
                peer,
                initiator,
                registered: None,
                timer: None,
            },
        );
        let nonce = self.rng.bytes32();
        self.feed(node, conn, Event::Connected { initiator, nonce });
    }

    /// Hands `event` to the session of `node` on `conn` and carries out what it answers.
    fn feed(&mut self, node: NodeId, conn: ConnId, event: Event<'_>) {
        let now = self.now;
        let n = &mut self.nodes[node];
        let Some(endpoint) = n.endpoints.get_mut(&conn) else {
            return;
        };
        n.replica.unix_now = EPOCH_UNIX + now.as_secs();
        let outputs = endpoint.session.handle(event, now, &mut n.replica);
        self.heads_moved |= std::mem::take(&mut n.replica.heads_moved);
        if self.carry_out(node, conn, outputs) {
            self.arm_timer(node, conn);
        }
    }

    /// Carries out `outputs` in order; false once the endpoint is gone.
    fn carry_out(&mut self, node: NodeId, conn: ConnId, outputs: Vec<Output>) -> bool {
        for output in outputs {
            match output {
                Output::Transmit { bytes, sync_messages } => {
                    self.stats.sync_messages += sync_messages as u64;
                    self.send(conn, node, Payload::Bytes(bytes));
                }
                Output::Established { peer } => {
                    if !self.register(node, conn, peer) {
                        self.close_end(node, conn);
                        return false;
                    }
                }
                Output::Applied => self.mark_changed(node),
                Output::Closed(reason) => {
                    *self.stats.closed.entry(close_kind(&reason)).or_default() += 1;
                    self.close_end(node, conn);
                    return false;
                }
                other => panic!("unknown session output {other:?}"),
            }
        }
        true
    }

    /// Keeps the session on `conn` as `node`'s one session with `peer`, unless a preferred one
    /// exists; a session it supersedes is closed.
    fn register(&mut self, node: NodeId, conn: ConnId, peer: DidKey) -> bool {
        let n = &mut self.nodes[node];
        let me = n.identity.did();
        let endpoint = &n.endpoints[&conn];
        let initiator = if endpoint.initiator { me } else { peer };
        let peer_node = endpoint.peer;
        let superseded = match n.registry.get(&peer) {
            Some(&(existing, existing_initiator)) => {
                if !session::supersedes(me, peer, existing_initiator, initiator) {
                    return false;
                }
                Some(existing)
            }
            None => None,
        };
        n.registry.insert(peer, (conn, initiator));
        n.sessions_ever += 1;
        if let Some(endpoint) = n.endpoints.get_mut(&conn) {
            endpoint.registered = Some(peer);
            if endpoint.initiator {
                n.backoff.remove(&peer_node);
            }
        }
        self.stats.sessions += 1;
        if let Some(existing) = superseded {
            self.close_end(node, existing);
        }
        true
    }

    /// Schedules a Tick for the endpoint's next timeout, unless one is already scheduled then.
    fn arm_timer(&mut self, node: NodeId, conn: ConnId) {
        let now = self.now;
        let Some(endpoint) = self.nodes[node].endpoints.get_mut(&conn) else {
            return;
        };
        let Some(at) = endpoint.session.next_timeout() else {
            return;
        };
        if endpoint.timer == Some(at) {
            return;
        }
        endpoint.timer = Some(at);
        self.schedule(at.saturating_sub(now), Action::Timer { node, conn });
    }

    /// A node's periodic maintenance: drops expired revocations, starts a new epoch past the bound.
    fn maintain(&mut self, node: NodeId) {
        let Some(bound) = self.config.epoch_bound else { return };
        let unix_now = EPOCH_UNIX + self.now.as_secs();
        let n = &mut self.nodes[node];
        let replica = &mut n.replica;
        if replica.doc().state().revocations.values().any(|exp| *exp <= unix_now) {
            let drop = Change::DropExpiredRevocations { now: unix_now };
            replica
                .docs
                .current_mut()
                .apply(&[drop], unix_now)
                .expect("a drop applies");
            replica.refresh();
        }
        let size = replica.doc().save().len();
        self.stats.max_document = self.stats.max_document.max(size);
        if size > bound / 2 && size > n.epoch_floor * 2 {
            replica.docs.start_next();
            n.epoch_floor = replica.doc().save().len();
            replica.refresh();
            self.stats.epochs_started += 1;
        }
        self.heads_moved |= std::mem::take(&mut self.nodes[node].replica.heads_moved);
        self.mark_changed(node);
        self.notify();
    }

    fn mark_changed(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        if !n.notify_pending {
            n.notify_pending = true;
            self.changed.push(node);
        }
    }

    /// Tells every registered session of each changed node (once per step, like a watch channel).
    fn notify(&mut self) {
        while let Some(node) = self.changed.pop() {
            self.nodes[node].notify_pending = false;
            let mut conns: Vec<ConnId> = self.nodes[node].registry.values().map(|(c, _)| *c).collect();
            conns.sort_unstable();
            for conn in conns {
                self.feed(node, conn, Event::LocalChange);
            }
        }
    }

    fn schedule(&mut self, after: Duration, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            action,
        }));
    }
}

/// The reason's kind, without the peer-specific detail.
fn close_kind(reason: &session::CloseReason) -> String {
    let text = format!("{reason:?}");
    text.split(['(', ' ']).next().unwrap_or_default().to_owned()
}
