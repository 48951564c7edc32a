//! meshgate's own export format: the replicated client records with their secret hashes (never a
//! plaintext secret), read back by `meshgate import meshgate`.
//!
//! ```json
//! {"format": "meshgate-export", "version": 1, "exported_at": 1767225600,
//!  "clients": [{"client_id": "...", ..., "secrets": [{"hash": {"kind": "argon2", "value": "$argon2id$..."}}],
//!               "token_endpoint_auth_method": "client_secret_basic"}],
//!  "omitted": [{"client_id": "...", "field": "secrets", "reason": "..."}]}
//! ```
//!
//! A `client_secret_jwt` client's HMAC key is a plaintext secret, so it is left out (listed in
//! `omitted`); importing such a client takes its secret from `--secrets` or rotates it.

use mesh::state::{ClientRecord, SecretHash, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AuthMethod, ImportedClient, Parsed, Unmapped};
use crate::error::Error;

/// The `format` value.
pub const FORMAT: &str = "meshgate-export";
/// The version this build writes and reads.
pub const VERSION: u64 = 1;

/// One exported client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedClient {
    /// The replicated record (HMAC keys removed).
    #[serde(flatten)]
    pub record: ClientRecord,
    /// How the client authenticates.
    pub token_endpoint_auth_method: String,
}

/// The export of `state`'s clients at `now`.
pub fn export(state: &State, now: u64) -> Value {
    let mut clients = Vec::new();
    let mut omitted = Vec::new();
    for record in state.clients.values() {
        let mut record = record.clone();
        let hmac = record.secrets.iter().any(|s| matches!(s.hash, SecretHash::HmacKey(_)));
        record.secrets.retain(|s| !matches!(s.hash, SecretHash::HmacKey(_)));
        let method = if hmac {
            omitted.push(json!({"client_id": record.client_id, "field": "secrets",
                "reason": "the client_secret_jwt key is a plaintext secret and is never exported; \
                           give it to `import meshgate --secrets` or let the import rotate it"}));
            AuthMethod::ClientSecretJwt
        } else if !record.secrets.is_empty() {
            AuthMethod::ClientSecretBasic
        } else if record.jwks.is_some() {
            AuthMethod::PrivateKeyJwt
        } else {
            AuthMethod::None
        };
        clients.push(ExportedClient {
            record,
            token_endpoint_auth_method: method.as_str().to_owned(),
        });
    }
    json!({"format": FORMAT, "version": VERSION, "exported_at": now, "clients": clients, "omitted": omitted})
}

/// Parses an export.
pub fn parse(value: &Value) -> Result<Parsed, Error> {
    if value.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(Error::Admin(format!(
            "not a meshgate export: `format` is not `{FORMAT}`"
        )));
    }
    let version = value.get("version").and_then(Value::as_u64).unwrap_or(0);
    if version != VERSION {
        return Err(Error::Admin(format!(
            "meshgate export version {version}; this build reads version {VERSION}"
        )));
    }
    let mut parsed = Parsed {
        source: "meshgate export".into(),
        ..Default::default()
    };
    for (index, client) in value
        .get("clients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let exported: ExportedClient = match serde_json::from_value(client.clone()) {
            Ok(c) => c,
            Err(e) => {
                parsed.unmapped.push(Unmapped {
                    client_id: client.get("client_id").and_then(Value::as_str).map(str::to_owned),
                    field: format!("clients[{index}]"),
                    value: Value::Null,
                    reason: format!("not a client record: {e}"),
                });
                continue;
            }
        };
        let record = exported.record;
        let method = AuthMethod::parse(&exported.token_endpoint_auth_method);
        if method.is_none() {
            parsed.unmapped.push(Unmapped::field(
                &record.client_id,
                "token_endpoint_auth_method",
                json!(exported.token_endpoint_auth_method),
                "unknown method; client_secret_basic used",
            ));
        }
        let secret_hashes = record
            .secrets
            .into_iter()
            .filter(|s| !matches!(s.hash, SecretHash::HmacKey(_)))
            .collect();
        parsed.clients.push(ImportedClient {
            client_id: record.client_id,
            name: record.name,
            auth_method: method,
            secret: None,
            secret_hashes,
            redirect_uris: record.redirect_uris,
            grant_types: record.grant_types,
            scopes: record.scopes,
            audiences: record.audiences,
            jwks: record.jwks,
            token_alg: Some(record.token_alg),
            degradation: record.degradation,
            created_at: Some(record.created_at),
        });
    }
    Ok(parsed)
}
