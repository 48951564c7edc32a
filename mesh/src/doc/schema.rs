//! The document's layout: the genesis change that creates it, the maps it holds, and how each
//! map entry is encoded (records as JSON string scalars, revocations as `uint` expiries).

use std::sync::OnceLock;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, ValueRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{GENESIS_ACTOR, SCHEMA_MAJOR};
use crate::Error;
use crate::kel::KeyEvent;
use crate::legacy::{LEGACY_KEY_PREFIX, LegacyKey};
use crate::plugin::{PluginRecord, PluginTrust};
use crate::state::{Admission, AuditRecord, Change, ClientRecord, KeyRecord, NodeInfo, Removal, State};

/// The message of the genesis change. Part of the genesis hash: never change it within a major.
const GENESIS_MESSAGE: &str = "meshgate genesis";
/// The minor version the genesis change records. Part of the genesis hash: it stays 0 within major
/// 1 whatever [`super::SCHEMA_MINOR`] this build writes.
const GENESIS_MINOR: u64 = 0;
/// Key events (schema minor 1) live in the `nodes` map under this prefix followed by
/// [`KeyEvent::key`]. No DID starts with it, so they never collide with node information; a build
/// of minor 0 finds entries that do not parse as node information and skips them.
pub(super) const KEY_EVENT_PREFIX: &str = "key-event|";
/// Audit records (schema minor 2) live in the `nodes` map under this prefix followed by
/// [`AuditRecord::id`], for the same reasons as key events.
pub(super) const AUDIT_PREFIX: &str = "audit|";
/// Plugin trust records live in the `nodes` map under this prefix followed by the signer's DID,
/// for the same reason as key events; builds without plugins skip them as malformed.
pub(super) const PLUGIN_TRUST_PREFIX: &str = "plugin-trust|";
/// Plugin records live in the `nodes` map under this prefix followed by the plugin's name.
pub(super) const PLUGIN_PREFIX: &str = "plugin|";
/// Root key of the schema version map.
pub(super) const SCHEMA_KEY: &str = "schema";
/// Keys of the schema version map.
pub(super) const MAJOR_KEY: &str = "major";
pub(super) const MINOR_KEY: &str = "minor";

/// One of the maps holding a [`State`] field, named as at the document's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Clients,
    Keys,
    Revocations,
    Admissions,
    Nodes,
    Removals,
}

impl Field {
    /// Every field, in genesis order (which fixes the objects' ids: never reorder within a major).
    pub(super) const ALL: [Field; 6] = [
        Field::Clients,
        Field::Keys,
        Field::Revocations,
        Field::Admissions,
        Field::Nodes,
        Field::Removals,
    ];

    /// The field's key at the document's root.
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::Clients => "clients",
            Field::Keys => "keys",
            Field::Revocations => "revocations",
            Field::Admissions => "admissions",
            Field::Nodes => "nodes",
            Field::Removals => "removals",
        }
    }
}

/// The map objects created by the genesis change, one per [`Field`].
///
/// Entries are always read and written through these ids, never looked up by name at the root, so
/// a peer that (wrongly) replaces a root key cannot redirect this node to another object.
#[derive(Debug, Clone)]
pub(super) struct Maps([ObjId; 6]);

impl Maps {
    /// The genesis objects of a document that contains the genesis change.
    pub(super) fn of(doc: &Automerge) -> Result<Self, Error> {
        let genesis = [genesis_hash()];
        if doc.get_change_by_hash(&genesis[0]).is_none() {
            return Err(corrupt("it does not contain meshgate's genesis change"));
        }
        let mut ids = Vec::with_capacity(Field::ALL.len());
        for field in Field::ALL {
            match doc.get_at(ROOT, field.name(), &genesis) {
                Ok(Some((automerge::Value::Object(ObjType::Map), id))) => ids.push(id),
                _ => return Err(corrupt("its genesis change lacks a map")),
            }
        }
        let ids: [ObjId; 6] = ids.try_into().map_err(|_| corrupt("its genesis change lacks a map"))?;
        Ok(Self(ids))
    }

    /// The map holding `field`.
    pub(super) fn get(&self, field: Field) -> &ObjId {
        &self.0[field as usize]
    }

    /// Which field `obj` holds, if it is one of the maps.
    pub(super) fn field_of(&self, obj: &ObjId) -> Option<Field> {
        Field::ALL.into_iter().find(|field| self.get(*field) == obj)
    }
}

/// A fresh document holding only the genesis change, with the genesis actor.
///
/// Every node builds exactly the same change (same actor, sequence number, time, message and
/// operations), hence the same hash, so independently started nodes share their root objects.
pub(super) fn genesis() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(GENESIS_ACTOR));
    let mut tx = doc.transaction();
    create_roots(&mut tx).expect("writing to the root of an empty document cannot fail");
    tx.commit_with(CommitOptions::default().with_message(GENESIS_MESSAGE).with_time(0));
    doc
}

fn create_roots(tx: &mut impl Transactable) -> Result<(), automerge::AutomergeError> {
    let schema = tx.put_object(ROOT, SCHEMA_KEY, ObjType::Map)?;
    tx.put(&schema, MAJOR_KEY, SCHEMA_MAJOR)?;
    tx.put(&schema, MINOR_KEY, GENESIS_MINOR)?;
    for field in Field::ALL {
        tx.put_object(ROOT, field.name(), ObjType::Map)?;
    }
    Ok(())
}

/// The hash of the genesis change.
pub(super) fn genesis_hash() -> ChangeHash {
    static HASH: OnceLock<ChangeHash> = OnceLock::new();
    *HASH.get_or_init(|| genesis().get_heads()[0])
}

/// The schema version recorded at the document's root, if well formed.
pub(super) fn schema_version(doc: &Automerge) -> Option<(u64, u64)> {
    let Ok(Some((automerge::Value::Object(ObjType::Map), schema))) = doc.get(ROOT, SCHEMA_KEY) else {
        return None;
    };
    let read = |key| match doc.get(&schema, key) {
        Ok(Some((automerge::Value::Scalar(value), _))) => match value.as_ref() {
            ScalarValue::Uint(n) => Some(*n),
            _ => None,
        },
        _ => None,
    };
    Some((read(MAJOR_KEY)?, read(MINOR_KEY)?))
}

/// Records [`super::SCHEMA_MINOR`] at the root if the recorded minor is older.
pub(super) fn record_minor(tx: &mut automerge::transaction::Transaction<'_>) -> Result<(), automerge::AutomergeError> {
    let Some((automerge::Value::Object(ObjType::Map), schema)) = tx.get(ROOT, SCHEMA_KEY)? else {
        return Ok(());
    };
    let recorded = match tx.get(&schema, MINOR_KEY)? {
        Some((automerge::Value::Scalar(value), _)) => match value.as_ref() {
            ScalarValue::Uint(n) => *n,
            _ => 0,
        },
        _ => 0,
    };
    if recorded < super::SCHEMA_MINOR {
        tx.put(&schema, MINOR_KEY, super::SCHEMA_MINOR)?;
    }
    Ok(())
}

/// What a [`Change`] writes to the document.
pub(super) enum Write {
    /// Put a value under a key of a field's map.
    Put(Field, String, ScalarValue),
    /// Delete a key of a field's map.
    Delete(Field, String),
    /// Delete every revocation with an expiry at or before this time.
    DropExpiredRevocations(u64),
}

/// The write a change makes.
pub(super) fn write(change: &Change) -> Result<Write, Error> {
    Ok(match change {
        Change::PutClient(client) => Write::Put(Field::Clients, client.client_id.clone(), json(client)?),
        Change::RemoveClient(client_id) => Write::Delete(Field::Clients, client_id.clone()),
        Change::PutKey(key) => Write::Put(Field::Keys, key.kid.clone(), json(key)?),
        Change::RemoveKey(kid) => Write::Delete(Field::Keys, kid.clone()),
        Change::Revoke { jti, exp } => Write::Put(Field::Revocations, jti.clone(), ScalarValue::Uint(*exp)),
        Change::DropExpiredRevocations { now } => Write::DropExpiredRevocations(*now),
        Change::Admit(admission) => Write::Put(Field::Admissions, admission.key(), json(admission)?),
        Change::PutNode(info) => Write::Put(Field::Nodes, info.did.to_string(), json(info)?),
        Change::RemoveNode(removal) => Write::Put(Field::Removals, removal.key(), json(removal)?),
        Change::PutKeyEvent(event) => {
            Write::Put(Field::Nodes, format!("{KEY_EVENT_PREFIX}{}", event.key()), json(event)?)
        }
        Change::PutLegacyKey(key) => Write::Put(Field::Keys, key.entry(), json(key)?),
        Change::RemoveLegacyKey(kid) => Write::Delete(Field::Keys, format!("{LEGACY_KEY_PREFIX}{kid}")),
        Change::PutAudit(record) => Write::Put(Field::Nodes, format!("{AUDIT_PREFIX}{}", record.id), json(record)?),
        Change::RemoveAudit(id) => Write::Delete(Field::Nodes, format!("{AUDIT_PREFIX}{id}")),
        Change::Login(change) => match change.entry() {
            (key, Some(text)) => Write::Put(Field::Clients, key, ScalarValue::Str(text.into())),
            (key, None) => Write::Delete(Field::Clients, key),
        },
        Change::TrustPluginSigner(trust) => Write::Put(
            Field::Nodes,
            format!("{PLUGIN_TRUST_PREFIX}{}", trust.key()),
            json(trust)?,
        ),
        Change::PutPlugin(record) => {
            Write::Put(Field::Nodes, format!("{PLUGIN_PREFIX}{}", record.key()), json(record)?)
        }
    })
}

fn json(record: &impl Serialize) -> Result<ScalarValue, Error> {
    serde_json::to_string(record)
        .map(|s| ScalarValue::Str(s.into()))
        .map_err(|e| Error::DocumentChange { reason: e.to_string() })
}

/// A stored entry's value, as far as the schema cares.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stored<'a> {
    /// A string scalar.
    Str(&'a str),
    /// An unsigned integer scalar.
    Uint(u64),
    /// Anything else (another scalar type or an object): malformed in every map.
    Other,
}

impl<'a> From<&'a ValueRef<'_>> for Stored<'a> {
    fn from(value: &'a ValueRef<'_>) -> Self {
        match value {
            ValueRef::Scalar(ScalarValueRef::Str(text)) => Stored::Str(text),
            ValueRef::Scalar(ScalarValueRef::Uint(n)) => Stored::Uint(*n),
            _ => Stored::Other,
        }
    }
}

impl<'a> From<&'a automerge::Value<'_>> for Stored<'a> {
    fn from(value: &'a automerge::Value<'_>) -> Self {
        match value {
            automerge::Value::Scalar(scalar) => match scalar.as_ref() {
                ScalarValue::Str(text) => Stored::Str(text),
                ScalarValue::Uint(n) => Stored::Uint(*n),
                _ => Stored::Other,
            },
            automerge::Value::Object(_) => Stored::Other,
        }
    }
}

/// The put-change that recreates the entry `key` → `value` of `field`, or `None` if the entry is
/// malformed: not the expected scalar, unparseable JSON, or a record whose own id is not `key`.
pub(super) fn decode(field: Field, key: &str, value: Stored<'_>) -> Option<Change> {
    let text = match (field, value) {
        (Field::Revocations, Stored::Uint(exp)) => {
            return Some(Change::Revoke {
                jti: key.to_owned(),
                exp,
            });
        }
        (Field::Revocations, _) => return None,
        (_, Stored::Str(text)) => text,
        _ => return None,
    };
    let change = match field {
        Field::Clients if crate::login::is_login_key(key) => Change::Login(crate::login::decode(key, text)?),
        Field::Clients => Change::PutClient(record(text, key, |c: &ClientRecord| c.client_id.clone())?),
        Field::Keys => match key.strip_prefix(LEGACY_KEY_PREFIX) {
            Some(kid) => Change::PutLegacyKey(record(text, kid, |k: &LegacyKey| k.kid.clone())?),
            None => Change::PutKey(record(text, key, |k: &KeyRecord| k.kid.clone())?),
        },
        Field::Admissions => Change::Admit(record(text, key, Admission::key)?),
        Field::Nodes => {
            if let Some(key) = key.strip_prefix(KEY_EVENT_PREFIX) {
                Change::PutKeyEvent(record(text, key, KeyEvent::key)?)
            } else if let Some(key) = key.strip_prefix(AUDIT_PREFIX) {
                Change::PutAudit(record(text, key, |a: &AuditRecord| a.id.clone())?)
            } else if let Some(key) = key.strip_prefix(PLUGIN_TRUST_PREFIX) {
                Change::TrustPluginSigner(record(text, key, PluginTrust::key)?)
            } else if let Some(key) = key.strip_prefix(PLUGIN_PREFIX) {
                Change::PutPlugin(record(text, key, PluginRecord::key)?)
            } else {
                Change::PutNode(record(text, key, |n: &NodeInfo| n.did.to_string())?)
            }
        }
        Field::Removals => Change::RemoveNode(record(text, key, Removal::key)?),
        Field::Revocations => return None,
    };
    Some(change)
}

/// The record `text` holds, if it parses and its own id is `key`.
fn record<T: DeserializeOwned>(text: &str, key: &str, id: impl Fn(&T) -> String) -> Option<T> {
    serde_json::from_str(text).ok().filter(|record| id(record) == key)
}

/// Whether the stored `current` value already equals what a put would write.
pub(super) fn unchanged(current: &automerge::Value<'_>, new: &ScalarValue) -> bool {
    matches!(current, automerge::Value::Scalar(current) if current.as_ref() == new)
}

/// Adds the entry a put-change describes to `state`, moving the record in.
pub(super) fn insert(state: &mut State, change: Change) {
    match change {
        Change::PutClient(c) => {
            state.clients.insert(c.client_id.clone(), c);
        }
        Change::PutKey(k) => {
            state.keys.insert(k.kid.clone(), k);
        }
        Change::Revoke { jti, exp } => {
            state.revocations.insert(jti, exp);
        }
        Change::Admit(a) => {
            state.admissions.insert(a.key(), a);
        }
        Change::PutNode(n) => {
            state.nodes.insert(n.did.to_string(), n);
        }
        Change::RemoveNode(r) => {
            state.removals.insert(r.key(), r);
        }
        Change::PutKeyEvent(e) => {
            state.key_events.insert(e.key(), e);
        }
        Change::PutLegacyKey(k) => {
            state.legacy_keys.insert(k.kid.clone(), k);
        }
        Change::PutAudit(a) => {
            state.audit.insert(a.id.clone(), a);
        }
        Change::TrustPluginSigner(t) => {
            state.plugin_signers.insert(t.key(), t);
        }
        Change::PutPlugin(p) => {
            state.plugins.insert(p.key(), p);
        }
        other => state.apply(&other),
    }
}

fn corrupt(reason: &str) -> Error {
    Error::CorruptDocument {
        reason: reason.to_owned(),
    }
}
