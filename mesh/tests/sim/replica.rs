//! A simulated node's documents as its sessions see them: its epoch documents ([`Replicas`]) plus
//! the membership view.

use std::collections::BTreeSet;

use mesh::did::DidKey;
use mesh::doc::{Doc, PeerSync};
use mesh::epoch::{Announce, Epoch, Offered, Replicas};
use mesh::identity::NodeIdentity;
use mesh::session::Document;
use mesh::state::Change;

/// A node's documents as its sessions see them.
pub(super) struct Replica {
    pub(super) docs: Replicas,
    pub(super) me: DidKey,
    pub(super) trusted: Vec<DidKey>,
    pub(super) members: BTreeSet<DidKey>,
    /// The document's key events (a state holding nothing else), for handshakes.
    key_events: mesh::state::State,
    pub(super) heads: Vec<String>,
    pub(super) heads_moved: bool,
    /// Unix seconds now, stamped on changes carried forward from the previous epoch.
    pub(super) unix_now: u64,
}

impl Replica {
    pub(super) fn new(docs: Replicas, me: DidKey, trusted: Vec<DidKey>) -> Self {
        let state = docs.current().state();
        let members = state.members(&me, &trusted);
        let key_events = key_events(&state);
        let heads = docs.current().heads();
        Self {
            docs,
            me,
            trusted,
            members,
            key_events,
            heads,
            heads_moved: false,
            unix_now: 0,
        }
    }

    /// The current epoch's document.
    pub(super) fn doc(&self) -> &Doc {
        self.docs.current()
    }

    /// Re-reads the heads, noting whether they moved.
    pub(super) fn refresh(&mut self) {
        let heads = self.docs.current().heads();
        if heads != self.heads {
            self.heads = heads;
            self.heads_moved = true;
        }
    }

    pub(super) fn changed(&mut self, changes: &[Change]) {
        if changes
            .iter()
            .any(|c| matches!(c, Change::Admit(_) | Change::RemoveNode(_)))
        {
            self.members = self.docs.current().state().members(&self.me, &self.trusted);
        }
        if changes.iter().any(|c| matches!(c, Change::PutKeyEvent(_))) {
            self.key_events = key_events(&self.docs.current().state());
        }
        self.refresh();
    }
}

impl Document for Replica {
    fn is_member(&self, did: &DidKey) -> bool {
        self.members.contains(did)
    }

    fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.key_events.current_key(did)
    }

    fn extends_chain(&self, event: &mesh::kel::KeyEvent) -> bool {
        self.key_events.extends_chain(event)
    }

    fn generate(&mut self, _peer: &DidKey, sync: &mut PeerSync) -> Option<Vec<u8>> {
        let seed = Epoch::genesis().seed;
        self.docs.generate(&seed, sync)
    }

    fn receive(&mut self, peer: &DidKey, sync: &mut PeerSync, message: &[u8]) -> Result<(), String> {
        let seed = Epoch::genesis().seed;
        self.receive_in(peer, &seed, sync, message)
    }

    fn epochs(&self) -> Announce {
        self.docs.announce()
    }

    fn generate_in(&mut self, _peer: &DidKey, seed: &[u8; 32], sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.docs.generate(seed, sync)
    }

    fn receive_in(
        &mut self,
        _peer: &DidKey,
        seed: &[u8; 32],
        sync: &mut PeerSync,
        message: &[u8],
    ) -> Result<(), String> {
        let changes = self
            .docs
            .receive(seed, sync, message, self.unix_now)
            .map_err(|e| e.to_string())?;
        if !changes.is_empty() {
            self.changed(&changes);
        }
        Ok(())
    }

    fn offer(&mut self, _peer: &DidKey, announce: &Announce) {
        match self.docs.offer(announce, self.unix_now) {
            Ok(Offered::Switched(changes)) => {
                self.changed(&changes);
                // The heads are another document's now, even if the state did not change.
                self.heads_moved = true;
            }
            Ok(_) => {}
            Err(e) => panic!("moving to a peer's epoch failed: {e}"),
        }
    }
}

/// A state holding only the key events of `state`.
fn key_events(state: &mesh::state::State) -> mesh::state::State {
    mesh::state::State {
        key_events: state.key_events.clone(),
        ..Default::default()
    }
}

/// A node writes as the first 16 bytes of its public key.
pub(super) fn actor(identity: &NodeIdentity) -> [u8; 16] {
    let mut actor = [0; 16];
    actor.copy_from_slice(&identity.did().public_key()[..16]);
    actor
}
