//! `POST /token` (RFC 6749 §3.2, §4.4; RFC 8707 `resource`; RFC 9068 tokens). Token exchange
//! (RFC 8693) is decided in [`super::exchange`] and minted here.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{AppState, server_error};
use crate::error::OAuthError;
use crate::form::Form;
use crate::node::{TOKEN_EXCHANGE, is_scope_token};
use crate::token::{AccessClaims, Audience, capabilities, mint, new_jti};
use crate::view::{Client, View};

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
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
    if let Some(response) = super::federated::token(&state, &headers, &form, grant_type, now).await? {
        return Ok(response);
    }
    if grant_type == "authorization_code" || grant_type == "refresh_token" {
        super::authorize::prefetch_document(&state, &form)
            .await
            .map_err(OAuthError::invalid_client)?;
    }
    let view = state.view();
    let client = match super::authorize::public_client(&state, &view, &headers, &form, grant_type)? {
        Some(client) => client,
        None => state.authenticate(&view, &headers, &form, &s.token_endpoint, now)?,
    };
    let code_flow =
        grant_type == "authorization_code" || grant_type == "refresh_token" || grant_type == super::device::DEVICE_CODE;
    if grant_type != "client_credentials" && grant_type != TOKEN_EXCHANGE && !code_flow {
        return Err(OAuthError::unsupported_grant_type(format!(
            "grant type `{grant_type}` is not supported"
        )));
    }
    if !client.allows_grant(grant_type) {
        return Err(OAuthError::unauthorized_client(
            "the client is not registered for this grant type",
        ));
    }
    if grant_type == "authorization_code" {
        drop(view);
        return super::authorize::code_grant(&state, client, &form, now).await;
    }
    if grant_type == super::device::DEVICE_CODE {
        drop(view);
        return super::device::device_grant(&state, client, &form, now).await;
    }
    if grant_type == "refresh_token" {
        drop(view);
        return super::refresh::refresh_grant(&state, client, &form, now).await;
    }
    if grant_type == TOKEN_EXCHANGE {
        drop(view);
        return super::exchange::exchange(&state, &client, &form, now).await;
    }

    let scopes = granted_scopes(&client, form.single("scope")?, None)?;
    let aud = audiences(&state, &client, &form)?;
    let client_id = client.record.client_id.as_str();
    let (scopes, plugin) = super::plugins::shape(&state, client_id, grant_type, client_id, scopes, &aud, now, None)?;
    let grant = Grant {
        sub: client.record.client_id.clone(),
        scopes,
        aud,
        plugin,
        exp: now + s.settings.token_ttl,
        act: None,
        degraded: false,
        issued_token_type: None,
        metric: 0,
    };
    Ok(issue(&state, &view, &client, grant, now))
}

/// What a grant decided, ready to be minted by [`issue`].
pub(super) struct Grant {
    /// The token's subject.
    pub(super) sub: String,
    /// Granted scopes.
    pub(super) scopes: Vec<String>,
    /// Audiences.
    pub(super) aud: Vec<String>,
    /// Expiry (Unix seconds), already capped by whatever bounds it.
    pub(super) exp: u64,
    /// RFC 8693 `act`.
    pub(super) act: Option<serde_json::Value>,
    /// Minted while the upstream is unavailable.
    pub(super) degraded: bool,
    /// RFC 8693 `issued_token_type` of the response.
    pub(super) issued_token_type: Option<&'static str>,
    /// Index in [`crate::metrics::GRANTS`].
    pub(super) metric: usize,
    /// Claims and capabilities added by plugins.
    pub(super) plugin: Option<crate::plugin_host::Shaped>,
}

/// Mints the token of `grant` for `client` and answers it (RFC 6749 §5.1).
pub(super) fn issue(state: &AppState, view: &View, client: &Client, grant: Grant, now: u64) -> Response {
    let s = &state.0;
    let alg = client.token_alg.unwrap_or(s.settings.default_alg);
    let Some(key) = view.signing_key(alg) else {
        return server_error(format!("no active {alg} signing key"));
    };
    let scope_list: Vec<&str> = grant.scopes.iter().map(String::as_str).collect();
    let scope = scope_list.join(" ");
    let mut cap = capabilities(&grant.aud, &scope_list);
    if let Some(plugin) = &grant.plugin {
        cap.extend(plugin.cap.iter().map(|c| crate::token::Capability {
            with: c.with.clone(),
            can: c.can.clone(),
        }));
    }
    let claims = AccessClaims {
        iss: s.settings.issuer.clone(),
        sub: grant.sub,
        cap,
        aud: Audience::from_list(grant.aud),
        client_id: client.record.client_id.clone(),
        scope: scope.clone(),
        iat: now,
        nbf: now,
        exp: grant.exp,
        jti: new_jti(),
        node: s.did.clone(),
        act: grant.act,
        degraded: grant.degraded,
    };
    let minted = match &grant.plugin {
        Some(plugin) if !plugin.claims.is_empty() => crate::token::mint_with(&claims, &plugin.claims, key),
        _ => mint(&claims, key),
    };
    let access_token = match minted {
        Ok(t) => t,
        Err(e) => return server_error(e),
    };
    s.metrics.token_issued(grant.metric);
    if grant.degraded {
        s.metrics.degraded_token_issued();
    }
    let body = TokenResponse {
        access_token,
        issued_token_type: grant.issued_token_type,
        token_type: "Bearer",
        expires_in: grant.exp.saturating_sub(now),
        scope: &scope,
    };
    no_store(axum::Json(body).into_response())
}

/// The scopes to grant: the requested ones (each must be allowed for the client and, when
/// `ceiling` is given, be in it: `invalid_scope` otherwise), or by default every scope of the
/// client (within `ceiling`).
pub(super) fn granted_scopes(
    client: &Client,
    requested: Option<&str>,
    ceiling: Option<&[&str]>,
) -> Result<Vec<String>, OAuthError> {
    let within = |scope: &str| ceiling.is_none_or(|ceiling| ceiling.contains(&scope));
    match requested {
        Some(requested) => {
            let mut granted: Vec<String> = Vec::new();
            for scope in requested.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(scope) || !client.record.scopes.iter().any(|s| s == scope) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope `{scope}` is not allowed for this client"
                    )));
                }
                if !within(scope) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope `{scope}` is not granted by the subject token"
                    )));
                }
                if !granted.iter().any(|g| g == scope) {
                    granted.push(scope.to_owned());
                }
            }
            Ok(granted)
        }
        None => Ok(client
            .record
            .scopes
            .iter()
            .filter(|scope| within(scope))
            .cloned()
            .collect()),
    }
}

/// The audiences of the token (RFC 8707 `resource` and RFC 8693 `audience`, each allowed for the
/// client), or the client's registered audiences, or the default resource.
pub(super) fn audiences(state: &AppState, client: &Client, form: &Form) -> Result<Vec<String>, OAuthError> {
    let s = &state.0;
    // A public, dynamically registered client (an MCP client) has no configured audiences: it may
    // name any http(s) resource (the MCP server it is about to call), which the user consents to
    // at /authorize; it cannot use client_credentials, so no token reaches a resource without a user.
    let any_resource = client.record.audiences.is_empty()
        && (client.record.dynamic_registration.is_some() || client.metadata_document)
        && client.record.token_endpoint_auth_method.as_deref() == Some("none");
    let allowed = |target: &str| {
        if any_resource {
            target == s.settings.resource
                || url::Url::parse(target).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        } else if client.record.audiences.is_empty() {
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
    Ok(aud)
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
