//! The audit log of administrative changes: every [`AdminRequest`] that changes the replicated
//! state also records who asked (an operator on the admin socket, the offline CLI, or the node
//! itself), what changed (ids, names and policies, never a secret) and when, as a signed
//! [`AuditRecord`] in the replicated document, so every member can answer `meshgate audit`.
//!
//! The log is bounded: [`AuditConfig`] keeps at most `max_records` records, none older than
//! `retention`; the serving node drops the rest in its maintenance tick.

use std::time::Duration;

use mesh::identity::NodeIdentity;
use mesh::state::{AuditRecord, Change, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::AdminRequest;

/// `audit:`: how much of the audit log every node keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// Most records kept (the oldest are dropped first).
    pub max_records: usize,
    /// Records older than this are dropped (humantime: `90d`).
    #[serde(with = "humantime_serde_compat")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_records: 10_000,
            retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// Who asked for an administrative change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Actor {
    /// A local operator on the admin socket, by the socket peer's user id.
    Operator {
        /// The peer's uid.
        uid: u32,
    },
    /// The CLI, which opened the data directory itself (no server was running).
    OfflineCli,
    /// The node itself (e.g. applying `node.sync.trusted_peers` from its configuration).
    Node,
}

impl Actor {
    /// The actor as recorded: `operator uid N`, `offline cli` or `node did:key:…`.
    pub fn describe(&self, node: &NodeIdentity) -> String {
        match self {
            Actor::Operator { uid } => format!("operator uid {uid}"),
            Actor::OfflineCli => "offline cli".to_owned(),
            Actor::Node => format!("node {}", node.did()),
        }
    }
}

/// What an administrative command changes, before it runs: its action name and the details that
/// are safe to record; `None` for read-only commands.
pub fn describe(request: &AdminRequest) -> Option<(&'static str, Value)> {
    Some(match request {
        AdminRequest::ClientAdd {
            name,
            grants,
            scopes,
            audiences,
            token_alg,
            jwks,
            secret,
            degradation,
        } => (
            "client_add",
            json!({
                "name": name, "grants": grants, "scopes": scopes, "audiences": audiences,
                "token_alg": token_alg, "private_key_jwt": jwks.is_some(),
                "imported_secret": secret.is_some(), "degradation": degradation,
            }),
        ),
        AdminRequest::ClientSetPolicy { client_id, degradation } => (
            "client_set_policy",
            json!({"client_id": client_id, "degradation": degradation}),
        ),
        AdminRequest::ClientRemove { client_id } => ("client_remove", json!({"client_id": client_id})),
        AdminRequest::ClientRotateSecret { client_id, grace_secs } => (
            "client_rotate_secret",
            json!({"client_id": client_id, "grace_secs": grace_secs}),
        ),
        AdminRequest::KeysRotate => ("keys_rotate", json!({})),
        AdminRequest::MeshAdmit { did } => ("mesh_admit", json!({"did": did})),
        AdminRequest::MeshRemove { did } => ("mesh_remove", json!({"did": did})),
        AdminRequest::IdRotate => ("id_rotate", json!({})),
        _ => return None,
    })
}

/// The audit record of a command that ran: `detail` from [`describe`] plus the safe parts of its
/// `answer` (the new client id, the new key ids, the identity's new sequence number). The answer's
/// secrets are never copied.
pub fn record(
    identity: &NodeIdentity,
    state: &State,
    now: u64,
    actor: Actor,
    (action, mut detail): (&'static str, Value),
    answer: &Value,
) -> Change {
    for field in ["client_id", "active", "seq", "previous_secrets_valid_until"] {
        if let Some(value) = answer.get(field) {
            detail[field] = value.clone();
        }
    }
    let record = AuditRecord::sign(
        identity,
        now,
        actor.describe(identity),
        action.to_owned(),
        detail,
        &nonce(state, identity, now),
    );
    Change::PutAudit(record)
}

/// The records at or after `since` (Unix seconds), oldest first, each with whether its
/// signature verifies.
pub fn query(state: &State, since: Option<u64>) -> Value {
    let records: Vec<Value> = state
        .audit
        .values()
        .filter(|r| since.is_none_or(|since| r.at >= since))
        .map(|r| {
            json!({
                "at": r.at, "time": time(r.at), "node": r.node, "actor": r.actor,
                "action": r.action, "detail": r.detail, "verified": r.verify(state).is_ok(),
            })
        })
        .collect();
    Value::Array(records)
}

/// The changes that bring the log within `config` at `now`: records older than the retention,
/// then the oldest beyond `max_records`.
pub fn prune(state: &State, now: u64, config: &AuditConfig) -> Vec<Change> {
    let horizon = now.saturating_sub(config.retention.as_secs());
    let excess = state.audit.len().saturating_sub(config.max_records);
    state
        .audit
        .values()
        .enumerate()
        .filter(|(i, r)| r.at < horizon || *i < excess)
        .map(|(_, r)| Change::RemoveAudit(r.id.clone()))
        .collect()
}

/// The audit log as a table for the terminal.
pub fn text(records: &Value) -> String {
    let records = records.as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        return "(no audit records)".into();
    }
    let mut out = format!("{:<20} {:<24} {:<22} {:<20} DETAIL", "TIME", "NODE", "ACTOR", "ACTION");
    for r in records {
        let node = r["node"].as_str().unwrap_or("-");
        let short = if node.len() > 24 { &node[..24] } else { node };
        let mut actor = r["actor"].as_str().unwrap_or("-").to_owned();
        if actor.len() > 22 {
            actor.truncate(21);
            actor.push('…');
        }
        let mark = if r["verified"] == true {
            ""
        } else {
            " (SIGNATURE DOES NOT VERIFY)"
        };
        out.push_str(&format!(
            "\n{:<20} {:<24} {:<22} {:<20} {}{mark}",
            r["time"].as_str().unwrap_or("-"),
            short,
            actor,
            r["action"].as_str().unwrap_or("-"),
            r["detail"],
        ));
    }
    out
}

/// Parses `--since`: an RFC 3339 time (`2026-11-30T12:00:00Z`) or a duration ago (`1h`, `7d`).
pub fn parse_since(text: &str, now: u64) -> Result<u64, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now.saturating_sub(ago.as_secs()));
    }
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration such as 1h"))?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

fn time(at: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at)).to_string()
}

/// The node's count of records in this second (so its records sort in the order they were made,
/// whichever process made them), a process-wide sequence number (for several records made before
/// the state records any), then random bytes (so two processes never collide).
fn nonce(state: &State, identity: &NodeIdentity, now: u64) -> String {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let did = identity.did();
    let earlier = state.audit.values().filter(|r| r.at == now && r.node == did).count();
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff;
    let mut bytes = [0u8; 4];
    // The OS RNG failing is unrecoverable; getrandom documents it as practically impossible.
    getrandom::fill(&mut bytes).expect("operating system random number generator failed");
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{earlier:06}{sequence:04x}{random}")
}

/// Durations in humantime notation (`90d`) for serde.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(deserializer)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("1h", 10_000).unwrap(), 6_400);
        assert_eq!(parse_since("1970-01-01T01:00:00Z", 10_000).unwrap(), 3_600);
        assert!(parse_since("yesterday-ish", 10_000).is_err());
    }

    #[test]
    fn read_only_commands_are_not_audited() {
        for request in [
            AdminRequest::ClientList,
            AdminRequest::KeysList,
            AdminRequest::MeshStatus,
        ] {
            assert!(describe(&request).is_none(), "{request:?}");
        }
    }

    #[test]
    fn secrets_never_enter_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = mesh::keystore::FileKeyStore::open(dir.path()).unwrap();
        let identity = NodeIdentity::load_or_generate(&store).unwrap();
        let request = AdminRequest::ClientAdd {
            name: "n".into(),
            grants: vec![],
            scopes: vec![],
            audiences: vec![],
            token_alg: None,
            jwks: None,
            secret: Some("imported-secret-value".into()),
            degradation: None,
        };
        let answer = json!({"client_id": "abc", "client_secret": "generated-secret-value"});
        let change = record(
            &identity,
            &State::default(),
            5,
            Actor::Operator { uid: 7 },
            describe(&request).unwrap(),
            &answer,
        );
        let text = serde_json::to_string(&change).unwrap();
        assert!(!text.contains("secret-value"), "{text}");
        let Change::PutAudit(record) = change else { panic!() };
        assert_eq!(record.actor, "operator uid 7");
        assert_eq!(record.detail["client_id"], "abc");
        assert_eq!(record.detail["imported_secret"], true);
    }

    #[test]
    fn prune_keeps_the_newest_within_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = mesh::keystore::FileKeyStore::open(dir.path()).unwrap();
        let identity = NodeIdentity::load_or_generate(&store).unwrap();
        let mut state = State::default();
        for at in [10, 20, 30, 1_000, 1_010] {
            let change = record(
                &identity,
                &state,
                at,
                Actor::OfflineCli,
                ("keys_rotate", json!({})),
                &json!({}),
            );
            state.apply(&change);
        }
        let config = AuditConfig {
            max_records: 2,
            retention: Duration::from_secs(100),
        };
        for change in prune(&state, 1_050, &config) {
            state.apply(&change);
        }
        let left: Vec<u64> = state.audit.values().map(|r| r.at).collect();
        assert_eq!(left, vec![1_000, 1_010]);
        let config = AuditConfig {
            max_records: 1,
            retention: Duration::from_secs(10_000),
        };
        for change in prune(&state, 1_050, &config) {
            state.apply(&change);
        }
        let left: Vec<u64> = state.audit.values().map(|r| r.at).collect();
        assert_eq!(left, vec![1_010]);
    }
}
