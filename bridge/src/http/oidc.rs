//! OpenID Connect: ID tokens (RS256 by default, ES256/EdDSA per the client's
//! `id_token_signed_response_alg`), `/userinfo`, and the OIDC discovery document.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::login::UserRecord;
use serde_json::{Value, json};
use sha2::Digest;

use super::AppState;
use super::refresh::UserGrant;
use crate::error::OAuthError;
use crate::keys::Alg;
use crate::view::{Client, View};

/// Claims each OIDC scope releases.
fn user_claims(user: &UserRecord, scopes: &[String], out: &mut serde_json::Map<String, Value>) {
    let has = |s: &str| scopes.iter().any(|x| x == s);
    if has("profile") {
        out.insert("preferred_username".into(), json!(user.username));
        if let Some(name) = &user.name {
            out.insert("name".into(), json!(name));
        }
        out.insert("updated_at".into(), json!(user.updated_at));
    }
    if has("email")
        && let Some(email) = &user.email
    {
        out.insert("email".into(), json!(email));
        // Set by the operator, not proven by a confirmation mail.
        out.insert("email_verified".into(), json!(false));
    }
}

/// OIDC Core §3.1.3.6: the left half of the hash of the access token, with the hash of the ID
/// token's algorithm (SHA-256 for RS256/ES256, SHA-512 for EdDSA over Ed25519).
pub(super) fn at_hash(alg: Alg, access_token: &str) -> String {
    let digest: Vec<u8> = match alg {
        Alg::EdDSA => sha2::Sha512::digest(access_token.as_bytes()).to_vec(),
        _ => sha2::Sha256::digest(access_token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// Mints the ID token of a grant.
#[allow(clippy::too_many_arguments)]
pub(super) fn id_token(
    state: &AppState,
    view: &View,
    client: &Client,
    user: &UserRecord,
    grant: &UserGrant,
    access_token: &str,
    now: u64,
    exp: u64,
) -> Result<String, OAuthError> {
    let alg = client
        .record
        .id_token_signed_response_alg
        .as_deref()
        .and_then(|a| a.parse::<Alg>().ok())
        .unwrap_or(Alg::RS256);
    let key = view
        .signing_key(alg)
        .ok_or_else(|| OAuthError::server_error(&format!("no active {alg} signing key")))?;
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), json!(state.0.settings.issuer));
    claims.insert("sub".into(), json!(user.sub));
    claims.insert("aud".into(), json!(client.record.client_id));
    claims.insert("azp".into(), json!(client.record.client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims.insert("auth_time".into(), json!(grant.auth_time));
    claims.insert("at_hash".into(), json!(at_hash(alg, access_token)));
    if let Some(nonce) = &grant.nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    if let Some(acr) = &grant.acr {
        claims.insert("acr".into(), json!(acr));
    }
    user_claims(user, &grant.scopes, &mut claims);
    let bytes = serde_json::to_vec(&claims).map_err(|e| OAuthError::server_error(&e))?;
    key.sign_jwt_typ(&bytes, "JWT")
        .map_err(|e| OAuthError::server_error(&e))
}

/// The audience (client id) of an ID token this mesh issued, if its signature verifies with a
/// published key (expiry is not checked: a logout hint may be old).
pub(super) fn id_token_audience(state: &AppState, token: &str, now: u64) -> Option<String> {
    if token.len() > 16 * 1024 {
        return None;
    }
    let header = jsonwebtoken::decode_header(token).ok()?;
    let view = state.view();
    let key = view.keys.get(header.kid.as_deref()?)?;
    if key.alg.jwt() != header.alg || !view.trusts(key, now, state.0.settings.token_ttl) {
        return None;
    }
    let mut validation = jsonwebtoken::Validation::new(key.alg.jwt());
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).ok()?;
    match &data.claims["aud"] {
        Value::String(aud) => Some(aud.clone()),
        Value::Array(list) if list.len() == 1 => list[0].as_str().map(str::to_owned),
        _ => None,
    }
}

fn bearer_error(status: StatusCode, code: &str, description: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response();
    let challenge = format!("Bearer error=\"{code}\", error_description=\"{description}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET`/`POST /userinfo` (OIDC Core §5.3) with a Bearer access token in the header.
pub(super) async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let now = state.now();
    let claims = {
        let view = state.view();
        match state.validate(&view, token.trim(), now) {
            Ok(claims) => claims,
            Err(_) => {
                return bearer_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the access token is not active",
                );
            }
        }
    };
    let scopes: Vec<String> = claims.scope.split(' ').map(str::to_owned).collect();
    if !scopes.iter().any(|s| s == "openid") {
        return bearer_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the token lacks the openid scope",
        );
    }
    let user = state.with_node_read(|node| node.state().users.values().find(|u| u.sub == claims.sub).cloned());
    let Some(user) = user else {
        return bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", "the user no longer exists");
    };
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), json!(user.sub));
    user_claims(&user, &scopes, &mut body);
    let mut response = axum::Json(Value::Object(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The fields the login flow adds to the authorization-server metadata (RFC 8414 and OIDC
/// Discovery share one document).
pub(super) fn metadata_fields(state: &AppState, body: &mut Value) {
    let issuer = &state.0.settings.issuer;
    let extra = json!({
        "authorization_endpoint": format!("{issuer}/authorize"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": super::form_post::SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "at_hash",
                              "azp", "name", "preferred_username", "email", "email_verified", "updated_at"],
        "prompt_values_supported": ["none", "login", "consent"],
        "acr_values_supported": [super::authorize::ACR_PASSWORD],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        for (k, v) in extra {
            body.insert(k, v);
        }
        let mut grants: Vec<Value> = body
            .get("grant_types_supported")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for grant in crate::users::CODE_GRANTS {
            if !grants.iter().any(|g| g == grant) {
                grants.push(json!(grant));
            }
        }
        body.insert("grant_types_supported".into(), Value::Array(grants));
        if let Some(Value::Array(methods)) = body.get_mut("token_endpoint_auth_methods_supported")
            && !methods.iter().any(|m| m == "none")
        {
            methods.push(json!("none"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_hash() {
        // Computed independently: base64url(sha256(token)[..16]) with Python's hashlib.
        assert_eq!(
            at_hash(Alg::RS256, "jHkWEdUXMU1BwAsC4vtUsZwnNT6K"),
            "TYtsuGFO3gP0FxXjb23Tkg"
        );
        assert_eq!(
            at_hash(Alg::ES256, "jHkWEdUXMU1BwAsC4vtUsZwnNT6K"),
            "TYtsuGFO3gP0FxXjb23Tkg"
        );
        // EdDSA (Ed25519): the left half of SHA-512.
        assert_eq!(at_hash(Alg::EdDSA, "x"), "pKvURIxJVi2CgRXROh_M6pJ_UrTVRZKX-LQ-QtqJI4s");
    }
}
