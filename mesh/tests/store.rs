//! The store's persistence: snapshot plus checksummed log, torn and damaged logs, compaction and
//! crashes in the middle of it.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mesh::doc::{Doc, PeerSync};
use mesh::state::Change;
use mesh::store::{Config, Store};

const SNAPSHOT: &str = "state.automerge";
const LOG: &str = "state.log";
const LOG_HEADER: usize = 8;
const FRAME_HEADER: usize = 12;

fn revoke(i: usize) -> Change {
    Change::Revoke {
        jti: format!("jti-{i:06}"),
        exp: 4_000_000_000 + i as u64,
    }
}

/// Opens `dir` and applies revocations `range`, one change each.
fn revoke_all(dir: &Path, range: std::ops::Range<usize>) -> Vec<String> {
    let mut store = Store::open(dir).unwrap();
    for i in range {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    store.heads()
}

/// The revocations `0..n` a store holds, checked to be exactly those.
fn assert_revoked(store: &Store, n: usize) {
    let expected: Vec<String> = (0..n).map(|i| format!("jti-{i:06}")).collect();
    let found: Vec<String> = store.state().revocations.keys().cloned().collect();
    assert_eq!(found, expected);
}

/// Offsets of the log's frames.
fn frame_offsets(log: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = LOG_HEADER;
    while at + FRAME_HEADER <= log.len() {
        offsets.push(at);
        let length = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        at += FRAME_HEADER + length;
    }
    offsets
}

fn truncate_by(path: &Path, bytes: u64) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - bytes).unwrap();
}

#[test]
fn changes_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let heads = revoke_all(dir.path(), 0..10);
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 10);
    assert_eq!(store.heads(), heads);
    drop(store);
    // And again, after appending to a log that was itself replayed.
    let heads = revoke_all(dir.path(), 10..12);
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 12);
    assert_eq!(store.heads(), heads);
}

#[test]
fn received_changes_are_persisted() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(a_dir.path()).unwrap();
    let mut b = Store::open(b_dir.path()).unwrap();
    for i in 0..5 {
        a.apply(&[revoke(i)], 1).unwrap();
    }
    let (mut a_peer, mut b_peer) = (PeerSync::default(), PeerSync::default());
    for _ in 0..10 {
        if let Some(message) = a.generate_sync_message(&mut b_peer) {
            b.receive_sync_message(&mut a_peer, &message).unwrap();
        }
        if let Some(message) = b.generate_sync_message(&mut a_peer) {
            a.receive_sync_message(&mut b_peer, &message).unwrap();
        }
    }
    assert_revoked(&b, 5);
    let heads = a.heads();
    drop(b);
    let b = Store::open(b_dir.path()).unwrap();
    assert_revoked(&b, 5);
    assert_eq!(b.heads(), heads);
}

#[test]
fn a_torn_last_frame_is_dropped_and_the_rest_kept() {
    for cut in [1, 3, 11, 13] {
        let dir = tempfile::tempdir().unwrap();
        revoke_all(dir.path(), 0..5);
        truncate_by(&dir.path().join(LOG), cut);
        let store = Store::open(dir.path()).unwrap();
        assert_revoked(&store, 4);
        assert!(dir.path().join("state.log.damaged").exists());
        drop(store);
        // New changes land after the intact part, never after the torn frame.
        revoke_all(dir.path(), 4..6);
        let store = Store::open(dir.path()).unwrap();
        assert_revoked(&store, 6);
    }
}

#[test]
fn garbage_after_the_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    revoke_all(dir.path(), 0..5);
    let mut log = fs::OpenOptions::new().append(true).open(dir.path().join(LOG)).unwrap();
    log.write_all(b"\x05\x00\x00\x00 definitely not a frame").unwrap();
    drop(log);
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 5);
    drop(store);
    revoke_all(dir.path(), 5..7);
    assert_revoked(&Store::open(dir.path()).unwrap(), 7);
}

#[test]
fn a_damaged_frame_in_the_middle_keeps_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    revoke_all(dir.path(), 0..6);
    let path = dir.path().join(LOG);
    let mut log = fs::read(&path).unwrap();
    let offsets = frame_offsets(&log);
    assert_eq!(offsets.len(), 6);
    log[offsets[3] + FRAME_HEADER + 2] ^= 0xff;
    fs::write(&path, &log).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 3);
    // The damaged log is kept for inspection, byte for byte.
    assert_eq!(fs::read(dir.path().join("state.log.damaged")).unwrap(), log);
}

#[test]
fn compaction_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for i in 0..200 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    store.compact().unwrap();
    assert_eq!(fs::metadata(dir.path().join(LOG)).unwrap().len(), LOG_HEADER as u64);
    for i in 200..210 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    let heads = store.heads();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 210);
    assert_eq!(store.heads(), heads);
}

#[test]
fn automatic_compaction_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        compaction_min_log_bytes: 4_096,
        ..Config::default()
    };
    let mut store = Store::open_with(dir.path(), config.clone()).unwrap();
    let mut compactions = 0;
    let mut snapshot = None;
    for i in 0..300 {
        store.apply(&[revoke(i)], i as u64).unwrap();
        let modified = fs::metadata(dir.path().join(SNAPSHOT))
            .ok()
            .map(|m| m.modified().unwrap());
        if modified != snapshot {
            compactions += 1;
            snapshot = modified;
        }
    }
    assert!(compactions >= 2, "{compactions} compactions");
    let heads = store.heads();
    drop(store);
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_revoked(&store, 300);
    assert_eq!(store.heads(), heads);
}

/// A crash after the new snapshot was renamed into place but before the log was replaced leaves
/// the new snapshot and the old log: the log's changes are already in the snapshot.
#[test]
fn a_crash_between_snapshot_and_log_replacement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for i in 0..20 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    store.compact().unwrap();
    for i in 20..40 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    let old_log = fs::read(dir.path().join(LOG)).unwrap();
    assert_eq!(frame_offsets(&old_log).len(), 20);
    store.compact().unwrap();
    let heads = store.heads();
    drop(store);
    fs::write(dir.path().join(LOG), &old_log).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 40);
    assert_eq!(store.heads(), heads);
    assert!(!dir.path().join("state.log.damaged").exists());
    drop(store);
    revoke_all(dir.path(), 40..42);
    assert_revoked(&Store::open(dir.path()).unwrap(), 42);
}

/// A crash while the new snapshot was being written leaves the old snapshot, the whole log and a
/// partial temporary file, which is ignored.
#[test]
fn a_crash_while_writing_the_snapshot_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for i in 0..10 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    store.compact().unwrap();
    let old_snapshot = fs::read(dir.path().join(SNAPSHOT)).unwrap();
    for i in 10..20 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    let old_log = fs::read(dir.path().join(LOG)).unwrap();
    store.compact().unwrap();
    let new_snapshot = fs::read(dir.path().join(SNAPSHOT)).unwrap();
    drop(store);
    fs::write(dir.path().join(SNAPSHOT), &old_snapshot).unwrap();
    fs::write(dir.path().join(LOG), &old_log).unwrap();
    fs::write(
        dir.path().join(".state.automerge.tmp"),
        &new_snapshot[..new_snapshot.len() / 2],
    )
    .unwrap();
    assert_revoked(&Store::open(dir.path()).unwrap(), 20);
}

/// A data directory written before there was a log holds only the snapshot.
#[test]
fn a_directory_with_only_a_snapshot_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = Doc::new([7; 16]);
    for i in 0..5 {
        doc.apply(&[revoke(i)], 1).unwrap();
    }
    fs::write(dir.path().join(SNAPSHOT), doc.save()).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 5);
    assert_eq!(store.heads(), doc.heads());
    drop(store);
    revoke_all(dir.path(), 5..6);
    assert_revoked(&Store::open(dir.path()).unwrap(), 6);
}

/// Without the previous snapshot's log (a directory compacted before there was one) a corrupt
/// snapshot cannot be rebuilt: an error naming it.
#[test]
fn an_unrecoverable_corrupt_snapshot_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    revoke_all(dir.path(), 0..2);
    Store::open(dir.path()).unwrap().compact().unwrap();
    fs::remove_file(dir.path().join("state.log.prev")).unwrap();
    truncate_by(&dir.path().join(SNAPSHOT), 10);
    let error = Store::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains(SNAPSHOT), "{error}");
}

/// Damage of every kind (truncation, a flipped byte, zeroed tail, an empty file) to the snapshot
/// after one or several compactions: the document is rebuilt from the previous snapshot and the
/// logs, nothing acknowledged is lost, the damaged file is kept aside, and the next open is clean.
#[test]
fn a_corrupt_snapshot_is_recovered_from_the_previous_one_and_the_logs() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("truncated", |p| truncate_by(p, 10)),
        ("flipped byte", |p| {
            let mut bytes = fs::read(p).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x40;
            fs::write(p, bytes).unwrap();
        }),
        ("zeroed tail", |p| {
            let mut bytes = fs::read(p).unwrap();
            let len = bytes.len();
            bytes[len / 3..].fill(0);
            fs::write(p, bytes).unwrap();
        }),
        ("emptied", |p| fs::write(p, b"").unwrap()),
    ];
    for compactions in [1, 3] {
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            let mut n = 0;
            for _ in 0..compactions {
                for _ in 0..10 {
                    store.apply(&[revoke(n)], n as u64).unwrap();
                    n += 1;
                }
                store.compact().unwrap();
            }
            for _ in 0..5 {
                store.apply(&[revoke(n)], n as u64).unwrap();
                n += 1;
            }
            let heads = store.heads();
            drop(store);
            damage(&dir.path().join(SNAPSHOT));
            let store =
                Store::open(dir.path()).unwrap_or_else(|e| panic!("{what} after {compactions} compactions: {e}"));
            assert_revoked(&store, n);
            assert_eq!(store.heads(), heads, "{what}");
            assert!(dir.path().join("state.automerge.corrupt").exists(), "{what}");
            drop(store);
            revoke_all(dir.path(), n..n + 1);
            assert_revoked(&Store::open(dir.path()).unwrap(), n + 1);
        }
    }
}

/// A corrupt snapshot and a torn log at once: the document is rebuilt from the previous snapshot,
/// both logs' intact frames; and the directory left behind survives a second corruption.
#[test]
fn a_corrupt_snapshot_with_a_torn_log_is_recovered_and_stays_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for round in 0..3 {
        for i in round * 10..round * 10 + 10 {
            store.apply(&[revoke(i)], i as u64).unwrap();
        }
        store.compact().unwrap();
    }
    for i in 30..36 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    drop(store);
    truncate_by(&dir.path().join(SNAPSHOT), 10);
    truncate_by(&dir.path().join(LOG), 3);
    let store = Store::open(dir.path()).unwrap();
    assert_revoked(&store, 35);
    drop(store);
    revoke_all(dir.path(), 35..40);
    let mut bytes = fs::read(dir.path().join(SNAPSHOT)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(dir.path().join(SNAPSHOT), bytes).unwrap();
    assert_revoked(&Store::open(dir.path()).unwrap(), 40);
}

/// A crash at each step of a compaction, followed by a corrupt snapshot: the previous snapshot and
/// the logs on disk at that point still add up to everything acknowledged.
#[test]
fn every_crash_point_of_a_compaction_leaves_a_recoverable_directory() {
    let files = ["state.automerge", "state.automerge.prev", "state.log", "state.log.prev"];
    let snapshot = |dir: &Path| -> Vec<Option<Vec<u8>>> { files.iter().map(|f| fs::read(dir.join(f)).ok()).collect() };
    let restore = |dir: &Path, contents: &[Option<Vec<u8>>]| {
        for (file, content) in files.iter().zip(contents) {
            match content {
                Some(bytes) => fs::write(dir.join(file), bytes).unwrap(),
                None => {
                    let _ = fs::remove_file(dir.join(file));
                }
            }
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for i in 0..10 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    store.compact().unwrap();
    for i in 10..20 {
        store.apply(&[revoke(i)], i as u64).unwrap();
    }
    let before = snapshot(dir.path());
    store.compact().unwrap();
    let after = snapshot(dir.path());
    drop(store);
    // Each step of the compaction, in order, applied to the files it changes.
    let steps: [&[usize]; 4] = [&[1], &[1, 0], &[1, 0, 3], &[1, 0, 3, 2]];
    for (step, changed) in steps.iter().enumerate() {
        let mut state = before.clone();
        for &file in *changed {
            state[file] = after[file].clone();
        }
        restore(dir.path(), &state);
        let mut corrupt = state[0].clone().unwrap();
        let at = corrupt.len() / 2;
        corrupt[at] ^= 1;
        fs::write(dir.path().join(SNAPSHOT), corrupt).unwrap();
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("crash after step {step}: {e}"));
        assert_revoked(&store, 20);
    }
}

/// Time per `apply` of one revocation with 100,000 already in the document: the full save every
/// change used to cost against one log frame now. Reports, asserts nothing about time. Run with
/// `cargo test -p mesh --test store -- --ignored --nocapture per_revocation_cost`.
#[test]
#[ignore = "slow; a measurement, run by hand"]
fn per_revocation_cost() {
    const EXISTING: usize = 100_000;
    const SAMPLES: usize = 50;
    // Token ids as issued: random (here pseudo-random, 128 bits, base64url-like length).
    let random_revoke = |i: usize| {
        let mix = |x: u64| {
            let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        let i = i as u64;
        Change::Revoke {
            jti: format!("{:016x}{:016x}", mix(2 * i), mix(2 * i + 1)),
            exp: 1_700_000_000 + mix(i) % 86_400,
        }
    };
    let started = Instant::now();
    let mut doc = Doc::new([7; 16]);
    for i in 0..EXISTING {
        doc.apply(&[random_revoke(i)], 1_700_000_000 + i as u64).unwrap();
    }
    println!(
        "built {EXISTING} revocations, one change each, in {:?}",
        started.elapsed()
    );

    // Before: every change saved the whole document atomically (as `Store::apply` did).
    let dir = tempfile::tempdir().unwrap();
    let mut before = Duration::ZERO;
    let mut size = 0;
    for i in EXISTING..EXISTING + 5 {
        let started = Instant::now();
        doc.apply(&[random_revoke(i)], i as u64).unwrap();
        let bytes = doc.save();
        let tmp = dir.path().join(".state.automerge.tmp");
        let mut file = fs::File::create(&tmp).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        fs::rename(&tmp, dir.path().join(SNAPSHOT)).unwrap();
        fs::File::open(dir.path()).unwrap().sync_all().unwrap();
        before += started.elapsed();
        size = bytes.len();
    }
    println!(
        "before (full save): {:?} per revocation, document {size} bytes",
        before / 5
    );

    // After: one log frame per change.
    let started = Instant::now();
    let mut store = Store::open(dir.path()).unwrap();
    println!("open (snapshot only): {:?}", started.elapsed());
    let mut after = Vec::with_capacity(SAMPLES);
    let first = EXISTING + 5;
    for i in first..first + SAMPLES {
        let started = Instant::now();
        store.apply(&[random_revoke(i)], i as u64).unwrap();
        after.push(started.elapsed());
    }
    let log = fs::metadata(dir.path().join(LOG)).unwrap().len();
    let mean = after.iter().sum::<Duration>() / SAMPLES as u32;
    after.sort();
    println!(
        "after (log append): mean {mean:?}, median {:?}, max {:?} per revocation; log {log} bytes for {SAMPLES} frames",
        after[SAMPLES / 2],
        after[SAMPLES - 1]
    );
    let started = Instant::now();
    store.compact().unwrap();
    println!("one compaction: {:?}", started.elapsed());
    for i in first + SAMPLES..first + 2 * SAMPLES {
        store.apply(&[random_revoke(i)], i as u64).unwrap();
    }
    drop(store);
    let started = Instant::now();
    let mut store = Store::open(dir.path()).unwrap();
    println!("open (snapshot + {SAMPLES} frames): {:?}", started.elapsed());

    // A log near its compaction threshold (as large as the snapshot) at the next start.
    const MANY: usize = 10_000;
    let first = first + 2 * SAMPLES;
    for i in first..first + MANY {
        store.apply(&[random_revoke(i)], i as u64).unwrap();
    }
    drop(store);
    let log = fs::metadata(dir.path().join(LOG)).unwrap().len();
    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    println!(
        "open (snapshot + {MANY} frames, log {log} bytes): {:?}",
        started.elapsed()
    );
    assert_eq!(store.state().revocations.len(), first + MANY);
}
