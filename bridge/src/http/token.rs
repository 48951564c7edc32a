//! `POST /token` (RFC 6749 §3.2, §4.4; RFC 8707 `resource`; RFC 9068 tokens).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{AppState, server_error};
use crate::error::OAuthError;
use crate::form::Form;
use crate::node::is_scope_token;
use crate::token::{AccessClaims, Audience, capabilities, mint, new_jti};

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
}

pub(super) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, OAuthError> {
    let s = &state.0;
    let grant_type = form.required("grant_type")?;
    let now = state.now();
    let view = state.view();
    let client = state.authenticate(&view, &headers, &form, &s.token_endpoint, now)?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::unsupported_grant_type(format!(
            "grant type `{grant_type}` is not supported"
        )));
    }
    if !client.allows_grant(grant_type) {
        return Err(OAuthError::unauthorized_client(
            "the client is not registered for this grant type",
        ));
    }

    let scopes: Vec<&str> = match form.single("scope")? {
        Some(requested) => {
            let mut granted: Vec<&str> = Vec::new();
            for scope in requested.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(scope) || !client.record.scopes.iter().any(|s| s == scope) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope `{scope}` is not allowed for this client"
                    )));
                }
                if !granted.contains(&scope) {
                    granted.push(scope);
                }
            }
            granted
        }
        None => client.record.scopes.iter().map(String::as_str).collect(),
    };

    let allowed = |target: &str| {
        if client.record.audiences.is_empty() {
            target == s.settings.resource
        } else {
            client.record.audiences.iter().any(|a| a == target)
        }
    };
    let mut aud: Vec<String> = Vec::new();
    for resource in form.all("resource") {
        let absolute = url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none());
        if !absolute {
            return Err(OAuthError::invalid_target(
                "resource must be an absolute URI without a fragment",
            ));
        }
        if !allowed(resource) {
            return Err(OAuthError::invalid_target(format!(
                "resource `{resource}` is not allowed for this client"
            )));
        }
        if !aud.iter().any(|a| a == resource) {
            aud.push(resource.to_owned());
        }
    }
    for audience in form.all("audience") {
        if !allowed(audience) {
            return Err(OAuthError::invalid_target(format!(
                "audience `{audience}` is not allowed for this client"
            )));
        }
        if !aud.iter().any(|a| a == audience) {
            aud.push(audience.to_owned());
        }
    }
    if aud.is_empty() {
        aud = if client.record.audiences.is_empty() {
            vec![s.settings.resource.clone()]
        } else {
            client.record.audiences.clone()
        };
    }

    let alg = client.token_alg.unwrap_or(s.settings.default_alg);
    let Some(key) = view.signing_key(alg) else {
        return Ok(server_error(format!("no active {alg} signing key")));
    };
    let scope = scopes.join(" ");
    let ttl = s.settings.token_ttl;
    let claims = AccessClaims {
        iss: s.settings.issuer.clone(),
        sub: client.record.client_id.clone(),
        cap: capabilities(&aud, &scopes),
        aud: Audience::from_list(aud),
        client_id: client.record.client_id.clone(),
        scope: scope.clone(),
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: new_jti(),
        node: s.did.clone(),
    };
    let access_token = match mint(&claims, key) {
        Ok(t) => t,
        Err(e) => return Ok(server_error(e)),
    };
    s.metrics.token_issued(0);
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        scope: &scope,
    };
    Ok(no_store(axum::Json(body).into_response()))
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
