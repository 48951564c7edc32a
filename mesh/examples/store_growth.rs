//! How the cost of a write grows with the document: applies revocations one change each to a
//! store and syncs them to a second store, printing per-step timings every `STEP` writes.
//!
//! `cargo run --release -p mesh --example store_growth -- [TOTAL] [STEP] [BATCH]`
//! (BATCH: revocations per change, default 1).

use std::time::{Duration, Instant};

use mesh::doc::PeerSync;
use mesh::state::Change;
use mesh::store::Store;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let total = args.first().copied().unwrap_or(20_000);
    let step = args.get(1).copied().unwrap_or(2_000);
    let batch = args.get(2).copied().unwrap_or(1).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Store::open(&dir.path().join("a")).expect("open a");
    let mut b = Store::open(&dir.path().join("b")).expect("open b");
    let (mut a_to_b, mut b_to_a) = (PeerSync::default(), PeerSync::default());
    let (mut apply, mut generate, mut receive) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut n = 0u64;
    println!("revocations  apply/change  generate+receive/change  doc bytes");
    while n < total {
        let changes: Vec<Change> = (0..batch)
            .map(|i| Change::Revoke {
                jti: format!("jti-{:08}-{:024}", n + i, (n + i) * 7919),
                exp: 4_000_000_000,
            })
            .collect();
        let t = Instant::now();
        a.apply(&changes, 1_700_000_000 + n).expect("apply");
        apply += t.elapsed();
        // One round: a tells b, b answers, until quiet.
        loop {
            let t = Instant::now();
            let m = a.generate_sync_message(&mut a_to_b);
            generate += t.elapsed();
            let Some(m) = m else { break };
            let t = Instant::now();
            b.receive_sync_message(&mut b_to_a, &m).expect("receive");
            receive += t.elapsed();
            let t = Instant::now();
            let r = b.generate_sync_message(&mut b_to_a);
            generate += t.elapsed();
            if let Some(r) = r {
                let t = Instant::now();
                a.receive_sync_message(&mut a_to_b, &r).expect("receive");
                receive += t.elapsed();
            }
        }
        n += batch;
        if n % step < batch {
            let per = |d: Duration| d.as_secs_f64() * 1e6 * batch as f64 / step as f64;
            println!(
                "{n:>11}  {:>9.0} µs  {:>8.0} µs + {:>8.0} µs       {}",
                per(apply),
                per(generate),
                per(receive),
                a.document_size()
            );
            (apply, generate, receive) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        }
    }
    assert_eq!(b.state().revocations.len() as u64, n);
}
