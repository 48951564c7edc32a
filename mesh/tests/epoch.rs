//! Epochs: deterministic epoch documents, carrying late changes forward, competing proposals,
//! persistence, and a churn of expiring revocations that stays under the bound.

use mesh::doc::{Doc, PeerSync};
use mesh::epoch::{Announce, Offered, Replicas, diff};
use mesh::state::{Change, ClientRecord, State};
use mesh::store::{Config, Store};
use proptest::prelude::*;

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.to_owned(),
        name: id.to_owned(),
        secrets: Vec::new(),
        grant_types: vec!["client_credentials".to_owned()],
        scopes: Vec::new(),
        audiences: Vec::new(),
        token_alg: "EdDSA".to_owned(),
        jwks: None,
        created_at: 1,
        degradation: None,
        ..Default::default()
    }
}

fn revoke(jti: &str, exp: u64) -> Change {
    Change::Revoke { jti: jti.into(), exp }
}

/// Syncs epoch `seed` between two replica sets until neither has anything to send; returns the
/// changes `b` reported.
fn sync(a: &mut Replicas, b: &mut Replicas, seed: [u8; 32]) {
    let (mut ab, mut ba) = (PeerSync::default(), PeerSync::default());
    for _ in 0..100 {
        let mut moved = false;
        if let Some(m) = a.generate(&seed, &mut ab) {
            b.receive(&seed, &mut ba, &m, 10).unwrap();
            moved = true;
        }
        if let Some(m) = b.generate(&seed, &mut ba) {
            a.receive(&seed, &mut ab, &m, 10).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("sync did not settle");
}

fn replicas(actor: u8) -> Replicas {
    Replicas::new(Doc::new([actor; 16]), None, [actor; 16])
}

#[test]
fn an_epoch_built_from_the_same_cut_is_byte_identical() {
    let mut a = replicas(1);
    let mut b = replicas(2);
    a.current_mut()
        .apply(&[Change::PutClient(client("c1")), revoke("j1", 50)], 1)
        .unwrap();
    b.current_mut().apply(&[revoke("j2", 60)], 2).unwrap();
    let genesis = a.announce().current.seed;
    sync(&mut a, &mut b, genesis);
    assert_eq!(a.current().heads(), b.current().heads());
    a.start_next();
    b.start_next();
    assert_eq!(a.announce().current, b.announce().current);
    assert_eq!(a.current().save(), b.current().save(), "the same bytes on both nodes");
    assert_eq!(a.current().state(), b.current().state());
    assert_eq!(a.current().epoch().number, 1);
    assert_eq!(a.previous().unwrap().epoch().number, 0);
    // Writes go on in the new epoch and merge as before.
    let seed = a.announce().current.seed;
    a.current_mut().apply(&[revoke("j3", 70)], 3).unwrap();
    sync(&mut a, &mut b, seed);
    assert_eq!(b.current().state().revocations.len(), 3);
    // A saved epoch document loads back as the same epoch.
    let loaded = Doc::load(&a.current().save(), [9; 16]).unwrap();
    assert_eq!(loaded.epoch(), a.current().epoch());
}

#[test]
fn a_new_epoch_is_smaller_than_the_history_it_replaces() {
    let mut a = replicas(1);
    for i in 0..300 {
        a.current_mut()
            .apply(&[revoke(&format!("jti-{i}"), 100 + i)], i)
            .unwrap();
        if i % 10 == 9 {
            a.current_mut()
                .apply(&[Change::DropExpiredRevocations { now: 100 + i }], i)
                .unwrap();
        }
    }
    let before = a.current().save().len();
    let live = a.current().state();
    a.start_next();
    let after = a.current().save().len();
    assert_eq!(a.current().state(), live);
    assert!(
        after * 4 < before,
        "epoch document {after} bytes, history {before} bytes"
    );
}

#[test]
fn changes_made_in_the_old_epoch_after_the_cut_are_carried_forward() {
    let mut a = replicas(1);
    let mut b = replicas(2);
    let genesis = a.announce().current.seed;
    a.current_mut()
        .apply(&[Change::PutClient(client("gone-later")), revoke("before", 90)], 1)
        .unwrap();
    sync(&mut a, &mut b, genesis);
    // a moves on; b, not yet told, keeps writing in epoch 0.
    a.start_next();
    let announced = a.announce();
    b.current_mut()
        .apply(
            &[
                revoke("during", 95),
                Change::RemoveClient("gone-later".into()),
                Change::PutClient(client("new")),
            ],
            2,
        )
        .unwrap();
    // b cannot move before it holds the cut... it does here (it was synced), so it moves at once
    // and carries its own late changes forward.
    assert!(matches!(b.offer(&announced, 3).unwrap(), Offered::Switched(_)));
    assert_eq!(b.announce().current.seed, announced.current.seed);
    // a hears b's late epoch-0 changes through its previous document and carries them forward.
    sync(&mut a, &mut b, genesis);
    sync(&mut a, &mut b, announced.current.seed);
    let state = a.current().state();
    assert_eq!(state, b.current().state());
    assert!(state.revocations.contains_key("before") && state.revocations.contains_key("during"));
    assert!(
        !state.clients.contains_key("gone-later"),
        "a removal after the cut is not undone"
    );
    assert!(state.clients.contains_key("new"));
    assert_eq!(a.current().heads(), b.current().heads());
}

#[test]
fn a_node_waits_for_the_cut_before_moving() {
    let mut a = replicas(1);
    let mut b = replicas(2);
    let genesis = a.announce().current.seed;
    a.current_mut().apply(&[revoke("only-a", 90)], 1).unwrap();
    a.start_next();
    let announced = a.announce();
    assert_eq!(b.offer(&announced, 2).unwrap(), Offered::Waiting);
    sync(&mut a, &mut b, genesis);
    assert!(matches!(b.offer(&announced, 2).unwrap(), Offered::Switched(_)));
    assert!(b.current().state().revocations.contains_key("only-a"));
    // An announcement that does not match what its cut builds is refused.
    let mut forged = announced.clone();
    forged.current.number = 2;
    forged.current.cut = b.current().head_hashes();
    assert_eq!(b.offer(&forged, 3).unwrap(), Offered::Ignored);
}

#[test]
fn competing_proposals_settle_on_the_smaller_seed_and_lose_nothing() {
    let mut a = replicas(1);
    let mut b = replicas(2);
    let genesis = a.announce().current.seed;
    a.current_mut().apply(&[revoke("shared", 90)], 1).unwrap();
    sync(&mut a, &mut b, genesis);
    // Both start epoch 1 from different cuts, and keep writing in it.
    a.current_mut().apply(&[revoke("a-only", 91)], 2).unwrap();
    a.start_next();
    b.start_next();
    a.current_mut().apply(&[revoke("a-in-1", 92)], 3).unwrap();
    b.current_mut()
        .apply(&[revoke("b-in-1", 93), Change::PutClient(client("b"))], 3)
        .unwrap();
    let (ea, eb) = (a.announce().current, b.announce().current);
    assert_eq!(ea.number, eb.number);
    assert_ne!(ea.seed, eb.seed);
    let (winner, loser) = if ea.id().better_than(&eb.id()) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let win = winner.announce();
    // The loser switches at once when it already holds the winner's cut (b's cut is in a's
    // history); otherwise it waits for the cut through the sync of epoch 0.
    match loser.offer(&win, 4).unwrap() {
        Offered::Waiting => {
            sync(winner, loser, genesis);
            assert!(matches!(loser.offer(&win, 4).unwrap(), Offered::Switched(_)));
        }
        offered => assert!(matches!(offered, Offered::Switched(_)), "{offered:?}"),
    }
    assert_eq!(winner.offer(&loser.announce(), 4).unwrap(), Offered::Ignored);
    sync(winner, loser, win.current.seed);
    let state = winner.current().state();
    assert_eq!(state, loser.current().state());
    for jti in ["shared", "a-only", "a-in-1", "b-in-1"] {
        assert!(state.revocations.contains_key(jti), "{jti} lost");
    }
    assert!(state.clients.contains_key("b"));
}

#[test]
fn announcements_round_trip_and_garbage_is_an_error() {
    let mut a = replicas(1);
    a.current_mut().apply(&[revoke("x", 1)], 1).unwrap();
    a.start_next();
    for announce in [Announce::genesis(), a.announce()] {
        assert_eq!(Announce::decode(&announce.encode()).unwrap(), announce);
    }
    let bytes = a.announce().encode();
    for cut in 0..bytes.len() {
        assert!(Announce::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Announce::decode(&long).is_err());
}

fn state_strategy() -> impl Strategy<Value = State> {
    (
        proptest::collection::btree_map("[a-d]", 1u64..5, 0..4),
        proptest::collection::btree_set("[a-d]", 0..4),
    )
        .prop_map(|(revocations, clients)| {
            let mut state = State {
                revocations,
                ..State::default()
            };
            for id in clients {
                state.clients.insert(id.clone(), client(&id));
            }
            state
        })
}

proptest! {
    /// The diff of two states takes the first to the second, for clients and revocations (the maps
    /// that shrink).
    #[test]
    fn diff_takes_from_to_to(from in state_strategy(), to in state_strategy()) {
        let mut state = from.clone();
        for change in diff(&from, &to) {
            state.apply(&change);
        }
        prop_assert_eq!(state, to);
    }
}

#[test]
fn the_store_persists_its_epoch_and_removes_stale_logs() {
    let dir = tempfile::tempdir().unwrap();
    let announce = {
        let mut store = Store::open(dir.path()).unwrap();
        store.apply(&[revoke("a", 4_000_000_000)], 1).unwrap();
        store.start_epoch().unwrap();
        store.apply(&[revoke("b", 4_000_000_000)], 2).unwrap();
        store.announce()
    };
    assert_eq!(announce.current.number, 1);
    assert!(
        !dir.path().join("state.log").exists(),
        "the genesis epoch's log is gone"
    );
    // As if a crash had left the old epoch's log behind.
    std::fs::write(dir.path().join("state.log"), b"stale").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.announce(),
        announce,
        "the epoch and the previous one are reloaded"
    );
    assert!(store.state().revocations.contains_key("a") && store.state().revocations.contains_key("b"));
    assert!(!dir.path().join("state.log").exists());
}

/// 100,000 revocations, each expiring 2,000 seconds after it was made, written 100 at a time while
/// a second store follows over sync and expired ones are dropped every 1,000: the documents stay
/// under the bound through the epoch changes, the follower moves with the writer, and no
/// unexpired revocation is ever missing on either.
#[test]
fn a_churn_of_expiring_revocations_stays_under_the_bound() {
    const BOUND: u64 = 256 * 1024;
    const TOTAL: u64 = 100_000;
    const BATCH: u64 = 100;
    const TTL: u64 = 2_000;
    let config = Config {
        compaction_min_log_bytes: 32 * 1024,
        epoch_bound_bytes: Some(BOUND),
        ..Config::default()
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Store::open_with(da.path(), config.clone()).unwrap();
    let mut b = Store::open_with(db.path(), config).unwrap();
    let mut syncs: std::collections::HashMap<[u8; 32], (PeerSync, PeerSync)> = Default::default();
    let mut max_size = 0;
    let mut epochs_seen = 0;
    let mut t = 0;
    while t < TOTAL {
        let changes: Vec<Change> = (t..t + BATCH)
            .map(|i| revoke(&format!("jti-{i:06}"), i + TTL))
            .collect();
        let now = t;
        a.apply(&changes, now).unwrap();
        if t % 1_000 == 0 {
            a.apply(&[Change::DropExpiredRevocations { now }], now).unwrap();
        }
        t += BATCH;
        // Each hears the other's epochs (either may start one) and they sync what both hold.
        exchange(&mut a, &mut b, &mut syncs, now);
        let sa = a.announce();
        epochs_seen = epochs_seen.max(sa.current.number);
        max_size = max_size.max(a.document_size()).max(b.document_size());
        assert!(
            (a.document_size() as u64) < BOUND && (b.document_size() as u64) < BOUND,
            "at {t}: {} and {} bytes",
            a.document_size(),
            b.document_size()
        );
        // Every revocation that has not expired yet is there on the writer.
        let live = a
            .state()
            .revocations
            .range(format!("jti-{:06}", t.saturating_sub(TTL))..)
            .count();
        assert!(live as u64 >= TTL.min(t), "at {t}: {live} live revocations");
    }
    for _ in 0..3 {
        exchange(&mut a, &mut b, &mut syncs, TOTAL);
    }
    assert!(epochs_seen >= 3, "the churn crossed {epochs_seen} epochs");
    assert_eq!(a.epoch(), b.epoch(), "the follower moved with the writer");
    assert_eq!(a.heads(), b.heads());
    assert_eq!(a.state(), b.state());
    for i in TOTAL - TTL..TOTAL {
        assert!(
            b.state().revocations.contains_key(&format!("jti-{i:06}")),
            "jti-{i} lost"
        );
    }
    eprintln!("largest document {max_size} bytes of {BOUND}, {epochs_seen} epochs");
}

type Syncs = std::collections::HashMap<[u8; 32], (PeerSync, PeerSync)>;

/// What a session does between two stores: each offers the other's current epoch, then every epoch
/// both hold is synced until quiet.
fn exchange(a: &mut Store, b: &mut Store, syncs: &mut Syncs, now: u64) {
    for _ in 0..2 {
        let (sa, sb) = (a.announce(), b.announce());
        b.offer(&sa, now).unwrap();
        a.offer(&sb, now).unwrap();
        let (sa, sb) = (a.announce(), b.announce());
        let shared: Vec<[u8; 32]> = sa.held().filter(|s| sb.held().any(|t| t == *s)).collect();
        syncs.retain(|seed, _| shared.contains(seed));
        for seed in shared {
            let (ab, ba) = syncs.entry(seed).or_default();
            for _ in 0..50 {
                let mut moved = false;
                if let Some(m) = a.generate_in(&seed, ab) {
                    b.receive_in(&seed, ba, &m, now).unwrap();
                    moved = true;
                }
                if let Some(m) = b.generate_in(&seed, ba) {
                    a.receive_in(&seed, ab, &m, now).unwrap();
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
        }
    }
}

#[test]
fn a_node_that_missed_epochs_receives_the_current_one_from_a_peer() {
    let mut a = replicas(1);
    a.current_mut()
        .apply(&[revoke("old", 90), Change::PutClient(client("c"))], 1)
        .unwrap();
    a.start_next();
    a.current_mut().apply(&[revoke("in-1", 91)], 2).unwrap();
    a.start_next();
    // A node that never saw epochs 0 → 2 happen (new, or offline throughout), with a write of its own.
    let mut late = replicas(2);
    late.current_mut().apply(&[revoke("late-own", 95)], 3).unwrap();
    let announced = a.announce();
    assert_eq!(late.offer(&announced, 4).unwrap(), Offered::Waiting);
    // It announces the epoch it awaits as the other one it holds, so the peer syncs it.
    assert_eq!(late.announce().previous, Some(announced.current.id()));
    sync(&mut a, &mut late, announced.current.seed);
    assert_eq!(late.current().epoch().id(), announced.current.id());
    sync(&mut a, &mut late, announced.current.seed);
    let state = late.current().state();
    assert_eq!(state, a.current().state());
    for jti in ["old", "in-1", "late-own"] {
        assert!(state.revocations.contains_key(jti), "{jti} lost");
    }
    assert!(state.clients.contains_key("c"));
}
