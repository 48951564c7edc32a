//! A simulated node's document as its sessions see it: a plain [`Doc`] plus the membership view.

use std::collections::BTreeSet;

use mesh::did::DidKey;
use mesh::doc::{Doc, PeerSync};
use mesh::identity::NodeIdentity;
use mesh::session::Document;
use mesh::state::Change;

/// A node's document as its sessions see it.
pub(super) struct Replica {
    pub(super) doc: Doc,
    pub(super) me: DidKey,
    pub(super) trusted: Vec<DidKey>,
    pub(super) members: BTreeSet<DidKey>,
    pub(super) heads: Vec<String>,
    pub(super) heads_moved: bool,
}

impl Replica {
    pub(super) fn new(doc: Doc, me: DidKey, trusted: Vec<DidKey>) -> Self {
        let members = doc.state().members(&me, &trusted);
        let heads = doc.heads();
        Self {
            doc,
            me,
            trusted,
            members,
            heads,
            heads_moved: false,
        }
    }

    /// Re-reads the heads, noting whether they moved.
    pub(super) fn refresh(&mut self) {
        let heads = self.doc.heads();
        if heads != self.heads {
            self.heads = heads;
            self.heads_moved = true;
        }
    }
}

impl Document for Replica {
    fn is_member(&self, did: &DidKey) -> bool {
        self.members.contains(did)
    }

    fn generate(&mut self, _peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.doc.generate_sync_message(sync)
    }

    fn receive(&mut self, _peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String> {
        let changes = self
            .doc
            .receive_sync_message(sync, message)
            .map_err(|e| e.to_string())?;
        if changes.is_empty() {
            return Ok(());
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Admit(_) | Change::RemoveNode(_)))
        {
            self.members = self.doc.state().members(&self.me, &self.trusted);
        }
        self.refresh();
        Ok(())
    }
}

/// A node writes as the first 16 bytes of its public key.
pub(super) fn actor(identity: &NodeIdentity) -> [u8; 16] {
    let mut actor = [0; 16];
    actor.copy_from_slice(&identity.did().public_key()[..16]);
    actor
}
