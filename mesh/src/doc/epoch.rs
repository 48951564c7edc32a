//! Epoch documents: a fresh document that starts from the live state of the previous epoch's
//! document at a cut (a set of its heads), built deterministically so that every node building the
//! same epoch from the same cut holds the same bytes.
//!
//! An epoch document holds the genesis change (unchanged, so its maps are the genesis maps) and a
//! *seed* change on top of it: actor = the first 16 bytes of SHA-256 over the epoch number, the cut
//! and the state (its canonical JSON), sequence number 1, time 0, message `meshgate epoch`; it puts
//! `epoch` (the number, `uint`) and `epoch_cut` (the cut's hashes, hex, comma-separated) at the root,
//! then every record of the state in [`State`] order. Epoch 0 is the genesis document itself.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ROOT, ReadDoc, ScalarValue};
use sha2::{Digest, Sha256};

use super::schema::{self, Field, Maps, Write};
use super::{Doc, GENESIS_ACTOR};
use crate::epoch::{Epoch, EpochId, puts};
use crate::state::State;

/// The message of every seed change.
const SEED_MESSAGE: &str = "meshgate epoch";
/// Root keys written by the seed change.
const EPOCH_KEY: &str = "epoch";
const CUT_KEY: &str = "epoch_cut";

impl Doc {
    /// The epoch document number `number` (≥ 1) started from `state`, the state of the previous
    /// epoch's document at `cut`; this node writes as `actor`. Deterministic: the same arguments
    /// give the same seed change (hash) on every node.
    pub fn start_epoch(number: u64, cut: &[[u8; 32]], state: &State, actor: [u8; 16]) -> Self {
        debug_assert!(number >= 1, "epoch 0 is the genesis document");
        let mut cut: Vec<[u8; 32]> = cut.to_vec();
        cut.sort_unstable();
        cut.dedup();
        let canonical = serde_json::to_vec(state).expect("a state serializes");
        let mut hasher = Sha256::new();
        hasher.update(b"meshgate-epoch-v1\0");
        hasher.update(number.to_be_bytes());
        hasher.update((cut.len() as u64).to_be_bytes());
        for head in &cut {
            hasher.update(head);
        }
        hasher.update(&canonical);
        let digest = hasher.finalize();
        let mut seed_actor = [0u8; 16];
        seed_actor.copy_from_slice(&digest[..16]);
        if seed_actor == GENESIS_ACTOR {
            seed_actor[15] = 1;
        }
        let mut doc = schema::genesis().with_actor(ActorId::from(seed_actor));
        let maps = Maps::of(&doc).expect("the genesis document holds the genesis maps");
        let mut tx = doc.transaction();
        let cut_text = cut
            .iter()
            .map(|h| ChangeHash(*h).to_string())
            .collect::<Vec<_>>()
            .join(",");
        tx.put(ROOT, EPOCH_KEY, ScalarValue::Uint(number))
            .expect("writing to the root of a fresh document cannot fail");
        tx.put(ROOT, CUT_KEY, cut_text)
            .expect("writing to the root cannot fail");
        for change in puts(state) {
            match schema::write(&change) {
                Ok(Write::Put(field, key, value)) => {
                    tx.put(maps.get(field), key, value)
                        .expect("writing to a genesis map cannot fail");
                }
                Ok(_) => {}
                // A record that does not serialize cannot be in a state read from a document.
                Err(e) => tracing::warn!(error = %e, "an epoch's seed skips a record that does not serialize"),
            }
        }
        tx.commit_with(CommitOptions::default().with_message(SEED_MESSAGE).with_time(0));
        let seed = doc.get_heads()[0].0;
        let epoch = Epoch { number, seed, cut };
        let doc = doc.with_actor(ActorId::from(actor));
        Self { doc, maps, epoch }
    }

    /// A document to receive epoch `epoch` into from a peer, for a node that cannot build it (it
    /// lacks the document it was cut from): the genesis document, labelled with the epoch until it
    /// holds the epoch's seed change ([`Doc::has_seed`]).
    pub fn awaiting(epoch: Epoch, actor: [u8; 16]) -> Self {
        let mut doc = Doc::new(actor);
        doc.epoch = epoch;
        doc
    }

    /// Whether the document holds the seed change of the epoch it is labelled with, and that
    /// change starts this very epoch.
    pub fn has_seed(&self) -> bool {
        self.contains(&[self.epoch.seed]) && epoch_of(&self.doc).id() == self.epoch.id()
    }

    /// The epoch this document belongs to.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The state at `heads` (a past point of this document's history), skipping malformed entries.
    /// Heads the document does not hold are ignored by Automerge; check [`Doc::contains`] first.
    pub fn state_at(&self, heads: &[[u8; 32]]) -> State {
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        let mut state = State::default();
        for field in Field::ALL {
            for item in self.doc.map_range_at(self.maps.get(field), .., &heads) {
                if let Some(change) = schema::decode(field, &item.key, (&item.value).into()) {
                    schema::insert(&mut state, change);
                }
            }
        }
        state
    }

    /// Whether the document holds every change named in `heads`.
    pub fn contains(&self, heads: &[[u8; 32]]) -> bool {
        heads
            .iter()
            .all(|h| self.doc.get_change_by_hash(&ChangeHash(*h)).is_some())
    }

    /// The document's heads as raw hashes (a cut for [`Doc::start_epoch`]).
    pub fn head_hashes(&self) -> Vec<[u8; 32]> {
        self.doc.get_heads().iter().map(|h| h.0).collect()
    }
}

/// The epoch of a loaded document: the genesis epoch, or the one its seed change records. The seed
/// is the change that put `epoch` at the root with the genesis change as its only dependency and the
/// seed message; with several (which no honest node writes), the smallest hash.
pub(super) fn epoch_of(doc: &Automerge) -> Epoch {
    let genesis = schema::genesis_hash();
    let mut found: Option<Epoch> = None;
    for (value, id) in doc.get_all(ROOT, EPOCH_KEY).unwrap_or_default() {
        let automerge::Value::Scalar(scalar) = value else {
            continue;
        };
        let ScalarValue::Uint(number) = scalar.as_ref() else {
            continue;
        };
        let Some(hash) = doc.hash_for_opid(&id) else { continue };
        let Some(change) = doc.get_change_by_hash(&hash) else {
            continue;
        };
        if change.deps() != [genesis] || change.message() != Some(SEED_MESSAGE) {
            continue;
        }
        let cut = doc
            .get_at(ROOT, CUT_KEY, &[hash])
            .ok()
            .flatten()
            .and_then(|(value, _)| value.into_string().ok())
            .map(|text| parse_cut(&text))
            .unwrap_or_default();
        let candidate = Epoch {
            number: *number,
            seed: hash.0,
            cut,
        };
        if found.as_ref().is_none_or(|f| candidate.id().better_than(&f.id())) {
            found = Some(candidate);
        }
    }
    found.unwrap_or_else(Epoch::genesis)
}

fn parse_cut(text: &str) -> Vec<[u8; 32]> {
    text.split(',')
        .filter_map(|h| h.parse::<ChangeHash>().ok())
        .map(|h| h.0)
        .collect()
}

/// The identity of the genesis epoch.
pub(crate) fn genesis_id() -> EpochId {
    EpochId {
        number: 0,
        seed: schema::genesis_hash().0,
    }
}
