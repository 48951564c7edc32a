//! RFC 8414 authorization-server metadata and the JWKS.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::keys::published_jwk;

pub(super) async fn metadata(State(state): State<AppState>) -> Response {
    let s = &state.0;
    let auth_methods = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "client_secret_jwt",
    ];
    let assertion_algs = ["RS256", "PS256", "ES256", "EdDSA", "HS256", "HS384", "HS512"];
    let mut body = json!({
        "issuer": s.settings.issuer,
        "token_endpoint": s.token_endpoint,
        "jwks_uri": format!("{}/jwks.json", s.settings.issuer),
        "response_types_supported": [],
        "grant_types_supported": crate::node::SUPPORTED_GRANTS,
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint": s.introspection_endpoint,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint": s.revocation_endpoint,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "access_token_signing_alg_values_supported": ["EdDSA", "ES256", "RS256"],
    });
    super::register::advertise(&state, &mut body);
    super::oidc::metadata_fields(&state, &mut body);
    super::device::metadata_fields(&state, &mut body);
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

pub(super) async fn jwks(State(state): State<AppState>) -> Response {
    let now = state.now();
    let ttl = state.settings().token_ttl;
    let view = state.view();
    let mut keys: Vec<_> = view.keys.values().filter(|k| view.trusts(k, now, ttl)).collect();
    keys.sort_by(|a, b| {
        b.record
            .created_at
            .cmp(&a.record.created_at)
            .then(a.record.kid.cmp(&b.record.kid))
    });
    let keys: Vec<_> = keys
        .iter()
        .map(|k| published_jwk(&k.record.jwk, &k.record.kid, &k.record.alg))
        .chain(crate::legacy::published(&view, now))
        .collect();
    let mut response = axum::Json(json!({ "keys": keys })).into_response();
    // Short enough that a resource server sees a rotation's new key soon; resource servers also
    // refetch on an unknown kid.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    response
}
