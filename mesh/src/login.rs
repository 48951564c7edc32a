//! Replicated records of people and their grants: users, remembered consents and refresh-token
//! families (issued tokens, spent records and revoked families).
//!
//! They live in the document's `clients` map under key prefixes (`user|`, `consent|`, `refresh|`,
//! `spent|`, `family|`) that no client id carries, so the document's genesis (and with it every
//! existing mesh) stays the same; a build that does not know them skips the entries as malformed
//! clients.
//!
//! Refresh-token reuse detection is designed for merges: rotating token `p` into `c` writes the
//! spent record `p|c`. Two different children of one parent — a reuse, wherever and whenever it
//! happened, including on both sides of a partition — are two different keys, so both survive the
//! merge and [`RefreshState::reused_parents`] finds them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::state::State;

/// Key prefix of users in the `clients` map.
pub const USER_PREFIX: &str = "user|";
/// Key prefix of consents.
pub const CONSENT_PREFIX: &str = "consent|";
/// Key prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "refresh|";
/// Key prefix of spent records.
pub const SPENT_PREFIX: &str = "spent|";
/// Key prefix of revoked families.
pub const FAMILY_PREFIX: &str = "family|";

/// A person who logs in with a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The login name (unique).
    pub username: String,
    /// The stable subject identifier tokens carry (`sub`).
    pub sub: String,
    /// The password hash: an argon2 PHC string, or an imported PBKDF2 hash (`$pbkdf2-sha256$i=N$SALT$HASH`).
    pub password: String,
    /// Full name (`name` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address (`email` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// When the user was added (Unix seconds).
    pub created_at: u64,
    /// When the record last changed (password change; Unix seconds).
    pub updated_at: u64,
}

/// A user's remembered consent to a client's scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// The user's login name.
    pub username: String,
    /// The client.
    pub client_id: String,
    /// The consented scopes.
    pub scopes: Vec<String>,
    /// When (Unix seconds).
    pub granted_at: u64,
}

impl ConsentRecord {
    /// Its key: `"{username}|{client_id}"`.
    pub fn key(&self) -> String {
        consent_key(&self.username, &self.client_id)
    }
}

/// The key of `username`'s consent to `client_id`.
pub fn consent_key(username: &str, client_id: &str) -> String {
    format!("{username}|{client_id}")
}

/// An issued refresh token: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// SHA-256 of the token, base64url.
    pub id: String,
    /// The family (every rotation of one grant shares it).
    pub family: String,
    /// The token this one replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The client it was issued to.
    pub client_id: String,
    /// The user's login name.
    pub username: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Audiences of its access tokens.
    pub aud: Vec<String>,
    /// When the user authenticated.
    pub auth_time: u64,
    /// The `acr` of the authentication, if one was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// When it was issued.
    pub issued_at: u64,
    /// When the family expires: neither this token nor its successors are valid after.
    pub expires_at: u64,
    /// The access token issued with it (`jti`, `exp`), revoked with the family.
    pub access_jti: String,
    /// The access token's expiry.
    pub access_exp: u64,
    /// The node that issued it (DID).
    pub node: String,
}

/// "Parent `parent` was rotated into `child`".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpentRecord {
    /// The spent token's id.
    pub parent: String,
    /// The token it was rotated into.
    pub child: String,
    /// The family.
    pub family: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The family's expiry.
    pub expires_at: u64,
}

impl SpentRecord {
    /// Its key: `"{parent}|{child}"`.
    pub fn key(&self) -> String {
        format!("{}|{}", self.parent, self.child)
    }
}

/// A revoked family: none of its refresh tokens refreshes any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyRevocation {
    /// The family.
    pub family: String,
    /// Why (`reuse`, `code_replay`, `revoked`).
    pub reason: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The family's expiry, after which the record is dropped.
    pub expires_at: u64,
}

/// The refresh-token part of the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshState {
    /// Issued tokens by id.
    #[serde(default)]
    pub tokens: BTreeMap<String, RefreshRecord>,
    /// Spent records by [`SpentRecord::key`].
    #[serde(default)]
    pub spent: BTreeMap<String, SpentRecord>,
    /// Revoked families by family id.
    #[serde(default)]
    pub revoked: BTreeMap<String, FamilyRevocation>,
}

impl RefreshState {
    /// The children `parent` was rotated into.
    pub fn children(&self, parent: &str) -> Vec<&SpentRecord> {
        let from = format!("{parent}|");
        self.spent
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(_, v)| v)
            .collect()
    }

    /// The families in which some token was rotated into two different children (a reuse), and
    /// which are not revoked yet.
    pub fn reused_families(&self) -> BTreeSet<String> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        let mut reused = BTreeSet::new();
        for record in self.spent.values() {
            match seen.get(record.parent.as_str()) {
                Some(child) if *child != record.child => {
                    reused.insert(record.family.clone());
                }
                _ => {
                    seen.insert(&record.parent, &record.child);
                }
            }
        }
        reused.retain(|f| !self.revoked.contains_key(f));
        reused
    }

    /// Every token of `family`.
    pub fn family(&self, family: &str) -> Vec<&RefreshRecord> {
        self.tokens.values().filter(|t| t.family == family).collect()
    }
}

/// A change to users, consents or refresh families.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "login", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoginChange {
    /// Adds or replaces a user.
    PutUser(UserRecord),
    /// Removes a user (by username).
    RemoveUser(String),
    /// Adds or replaces a consent.
    PutConsent(ConsentRecord),
    /// Removes a consent (by [`ConsentRecord::key`]).
    RemoveConsent(String),
    /// Records an issued refresh token.
    PutRefresh(RefreshRecord),
    /// Records a rotation.
    PutSpent(SpentRecord),
    /// Revokes a family.
    RevokeFamily(FamilyRevocation),
    /// Removes one entry by its full prefixed key (`refresh|…`, `spent|…`, `family|…`), to drop
    /// expired families.
    Remove(String),
}

impl LoginChange {
    /// The entry's full key in the `clients` map and, for a put, the record as JSON.
    pub fn entry(&self) -> (String, Option<String>) {
        let json = |v: &dyn erased::Json| Some(v.json());
        match self {
            LoginChange::PutUser(u) => (format!("{USER_PREFIX}{}", u.username), json(u)),
            LoginChange::RemoveUser(name) => (format!("{USER_PREFIX}{name}"), None),
            LoginChange::PutConsent(c) => (format!("{CONSENT_PREFIX}{}", c.key()), json(c)),
            LoginChange::RemoveConsent(key) => (format!("{CONSENT_PREFIX}{key}"), None),
            LoginChange::PutRefresh(r) => (format!("{REFRESH_PREFIX}{}", r.id), json(r)),
            LoginChange::PutSpent(s) => (format!("{SPENT_PREFIX}{}", s.key()), json(s)),
            LoginChange::RevokeFamily(f) => (format!("{FAMILY_PREFIX}{}", f.family), json(f)),
            LoginChange::Remove(key) => (key.clone(), None),
        }
    }
}

mod erased {
    pub(super) trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Whether `key` of the `clients` map holds a login record rather than a client.
pub fn is_login_key(key: &str) -> bool {
    [USER_PREFIX, CONSENT_PREFIX, REFRESH_PREFIX, SPENT_PREFIX, FAMILY_PREFIX]
        .iter()
        .any(|p| key.starts_with(p))
}

/// The put-change the entry `key` → `text` of the `clients` map holds, if it is a well-formed
/// login record whose own id is its key.
pub fn decode(key: &str, text: &str) -> Option<LoginChange> {
    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
        serde_json::from_str(text).ok()
    }
    let change = if let Some(rest) = key.strip_prefix(USER_PREFIX) {
        LoginChange::PutUser(parse::<UserRecord>(text).filter(|u| u.username == rest)?)
    } else if let Some(rest) = key.strip_prefix(CONSENT_PREFIX) {
        LoginChange::PutConsent(parse::<ConsentRecord>(text).filter(|c| c.key() == rest)?)
    } else if let Some(rest) = key.strip_prefix(REFRESH_PREFIX) {
        LoginChange::PutRefresh(parse::<RefreshRecord>(text).filter(|r| r.id == rest)?)
    } else if let Some(rest) = key.strip_prefix(SPENT_PREFIX) {
        LoginChange::PutSpent(parse::<SpentRecord>(text).filter(|s| s.key() == rest)?)
    } else if let Some(rest) = key.strip_prefix(FAMILY_PREFIX) {
        LoginChange::RevokeFamily(parse::<FamilyRevocation>(text).filter(|f| f.family == rest)?)
    } else {
        return None;
    };
    Some(change)
}

/// The change that removes the login entry `key` (a full prefixed key).
pub fn removal(key: &str) -> LoginChange {
    if let Some(name) = key.strip_prefix(USER_PREFIX) {
        LoginChange::RemoveUser(name.to_owned())
    } else if let Some(rest) = key.strip_prefix(CONSENT_PREFIX) {
        LoginChange::RemoveConsent(rest.to_owned())
    } else {
        LoginChange::Remove(key.to_owned())
    }
}

/// Applies a login change to the state.
pub fn apply(state: &mut State, change: &LoginChange) {
    match change {
        LoginChange::PutUser(u) => {
            state.users.insert(u.username.clone(), u.clone());
        }
        LoginChange::RemoveUser(name) => {
            state.users.remove(name);
        }
        LoginChange::PutConsent(c) => {
            state.consents.insert(c.key(), c.clone());
        }
        LoginChange::RemoveConsent(key) => {
            state.consents.remove(key);
        }
        LoginChange::PutRefresh(r) => {
            state.refresh.tokens.insert(r.id.clone(), r.clone());
        }
        LoginChange::PutSpent(s) => {
            state.refresh.spent.insert(s.key(), s.clone());
        }
        LoginChange::RevokeFamily(f) => {
            state.refresh.revoked.insert(f.family.clone(), f.clone());
        }
        LoginChange::Remove(key) => {
            if let Some(id) = key.strip_prefix(REFRESH_PREFIX) {
                state.refresh.tokens.remove(id);
            } else if let Some(k) = key.strip_prefix(SPENT_PREFIX) {
                state.refresh.spent.remove(k);
            } else if let Some(f) = key.strip_prefix(FAMILY_PREFIX) {
                state.refresh.revoked.remove(f);
            } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
                state.users.remove(name);
            } else if let Some(k) = key.strip_prefix(CONSENT_PREFIX) {
                state.consents.remove(k);
            }
        }
    }
}

/// Changes that drop every refresh record of families expired at or before `now`.
pub fn expire(state: &State, now: u64) -> Vec<LoginChange> {
    let refresh = &state.refresh;
    let tokens = refresh
        .tokens
        .values()
        .filter(|t| t.expires_at <= now)
        .map(|t| format!("{REFRESH_PREFIX}{}", t.id));
    let spent = refresh
        .spent
        .values()
        .filter(|s| s.expires_at <= now)
        .map(|s| format!("{SPENT_PREFIX}{}", s.key()));
    let families = refresh
        .revoked
        .values()
        .filter(|f| f.expires_at <= now)
        .map(|f| format!("{FAMILY_PREFIX}{}", f.family));
    tokens.chain(spent).chain(families).map(LoginChange::Remove).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(parent: &str, child: &str) -> LoginChange {
        LoginChange::PutSpent(SpentRecord {
            parent: parent.into(),
            child: child.into(),
            family: "f".into(),
            at: 1,
            expires_at: 100,
        })
    }

    #[test]
    fn two_children_of_one_parent_are_a_reuse() {
        let mut state = State::default();
        apply(&mut state, &spent("a", "b"));
        apply(&mut state, &spent("b", "c"));
        assert!(state.refresh.reused_families().is_empty());
        apply(&mut state, &spent("a", "x"));
        assert_eq!(state.refresh.reused_families().into_iter().collect::<Vec<_>>(), ["f"]);
        assert_eq!(state.refresh.children("a").len(), 2);
        apply(
            &mut state,
            &LoginChange::RevokeFamily(FamilyRevocation {
                family: "f".into(),
                reason: "reuse".into(),
                at: 2,
                expires_at: 100,
            }),
        );
        assert!(state.refresh.reused_families().is_empty());
        for change in expire(&state, 100) {
            apply(&mut state, &change);
        }
        assert_eq!(state.refresh, RefreshState::default());
    }

    #[test]
    fn entries_round_trip_through_their_keys() {
        let change = spent("a", "b");
        let (key, json) = change.entry();
        assert!(is_login_key(&key));
        assert_eq!(decode(&key, &json.unwrap()), Some(change));
        assert_eq!(decode("spent|a|z", &spent("a", "b").entry().1.unwrap()), None);
        assert_eq!(removal("user|bob"), LoginChange::RemoveUser("bob".into()));
    }
}
