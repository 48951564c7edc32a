//! Token exchange at `/token` (RFC 8693) for clients registered with
//! `urn:ietf:params:oauth:grant-type:token-exchange`.
//!
//! The `subject_token` is either
//! - a JWT of a configured upstream (chosen by its `iss`), verified against the upstream's cached
//!   JWKS without calling the upstream (signature with an allowed algorithm, issuer, the
//!   configured audience, `exp`, `nbf`), or
//! - a meshgate access token, validated locally as introspection does: delegation, which only
//!   narrows (scopes ⊆ the parent's, `exp` ≤ the parent's).
//!
//! The result is a local RFC 9068 token for the subject's `sub`, with `act` naming the acting
//! party (RFC 8693 §4.1; the subject token's own `act` nested inside), the requested scopes
//! (⊆ the client's), `exp` never past the subject token's. A `may_act` claim in the subject
//! token (§4.4) must name the acting party. When the subject's upstream is unavailable, the
//! client's degradation policy ([`crate::federation`]) decides: a shorter-lived `degraded` token,
//! or `503 temporarily_unavailable` with `Retry-After`.

use std::time::Duration;

use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::AppState;
use super::token::{Grant, audiences, granted_scopes, issue};
use crate::error::OAuthError;
use crate::federation::{Decision, Health, decide};
use crate::form::Form;
use crate::metrics::GRANT_TOKEN_EXCHANGE;
use crate::view::Client;

/// `urn:ietf:params:oauth:token-type:access_token` (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `urn:ietf:params:oauth:token-type:jwt` (RFC 8693 §3).
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `urn:ietf:params:oauth:token-type:id_token` (RFC 8693 §3).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// What the presented subject (or actor) token established.
struct Subject {
    sub: String,
    exp: u64,
    act: Option<Value>,
    may_act: Option<Value>,
    /// The parent's scopes, for delegation of a meshgate token.
    ceiling: Option<Vec<String>>,
    /// Set when the token's upstream is unavailable and the client's policy issues locally.
    degraded_ttl: Option<Duration>,
    /// The parent meshgate token was itself degraded.
    parent_degraded: bool,
    /// The verified claims of an upstream subject token, for `map_upstream_claims` plugins.
    upstream: Option<Value>,
}

pub(super) async fn exchange(state: &AppState, client: &Client, form: &Form, now: u64) -> Result<Response, OAuthError> {
    let subject_token = form.required("subject_token")?;
    supported_type(form.required("subject_token_type")?, "subject_token_type")?;
    if let Some(requested) = form.single("requested_token_type")?
        && requested != ACCESS_TOKEN_TYPE
        && requested != JWT_TYPE
    {
        return Err(OAuthError::invalid_request(
            "requested_token_type must be urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    let actor_token = match (form.single("actor_token")?, form.single("actor_token_type")?) {
        (Some(token), Some(kind)) => {
            supported_type(kind, "actor_token_type")?;
            Some(token)
        }
        (None, None) => None,
        (Some(_), None) => return Err(OAuthError::invalid_request("actor_token requires actor_token_type")),
        (None, Some(_)) => return Err(OAuthError::invalid_request("actor_token_type without actor_token")),
    };
    let client_id = client.record.client_id.as_str();

    let subject = resolve(state, client_id, subject_token, now).await?;
    let actor = match actor_token {
        Some(token) => Some(resolve(state, client_id, token, now).await?),
        None => None,
    };
    let acting = actor.as_ref().map_or(client_id, |actor| actor.sub.as_str());
    if let Some(may_act) = &subject.may_act
        && !may_act_allows(may_act, acting, client_id)
    {
        tracing::info!(
            client_id,
            "token exchange refused: may_act does not name the acting party"
        );
        return Err(OAuthError::invalid_grant(
            "the subject token's may_act does not allow this party to act for it",
        ));
    }

    let ceiling: Option<Vec<&str>> = subject
        .ceiling
        .as_ref()
        .map(|scopes| scopes.iter().map(String::as_str).collect());
    let scopes = granted_scopes(client, form.single("scope")?, ceiling.as_deref())?;
    let aud = audiences(state, client, form)?;
    let (scopes, plugin) = super::plugins::shape(
        state,
        client_id,
        crate::node::TOKEN_EXCHANGE,
        &subject.sub,
        scopes,
        &aud,
        now,
        subject.upstream.as_ref(),
    )?;

    let mut act = Map::new();
    act.insert("sub".into(), Value::String(acting.to_owned()));
    if acting != client_id {
        act.insert("client_id".into(), Value::String(client_id.to_owned()));
    }
    if let Some(previous) = subject.act.clone() {
        act.insert("act".into(), previous);
    }

    let degraded_ttl = std::iter::once(&subject)
        .chain(actor.as_ref())
        .filter_map(|token| token.degraded_ttl)
        .min();
    let ttl = match degraded_ttl {
        Some(ttl) => ttl.as_secs().min(state.settings().token_ttl),
        None => state.settings().token_ttl,
    };
    let mut exp = now + ttl;
    exp = exp.min(subject.exp);
    if let Some(actor) = &actor {
        exp = exp.min(actor.exp);
    }
    let degraded =
        degraded_ttl.is_some() || subject.parent_degraded || actor.as_ref().is_some_and(|a| a.parent_degraded);
    if degraded {
        tracing::info!(
            client_id,
            ttl = exp.saturating_sub(now),
            "issuing a degraded token: upstream unavailable"
        );
    }
    let grant = Grant {
        sub: subject.sub,
        scopes,
        aud,
        exp,
        act: Some(Value::Object(act)),
        degraded,
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
        metric: GRANT_TOKEN_EXCHANGE,
        plugin,
    };
    let view = state.view();
    Ok(issue(state, &view, client, grant, now))
}

fn supported_type(kind: &str, parameter: &'static str) -> Result<(), OAuthError> {
    if [ACCESS_TOKEN_TYPE, JWT_TYPE, ID_TOKEN_TYPE].contains(&kind) {
        return Ok(());
    }
    Err(OAuthError::invalid_request(format!(
        "unsupported {parameter}: only access tokens, ID tokens and JWTs are exchanged"
    )))
}

/// Whether `may_act` (RFC 8693 §4.4) names the acting party: by `sub`, or by `client_id`.
fn may_act_allows(may_act: &Value, acting: &str, client_id: &str) -> bool {
    let Some(object) = may_act.as_object() else {
        return false;
    };
    object.get("sub").and_then(Value::as_str) == Some(acting)
        || object.get("client_id").and_then(Value::as_str) == Some(client_id)
}

/// Verifies a subject or actor token: an upstream's JWT (by `iss`), or a meshgate access token.
async fn resolve(state: &AppState, client_id: &str, token: &str, now: u64) -> Result<Subject, OAuthError> {
    let Some(issuer) = peek_issuer(token) else {
        return Err(OAuthError::invalid_grant("the token is not a JWT"));
    };
    let federation = state.federation();
    let Some(upstream) = federation.upstreams.by_issuer(&issuer) else {
        let view = state.view();
        return match state.validate(&view, token, now) {
            Ok(parent) => Ok(Subject {
                ceiling: Some(
                    parent
                        .scope
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                sub: parent.sub,
                exp: parent.exp,
                act: parent.act,
                may_act: None,
                degraded_ttl: None,
                parent_degraded: parent.degraded,
                upstream: None,
            }),
            Err(reason) => {
                tracing::debug!(?reason, client_id, "token exchange: subject token refused");
                Err(OAuthError::invalid_grant(
                    "the token is not active or not issued by a trusted issuer",
                ))
            }
        };
    };
    let at = Duration::from_secs(now);
    let health = Health::from(&upstream.status(at));
    // The policy replicated on the client record wins over the node's configuration.
    let mut policy = federation.policies.policy(client_id);
    if let Some(record) = state
        .view()
        .clients
        .get(client_id)
        .and_then(|c| c.record.degradation.clone())
    {
        policy = crate::federation::PolicyOverride::from(&record).over(policy);
    }
    let degraded_ttl = match decide(&policy, &health, at, federation.jwks_fresh_for) {
        Decision::Normal => None,
        Decision::Degraded { ttl } => Some(ttl),
        Decision::Refuse { retry_after, reason } => {
            tracing::info!(client_id, upstream = upstream.name(), reason, "token exchange refused");
            return Err(OAuthError::temporarily_unavailable(reason).with_retry_after(retry_after));
        }
    };
    let claims = match upstream.oidc().verify(token, at).await {
        Ok(claims) => claims,
        Err(error) if error.is_invalid_token() => {
            tracing::info!(client_id, upstream = upstream.name(), %error, "token exchange: upstream token refused");
            return Err(OAuthError::invalid_grant("the upstream token is not valid"));
        }
        Err(error) => {
            tracing::warn!(client_id, upstream = upstream.name(), %error, "token exchange: cannot verify the upstream token");
            let retry_after = health
                .retry_at
                .map_or(5, |retry| retry.saturating_sub(at).as_secs().max(1));
            return Err(
                OAuthError::temporarily_unavailable("the upstream's signing keys are unavailable")
                    .with_retry_after(retry_after),
            );
        }
    };
    let Some(sub) = claims.subject.clone() else {
        return Err(OAuthError::invalid_grant("the upstream token has no `sub`"));
    };
    // With a `scope_map`, the subject token's scopes, mapped, bound the local token's (never
    // widened); without one, the client's registered scopes do.
    let ceiling = federation
        .upstreams
        .config_by_name(upstream.name())
        .filter(|config| !config.scope_map.is_empty())
        .map(|config| crate::federated::map_scopes(&config.scope_map, claims.scopes()));
    Ok(Subject {
        sub,
        exp: claims.expires_at,
        act: claims.claim("act").cloned(),
        may_act: claims.claim("may_act").cloned(),
        ceiling,
        degraded_ttl,
        parent_degraded: false,
        upstream: Some(Value::Object(claims.claims.clone())),
    })
}

/// The unverified `iss` of a compact JWS, to pick the verifier; nothing else is trusted from it.
pub(super) fn peek_issuer(token: &str) -> Option<String> {
    if token.len() > 16 * 1024 {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn may_act_matches_sub_or_client_id() {
        assert!(may_act_allows(&json!({"sub": "svc"}), "svc", "c1"));
        assert!(may_act_allows(&json!({"client_id": "c1"}), "svc", "c1"));
        assert!(!may_act_allows(&json!({"sub": "other"}), "svc", "c1"));
        assert!(!may_act_allows(&json!("svc"), "svc", "c1"));
    }

    #[test]
    fn peek_issuer_reads_only_well_formed_tokens() {
        let payload = URL_SAFE_NO_PAD.encode(json!({"iss": "https://idp"}).to_string());
        assert_eq!(
            peek_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp")
        );
        assert_eq!(peek_issuer("a.b"), None);
        assert_eq!(peek_issuer(&format!("e30.{payload}.sig.x")), None);
    }
}
