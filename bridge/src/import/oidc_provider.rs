//! node-oidc-provider client arrays (the `clients` option of its configuration, or what its
//! adapter stores): RFC 7591 client metadata with plaintext `client_secret`s.

use serde_json::{Value, json};

use super::field::{is_set, string, strings};
use super::{AuthMethod, ImportedClient, Parsed, Unmapped};
use crate::error::Error;

/// Metadata oidc-provider derives or that describes pages, not the client's rights.
const BOOKKEEPING: &[&str] = &["client_id_issued_at", "client_secret_expires_at", "subject_type"];

/// RFC 7591 fields [`rfc7591_client`] maps.
const MAPPED: &[&str] = &[
    "client_id",
    "client_name",
    "client_secret",
    "token_endpoint_auth_method",
    "redirect_uris",
    "grant_types",
    "scope",
    "audience",
    "jwks",
    "access_token_signed_response_alg",
    "response_types",
    "token_endpoint_auth_signing_alg",
];

/// Parses an oidc-provider client array.
pub fn parse(value: &Value) -> Result<Parsed, Error> {
    let list = value
        .as_array()
        .or_else(|| value.get("clients").and_then(Value::as_array))
        .ok_or_else(|| Error::Admin("not an oidc-provider client list: expected a JSON array of clients".into()))?;
    let mut parsed = Parsed {
        source: "node-oidc-provider clients".into(),
        ..Default::default()
    };
    for client in list {
        let mut client = client.clone();
        // oidc-provider's defaults (lib/helpers/defaults.js): code flow, client_secret_basic.
        if client.get("grant_types").is_none() {
            client["grant_types"] = json!(["authorization_code"]);
        }
        match rfc7591_client(&client, BOOKKEEPING, "client_secret_basic", &mut parsed.unmapped) {
            Some(c) => parsed.clients.push(c),
            None => parsed.unmapped.push(Unmapped {
                client_id: None,
                field: "client_id".into(),
                value: Value::Null,
                reason: "a client without client_id".into(),
            }),
        }
    }
    Ok(parsed)
}

/// Reads one RFC 7591 client object (Hydra and oidc-provider share the format); every further
/// field that carries information, apart from `bookkeeping`, is reported.
pub(crate) fn rfc7591_client(
    client: &Value,
    bookkeeping: &[&str],
    default_method: &str,
    unmapped: &mut Vec<Unmapped>,
) -> Option<ImportedClient> {
    let id = string(client, "client_id").filter(|id| !id.is_empty())?;
    let mut note = |field: &str, value: Value, reason: &str| unmapped.push(Unmapped::field(&id, field, value, reason));
    let method_name = string(client, "token_endpoint_auth_method").unwrap_or_else(|| default_method.to_owned());
    let auth_method = match AuthMethod::parse(&method_name) {
        Some(m) => m,
        None => {
            note(
                "token_endpoint_auth_method",
                json!(method_name),
                "no equivalent client authentication in meshgate; client_secret_basic used",
            );
            AuthMethod::ClientSecretBasic
        }
    };
    if let Some(alg) = string(client, "token_endpoint_auth_signing_alg")
        && auth_method == AuthMethod::ClientSecretJwt
        && !["HS256", "HS384", "HS512"].contains(&alg.as_str())
    {
        note(
            "token_endpoint_auth_signing_alg",
            json!(alg),
            "client_secret_jwt accepts HS256/384/512",
        );
    }
    if let Some(uri) = client.get("jwks_uri").filter(|v| is_set(v)) {
        note(
            "jwks_uri",
            uri.clone(),
            "meshgate keeps client keys inline: fetch the JWKS and register it with `client add --jwks-file`",
        );
    }
    let response_types = strings(client, "response_types");
    for rt in &response_types {
        if rt != "code" && !rt.is_empty() {
            note(
                "response_types",
                json!(rt),
                "only the code response type exists in OAuth 2.1",
            );
        }
    }
    if let Value::Object(map) = client {
        for (key, value) in map {
            if MAPPED.contains(&key.as_str()) || bookkeeping.contains(&key.as_str()) || key == "jwks_uri" {
                continue;
            }
            if is_set(value) {
                note(key, value.clone(), "no equivalent in meshgate");
            }
        }
    }
    let scopes = string(client, "scope")
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Some(ImportedClient {
        name: string(client, "client_name")
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| id.clone()),
        auth_method: Some(auth_method),
        secret: string(client, "client_secret").filter(|s| !s.is_empty()),
        redirect_uris: strings(client, "redirect_uris"),
        grant_types: strings(client, "grant_types"),
        scopes,
        audiences: strings(client, "audience"),
        jwks: client.get("jwks").filter(|v| is_set(v)).cloned(),
        token_alg: string(client, "access_token_signed_response_alg"),
        client_id: id,
        ..Default::default()
    })
}
