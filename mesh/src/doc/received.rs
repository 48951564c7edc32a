//! From the patches Automerge logged while applying a peer's changes to the [`Change`]s that take
//! the previous state to the new one.
//!
//! The last patch on an entry gives its new winning value (or its deletion); an entry that only
//! gained a losing conflict is read back from the document. Each value is decoded exactly as
//! [`super::Doc::state`] decodes it, so malformed values resolve the same way.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ChangeHash, Patch, PatchAction, Prop, ReadDoc};

use super::schema::{self, Field, Maps};
use crate::state::Change;

/// What the patches say about one touched entry.
enum Touch<'a> {
    /// Its winning value is now this.
    Put(&'a automerge::Value<'static>),
    /// It is gone.
    Deleted,
    /// Something else happened to it (a new, losing conflict): read it back.
    Reread,
}

/// At most this many deleted revocations are looked up one by one at the previous heads; more are
/// found with one scan of the previous revocations.
const LOOKUPS_BEFORE_SCAN: usize = 64;

/// The changes that take the state at `before` to the document's current state, given the patches
/// logged in between.
pub(super) fn changes(doc: &Automerge, maps: &Maps, before: &[ChangeHash], patches: &[Patch]) -> Vec<Change> {
    let mut touched: [BTreeMap<&str, Touch<'_>>; 6] = Default::default();
    for patch in patches {
        let Some(field) = maps.field_of(&patch.obj) else {
            continue;
        };
        let touched = &mut touched[field as usize];
        match &patch.action {
            PatchAction::PutMap { key, value, .. } => {
                touched.insert(key, Touch::Put(&value.0));
            }
            PatchAction::DeleteMap { key } => {
                touched.insert(key, Touch::Deleted);
            }
            PatchAction::Conflict { prop: Prop::Map(key) }
            | PatchAction::Increment {
                prop: Prop::Map(key), ..
            } => {
                touched.entry(key).or_insert(Touch::Reread);
            }
            _ => {}
        }
    }
    let mut changes = Vec::new();
    for field in Field::ALL {
        let touched = &touched[field as usize];
        if field == Field::Revocations {
            if !touched.is_empty() {
                revocations(doc, maps, before, touched, &mut changes);
            }
            continue;
        }
        for (key, touch) in touched {
            match current(doc, maps, field, key, touch) {
                Some(change) => changes.push(change),
                None => match field {
                    Field::Clients if crate::login::is_login_key(key) => {
                        changes.push(Change::Login(crate::login::removal(key)))
                    }
                    Field::Clients => changes.push(Change::RemoveClient((*key).to_owned())),
                    Field::Keys => match key.strip_prefix(crate::legacy::LEGACY_KEY_PREFIX) {
                        Some(kid) => changes.push(Change::RemoveLegacyKey(kid.to_owned())),
                        None => changes.push(Change::RemoveKey((*key).to_owned())),
                    },
                    Field::Nodes if key.starts_with(schema::AUDIT_PREFIX) => {
                        changes.push(Change::RemoveAudit(key[schema::AUDIT_PREFIX.len()..].to_owned()));
                    }
                    _ => tracing::warn!(
                        map = field.name(),
                        key,
                        "a peer deleted or garbled an entry of a grow-only map; keeping it in views"
                    ),
                },
            }
        }
    }
    // Key events first: a record signed with a rotated key verifies only once its event is known.
    changes.sort_by_key(|change| !matches!(change, Change::PutKeyEvent(_)));
    changes
}

/// The put-change recreating the current entry `key` of `field`, if present and well formed.
fn current(doc: &Automerge, maps: &Maps, field: Field, key: &str, touch: &Touch<'_>) -> Option<Change> {
    match touch {
        Touch::Put(value) => schema::decode(field, key, (*value).into()),
        Touch::Deleted => None,
        Touch::Reread => {
            let (value, _) = doc.get(maps.get(field), key).ok()??;
            schema::decode(field, key, (&value).into())
        }
    }
}

/// Changes for the touched revocations: puts for the ones present, and for the ones gone (deleted
/// or left malformed) a drop up to their greatest previous expiry `m` followed by puts recreating
/// every remaining revocation that expires at or before `m`.
fn revocations(
    doc: &Automerge,
    maps: &Maps,
    before: &[ChangeHash],
    touched: &BTreeMap<&str, Touch<'_>>,
    changes: &mut Vec<Change>,
) {
    let map = maps.get(Field::Revocations);
    let mut present = Vec::new();
    let mut gone = BTreeSet::new();
    for (key, touch) in touched {
        match current(doc, maps, Field::Revocations, key, touch) {
            Some(change) => present.push(change),
            None => {
                gone.insert(*key);
            }
        }
    }
    let expiry = |change: Option<Change>| match change {
        Some(Change::Revoke { exp, .. }) => Some(exp),
        _ => None,
    };
    let dropped_up_to = if gone.len() <= LOOKUPS_BEFORE_SCAN {
        gone.iter()
            .filter_map(|key| {
                let (value, _) = doc.get_at(map, *key, before).ok()??;
                expiry(schema::decode(Field::Revocations, key, (&value).into()))
            })
            .max()
    } else {
        doc.map_range_at(map, .., before)
            .filter(|item| gone.contains(item.key.as_ref()))
            .filter_map(|item| expiry(schema::decode(Field::Revocations, &item.key, (&item.value).into())))
            .max()
    };
    if let Some(m) = dropped_up_to {
        changes.push(Change::DropExpiredRevocations { now: m });
        changes.extend(
            doc.map_range(map, ..)
                .filter_map(|item| schema::decode(Field::Revocations, &item.key, (&item.value).into()))
                .filter(|change| matches!(change, Change::Revoke { exp, .. } if *exp <= m)),
        );
    }
    changes.extend(
        present
            .into_iter()
            .filter(|change| !matches!((change, dropped_up_to), (Change::Revoke { exp, .. }, Some(m)) if *exp <= m)),
    );
}
