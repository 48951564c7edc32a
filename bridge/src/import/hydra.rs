//! ORY Hydra client lists (`hydra list oauth2-clients --format json`, or `GET /admin/clients`):
//! an array of RFC 7591 client objects (or `{"items": [...]}`). Hydra never exports secrets: they
//! come from `--secrets FILE` or are rotated.

use serde_json::Value;

use super::Parsed;
use super::oidc_provider::rfc7591_client;
use crate::error::Error;

/// Fields Hydra keeps that carry no client semantics.
const BOOKKEEPING: &[&str] = &[
    "created_at",
    "updated_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
    "skip_consent",
    "skip_logout_consent",
    "subject_type",
    "userinfo_signed_response_alg",
    "request_object_signing_alg",
    "authorization_code_grant_access_token_lifespan",
    "authorization_code_grant_id_token_lifespan",
    "authorization_code_grant_refresh_token_lifespan",
    "client_credentials_grant_access_token_lifespan",
    "implicit_grant_access_token_lifespan",
    "implicit_grant_id_token_lifespan",
    "jwt_bearer_grant_access_token_lifespan",
    "refresh_token_grant_access_token_lifespan",
    "refresh_token_grant_id_token_lifespan",
    "refresh_token_grant_refresh_token_lifespan",
    "device_authorization_grant_access_token_lifespan",
    "device_authorization_grant_id_token_lifespan",
    "device_authorization_grant_refresh_token_lifespan",
];

/// Parses a Hydra client list.
pub fn parse(value: &Value) -> Result<Parsed, Error> {
    let list = value
        .as_array()
        .or_else(|| value.get("items").and_then(Value::as_array))
        .ok_or_else(|| Error::Admin("not a Hydra client list: expected a JSON array of clients".into()))?;
    let mut parsed = Parsed {
        source: "ORY Hydra client list".into(),
        ..Default::default()
    };
    for client in list {
        let Some(c) = rfc7591_client(client, BOOKKEEPING, "client_secret_basic", &mut parsed.unmapped) else {
            parsed.unmapped.push(super::Unmapped {
                client_id: None,
                field: "client_id".into(),
                value: Value::Null,
                reason: "a client without client_id".into(),
            });
            continue;
        };
        // Hydra's audience list is what its clients may request: the same as meshgate's.
        parsed.clients.push(c);
    }
    Ok(parsed)
}
