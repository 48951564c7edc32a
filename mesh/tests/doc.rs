//! The replicated document: genesis, convergence, persistence, and the changes reported for what a
//! peer sent.

use std::sync::LazyLock;
use std::time::Instant;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};
use mesh::Error;
use mesh::doc::{Doc, PeerSync};
use mesh::identity::NodeIdentity;
use mesh::login::{LoginChange, SpentRecord, UserRecord};
use mesh::state::{Admission, AuditRecord, Change, ClientRecord, KeyRecord, NodeInfo, Removal, State};
use proptest::prelude::*;

/// The genesis change's hash. If this changes, nodes built before and after can no longer merge:
/// it must stay fixed for the whole schema major version.
const GENESIS_HASH: &str = "f4d6ff2730222b3fd23c277b03a1d69b6e4e2daf62e91ca7f1128008fe1e0479";

fn client(id: &str, name: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.to_owned(),
        name: name.to_owned(),
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

fn identity(n: u8) -> NodeIdentity {
    NodeIdentity::from_seed([n; 32])
}

/// A node: its document and the in-memory view it keeps up to date from [`Change`]s only.
struct Node {
    doc: Doc,
    view: State,
}

impl Node {
    fn new(actor: u8) -> Self {
        let doc = Doc::new([actor; 16]);
        let view = doc.state();
        Self { doc, view }
    }

    fn apply(&mut self, changes: &[Change], now: u64) {
        self.doc.apply(changes, now).unwrap();
        for change in changes {
            self.view.apply(change);
        }
        assert_eq!(self.view, self.doc.state());
    }
}

/// A mesh of nodes with one sync state per ordered pair.
struct Mesh {
    nodes: Vec<Node>,
    peers: Vec<Vec<PeerSync>>,
}

impl Mesh {
    fn new(actors: &[u8]) -> Self {
        Self {
            nodes: actors.iter().map(|a| Node::new(*a)).collect(),
            peers: actors
                .iter()
                .map(|_| actors.iter().map(|_| PeerSync::default()).collect())
                .collect(),
        }
    }

    /// Sends one message `from` → `to` if `from` has one; checks `to`'s view against its state.
    fn send(&mut self, from: usize, to: usize) -> bool {
        let Some(message) = self.nodes[from].doc.generate_sync_message(&mut self.peers[from][to]) else {
            return false;
        };
        let node = &mut self.nodes[to];
        let changes = node
            .doc
            .receive_sync_message(&mut self.peers[to][from], &message)
            .unwrap();
        for change in &changes {
            node.view.apply(change);
        }
        assert_eq!(node.view, node.doc.state(), "view after {changes:?}");
        true
    }

    /// Syncs every pair until no node has anything left to send.
    fn settle(&mut self) {
        let n = self.nodes.len();
        for _round in 0..100 {
            let mut progress = false;
            for from in 0..n {
                for to in 0..n {
                    if from != to {
                        progress |= self.send(from, to);
                    }
                }
            }
            if !progress {
                return;
            }
        }
        panic!("sync did not settle");
    }

    fn assert_converged(&self) {
        let state = self.nodes[0].doc.state();
        let heads = self.nodes[0].doc.heads();
        for node in &self.nodes {
            assert_eq!(node.doc.state(), state);
            assert_eq!(node.view, state);
            assert_eq!(node.doc.heads(), heads);
        }
    }
}

#[test]
fn genesis_is_deterministic_and_roots_merge() {
    let a = Doc::new([1; 16]);
    let b = Doc::new([2; 16]);
    assert_eq!(a.heads(), b.heads());
    assert_eq!(a.heads(), [GENESIS_HASH]);
    assert_eq!(a.state(), State::default());

    let mut mesh = Mesh::new(&[1, 2]);
    mesh.nodes[0].apply(&[Change::PutClient(client("a", "from a"))], 10);
    mesh.nodes[1].apply(&[Change::PutClient(client("b", "from b"))], 11);
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[0].doc.state();
    assert_eq!(state.clients.keys().collect::<Vec<_>>(), ["a", "b"]);

    // One `clients` object at the root, not two conflicting ones.
    let raw = Automerge::load(&mesh.nodes[1].doc.save()).unwrap();
    assert_eq!(raw.get_all(ROOT, "clients").unwrap().len(), 1);
    assert_eq!(raw.get_all(ROOT, "schema").unwrap().len(), 1);
}

#[test]
fn concurrent_edits_converge_on_a_deterministic_winner() {
    let mut mesh = Mesh::new(&[3, 1, 2]);
    for (i, node) in mesh.nodes.iter_mut().enumerate() {
        node.apply(&[Change::PutClient(client("c", &format!("from node {i}")))], 10);
    }
    // Each node also makes a change the others lack, and node 1 removes a client node 2 edits.
    mesh.nodes[1].apply(&[Change::PutClient(client("gone", "v1"))], 11);
    mesh.send(1, 2);
    mesh.send(2, 1);
    mesh.nodes[1].apply(&[Change::RemoveClient("gone".into())], 12);
    mesh.nodes[2].apply(&[Change::PutClient(client("gone", "v2"))], 12);
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[0].doc.state();
    // Concurrent puts: the one by the greatest actor wins everywhere (actor 3 is node 0).
    assert_eq!(state.clients["c"].name, "from node 0");
    // A concurrent put survives a delete that did not see it.
    assert_eq!(state.clients["gone"].name, "v2");
}

#[test]
fn doc_and_peer_sync_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Doc>();
    assert_send_sync::<PeerSync>();
}

#[test]
fn save_and_load_round_trip() {
    let id = identity(1);
    let mut doc = Doc::new([1; 16]);
    let changes = [
        Change::PutClient(client("c", "client")),
        Change::PutKey(KeyRecord::attest(
            &id,
            "k".into(),
            "EdDSA".into(),
            serde_json::json!({"x": "a"}),
            5,
        )),
        Change::Revoke {
            jti: "j".into(),
            exp: 99,
        },
        Change::Admit(Admission::sign(&id, identity(2).did(), 6)),
        Change::PutNode(NodeInfo::sign(&id, "http://n".into(), "127.0.0.1:1".into(), 7)),
        Change::RemoveNode(Removal::sign(&id, identity(3).did(), 8)),
        Change::PutKeyEvent(id.event()),
    ];
    doc.apply(&changes, 10).unwrap();
    let bytes = doc.save();
    let loaded = Doc::load(&bytes, [2; 16]).unwrap();
    assert_eq!(loaded.state(), doc.state());
    assert_eq!(loaded.heads(), doc.heads());
    let mut expected = State::default();
    for change in &changes {
        expected.apply(change);
    }
    assert_eq!(loaded.state(), expected);
}

#[test]
fn key_events_live_beside_node_information_and_resolve_after_a_merge() {
    let id = identity(1);
    let mut a = Doc::new([1; 16]);
    let mut b = Doc::new([2; 16]);
    let info = NodeInfo::sign(&id, "http://n".into(), "127.0.0.1:1".into(), 7);
    a.apply(&[Change::PutKeyEvent(id.event()), Change::PutNode(info.clone())], 10)
        .unwrap();
    let rotation = id.rotate_with_seed([5; 32]);
    a.apply(&[Change::PutKeyEvent(rotation.clone())], 11).unwrap();
    let (mut to_b, mut to_a) = (PeerSync::default(), PeerSync::default());
    let mut received = Vec::new();
    for _ in 0..10 {
        if let Some(message) = a.generate_sync_message(&mut to_b) {
            received.extend(b.receive_sync_message(&mut to_a, &message).unwrap());
        }
        if let Some(message) = b.generate_sync_message(&mut to_a) {
            a.receive_sync_message(&mut to_b, &message).unwrap();
        }
    }
    let state = b.state();
    assert_eq!(state.nodes.len(), 1, "key events are not node information");
    assert_eq!(state.key_events.len(), 2);
    assert_eq!(state.current_key(&id.did()), rotation.key);
    info.verify(&state).unwrap();
    // Key events come first among the received changes, before records their keys signed.
    assert!(matches!(
        &received[..],
        [Change::PutKeyEvent(_), Change::PutKeyEvent(_), Change::PutNode(_)]
    ));
}

fn audit(n: u8, at: u64, nonce: &str) -> AuditRecord {
    AuditRecord::sign(
        &identity(n),
        at,
        "operator uid 0".into(),
        "client_remove".into(),
        serde_json::json!({"client_id": nonce}),
        nonce,
    )
}

#[test]
fn audit_records_replicate_verify_and_their_removal_replicates() {
    let mut mesh = Mesh::new(&[1, 2]);
    let id = identity(1);
    let first = audit(1, 5, "a");
    let second = audit(1, 6, "b");
    mesh.nodes[0].apply(
        &[
            Change::PutKeyEvent(id.event()),
            Change::PutAudit(first.clone()),
            Change::PutAudit(second.clone()),
        ],
        10,
    );
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[1].doc.state();
    assert_eq!(state.audit.len(), 2);
    assert!(state.nodes.is_empty(), "audit records are not node information");
    state.audit[&first.id].verify(&state).unwrap();
    let mut forged = second.clone();
    forged.action = "keys_rotate".into();
    assert!(forged.verify(&state).is_err(), "a changed record must not verify");
    // Retention on one node drops the record everywhere.
    mesh.nodes[1].apply(&[Change::RemoveAudit(first.id.clone())], 11);
    mesh.settle();
    mesh.assert_converged();
    let left: Vec<&String> = mesh.nodes[0].view.audit.keys().collect();
    assert_eq!(left, vec![&second.id]);
}

/// A saved document whose schema map says `major`.`minor`.
fn with_schema(major: u64, minor: u64) -> Vec<u8> {
    let mut doc = Doc::new([1; 16]);
    doc.apply(&[Change::PutClient(client("c", "client"))], 10).unwrap();
    let mut raw = Automerge::load(&doc.save()).unwrap().with_actor([9; 16].into());
    let (_, schema) = raw.get(ROOT, "schema").unwrap().unwrap();
    let mut tx = raw.transaction();
    tx.put(&schema, "major", major).unwrap();
    tx.put(&schema, "minor", minor).unwrap();
    tx.commit();
    raw.save()
}

#[test]
fn incompatible_major_is_refused() {
    let err = Doc::load(&with_schema(2, 0), [1; 16]).unwrap_err();
    assert!(
        matches!(err, Error::IncompatibleDocument { found: 2, expected: 1 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("major version 2"));
}

#[test]
fn other_minors_of_the_major_are_accepted() {
    // Minor 0 is the oldest (and this build's); a newer minor only adds, so it is read too.
    for minor in [0, 3] {
        let doc = Doc::load(&with_schema(1, minor), [1; 16]).unwrap();
        assert_eq!(doc.state().clients.len(), 1);
    }
}

#[test]
fn foreign_and_garbage_documents_are_refused() {
    // Same layout, but its own roots: not meshgate's genesis.
    let mut foreign = Automerge::new();
    let mut tx = foreign.transaction();
    let schema = tx.put_object(ROOT, "schema", ObjType::Map).unwrap();
    tx.put(&schema, "major", 1_u64).unwrap();
    tx.put(&schema, "minor", 0_u64).unwrap();
    for name in ["clients", "keys", "revocations", "admissions", "nodes", "removals"] {
        tx.put_object(ROOT, name, ObjType::Map).unwrap();
    }
    tx.commit();
    let err = Doc::load(&foreign.save(), [1; 16]).unwrap_err();
    assert!(matches!(err, Error::CorruptDocument { .. }), "{err:?}");
    let err = Doc::load(b"not a document", [1; 16]).unwrap_err();
    assert!(matches!(err, Error::CorruptDocument { .. }), "{err:?}");
    let err = Doc::load(&Automerge::new().save(), [1; 16]).unwrap_err();
    assert!(matches!(err, Error::CorruptDocument { .. }), "{err:?}");
}

#[test]
fn apply_is_one_change_and_skips_no_ops() {
    let mut doc = Doc::new([1; 16]);
    let genesis = doc.heads();
    doc.apply(&[], 1).unwrap();
    doc.apply(&[Change::RemoveClient("absent".into())], 1).unwrap();
    assert_eq!(doc.heads(), genesis);
    let batch = [
        Change::PutClient(client("a", "a")),
        Change::PutClient(client("b", "b")),
        Change::Revoke {
            jti: "j".into(),
            exp: 3,
        },
        Change::DropExpiredRevocations { now: 3 },
    ];
    doc.apply(&batch, 2).unwrap();
    let raw = Automerge::load(&doc.save()).unwrap();
    assert_eq!(raw.get_changes(&[]).len(), 2, "genesis and one change");
    assert_eq!(raw.get_changes(&[]).last().unwrap().timestamp(), 2);
    assert!(doc.state().revocations.is_empty());
    let heads = doc.heads();
    doc.apply(&[Change::PutClient(client("a", "a"))], 3).unwrap();
    assert_eq!(doc.heads(), heads, "an unchanged record writes nothing");
}

#[test]
fn concurrent_revocation_survives_a_peer_dropping_expired_ones() {
    let mut mesh = Mesh::new(&[1, 2]);
    let revoke = |jti: &str, exp| Change::Revoke { jti: jti.into(), exp };
    mesh.nodes[0].apply(&[revoke("old", 5), revoke("live", 50)], 1);
    mesh.settle();
    // Node 0 revokes a short-lived token while node 1, not yet seeing it, drops the expired ones.
    mesh.nodes[0].apply(&[revoke("short", 3)], 2);
    mesh.nodes[1].apply(&[Change::DropExpiredRevocations { now: 10 }], 10);
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[0].doc.state();
    assert_eq!(state.revocations.keys().collect::<Vec<_>>(), ["live", "short"]);

    // The same with many dropped at once (their previous expiries are found by one scan).
    let many: Vec<Change> = (0..200).map(|i| revoke(&format!("t{i:03}"), 100 + i)).collect();
    mesh.nodes[1].apply(&many, 20);
    mesh.settle();
    mesh.nodes[1].apply(&[revoke("short2", 120)], 21);
    mesh.nodes[0].apply(&[Change::DropExpiredRevocations { now: 250 }], 250);
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[1].doc.state();
    assert_eq!(state.revocations.len(), 1 + 49, "short2 and t151..=t199");
    assert_eq!(state.revocations.get("short2"), Some(&120));
    assert!(!state.revocations.contains_key("t150") && state.revocations.contains_key("t151"));
}

#[test]
fn garbage_sync_messages_are_errors() {
    let mut doc = Doc::new([1; 16]);
    let mut peer = PeerSync::default();
    let err = doc.receive_sync_message(&mut peer, b"garbage").unwrap_err();
    assert!(matches!(err, Error::BadSyncMessage { .. }), "{err:?}");
    assert!(doc.receive_sync_message(&mut peer, &[]).is_err());
}

#[derive(Debug, Clone)]
enum Step {
    Apply(usize, Vec<Change>, u64),
    Send(usize, usize),
}

fn change() -> impl Strategy<Value = Change> {
    let ids = || prop::sample::select(vec!["a", "b", "c"]);
    let nodes = || 1_u8..4;
    prop_oneof![
        (ids(), 0_u8..3).prop_map(|(id, v)| Change::PutClient(client(id, &format!("v{v}")))),
        ids().prop_map(|id| Change::RemoveClient(id.into())),
        (ids(), nodes()).prop_map(|(kid, n)| Change::PutKey(KeyRecord::attest(
            &identity(n),
            kid.into(),
            "EdDSA".into(),
            serde_json::json!({"n": n}),
            1
        ))),
        ids().prop_map(|kid| Change::RemoveKey(kid.into())),
        (ids(), 0_u64..10).prop_map(|(jti, exp)| Change::Revoke { jti: jti.into(), exp }),
        (ids(), 0_u64..10).prop_map(|(jti, exp)| Change::Revoke {
            jti: format!("{jti}2"),
            exp
        }),
        (0_u64..10).prop_map(|now| Change::DropExpiredRevocations { now }),
        (nodes(), nodes(), 0_u64..3).prop_map(|(by, did, at)| Change::Admit(Admission::sign(
            &identity(by),
            identity(did).did(),
            at
        ))),
        (nodes(), 0_u64..3).prop_map(|(n, at)| Change::PutNode(NodeInfo::sign(
            &identity(n),
            "http://n".into(),
            "127.0.0.1:1".into(),
            at
        ))),
        (nodes(), nodes(), 0_u64..3).prop_map(|(by, did, at)| Change::RemoveNode(Removal::sign(
            &identity(by),
            identity(did).did(),
            at
        ))),
        // Login records share the `clients` map under prefixes.
        (ids(), 0_u64..3).prop_map(|(name, v)| Change::Login(LoginChange::PutUser(UserRecord {
            username: name.into(),
            sub: format!("sub-{name}"),
            password: format!("hash-{v}"),
            name: None,
            email: None,
            created_at: 1,
            updated_at: v,
        }))),
        ids().prop_map(|name| Change::Login(LoginChange::RemoveUser(name.into()))),
        (ids(), ids()).prop_map(|(parent, child)| Change::Login(LoginChange::PutSpent(SpentRecord {
            parent: parent.into(),
            child: child.into(),
            family: "f".into(),
            at: 1,
            expires_at: 9,
        }))),
        (ids(), ids())
            .prop_map(|(parent, child)| Change::Login(LoginChange::Remove(format!("spent|{parent}|{child}")))),
        // Inception, or one of two rotations competing for seq 1 (a fork).
        (nodes(), 0_u8..3).prop_map(|(n, event)| {
            let id = identity(n);
            Change::PutKeyEvent(match event {
                0 => id.event(),
                e => id.rotate_with_seed([e + 10; 32]),
            })
        }),
        (nodes(), 0_u64..3, ids()).prop_map(|(n, at, nonce)| Change::PutAudit(audit(n, at, nonce))),
        (nodes(), 0_u64..3, ids()).prop_map(|(n, at, nonce)| Change::RemoveAudit(audit(n, at, nonce).id)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0_usize..3, prop::collection::vec(change(), 0..4), 0_u64..20)
            .prop_map(|(node, changes, now)| Step::Apply(node, changes, now)),
        (0_usize..3, 1_usize..3).prop_map(|(from, offset)| Step::Send(from, (from + offset) % 3)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The changes reported for each received message take the receiver's view exactly to its new
    /// state, and all nodes converge.
    #[test]
    fn received_changes_keep_views_exact(steps in prop::collection::vec(step(), 0..40)) {
        let mut mesh = Mesh::new(&[1, 2, 3]);
        for step in steps {
            match step {
                Step::Apply(node, changes, now) => mesh.nodes[node].apply(&changes, now),
                Step::Send(from, to) => {
                    mesh.send(from, to);
                }
            }
        }
        mesh.settle();
        mesh.assert_converged();
    }

    /// Random bytes never panic: an error, or (if they happen to decode) a consistent result.
    #[test]
    fn random_sync_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut doc = Doc::new([1; 16]);
        let before = doc.state();
        let mut peer = PeerSync::default();
        if let Ok(changes) = doc.receive_sync_message(&mut peer, &bytes) {
            let mut view = before;
            for change in &changes {
                view.apply(change);
            }
            prop_assert_eq!(view, doc.state());
        }
        prop_assert!(Doc::load(&bytes, [1; 16]).is_err());
    }

    /// Corrupted real messages (a byte changed, or cut short) never panic either.
    #[test]
    fn corrupted_sync_messages_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut message = CHANGES_MESSAGE.clone();
        let i = at.index(message.len());
        if cut {
            message.truncate(i);
        } else {
            message[i] = byte;
        }
        let mut doc = Doc::new([1; 16]);
        let before = doc.state();
        if let Ok(changes) = doc.receive_sync_message(&mut PeerSync::default(), &message) {
            let mut view = before;
            for change in &changes {
                view.apply(change);
            }
            prop_assert_eq!(view, doc.state());
        }
    }
}

/// The largest message of a sync between two documents: the one carrying the changes.
static CHANGES_MESSAGE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut sender = Doc::new([2; 16]);
    let changes = [
        Change::PutClient(client("a", "a")),
        Change::Revoke {
            jti: "j".into(),
            exp: 5,
        },
    ];
    sender.apply(&changes, 1).unwrap();
    let mut receiver = Doc::new([1; 16]);
    let (mut to_receiver, mut to_sender) = (PeerSync::default(), PeerSync::default());
    let mut largest = Vec::new();
    loop {
        let mut progress = false;
        if let Some(m) = sender.generate_sync_message(&mut to_receiver) {
            receiver.receive_sync_message(&mut to_sender, &m).unwrap();
            if m.len() > largest.len() {
                largest = m;
            }
            progress = true;
        }
        if let Some(m) = receiver.generate_sync_message(&mut to_sender) {
            sender.receive_sync_message(&mut to_receiver, &m).unwrap();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    // Delivered intact to a fresh document, it carries both changes.
    let mut fresh = Doc::new([3; 16]);
    assert_eq!(
        fresh.receive_sync_message(&mut PeerSync::default(), &largest).unwrap(),
        changes
    );
    largest
});

/// SplitMix64: a fixed, well-mixed sequence for the measurement's token ids.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Not a timed assertion: prints how long 100,000 revocations in batches of 1,000 take and how big
/// the saved document is. Run with `cargo test -p mesh --test doc -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, run by hand (see the doc comment)"]
fn measure_revocations() {
    let mut doc = Doc::new([1; 16]);
    let start = Instant::now();
    for batch in 0..100_u64 {
        let changes: Vec<Change> = (0..1000_u64)
            .map(|i| {
                // Random-looking 128-bit token ids (as real `jti`s are) and expiries within a day.
                let n = batch * 1000 + i;
                Change::Revoke {
                    jti: format!("{:016x}{:016x}", mix(n), mix(n ^ (1 << 40))),
                    exp: 1_700_000_000 + mix(n) % 86_400,
                }
            })
            .collect();
        doc.apply(&changes, 1_700_000_000 + batch).unwrap();
    }
    let applied = start.elapsed();
    let start = Instant::now();
    let bytes = doc.save();
    let saved = start.elapsed();
    let start = Instant::now();
    let loaded = Doc::load(&bytes, [2; 16]).unwrap();
    let load = start.elapsed();
    let start = Instant::now();
    let state = loaded.state();
    let materialized = start.elapsed();
    assert_eq!(state.revocations.len(), 100_000);

    // A fresh peer syncing everything, and the changes it is told about.
    let mut fresh = Node::new(3);
    let mut to_fresh = PeerSync::default();
    let mut to_doc = PeerSync::default();
    let start = Instant::now();
    let mut reported = 0;
    loop {
        let mut progress = false;
        if let Some(m) = doc.generate_sync_message(&mut to_fresh) {
            let changes = fresh.doc.receive_sync_message(&mut to_doc, &m).unwrap();
            reported += changes.len();
            for change in &changes {
                fresh.view.apply(change);
            }
            progress = true;
        }
        if let Some(m) = fresh.doc.generate_sync_message(&mut to_doc) {
            doc.receive_sync_message(&mut to_fresh, &m).unwrap();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    let synced = start.elapsed();
    assert_eq!(fresh.view.revocations.len(), 100_000);

    // One more batch received incrementally by the synced peer.
    let changes: Vec<Change> = (0..1000_u64)
        .map(|i| Change::Revoke {
            jti: format!("new{i}"),
            exp: 1,
        })
        .collect();
    doc.apply(&changes, 1_800_000_000).unwrap();
    let start = Instant::now();
    let mut incremental = 0;
    while let Some(m) = doc.generate_sync_message(&mut to_fresh) {
        let changes = fresh.doc.receive_sync_message(&mut to_doc, &m).unwrap();
        incremental += changes.len();
        for change in &changes {
            fresh.view.apply(change);
        }
        if let Some(m) = fresh.doc.generate_sync_message(&mut to_doc) {
            doc.receive_sync_message(&mut to_fresh, &m).unwrap();
        }
    }
    let one_batch = start.elapsed();
    // A drop of about half of them, received by the peer.
    let expired = doc
        .state()
        .revocations
        .values()
        .filter(|exp| **exp <= 1_700_043_200)
        .count();
    let start = Instant::now();
    doc.apply(&[Change::DropExpiredRevocations { now: 1_700_043_200 }], 1_800_000_001)
        .unwrap();
    let drop_applied = start.elapsed();
    let start = Instant::now();
    let mut dropped = Vec::new();
    while let Some(m) = doc.generate_sync_message(&mut to_fresh) {
        let changes = fresh.doc.receive_sync_message(&mut to_doc, &m).unwrap();
        for change in &changes {
            fresh.view.apply(change);
        }
        dropped.extend(changes);
        if let Some(m) = fresh.doc.generate_sync_message(&mut to_doc) {
            doc.receive_sync_message(&mut to_fresh, &m).unwrap();
        }
    }
    let drop_received = start.elapsed();

    println!("apply 100 x 1,000 revocations: {applied:?}");
    println!(
        "saved size: {} bytes ({:.1} bytes/revocation)",
        bytes.len(),
        bytes.len() as f64 / 1e5
    );
    println!("save: {saved:?}, load: {load:?}, materialize state: {materialized:?}");
    println!("full sync to a fresh peer: {synced:?} ({reported} changes reported)");
    println!("incremental sync of one 1,000-revocation batch: {one_batch:?} ({incremental} changes reported)");
    println!(
        "local drop of {expired} expired revocations: {drop_applied:?}; received by the peer: {drop_received:?} \
         ({} changes reported)",
        dropped.len()
    );
    assert_eq!(fresh.view, fresh.doc.state());
}

#[test]
fn plugin_records_live_beside_node_information_and_replicate() {
    let node = identity(1);
    let developer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let manifest = mesh::plugin::PluginManifest::sign(
        &developer,
        "tenant".into(),
        "1".into(),
        vec!["on_token_request".into()],
        "ab".repeat(32),
        false,
    )
    .unwrap();
    let trust = mesh::plugin::PluginTrust::sign(&node, manifest.signer, true, 5);
    let record = mesh::plugin::PluginRecord::sign(&node, manifest.clone(), false, vec!["c1".into()], false, 6);
    let mut mesh = Mesh::new(&[1, 2]);
    mesh.nodes[0].apply(
        &[
            Change::PutKeyEvent(node.event()),
            Change::TrustPluginSigner(trust.clone()),
            Change::PutPlugin(record.clone()),
        ],
        10,
    );
    mesh.settle();
    mesh.assert_converged();
    let state = mesh.nodes[1].doc.state();
    assert!(state.nodes.is_empty(), "plugin records are not node information");
    assert_eq!(state.plugins["tenant"], record);
    assert!(
        state
            .trusted_plugin_signers(&node.did(), &[])
            .contains(&manifest.signer)
    );
    // Untrust on the other node wins everywhere (the latest statement per signer).
    let untrust = mesh::plugin::PluginTrust::sign(&node, manifest.signer, false, 7);
    mesh.nodes[1].apply(&[Change::TrustPluginSigner(untrust)], 11);
    mesh.settle();
    mesh.assert_converged();
    assert!(
        mesh.nodes[0]
            .doc
            .state()
            .trusted_plugin_signers(&node.did(), &[])
            .is_empty()
    );
}
