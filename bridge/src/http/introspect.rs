//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mesh::state::Change;
use serde::Serialize;

use super::token::no_store;
use super::{AppState, server_error};
use crate::error::OAuthError;
use crate::form::Form;
use crate::token::AccessClaims;

#[derive(Serialize)]
struct Introspection {
    active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    claims: Option<AccessClaims>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    /// Claims added by `on_introspect` plugins.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    plugin_claims: Option<serde_json::Map<String, serde_json::Value>>,
}

pub(super) async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, OAuthError> {
    let now = state.now();
    let view = state.view();
    let client = state.authenticate(&view, &headers, &form, &state.0.introspection_endpoint, now)?;
    let token = form.required("token")?;
    form.single("token_type_hint")?;
    let validated = state.validate(&view, token, now).and_then(|claims| {
        match super::plugins::introspect(&state, &client.record.client_id, &claims, now) {
            Ok(plugin_claims) => Ok((claims, plugin_claims)),
            Err(crate::plugin_host::Denied) => Err(crate::token::Inactive::DeniedByPlugin),
        }
    });
    let body = match validated {
        Ok((claims, plugin_claims)) => Introspection {
            active: true,
            claims: Some(claims),
            token_type: Some("Bearer"),
            plugin_claims,
        },
        Err(_) if let Some(legacy) = crate::legacy::validate(&view, token, now) => {
            return Ok(no_store(axum::Json(legacy).into_response()));
        }
        Err(reason) => {
            drop(view);
            if let Some(answer) = super::upstream_introspect::introspect(&state, token, now).await {
                return Ok(no_store(axum::Json(answer).into_response()));
            }
            tracing::debug!(?reason, "introspection: inactive token");
            Introspection {
                active: false,
                claims: None,
                token_type: None,
                plugin_claims: None,
            }
        }
    };
    Ok(no_store(axum::Json(body).into_response()))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, OAuthError> {
    let now = state.now();
    let view = state.view();
    let client = state.authenticate(&view, &headers, &form, &state.0.revocation_endpoint, now)?;
    let token = form.required("token")?;
    form.single("token_type_hint")?;
    let Ok(claims) = state.validate(&view, token, now) else {
        // RFC 7009 §2.2: invalid, expired or unknown tokens need no action.
        return Ok(no_store(().into_response()));
    };
    if claims.client_id != client.record.client_id {
        return Err(OAuthError::unauthorized_client(
            "the token was not issued to this client",
        ));
    }
    drop(view);
    let change = Change::Revoke {
        jti: claims.jti,
        exp: claims.exp,
    };
    match state.commit(vec![change]).await {
        Ok(()) => Ok(no_store(().into_response())),
        Err(e) => Ok(server_error(e)),
    }
}
