//! Cluster scenarios as data: a list of [`Step`]s run against a seeded [`World`].

use std::time::Duration;

use mesh::did::DidKey;
use mesh::state::{Change, ClientRecord};

use super::rng::{Rng, identities};
use super::world::{Config, NodeId, Stats, World};

/// Who a new node dials.
#[derive(Debug, Clone, Copy)]
pub enum Topology {
    /// Every node dials every other node (as `peer_addresses` makes the real driver do).
    Full,
    /// A new node dials `k` random earlier nodes; nodes accept whoever dials them.
    Random {
        /// Peers dialed per node.
        k: usize,
    },
}

/// Something a step looks for in a node's state.
#[derive(Debug, Clone, Copy)]
pub enum Item {
    /// A registered client, by `client_id`.
    Client(&'static str),
    /// A revocation, by `jti`.
    Revocation(&'static str),
}

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// Adds a node that every admitted node trusts.
    AddNode,
    /// Adds a node nobody admits (it trusts the others, they do not trust it).
    AddOutsider,
    /// Cuts the link between two nodes.
    CutLink(NodeId, NodeId),
    /// Heals the link between two nodes.
    Heal(NodeId, NodeId),
    /// Cuts every link of a node.
    Isolate(NodeId),
    /// Cuts every link between these nodes and the others.
    Partition(&'static [NodeId]),
    /// Heals every cut link.
    HealAll,
    /// Sets the one-way latency of the link between two nodes.
    Latency(NodeId, NodeId, Duration),
    /// Crashes a node (it keeps only its saved document).
    Crash(NodeId),
    /// Restarts a crashed node from its saved document.
    Restart(NodeId),
    /// A node registers a client.
    AddClient(NodeId, &'static str),
    /// A node revokes a token.
    Revoke(NodeId, &'static str),
    /// A node rotates its identity key (publishing its inception event first if it has none yet).
    Rotate(NodeId),
    /// Lets virtual time pass.
    Wait(Duration),
    /// Every live admitted node has the same state and the same heads.
    AssertConverged,
    /// These nodes have the item.
    AssertHas(&'static [NodeId], Item),
    /// These nodes do not have the item.
    AssertLacks(&'static [NodeId], Item),
    /// The node never had a session with anyone.
    AssertNeverConnected(NodeId),
    /// A node revokes `total` tokens, `batch` per change every `every`, each expiring `ttl` seconds
    /// after it is made; the scenario remembers them for [`Step::AssertUnexpiredKept`].
    Churn {
        /// The writing node.
        node: NodeId,
        /// Revocations in all.
        total: u64,
        /// Revocations per change.
        batch: u64,
        /// Virtual time between changes.
        every: Duration,
        /// Seconds from a revocation to its token's expiry.
        ttl: u64,
    },
    /// Every node's saved document stayed under this many bytes at every maintenance run.
    AssertDocumentsUnder(usize),
    /// Every churned revocation that has not expired yet is on these nodes.
    AssertUnexpiredKept(&'static [NodeId]),
    /// These nodes are in epoch `n` or later.
    AssertEpochAtLeast(&'static [NodeId], u64),
}

/// `n` seconds, for [`Step::Wait`].
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs `steps` on a world seeded with `seed`; panics, naming the step, when an assertion fails.
pub fn run(seed: u64, topology: Topology, steps: &[Step]) -> Stats {
    run_with(seed, topology, Config::default(), steps)
}

/// [`run`] with the world configured by `config`.
pub fn run_with(seed: u64, topology: Topology, config: Config, steps: &[Step]) -> Stats {
    let adds: Vec<bool> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AddNode => Some(true),
            Step::AddOutsider => Some(false),
            _ => None,
        })
        .collect();
    let identities = identities(seed, adds.len());
    let trusted: Vec<DidKey> = identities
        .iter()
        .zip(&adds)
        .filter(|(_, admitted)| **admitted)
        .map(|(identity, _)| identity.did())
        .collect();
    let mut world = World::new(&identities, trusted, seed, config);
    let mut rng = Rng::new(seed ^ 0x7070);
    let mut churned: Vec<(String, u64)> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let at = world.now();
        let fail = |what: String| -> ! { panic!("step {index} ({step:?}) at {at:?}: {what}") };
        match step {
            Step::AddNode | Step::AddOutsider => {
                let id = world.len();
                let peers = match topology {
                    Topology::Full => (0..id).collect(),
                    Topology::Random { k } => pick(&mut rng, id, k),
                };
                world.add_node(matches!(step, Step::AddNode), peers);
                if let Topology::Full = topology {
                    for other in 0..id {
                        world.add_peer(other, id);
                    }
                }
            }
            Step::CutLink(a, b) => world.cut(*a, *b),
            Step::Heal(a, b) => world.heal(*a, *b),
            Step::Isolate(node) => {
                for other in 0..world.len() {
                    world.cut(*node, other);
                }
            }
            Step::Partition(side) => {
                for a in side.iter() {
                    for b in (0..world.len()).filter(|b| !side.contains(b)) {
                        world.cut(*a, b);
                    }
                }
            }
            Step::HealAll => world.heal_all(),
            Step::Latency(a, b, latency) => world.set_latency(*a, *b, *latency),
            Step::Crash(node) => world.crash(*node),
            Step::Restart(node) => world.restart(*node),
            Step::AddClient(node, client_id) => world.change(*node, Change::PutClient(client(client_id))),
            Step::Revoke(node, jti) => world.change(
                *node,
                Change::Revoke {
                    jti: (*jti).to_owned(),
                    exp: 4_000_000_000,
                },
            ),
            Step::Rotate(node) => {
                let identity = world.identity(*node);
                let inception = (identity.seq() == 0).then(|| Change::PutKeyEvent(identity.event()));
                let rotation = Change::PutKeyEvent(identity.rotate_with_seed(rng.bytes32()));
                world.changes(*node, &inception.into_iter().chain([rotation]).collect::<Vec<_>>());
            }
            Step::Wait(duration) => world.run_for(*duration),
            Step::AssertConverged => {
                let live: Vec<NodeId> = (0..world.len())
                    .filter(|n| world.is_alive(*n) && world.is_admitted(*n))
                    .collect();
                let Some((&first, rest)) = live.split_first() else {
                    fail("no live admitted node".into())
                };
                let state = world.state(first);
                for &node in rest {
                    if world.heads(node) != world.heads(first) {
                        fail(format!(
                            "heads of node {node} {:?} differ from node {first}'s {:?}",
                            world.heads(node),
                            world.heads(first)
                        ));
                    }
                    if world.state(node) != state {
                        fail(format!("the state of node {node} differs from node {first}'s"));
                    }
                }
            }
            Step::AssertHas(nodes, item) | Step::AssertLacks(nodes, item) => {
                let expected = matches!(step, Step::AssertHas(..));
                for &node in nodes.iter() {
                    let state = world.state(node);
                    let has = match item {
                        Item::Client(id) => state.clients.contains_key(*id),
                        Item::Revocation(jti) => state.revocations.contains_key(*jti),
                    };
                    if has != expected {
                        fail(format!("node {node} {} {item:?}", if has { "has" } else { "lacks" }));
                    }
                }
            }
            Step::Churn {
                node,
                total,
                batch,
                every,
                ttl,
            } => {
                let mut made = 0;
                while made < *total {
                    let exp = world.unix_now() + ttl;
                    let count = (*batch).min(total - made);
                    let first = churned.len();
                    churned.extend((0..count).map(|k| (format!("churn-{:07}", first as u64 + k), exp)));
                    let changes: Vec<Change> = churned[first..]
                        .iter()
                        .map(|(jti, exp)| Change::Revoke {
                            jti: jti.clone(),
                            exp: *exp,
                        })
                        .collect();
                    made += count;
                    world.changes(*node, &changes);
                    world.run_for(*every);
                }
            }
            Step::AssertDocumentsUnder(bound) => {
                let max = world.stats().max_document;
                if max >= *bound {
                    fail(format!("a document reached {max} bytes"));
                }
            }
            Step::AssertUnexpiredKept(nodes) => {
                let now = world.unix_now();
                for &node in nodes.iter() {
                    let state = world.state(node);
                    let missing = churned
                        .iter()
                        .filter(|(jti, exp)| *exp > now && !state.revocations.contains_key(jti))
                        .count();
                    if missing > 0 {
                        fail(format!("node {node} lacks {missing} unexpired revocations"));
                    }
                }
            }
            Step::AssertEpochAtLeast(nodes, n) => {
                for &node in nodes.iter() {
                    if world.epoch_of(node) < *n {
                        fail(format!(
                            "node {node} is in epoch {} (largest document so far {} bytes)",
                            world.epoch_of(node),
                            world.stats().max_document
                        ));
                    }
                }
            }
            Step::AssertNeverConnected(node) => {
                if world.sessions_ever(*node) > 0 {
                    fail(format!("node {node} had {} sessions", world.sessions_ever(*node)));
                }
            }
        }
    }
    world.stats().clone()
}

/// `k` distinct nodes among `0..n` (all of them if `n <= k`).
pub fn pick(rng: &mut Rng, n: usize, k: usize) -> Vec<NodeId> {
    if n <= k {
        return (0..n).collect();
    }
    let mut picked = Vec::with_capacity(k);
    while picked.len() < k {
        let candidate = rng.below(n);
        if !picked.contains(&candidate) {
            picked.push(candidate);
        }
    }
    picked
}

/// A minimal client record.
pub fn client(client_id: &str) -> ClientRecord {
    ClientRecord {
        client_id: client_id.to_owned(),
        name: client_id.to_owned(),
        secrets: Vec::new(),
        grant_types: vec!["client_credentials".to_owned()],
        scopes: Vec::new(),
        audiences: Vec::new(),
        token_alg: "EdDSA".to_owned(),
        jwks: None,
        created_at: 1,
        degradation: None,
        dynamic_registration: None,
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        token_endpoint_auth_method: None,
        id_token_signed_response_alg: None,
        federation: None,
    }
}
