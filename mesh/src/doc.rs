//! The replicated state as one Automerge document, synchronised with each peer by Automerge's sync
//! protocol.
//!
//! # Schema (major 1, minor 2)
//!
//! The root map holds `schema` (a map `{major, minor}` of `uint`s) and one map per [`State`] field:
//! `clients`, `keys`, `admissions`, `nodes` and `removals` map an id to its record as a JSON string
//! scalar; `revocations` maps a `jti` to the token's `exp` as a `uint`. A record whose JSON does not
//! parse, or whose own id differs from its key, is skipped when the state is read.
//!
//! Minor 1 adds identity key events ([`crate::kel::KeyEvent`], the state's `key_events`). They are
//! stored in the genesis `nodes` map under `key-event|{did}|{seq}` rather than in a map of their
//! own: a new root map would be created by whoever writes first, and two nodes creating it
//! concurrently would hold two conflicting objects; an existing map needs no creation, keeps the
//! genesis change (and its hash) as it is, and a minor-0 document simply has no such entries. A
//! minor-0 build skips them as malformed node information. The first node that writes a key event
//! also records minor 1 at the root (informational: any minor of the major is read).
//!
//! Minor 2 adds the audit log ([`crate::state::AuditRecord`], the state's `audit`), stored the same
//! way under `audit|{id}` in the `nodes` map. Unlike node information, audit records are dropped
//! by retention: a deleted one becomes [`Change::RemoveAudit`].
//!
//! Plugin trust records ([`crate::plugin::PluginTrust`]) and plugin records
//! ([`crate::plugin::PluginRecord`]) live in the same `nodes` map under `plugin-trust|{did}` and
//! `plugin|{name}`, for the same reason; removal is a tombstone record, never a deletion.
//!
//! # Genesis
//!
//! Every node creates the root objects with one deterministic change: actor [`GENESIS_ACTOR`],
//! sequence number 1, time 0, a fixed message and fixed operations in a fixed order. Two nodes
//! started independently therefore hold the same genesis change (same hash) and merge into one
//! `clients` map rather than two conflicting ones. Entries are always read and written through the
//! genesis objects. The genesis change never changes within a schema major version; a later minor
//! version records itself with an ordinary change.
//!
//! # Received changes
//!
//! [`Doc::receive_sync_message`] turns the patches Automerge logs while applying a peer's changes
//! into [`Change`]s that take the previous [`State`] to the new one, so in-memory views are updated
//! incrementally:
//!
//! - an entry that was put (or whose winning value changed) becomes the put-change that recreates
//!   it; one left malformed becomes `RemoveClient`/`RemoveKey` for clients and keys;
//! - a deleted client or key becomes `RemoveClient`/`RemoveKey`;
//! - revocations have no single-entry removal: deleted revocations, whose greatest expiry was `m`,
//!   become `DropExpiredRevocations { now: m }` followed by a `Revoke` for each revocation that is
//!   still in the document with an expiry at or before `m` (one written concurrently with the
//!   peer's drop), so the view matches the document exactly;
//! - admissions, node information and removals only grow: a peer cannot express their deletion as
//!   a [`Change`], so a deleted or malformed one is logged and reported as nothing.

mod epoch;
mod received;
mod schema;

pub(crate) use epoch::genesis_id;

use std::fmt;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, PatchLog, ReadDoc};

use crate::Error;
use crate::state::{Change, State};
use schema::{Field, Maps, Stored, Write};

/// The schema major version this build reads and writes; documents of another major are refused.
pub const SCHEMA_MAJOR: u64 = 1;
/// The schema minor version this build writes; documents of any minor of [`SCHEMA_MAJOR`] are read.
pub const SCHEMA_MINOR: u64 = 2;
/// The actor of the genesis change. A node's own actor must differ from it.
pub const GENESIS_ACTOR: [u8; 16] = [0; 16];

/// The replicated state document.
pub struct Doc {
    doc: Automerge,
    maps: Maps,
    /// The epoch this document belongs to (see [`crate::epoch`]).
    epoch: crate::epoch::Epoch,
}

/// The sync protocol's state for one peer: what it has and what is in flight to it.
///
/// Start each connection with a fresh one (`PeerSync::default()`).
#[derive(Debug, Default)]
pub struct PeerSync(sync::State);

/// A point in the document's history (its heads at one moment), from which [`Doc::save_after`]
/// saves what changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavePoint(Vec<ChangeHash>);

impl Doc {
    /// A fresh document holding only the deterministic genesis change; this node writes as `actor`
    /// (16 bytes, e.g. derived from its DID; never [`GENESIS_ACTOR`]).
    pub fn new(actor: [u8; 16]) -> Self {
        debug_assert_ne!(actor, GENESIS_ACTOR, "a node cannot write as the genesis actor");
        let doc = schema::genesis().with_actor(ActorId::from(actor));
        let maps = Maps::of(&doc).expect("the genesis document holds the genesis maps");
        Self {
            doc,
            maps,
            epoch: crate::epoch::Epoch::genesis(),
        }
    }

    /// Loads a document saved by [`Doc::save`]; this node writes as `actor`.
    ///
    /// Fails with [`Error::IncompatibleDocument`] if it was written under another schema major
    /// version (any minor version of [`SCHEMA_MAJOR`] is accepted), and with
    /// [`Error::CorruptDocument`] if it is not an Automerge document with meshgate's genesis.
    pub fn load(bytes: &[u8], actor: [u8; 16]) -> Result<Self, Error> {
        debug_assert_ne!(actor, GENESIS_ACTOR, "a node cannot write as the genesis actor");
        let doc = Automerge::load(bytes).map_err(|e| Error::CorruptDocument { reason: e.to_string() })?;
        let Some((major, _minor)) = schema::schema_version(&doc) else {
            return Err(Error::CorruptDocument {
                reason: "it has no schema version".to_owned(),
            });
        };
        if major != SCHEMA_MAJOR {
            return Err(Error::IncompatibleDocument {
                found: major,
                expected: SCHEMA_MAJOR,
            });
        }
        let maps = Maps::of(&doc)?;
        let epoch = epoch::epoch_of(&doc);
        Ok(Self {
            doc: doc.with_actor(ActorId::from(actor)),
            maps,
            epoch,
        })
    }

    /// Applies local `changes` as one Automerge change stamped with `now` (Unix seconds); does
    /// nothing for an empty slice or when nothing would change. On error the document is unchanged.
    pub fn apply(&mut self, changes: &[Change], now: u64) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let failed = |e: automerge::AutomergeError| Error::DocumentChange { reason: e.to_string() };
        let mut tx = self.doc.transaction();
        for change in changes {
            match schema::write(change)? {
                Write::Put(field, key, value) => {
                    let map = self.maps.get(field);
                    let current = tx.get(map, key.as_str()).map_err(failed)?;
                    if !current.is_some_and(|(current, _)| schema::unchanged(&current, &value)) {
                        tx.put(map, key, value).map_err(failed)?;
                    }
                }
                Write::Delete(field, key) => {
                    let map = self.maps.get(field);
                    if tx.get(map, key.as_str()).map_err(failed)?.is_some() {
                        tx.delete(map, key).map_err(failed)?;
                    }
                }
                Write::DropExpiredRevocations(now) => {
                    let map = self.maps.get(Field::Revocations);
                    let expired: Vec<String> = tx
                        .map_range(map, ..)
                        .filter(|item| matches!(Stored::from(&item.value), Stored::Uint(exp) if exp <= now))
                        .map(|item| item.key.into_owned())
                        .collect();
                    for key in expired {
                        tx.delete(map, key).map_err(failed)?;
                    }
                }
            }
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::PutKeyEvent(_) | Change::PutAudit(_)))
        {
            schema::record_minor(&mut tx).map_err(failed)?;
        }
        let time = i64::try_from(now).unwrap_or(i64::MAX);
        tx.commit_with(CommitOptions::default().with_time(time));
        Ok(())
    }

    /// Applies a peer's sync message and returns the [`Change`]s that take the state as it was
    /// before to the state after (see the module documentation for how they are derived).
    ///
    /// Fails with [`Error::BadSyncMessage`] if the message does not decode or none of its changes
    /// can be applied; never panics on malformed input. If some of its changes were applied before
    /// an error, the error is logged and their [`Change`]s are returned, so views never diverge.
    pub fn receive_sync_message(&mut self, peer: &mut PeerSync, message: &[u8]) -> Result<Vec<Change>, Error> {
        let bad = |e: &dyn fmt::Display| Error::BadSyncMessage { reason: e.to_string() };
        let message = sync::Message::decode(message).map_err(|e| bad(&e))?;
        let before = self.doc.get_heads();
        let mut log = PatchLog::active();
        let result = self
            .doc
            .receive_sync_message_log_patches(&mut peer.0, message, &mut log);
        if self.doc.get_heads() == before {
            return result.map(|()| Vec::new()).map_err(|e| bad(&e));
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "sync message from a peer was applied only in part");
        }
        let patches = self.doc.make_patches(&mut log);
        Ok(received::changes(&self.doc, &self.maps, &before, &patches))
    }

    /// The document, saved whole (compressed Automerge format), for [`Doc::load`].
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Rebuilds the in-memory document from `saved`, the bytes [`Doc::save`] just returned.
    ///
    /// Automerge 0.12 keeps a large part of what it builds while applying many changes at once
    /// after they are in: replaying a 0.5 MiB log of 432 frames into a document of 100,000
    /// revocations left 750 MB resident; the same document loaded from its own save holds about
    /// 36 MB. Loading the save sheds that (the store does it after replaying its log at start). The document must not
    /// have changed since `saved` was made; if the loaded copy does not hold the same heads, the
    /// document is kept as it is and the mismatch logged.
    pub fn reload(&mut self, saved: &[u8]) {
        let actor = self.doc.get_actor().clone();
        match Automerge::load(saved) {
            Ok(fresh) if fresh.get_heads() == self.doc.get_heads() => self.doc = fresh.with_actor(actor),
            Ok(_) => tracing::warn!("a reloaded document does not hold the same heads; keeping the one in memory"),
            Err(e) => tracing::warn!(error = %e, "a saved document does not load; keeping the one in memory"),
        }
    }

    /// The document's current point in history, for a later [`Doc::save_after`].
    pub fn save_point(&self) -> SavePoint {
        SavePoint(self.doc.get_heads())
    }

    /// The changes made since `point` (those it has not seen), as a sequence of Automerge change
    /// chunks for [`Doc::load_incremental`]; empty when there are none.
    pub fn save_after(&self, point: &SavePoint) -> Vec<u8> {
        self.doc.save_after(&point.0)
    }

    /// Adds the changes in `bytes` (saved by [`Doc::save_after`] or [`Doc::save`]) to the document.
    /// Changes it already holds are ignored, so loading the same bytes twice is harmless.
    ///
    /// Fails with [`Error::CorruptDocument`] if Automerge cannot apply the changes. Bytes that stop
    /// parsing part-way are loaded up to that point (Automerge logs a warning), so callers that must
    /// detect damage check their own framing first. Changes whose dependencies are missing are held
    /// back by Automerge until they arrive.
    pub fn load_incremental(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.doc
            .load_incremental(bytes)
            .map(|_| ())
            .map_err(|e| Error::CorruptDocument { reason: e.to_string() })
    }

    /// Materializes the whole state, skipping (and logging) malformed entries.
    pub fn state(&self) -> State {
        let mut state = State::default();
        for field in Field::ALL {
            for item in self.doc.map_range(self.maps.get(field), ..) {
                match schema::decode(field, &item.key, (&item.value).into()) {
                    Some(change) => schema::insert(&mut state, change),
                    None => tracing::warn!(map = field.name(), key = %item.key, "skipping a malformed entry"),
                }
            }
        }
        state
    }

    /// The current heads of the document, as hex change hashes.
    pub fn heads(&self) -> Vec<String> {
        self.doc.get_heads().iter().map(ToString::to_string).collect()
    }

    /// The next sync message for `peer`, or `None` when it is up to date or a message to it is
    /// still unanswered.
    pub fn generate_sync_message(&self, peer: &mut PeerSync) -> Option<Vec<u8>> {
        self.doc.generate_sync_message(&mut peer.0).map(sync::Message::encode)
    }

    /// Whether this document holds every change the peer last said it has (its heads), i.e. a
    /// sync with it has brought over everything it held then. False before it said anything.
    pub fn holds_heads_of(&self, peer: &PeerSync) -> bool {
        peer.0
            .their_heads
            .as_ref()
            .is_some_and(|heads| heads.iter().all(|h| self.doc.get_change_by_hash(h).is_some()))
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doc")
            .field("actor", &self.doc.get_actor().to_hex_string())
            .field("epoch", &self.epoch.number)
            .field("heads", &self.heads())
            .finish_non_exhaustive()
    }
}
