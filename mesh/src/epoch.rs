//! Epochs: the replicated document is bounded by moving, now and then, to a fresh document that holds
//! the live state only.
//!
//! An epoch is identified by its number and its *seed*, the hash of the change that starts it (see
//! [`crate::doc::Doc::start_epoch`]); epoch 0 is the genesis document. Epoch `n + 1` is built from
//! the state of epoch `n`'s document at a *cut* (a set of its heads), deterministically, so a node
//! that holds the cut builds byte-for-byte the document the proposer built, and checks the seed.
//! Of two epochs the greater number wins; of two proposals with the same number, the smaller seed
//! ([`EpochId::better_than`]).
//!
//! [`Replicas`] holds a node's current epoch document and the previous one. Changes that reach the
//! previous document after the switch (made concurrently in the old epoch, by a node that has not
//! switched yet) are *carried forward*: the [`crate::state::Change`]s they make are applied to the
//! current document too. At a switch the changes the old document holds beyond the cut are carried
//! forward the same way, as the [`diff`] of the state at the cut and the state now. Nothing here
//! does I/O; [`crate::store::Store`] persists, sessions announce epochs to peers
//! ([`crate::wire::Frame::Epoch`]).

use std::collections::BTreeMap;

use crate::Error;
use crate::doc::{Doc, PeerSync};
use crate::login::{FAMILY_PREFIX, LoginChange, REFRESH_PREFIX, SPENT_PREFIX};
use crate::state::{Change, State};

/// An epoch's identity: its number and the hash of its seed change (the genesis change's for 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochId {
    /// 0 for the genesis document, then one more per epoch change.
    pub number: u64,
    /// The hash of the change that starts the epoch.
    pub seed: [u8; 32],
}

impl EpochId {
    /// Whether a mesh holding both `self` and `other` moves to `self`: a greater number, or the
    /// same number and a smaller seed.
    pub fn better_than(&self, other: &EpochId) -> bool {
        self.number > other.number || (self.number == other.number && self.seed < other.seed)
    }
}

/// An epoch with the cut of the previous epoch's document it started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch number.
    pub number: u64,
    /// The hash of its seed change.
    pub seed: [u8; 32],
    /// The previous epoch document's heads its state was taken at (empty for epoch 0).
    pub cut: Vec<[u8; 32]>,
}

impl Epoch {
    /// The genesis epoch (number 0).
    pub fn genesis() -> Self {
        let id = crate::doc::genesis_id();
        Self {
            number: id.number,
            seed: id.seed,
            cut: Vec::new(),
        }
    }

    /// Its identity.
    pub fn id(&self) -> EpochId {
        EpochId {
            number: self.number,
            seed: self.seed,
        }
    }
}

/// What a node tells a peer about its epochs: the current one (with its cut, so the peer can build
/// it) and the previous one it still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The current epoch.
    pub current: Epoch,
    /// The previous epoch, while its document is held.
    pub previous: Option<EpochId>,
}

/// At most this many heads in an announced cut.
pub const MAX_CUT: usize = 1024;

impl Announce {
    /// A node holding only the genesis document.
    pub fn genesis() -> Self {
        Self {
            current: Epoch::genesis(),
            previous: None,
        }
    }

    /// The seeds of the epochs it holds.
    pub fn held(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        std::iter::once(self.current.seed).chain(self.previous.map(|p| p.seed))
    }

    /// Wire encoding: `number u64 ‖ seed [32] ‖ has_previous u8 ‖ (number u64 ‖ seed [32])?
    /// ‖ cut count u16 ‖ cut [32]·count`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(83 + 32 * self.current.cut.len());
        out.extend_from_slice(&self.current.number.to_be_bytes());
        out.extend_from_slice(&self.current.seed);
        match &self.previous {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.number.to_be_bytes());
                out.extend_from_slice(&p.seed);
            }
            None => out.push(0),
        }
        let cut = &self.current.cut[..self.current.cut.len().min(MAX_CUT)];
        out.extend_from_slice(&(cut.len() as u16).to_be_bytes());
        for head in cut {
            out.extend_from_slice(head);
        }
        out
    }

    /// Decodes [`Announce::encode`]'s layout exactly (no trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(bytes);
        let number = r.u64()?;
        let seed = r.hash()?;
        let previous = match r.take(1)?[0] {
            0 => None,
            1 => Some(EpochId {
                number: r.u64()?,
                seed: r.hash()?,
            }),
            _ => return Err(Error::MalformedFrame("Epoch has a bad previous-epoch flag")),
        };
        let count = u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
        if count > MAX_CUT {
            return Err(Error::MalformedFrame("Epoch has too many cut heads"));
        }
        let cut = (0..count).map(|_| r.hash()).collect::<Result<Vec<_>, _>>()?;
        if !r.0.is_empty() {
            return Err(Error::MalformedFrame("Epoch has trailing bytes"));
        }
        Ok(Self {
            current: Epoch { number, seed, cut },
            previous,
        })
    }
}

struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], Error> {
        if self.0.len() < n {
            return Err(Error::MalformedFrame("Epoch is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn hash(&mut self) -> Result<[u8; 32], Error> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
}

/// The put-changes that build `state` from an empty state, key events first (a record signed with
/// a rotated key verifies once its event is known), then each field in key order.
pub fn puts(state: &State) -> Vec<Change> {
    let mut out = Vec::new();
    out.extend(state.key_events.values().cloned().map(Change::PutKeyEvent));
    out.extend(state.clients.values().cloned().map(Change::PutClient));
    out.extend(state.keys.values().cloned().map(Change::PutKey));
    out.extend(state.revocations.iter().map(|(jti, exp)| Change::Revoke {
        jti: jti.clone(),
        exp: *exp,
    }));
    out.extend(state.admissions.values().cloned().map(Change::Admit));
    out.extend(state.nodes.values().cloned().map(Change::PutNode));
    out.extend(state.removals.values().cloned().map(Change::RemoveNode));
    out.extend(state.legacy_keys.values().cloned().map(Change::PutLegacyKey));
    out.extend(state.audit.values().cloned().map(Change::PutAudit));
    out.extend(state.plugin_signers.values().cloned().map(Change::TrustPluginSigner));
    out.extend(state.plugins.values().cloned().map(Change::PutPlugin));
    let login = |c: LoginChange| Change::Login(c);
    out.extend(state.users.values().cloned().map(LoginChange::PutUser).map(login));
    out.extend(state.consents.values().cloned().map(LoginChange::PutConsent).map(login));
    out.extend(
        state
            .refresh
            .tokens
            .values()
            .cloned()
            .map(LoginChange::PutRefresh)
            .map(login),
    );
    out.extend(
        state
            .refresh
            .spent
            .values()
            .cloned()
            .map(LoginChange::PutSpent)
            .map(login),
    );
    out.extend(
        state
            .refresh
            .revoked
            .values()
            .cloned()
            .map(LoginChange::RevokeFamily)
            .map(login),
    );
    out
}

/// The changes that take `from` to `to` when applied to `from` ([`State::apply`]): puts for new or
/// changed entries; removals of clients and keys that are gone; for revocations that are gone, a
/// drop up to their greatest expiry `m` followed by the puts that recreate every revocation of
/// `to` expiring at or before `m`. Admissions, node information, removals and key events only
/// grow: entries missing from `to` are not removed.
pub fn diff(from: &State, to: &State) -> Vec<Change> {
    let mut out = Vec::new();
    grow(&from.key_events, &to.key_events, &mut out, |e| {
        Change::PutKeyEvent(e.clone())
    });
    grow(&from.clients, &to.clients, &mut out, |c| Change::PutClient(c.clone()));
    out.extend(
        from.clients
            .keys()
            .filter(|id| !to.clients.contains_key(*id))
            .map(|id| Change::RemoveClient(id.clone())),
    );
    grow(&from.keys, &to.keys, &mut out, |k| Change::PutKey(k.clone()));
    out.extend(
        from.keys
            .keys()
            .filter(|kid| !to.keys.contains_key(*kid))
            .map(|kid| Change::RemoveKey(kid.clone())),
    );
    let dropped_up_to = from
        .revocations
        .iter()
        .filter(|(jti, _)| !to.revocations.contains_key(*jti))
        .map(|(_, exp)| *exp)
        .max();
    if let Some(m) = dropped_up_to {
        out.push(Change::DropExpiredRevocations { now: m });
    }
    for (jti, exp) in &to.revocations {
        let recreate = dropped_up_to.is_some_and(|m| *exp <= m);
        if recreate || from.revocations.get(jti) != Some(exp) {
            out.push(Change::Revoke {
                jti: jti.clone(),
                exp: *exp,
            });
        }
    }
    grow(&from.admissions, &to.admissions, &mut out, |a| Change::Admit(a.clone()));
    grow(&from.nodes, &to.nodes, &mut out, |n| Change::PutNode(n.clone()));
    grow(&from.removals, &to.removals, &mut out, |r| {
        Change::RemoveNode(r.clone())
    });
    sync_map(
        &from.legacy_keys,
        &to.legacy_keys,
        &mut out,
        |k| Change::PutLegacyKey(k.clone()),
        |kid| Change::RemoveLegacyKey(kid.to_owned()),
    );
    sync_map(
        &from.audit,
        &to.audit,
        &mut out,
        |a| Change::PutAudit(a.clone()),
        |id| Change::RemoveAudit(id.to_owned()),
    );
    // Plugin trust and plugin records only grow (removal is a tombstone record).
    grow(&from.plugin_signers, &to.plugin_signers, &mut out, |t| {
        Change::TrustPluginSigner(t.clone())
    });
    grow(&from.plugins, &to.plugins, &mut out, |p| Change::PutPlugin(p.clone()));
    let login = Change::Login;
    sync_map(
        &from.users,
        &to.users,
        &mut out,
        |u| login(LoginChange::PutUser(u.clone())),
        |name| login(LoginChange::RemoveUser(name.to_owned())),
    );
    sync_map(
        &from.consents,
        &to.consents,
        &mut out,
        |c| login(LoginChange::PutConsent(c.clone())),
        |key| login(LoginChange::RemoveConsent(key.to_owned())),
    );
    sync_map(
        &from.refresh.tokens,
        &to.refresh.tokens,
        &mut out,
        |r| login(LoginChange::PutRefresh(r.clone())),
        |id| login(LoginChange::Remove(format!("{REFRESH_PREFIX}{id}"))),
    );
    sync_map(
        &from.refresh.spent,
        &to.refresh.spent,
        &mut out,
        |r| login(LoginChange::PutSpent(r.clone())),
        |key| login(LoginChange::Remove(format!("{SPENT_PREFIX}{key}"))),
    );
    sync_map(
        &from.refresh.revoked,
        &to.refresh.revoked,
        &mut out,
        |r| login(LoginChange::RevokeFamily(r.clone())),
        |family| login(LoginChange::Remove(format!("{FAMILY_PREFIX}{family}"))),
    );
    out
}

/// Puts for new or changed entries of `to`, removals for entries gone from it.
fn sync_map<T: PartialEq>(
    from: &BTreeMap<String, T>,
    to: &BTreeMap<String, T>,
    out: &mut Vec<Change>,
    put: impl Fn(&T) -> Change,
    remove: impl Fn(&str) -> Change,
) {
    grow(from, to, out, put);
    out.extend(from.keys().filter(|k| !to.contains_key(*k)).map(|k| remove(k)));
}

fn grow<T: PartialEq>(
    from: &BTreeMap<String, T>,
    to: &BTreeMap<String, T>,
    out: &mut Vec<Change>,
    put: impl Fn(&T) -> Change,
) {
    out.extend(
        to.iter()
            .filter(|(key, value)| from.get(*key) != Some(*value))
            .map(|(_, value)| put(value)),
    );
}

/// A node's epoch documents: the current one, which it writes to, and the previous one while it is
/// held, whose late changes are carried forward into the current one.
#[derive(Debug)]
pub struct Replicas {
    current: Doc,
    previous: Option<Doc>,
    /// An epoch this node cannot build, being received from peers (see [`Replicas::offer`]).
    pending: Option<Doc>,
    actor: [u8; 16],
}

/// What [`Replicas::offer`] did with an announced epoch.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Offered {
    /// Nothing: the announced epoch is not better than the current one.
    Ignored,
    /// Not yet: the document it was cut from lacks some of the cut's changes (they come through
    /// the sync of that epoch), or that document is not held here.
    Waiting,
    /// This node moved to the announced epoch; the changes take the state before to the state after.
    Switched(Vec<Change>),
}

impl Replicas {
    /// A node's documents; it writes to the current one as `actor`.
    pub fn new(current: Doc, previous: Option<Doc>, actor: [u8; 16]) -> Self {
        Self {
            current,
            previous,
            pending: None,
            actor,
        }
    }

    /// The current epoch's document.
    pub fn current(&self) -> &Doc {
        &self.current
    }

    /// The current epoch's document, to write to.
    pub fn current_mut(&mut self) -> &mut Doc {
        &mut self.current
    }

    /// The previous epoch's document, while held.
    pub fn previous(&self) -> Option<&Doc> {
        self.previous.as_ref()
    }

    /// What to tell peers: the current epoch, and the other epoch synced with them — the one
    /// being received when there is one, else the previous one.
    pub fn announce(&self) -> Announce {
        Announce {
            current: self.current.epoch().clone(),
            previous: self.pending.as_ref().or(self.previous.as_ref()).map(|p| p.epoch().id()),
        }
    }

    /// The next sync message of epoch `seed` for a peer (`None` if the epoch is not held here).
    pub fn generate(&self, seed: &[u8; 32], sync: &mut PeerSync) -> Option<Vec<u8>> {
        self.held(seed)?.generate_sync_message(sync)
    }

    /// Applies a peer's sync message of epoch `seed` and returns how the state (the current
    /// document's) changed. A message of the previous epoch is applied there and the changes it
    /// made are carried forward into the current document (a local change stamped `now`); one of
    /// an epoch not held here is ignored.
    pub fn receive(
        &mut self,
        seed: &[u8; 32],
        sync: &mut PeerSync,
        message: &[u8],
        now: u64,
    ) -> Result<Vec<Change>, Error> {
        if self.current.epoch().seed == *seed {
            return self.current.receive_sync_message(sync, message);
        }
        if let Some(pending) = self.pending.as_mut().filter(|p| p.epoch().seed == *seed) {
            pending.receive_sync_message(sync, message)?;
            if !pending.has_seed() {
                return Ok(Vec::new());
            }
            return self.adopt_pending(now);
        }
        let Some(previous) = self.previous.as_mut().filter(|p| p.epoch().seed == *seed) else {
            return Ok(Vec::new());
        };
        let changes = previous.receive_sync_message(sync, message)?;
        self.carry(&changes, now)
    }

    /// Starts the next epoch from the current document at its heads; the current document becomes
    /// the previous one. The state is unchanged.
    pub fn start_next(&mut self) {
        let cut = self.current.head_hashes();
        let state = self.current.state();
        let next = Doc::start_epoch(self.current.epoch().number + 1, &cut, &state, self.actor);
        self.previous = Some(std::mem::replace(&mut self.current, next));
    }

    /// Moves to the announced epoch if it is better than the current one and can be built here:
    /// the document of the epoch before it (the current or the previous one) holds its cut, and
    /// the epoch built from that document at the cut has the announced seed. What that document
    /// holds beyond the cut, and what the current document holds beyond its own seed when it is
    /// a losing proposal of the same number, is carried forward (local changes stamped `now`).
    ///
    /// A node that holds no document the epoch can have been cut from (it missed an epoch: it was
    /// offline across two epoch changes, or it is new to a mesh past epoch 1) receives the epoch
    /// from its peers instead: it starts an empty document labelled with the epoch, announces it
    /// as the other epoch it holds so peers sync it, and moves to it once it holds the seed
    /// change; of its own state it carries forward what only grows (admissions, node information,
    /// removals, key events) and the revocations the epoch lacks.
    pub fn offer(&mut self, announce: &Announce, now: u64) -> Result<Offered, Error> {
        let announced = &announce.current;
        let ours = self.current.epoch().id();
        if !announced.id().better_than(&ours) || announced.number == 0 {
            return Ok(Offered::Ignored);
        }
        // The document the epoch was cut from: the epoch before it, the one the peer still holds
        // when it says which.
        let cut_from = |doc: &&Doc| {
            doc.epoch().number + 1 == announced.number
                && announce
                    .previous
                    .is_none_or(|p| p.number + 1 != announced.number || p.seed == doc.epoch().seed)
        };
        let base_is_current = cut_from(&&self.current);
        let base = if base_is_current {
            Some(&self.current)
        } else {
            self.previous.as_ref().filter(cut_from)
        };
        let Some(base) = base else {
            if self
                .pending
                .as_ref()
                .is_none_or(|p| announced.id().better_than(&p.epoch().id()))
            {
                self.pending = Some(Doc::awaiting(announced.clone(), self.actor));
            }
            return Ok(Offered::Waiting);
        };
        if !base.contains(&announced.cut) {
            return Ok(Offered::Waiting);
        }
        let at_cut = base.state_at(&announced.cut);
        let mut next = Doc::start_epoch(announced.number, &announced.cut, &at_cut, self.actor);
        if next.epoch().seed != announced.seed {
            tracing::warn!(
                epoch = announced.number,
                "an announced epoch does not match the one built from its cut; staying"
            );
            return Ok(Offered::Ignored);
        }
        let before = self.current.state();
        let mut carried = diff(&at_cut, &base.state());
        if !base_is_current {
            // A losing proposal of the same number: what it gained beyond its own seed.
            let seed = [self.current.epoch().seed];
            carried.extend(diff(&self.current.state_at(&seed), &before));
        }
        next.apply(&carried, now)?;
        let after = next.state();
        let old = std::mem::replace(&mut self.current, next);
        if base_is_current {
            self.previous = Some(old);
        }
        self.pending = None;
        Ok(Offered::Switched(diff(&before, &after)))
    }

    /// Moves to the epoch received from peers, carrying forward what only grows and the
    /// revocations it lacks.
    fn adopt_pending(&mut self, now: u64) -> Result<Vec<Change>, Error> {
        let Some(mut next) = self.pending.take() else {
            return Ok(Vec::new());
        };
        let before = self.current.state();
        let received = next.state();
        let mut carried = diff(&received, &before);
        carried.retain(|change| {
            matches!(
                change,
                Change::Admit(_) | Change::PutNode(_) | Change::RemoveNode(_) | Change::PutKeyEvent(_)
            ) || matches!(change, Change::Revoke { jti, .. } if !received.revocations.contains_key(jti))
        });
        next.apply(&carried, now)?;
        tracing::info!(
            epoch = next.epoch().number,
            carried = carried.len(),
            "received an epoch this node could not build from peers"
        );
        let after = next.state();
        self.current = next;
        self.previous = None;
        Ok(diff(&before, &after))
    }

    fn held(&self, seed: &[u8; 32]) -> Option<&Doc> {
        std::iter::once(&self.current)
            .chain(self.pending.as_ref())
            .chain(self.previous.as_ref())
            .find(|d| d.epoch().seed == *seed)
    }

    /// Applies changes that reached the previous document to the current one.
    fn carry(&mut self, changes: &[Change], now: u64) -> Result<Vec<Change>, Error> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // A document and a state apply a change alike, so these are also the state's changes.
        self.current.apply(changes, now)?;
        Ok(changes.to_vec())
    }
}
