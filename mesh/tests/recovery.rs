//! Recovery from peers: a store whose snapshot and previous snapshot are both corrupt starts from
//! the genesis document (with `recover_from_peers`), says so until a sync with a peer has brought
//! the peer's whole state over, keeps saying so across a restart before that, and ends up with
//! everything the peer held — in the peer's epoch when the mesh moved past the genesis one.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use mesh::doc::PeerSync;
use mesh::state::{Change, ClientRecord};
use mesh::store::{Config, Store};

fn revoke(i: usize) -> Change {
    Change::Revoke {
        jti: format!("jti-{i:04}"),
        exp: 4_000_000_000 + i as u64,
    }
}

fn client(id: &str) -> Change {
    Change::PutClient(ClientRecord {
        client_id: id.into(),
        name: id.into(),
        ..Default::default()
    })
}

fn peers_config() -> Config {
    Config {
        recover_from_peers: true,
        ..Config::default()
    }
}

type Syncs = HashMap<[u8; 32], (PeerSync, PeerSync)>;

/// What a session does between two stores: each offers the other its epochs, then every epoch
/// both hold is synced until quiet.
fn exchange(a: &mut Store, b: &mut Store, syncs: &mut Syncs, now: u64) {
    for _ in 0..3 {
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

/// A victim directory holding the peer's state, with a snapshot and a previous snapshot (two
/// compactions), then both snapshots damaged.
fn corrupt_victim(dir: &Path, peer: &mut Store) {
    let mut victim = Store::open_with(dir, peers_config()).unwrap();
    exchange(&mut victim, peer, &mut Syncs::new(), 10);
    assert_eq!(victim.state(), peer.state());
    victim.compact().unwrap();
    victim.apply(&[client("victim-own")], 11).unwrap();
    victim.compact().unwrap();
    exchange(&mut victim, peer, &mut Syncs::new(), 12);
    drop(victim);
    for name in ["state.automerge", "state.automerge.prev"] {
        let path = dir.join(name);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    }
}

fn recovers_from(mut peer: Store) {
    let dir = tempfile::tempdir().unwrap();
    corrupt_victim(dir.path(), &mut peer);
    // Without recovery from peers: an error naming the snapshot, nothing touched.
    let error = Store::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains("state.automerge"), "{error}");
    // With it: an empty document, recovering, the old files set aside.
    let store = Store::open_with(dir.path(), peers_config()).unwrap();
    assert!(store.recovering_from_peers());
    assert!(store.state().revocations.is_empty() && store.state().clients.is_empty());
    assert!(dir.path().join("recovering-from-peers").exists());
    for name in ["state.automerge", "state.automerge.prev", "state.log.prev"] {
        assert!(dir.path().join("corrupt-state").join(name).exists(), "{name} set aside");
    }
    // A restart before any peer synced is still recovering (the genesis snapshot is no source).
    drop(store);
    let mut store = Store::open_with(dir.path(), peers_config()).unwrap();
    assert!(store.recovering_from_peers(), "a restart forgot the recovery");
    // A write made meanwhile is kept and reaches the peer.
    store.apply(&[revoke(9_999)], 20).unwrap();
    exchange(&mut store, &mut peer, &mut Syncs::new(), 21);
    assert!(!store.recovering_from_peers(), "a complete sync ends the recovery");
    assert!(!dir.path().join("recovering-from-peers").exists());
    assert_eq!(store.state(), peer.state());
    assert_eq!(store.epoch().id(), peer.epoch().id());
    assert!(store.state().clients.contains_key("victim-own"));
    assert!(store.state().clients.contains_key("peer-client"));
    assert!(peer.state().revocations.contains_key("jti-9999"));
    for i in 0..50 {
        assert!(
            store.state().revocations.contains_key(&format!("jti-{i:04}")),
            "jti-{i} lost"
        );
    }
    drop(store);
    let store = Store::open_with(dir.path(), peers_config()).unwrap();
    assert!(!store.recovering_from_peers());
    assert_eq!(store.state(), peer.state());
}

fn peer_with_state(dir: &Path) -> Store {
    let mut peer = Store::open(dir).unwrap();
    peer.apply(&[client("peer-client")], 1).unwrap();
    for i in 0..50 {
        peer.apply(&[revoke(i)], 2 + i as u64).unwrap();
    }
    peer
}

#[test]
fn a_store_with_both_snapshots_corrupt_recovers_from_a_peer() {
    let peer_dir = tempfile::tempdir().unwrap();
    recovers_from(peer_with_state(peer_dir.path()));
}

#[test]
fn a_store_with_both_snapshots_corrupt_recovers_a_peer_past_two_epochs() {
    let peer_dir = tempfile::tempdir().unwrap();
    let mut peer = peer_with_state(peer_dir.path());
    peer.start_epoch().unwrap();
    peer.apply(&[revoke(100)], 60).unwrap();
    peer.start_epoch().unwrap();
    peer.apply(&[revoke(101)], 61).unwrap();
    recovers_from(peer);
}

/// A sync with a peer that holds less than the mesh's best announced epoch does not end the
/// recovery: only the mesh's current epoch counts.
#[test]
fn a_sync_in_an_older_epoch_does_not_end_the_recovery() {
    let (old_dir, new_dir, dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut old = peer_with_state(old_dir.path());
    let mut new = peer_with_state(new_dir.path());
    new.start_epoch().unwrap();
    corrupt_victim(dir.path(), &mut old);
    let mut store = Store::open_with(dir.path(), peers_config()).unwrap();
    assert!(store.recovering_from_peers());
    // The newer peer announces its epoch (nothing synced yet), then the genesis-epoch peer syncs.
    store.offer(&new.announce(), 30).unwrap();
    let seed = old.epoch().seed;
    let (mut ab, mut ba) = (PeerSync::default(), PeerSync::default());
    for _ in 0..50 {
        let mut moved = false;
        if let Some(m) = store.generate_in(&seed, &mut ab) {
            old.receive_in(&seed, &mut ba, &m, 31).unwrap();
            moved = true;
        }
        if let Some(m) = old.generate_in(&seed, &mut ba) {
            store.receive_in(&seed, &mut ab, &m, 31).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(
        store.recovering_from_peers(),
        "a sync in an older epoch ended the recovery"
    );
    exchange(&mut store, &mut new, &mut Syncs::new(), 32);
    assert!(!store.recovering_from_peers());
}
