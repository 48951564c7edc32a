//! The key event log: how a node replaces its identity key without changing its DID, by
//! pre-rotation (KERI-style).
//!
//! A node's DID is its *inception* key's `did:key`, forever. Each [`KeyEvent`] names the signing
//! key from that event on (`key`) and commits to the next one by its SHA-256 digest (`next`):
//!
//! - seq 0 (inception): `key` is the DID's own key;
//! - seq n ≥ 1 (rotation): `key` is the key whose digest event n-1 committed to;
//! - every event is signed by its own `key`.
//!
//! [`chain`] resolves a DID's keys from its events: inception first, the current key last. It
//! stops before the first missing or invalid event, so a gap, a forged event, or a fork whose
//! winning value (Automerge's last-writer-wins on the event's map key) is invalid all end the chain
//! there. See `mesh/ALGORITHM.md`, "Identity and pre-rotation".

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::did::DidKey;
use crate::identity;

/// One event of a DID's key event log. Deterministic (no timestamp; ed25519 signatures are
/// deterministic), so a node that publishes the same event twice writes the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// The identifier whose keys this event changes.
    pub did: DidKey,
    /// Position in the log: 0 is the inception.
    pub seq: u64,
    /// The ed25519 public key that signs for `did` from this event on.
    #[serde(with = "base64_32")]
    pub key: [u8; 32],
    /// SHA-256 of the next key's ed25519 public key (pre-rotation commitment).
    #[serde(with = "base64_32")]
    pub next: [u8; 32],
    /// `key`'s signature over the other fields, base64url.
    pub signature: String,
}

impl KeyEvent {
    /// Event `seq` of `did`: `current` signs from now on and commits to `next_public`.
    pub fn sign(did: DidKey, seq: u64, current: &SigningKey, next_public: &[u8; 32]) -> Self {
        let mut event = Self {
            did,
            seq,
            key: current.verifying_key().to_bytes(),
            next: digest(next_public),
            signature: String::new(),
        };
        event.signature = URL_SAFE_NO_PAD.encode(current.sign(&event.signed_bytes()).to_bytes());
        event
    }

    /// Its key in the state's `key_events`: `"{did}|{seq}"`. Two different events for one seq
    /// (a fork) share it, so only one of them survives a merge.
    pub fn key(&self) -> String {
        event_key(&self.did, self.seq)
    }

    /// Checks the signature against the event's own `key` (not the chain: see [`chain`]).
    pub fn verify_signature(&self) -> Result<(), Error> {
        let what = format!("key event {} of {}", self.seq, self.did);
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| Error::BadSignature { what: what.clone() })?;
        identity::verify_with(&[self.key], &self.signed_bytes(), &signature, &what)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            "key-event",
            &self.did,
            self.seq,
            URL_SAFE_NO_PAD.encode(self.key),
            URL_SAFE_NO_PAD.encode(self.next),
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }
}

/// The state key of event `seq` of `did`.
pub fn event_key(did: &DidKey, seq: u64) -> String {
    format!("{did}|{seq}")
}

/// SHA-256 of a public key: what an event's `next` commits to.
pub fn digest(public_key: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(public_key).into()
}

/// The keys of `did`, inception first and current last, from its events (`event(seq)`). Without
/// any event the DID's own key is the only one. The chain stops before the first event that is
/// missing, belongs to another DID or seq, is not signed by its own key, or does not reveal the key
/// the previous event committed to (for seq 0: is not the DID's key).
pub fn chain<'a>(did: &DidKey, event: impl Fn(u64) -> Option<&'a KeyEvent>) -> Vec<[u8; 32]> {
    let mut keys = vec![did.public_key()];
    let mut committed: Option<[u8; 32]> = None;
    for seq in 0.. {
        let Some(e) = event(seq) else { break };
        let links = match committed {
            None => e.key == did.public_key(),
            Some(next) => digest(&e.key) == next,
        };
        if e.did != *did || e.seq != seq || !links || e.verify_signature().is_err() {
            break;
        }
        if seq > 0 {
            keys.push(e.key);
        }
        committed = Some(e.next);
    }
    keys
}

/// Whether `event` is the next event of its DID's chain as `known` resolves it: its seq is the
/// first one `known` lacks, and with it the chain grows by its key (it reveals the key the last
/// known event committed to and is signed by its own key). What a node accepts from a peer's
/// `Hello` (a rotation the peer made while this node could not hear of it).
pub fn extends<'a>(event: &'a KeyEvent, known: impl Fn(u64) -> Option<&'a KeyEvent>) -> bool {
    if known(event.seq).is_some() {
        return false;
    }
    let keys = chain(
        &event.did,
        |seq| if seq == event.seq { Some(event) } else { known(seq) },
    );
    // The chain holds the DID's key plus one key per rotation: seq n adds the (n+1)-th key.
    event.seq >= 1 && keys.len() as u64 == event.seq + 1 && keys.last() == Some(&event.key)
}

/// Resolves the keys each DID has signed with, for verifying records "by a DID".
pub trait KeyChains {
    /// The keys of `did`, inception first, current last (never empty: at least the DID's key).
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]>;
}

impl<F: Fn(&DidKey) -> Vec<[u8; 32]>> KeyChains for F {
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        self(did)
    }
}

/// Key chains without any event: every DID has only its own key (records from before any rotation,
/// tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRotation;

impl KeyChains for NoRotation {
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        vec![did.public_key()]
    }
}

mod base64_32 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn public(n: u8) -> [u8; 32] {
        key(n).verifying_key().to_bytes()
    }

    /// Inception with key 1, then rotations to keys 2 and 3 (committing to 4).
    fn log() -> (DidKey, Vec<KeyEvent>) {
        let did = DidKey::from_public_key(public(1));
        let events = vec![
            KeyEvent::sign(did, 0, &key(1), &public(2)),
            KeyEvent::sign(did, 1, &key(2), &public(3)),
            KeyEvent::sign(did, 2, &key(3), &public(4)),
        ];
        (did, events)
    }

    fn resolve(did: &DidKey, events: &[KeyEvent]) -> Vec<[u8; 32]> {
        let map: BTreeMap<u64, &KeyEvent> = events.iter().map(|e| (e.seq, e)).collect();
        chain(did, |seq| map.get(&seq).copied())
    }

    #[test]
    fn a_valid_chain_resolves_inception_to_current() {
        let (did, events) = log();
        assert_eq!(resolve(&did, &events), [public(1), public(2), public(3)]);
        assert_eq!(resolve(&did, &[]), [public(1)]);
        let json = serde_json::to_string(&events[1]).unwrap();
        assert_eq!(serde_json::from_str::<KeyEvent>(&json).unwrap(), events[1]);
    }

    #[test]
    fn only_the_next_valid_event_extends_a_known_chain() {
        let (did, events) = log();
        let known = |n: usize| {
            let map: BTreeMap<u64, &KeyEvent> = events[..n].iter().map(|e| (e.seq, e)).collect();
            move |seq: u64| map.get(&seq).copied()
        };
        assert!(extends(&events[1], known(1)));
        assert!(extends(&events[2], known(2)));
        // Not the next one: already known, or one is missing in between.
        assert!(!extends(&events[1], known(2)));
        assert!(!extends(&events[2], known(1)));
        // An inception never extends (its key is the DID's own).
        assert!(!extends(&events[0], known(0)));
        // Forged: signed by a key event 0 did not commit to.
        assert!(!extends(&KeyEvent::sign(did, 1, &key(9), &public(3)), known(1)));
    }

    #[test]
    fn a_key_that_was_not_committed_to_ends_the_chain() {
        let (did, mut events) = log();
        // Signed by its own key, but event 0 committed to key 2, not key 9.
        events[1] = KeyEvent::sign(did, 1, &key(9), &public(3));
        assert_eq!(resolve(&did, &events), [public(1)]);
    }

    #[test]
    fn an_event_signed_by_another_key_ends_the_chain() {
        let (did, mut events) = log();
        let mut forged = KeyEvent::sign(did, 1, &key(9), &public(3));
        forged.key = public(2); // reveals the committed key, but key 9 signed it
        events[1] = forged;
        assert_eq!(resolve(&did, &events), [public(1)]);
        // An inception that is not the DID's key counts for nothing.
        let other = [KeyEvent::sign(did, 0, &key(9), &public(2))];
        assert_eq!(resolve(&did, &other), [public(1)]);
        // Nor does an event of another DID stored under this one.
        let (_, mut moved) = log();
        moved[2].did = DidKey::from_public_key(public(9));
        assert_eq!(resolve(&did, &moved), [public(1), public(2)]);
    }

    #[test]
    fn a_fork_resolves_to_its_winner_if_valid_else_stops_before_it() {
        let (did, mut events) = log();
        // The key holder signed a second seq 1 committing elsewhere; that winner is valid.
        events[1] = KeyEvent::sign(did, 1, &key(2), &public(7));
        assert_eq!(resolve(&did, &events), [public(1), public(2)]); // seq 2 no longer links
        // A winner forged by someone else stops the chain before it.
        events[1] = KeyEvent::sign(did, 1, &key(8), &public(3));
        assert_eq!(resolve(&did, &events), [public(1)]);
    }

    #[test]
    fn a_gap_ends_the_chain() {
        let (did, events) = log();
        assert_eq!(resolve(&did, &[events[0].clone(), events[2].clone()]), [public(1)]);
        assert_eq!(resolve(&did, &events[1..]), [public(1)]);
    }
}
