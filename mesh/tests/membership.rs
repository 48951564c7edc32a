//! SWIM membership (`mesh::membership`) over an in-memory datagram exchange in virtual time:
//! joining, failure detection (suspect, then down), recovery, and the datagram layer's refusals
//! (non-members, replays, tampering).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::Error;
use mesh::did::DidKey;
use mesh::identity::NodeIdentity;
use mesh::membership::{Liveness, Membership, MembershipConfig, Output, TimerEvent};

/// Unix time at virtual zero.
const BASE: u64 = 1_700_000_000;
const LATENCY: Duration = Duration::from_millis(1);

enum Event {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        timer: TimerEvent,
    },
    Bootstrap {
        node: usize,
    },
}

struct Node {
    did: DidKey,
    addr: SocketAddr,
    membership: Membership,
    /// Whom this node admits.
    admits: HashSet<DidKey>,
    /// Frozen (like SIGSTOP): datagrams to it are lost, its timers wait for the thaw.
    frozen: bool,
    deferred: Vec<Event>,
}

/// N nodes, one event queue ordered by (time, insertion), 1 ms links. A run is a pure function of
/// the seeds.
struct Net {
    nodes: Vec<Node>,
    queue: BTreeMap<(Duration, u64), Event>,
    now: Duration,
    inserted: u64,
    config: MembershipConfig,
    /// Every datagram delivered so far: (receiver, sender address, bytes).
    delivered: Vec<(usize, SocketAddr, Vec<u8>)>,
    /// When set, datagrams are recorded but not delivered.
    hold: bool,
}

impl Net {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            now: Duration::ZERO,
            inserted: 0,
            config: MembershipConfig::default(),
            delivered: Vec::new(),
            hold: false,
        }
    }

    /// Adds `n` nodes that admit each other.
    fn with_members(n: usize) -> Self {
        let mut net = Self::new();
        for _ in 0..n {
            net.add_node();
        }
        let all: HashSet<DidKey> = net.nodes.iter().map(|n| n.did).collect();
        for node in &mut net.nodes {
            node.admits = all.clone();
        }
        net
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let identity = Arc::new(NodeIdentity::from_seed([i as u8 + 1; 32]));
        let addr: SocketAddr = format!("10.0.0.{}:7946", i + 1).parse().unwrap();
        let did = identity.did();
        let membership = Membership::new(identity, addr, &self.config, i as u64, BASE);
        self.nodes.push(Node {
            did,
            addr,
            membership,
            admits: HashSet::from([did]),
            frozen: false,
            deferred: Vec::new(),
        });
        self.push(Duration::from_millis(i as u64 * 37), Event::Bootstrap { node: i });
        i
    }

    fn push(&mut self, after: Duration, event: Event) {
        self.inserted += 1;
        self.queue.insert((self.now + after, self.inserted), event);
    }

    fn unix(&self) -> u64 {
        BASE + self.now.as_secs()
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            self.step(event);
        }
        self.now = end;
    }

    /// Runs in 100 ms steps until `done` holds; panics after `limit`.
    fn run_until(&mut self, limit: Duration, what: &str, done: impl Fn(&Net) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(self.now - start < limit, "not within {limit:?}: {what}");
            self.run_for(Duration::from_millis(100));
        }
        self.now - start
    }

    fn step(&mut self, event: Event) {
        let i = match &event {
            Event::Deliver { to, .. } => *to,
            Event::Timer { node, .. } | Event::Bootstrap { node } => *node,
        };
        if self.nodes[i].frozen {
            if !matches!(event, Event::Deliver { .. }) {
                self.nodes[i].deferred.push(event);
            }
            return;
        }
        let unix = self.unix();
        match event {
            Event::Deliver { to, from, bytes } => {
                self.delivered.push((to, from, bytes.clone()));
                let node = &mut self.nodes[to];
                let admits = &node.admits;
                let _ = node
                    .membership
                    .handle_datagram(from, &bytes, unix, &|d: &DidKey| admits.contains(d));
            }
            Event::Timer { node, timer } => self.nodes[node].membership.handle_timer(timer, unix),
            Event::Bootstrap { node } => {
                // The first node's address is everyone's bootstrap address (no DID known); the
                // members' announced addresses come with their DID, like the driver's.
                let mut targets = vec![(None, self.nodes[0].addr)];
                for other in &self.nodes {
                    if other.did != self.nodes[node].did && self.nodes[node].admits.contains(&other.did) {
                        targets.push((Some(other.did), other.addr));
                    }
                }
                self.nodes[node].membership.bootstrap(targets, unix);
                self.push(self.config.announce_interval, Event::Bootstrap { node });
            }
        }
        self.carry_out(i);
    }

    fn carry_out(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        while let Some(output) = self.nodes[i].membership.poll_output() {
            match output {
                Output::Transmit { to, bytes } => {
                    let Some(to) = self.nodes.iter().position(|n| n.addr == to) else {
                        continue;
                    };
                    if self.hold {
                        self.delivered.push((to, from, bytes));
                    } else {
                        self.push(LATENCY, Event::Deliver { to, from, bytes });
                    }
                }
                Output::Schedule { after, timer } => self.push(after, Event::Timer { node: i, timer }),
                _ => unreachable!("no other outputs yet"),
            }
        }
    }

    fn freeze(&mut self, i: usize) {
        self.nodes[i].frozen = true;
    }

    fn thaw(&mut self, i: usize) {
        self.nodes[i].frozen = false;
        for event in std::mem::take(&mut self.nodes[i].deferred) {
            self.push(Duration::ZERO, event);
        }
    }

    /// What node `i` thinks of node `j`.
    fn sees(&self, i: usize, j: usize) -> Liveness {
        self.nodes[i].membership.liveness(&self.nodes[j].did)
    }

    /// Whether every node in `who` sees every other one alive.
    fn all_alive(&self, who: &[usize]) -> bool {
        who.iter()
            .all(|&i| who.iter().all(|&j| i == j || self.sees(i, j) == Liveness::Alive))
    }
}

#[test]
fn members_join_through_one_bootstrap_address() {
    let mut net = Net::with_members(5);
    let took = net.run_until(Duration::from_secs(10), "every node sees every other alive", |net| {
        net.all_alive(&[0, 1, 2, 3, 4])
    });
    assert!(took <= Duration::from_secs(3), "joined in {took:?}");
    for node in &net.nodes {
        assert_eq!(node.membership.refused(), 0, "{:?}", node.membership);
        assert_eq!(node.membership.members().len(), 4);
    }
}

#[test]
fn a_silent_node_is_suspected_then_declared_down_and_comes_back_alive() {
    let mut net = Net::with_members(4);
    net.run_until(Duration::from_secs(10), "the mesh forms", |net| {
        net.all_alive(&[0, 1, 2, 3])
    });
    let generation = net.nodes[3].membership.generation();

    net.freeze(3);
    let suspected = net.run_until(Duration::from_secs(10), "a member suspects node 3", |net| {
        (0..3).any(|i| net.sees(i, 3) == Liveness::Suspect)
    });
    assert!(suspected <= Duration::from_secs(4), "suspected after {suspected:?}");
    let down = net.run_until(Duration::from_secs(20), "every member declares node 3 down", |net| {
        (0..3).all(|i| net.sees(i, 3) == Liveness::Down)
    });
    assert!(down <= Duration::from_secs(10), "down after {down:?} more");
    assert!(net.all_alive(&[0, 1, 2]), "the others stay alive to each other");

    net.thaw(3);
    let back = net.run_until(Duration::from_secs(20), "node 3 is alive again everywhere", |net| {
        net.all_alive(&[0, 1, 2, 3])
    });
    assert!(back <= Duration::from_secs(5), "back after {back:?}");
    assert!(
        net.nodes[3].membership.generation() > generation,
        "node 3 rejoined under a new generation"
    );
}

#[test]
fn a_non_member_never_joins_and_gossip_about_it_is_dropped() {
    let mut net = Net::with_members(3);
    // The outsider admits everyone and announces to everyone; nobody admits it, except node 0
    // for the second half of the test (a member whose view differs from the others').
    let outsider = net.add_node();
    let everyone: HashSet<DidKey> = net.nodes.iter().map(|n| n.did).collect();
    net.nodes[outsider].admits = everyone;
    let outsider_did = net.nodes[outsider].did;
    let members = [0, 1, 2];
    let never_listed = |net: &Net, who: &[usize]| {
        who.iter()
            .all(|&i| !net.nodes[i].membership.members().contains_key(&outsider_did))
    };
    for _ in 0..100 {
        net.run_for(Duration::from_millis(100));
        assert!(never_listed(&net, &members), "a member lists the outsider");
    }
    assert!(net.all_alive(&members));
    for &i in &members {
        assert!(net.nodes[i].membership.refused() > 0, "node {i} refused nothing");
    }
    assert!(net.nodes[outsider].membership.members().is_empty());

    // Node 0 now admits the outsider; nodes 1 and 2 still do not, and drop node 0's gossip
    // about it.
    net.nodes[0].admits.insert(outsider_did);
    net.run_until(Duration::from_secs(10), "node 0 lists the outsider", |net| {
        net.sees(0, outsider) == Liveness::Alive
    });
    for _ in 0..100 {
        net.run_for(Duration::from_millis(100));
        assert!(never_listed(&net, &[1, 2]), "gossip made a member list the outsider");
    }
    assert!(net.all_alive(&members));
}

#[test]
fn replayed_and_tampered_datagrams_are_refused() {
    let mut net = Net::with_members(3);
    net.run_until(Duration::from_secs(10), "the mesh forms", |net| {
        net.all_alive(&[0, 1, 2])
    });

    // Capture the next datagrams instead of delivering them.
    net.hold = true;
    net.delivered.clear();
    net.run_for(Duration::from_secs(2));
    net.hold = false;
    let (to, from, bytes) = net.delivered.iter().find(|(to, _, _)| *to == 1).cloned().unwrap();
    let unix = net.unix();
    let node = &mut net.nodes[to];
    let admits = node.admits.clone();
    let is_member = |d: &DidKey| admits.contains(d);
    let refused = node.membership.refused();

    // A flipped payload byte breaks the signature; it neither reaches foca nor moves the window.
    let mut tampered = bytes.clone();
    tampered[60] ^= 1;
    let err = node
        .membership
        .handle_datagram(from, &tampered, unix, &is_member)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    // A flipped signature byte too.
    let mut tampered = bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let err = node
        .membership
        .handle_datagram(from, &tampered, unix, &is_member)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");

    // The genuine datagram is accepted once, and refused when replayed.
    let sender = node.membership.handle_datagram(from, &bytes, unix, &is_member).unwrap();
    assert_eq!(sender, net.nodes[0..3].iter().find(|n| n.addr == from).unwrap().did);
    let node = &mut net.nodes[to];
    let err = node
        .membership
        .handle_datagram(from, &bytes, unix, &is_member)
        .unwrap_err();
    assert!(matches!(err, Error::ReplayedDatagram { .. }), "{err}");
    // Out of the skew bound, even a fresh datagram is refused.
    let (_, from, late) = net.delivered.iter().rfind(|(t, _, _)| *t == to).cloned().unwrap();
    let node = &mut net.nodes[to];
    let err = node
        .membership
        .handle_datagram(from, &late, unix + 31, &is_member)
        .unwrap_err();
    assert!(matches!(err, Error::DatagramSkew { .. }), "{err}");
    assert_eq!(node.membership.refused(), refused + 4);

    // Nothing of this disturbed the mesh.
    net.run_until(Duration::from_secs(10), "the mesh is whole", |net| {
        net.all_alive(&[0, 1, 2])
    });
}

#[test]
fn the_same_seeds_give_the_same_run() {
    let run = || {
        let mut net = Net::with_members(4);
        net.run_for(Duration::from_secs(3));
        net.freeze(2);
        net.run_for(Duration::from_secs(6));
        let views: Vec<BTreeMap<DidKey, Liveness>> = net
            .nodes
            .iter()
            .map(|n| n.membership.members().into_iter().collect())
            .collect();
        let traffic: Vec<Vec<u8>> = net.delivered.iter().map(|(_, _, b)| b.clone()).collect();
        (views, traffic)
    };
    let (first, second) = (run(), run());
    assert_eq!(first.0, second.0, "the same views");
    assert!(first.1 == second.1, "the same datagrams");
}
