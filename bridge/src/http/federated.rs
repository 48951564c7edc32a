//! `POST /token` for federated clients (see [`crate::federated`]): a client registered with
//! `--upstream`, or an unknown client id when an upstream has `federate_unknown_clients: true`.
//!
//! 1. The client's own credentials (`client_secret_basic` or `client_secret_post`) are forwarded
//!    to the upstream's token endpoint (client_credentials), within the upstream's token-path
//!    response deadline and through its circuit breaker.
//! 2. Accepted: a salted argon2 hash of the secret is recorded in the replicated client record
//!    (only when no recorded hash matches it yet; an unknown client is recorded as federated).
//!    The agent receives a local token carrying the upstream token's mapped claims (`sub`; scopes
//!    mapped by the upstream's `scope_map` and narrowed to the client's scopes and the request),
//!    never outliving the upstream token — or, in `passthrough` mode, the upstream token itself.
//! 3. Refused by the upstream (an OAuth error): `invalid_client` (or `invalid_scope`); a recorded
//!    hash of that secret is dropped, so it no longer authenticates locally.
//! 4. Unreachable (breaker open, deadline passed, broken answers): the secret is checked against
//!    the recorded hashes and the client's degradation policy decides — a `degraded` local token
//!    with the policy's shorter lifetime, or `503 temporarily_unavailable` with `Retry-After`.
//!
//! Neither the secret nor any token is logged.

use std::sync::Arc;
use std::time::Duration;

use adapters::Upstream;
use adapters::config::{Secret, UpstreamConfig};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::state::{Change, ClientFederation, ClientRecord, VerifiedSecret};
use serde::Serialize;
use serde_json::{Map, Value};

use super::AppState;
use super::token::{Grant, audiences, issue, no_store};
use crate::error::OAuthError;
use crate::federated::{self, MAX_VERIFIED_SECRETS, MODE_PASSTHROUGH};
use crate::federation::{Decision, Health, PolicyOverride, decide};
use crate::form::Form;
use crate::view::Client;

/// Handles the request when it comes from a federated client (answering `Some`); `None` lets the
/// ordinary client authentication take it.
pub(super) async fn token(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    grant_type: &str,
    now: u64,
) -> Result<Option<Response>, OAuthError> {
    let Some((client_id, secret)) = crate::auth::secret_credentials(headers, form) else {
        return Ok(None);
    };
    let federation = state.federation();
    let known = state.view().clients.get(&client_id).cloned();
    let (upstream, config) = match &known {
        Some(client) => {
            let Some(record) = &client.record.federation else {
                return Ok(None);
            };
            let found = federation
                .upstreams
                .by_name(&record.upstream)
                .zip(federation.upstreams.config_by_name(&record.upstream));
            let Some(found) = found else {
                tracing::warn!(
                    client_id,
                    upstream = record.upstream,
                    "federated client: its upstream is not configured on this node"
                );
                return Err(OAuthError::invalid_client("client authentication failed"));
            };
            found
        }
        None => {
            let Some(upstream) = federation.upstreams.federating_unknown_clients() else {
                return Ok(None);
            };
            if crate::node::checked_federated_id(client_id.clone()).is_err() {
                return Err(OAuthError::invalid_client("client authentication failed"));
            }
            let config = federation
                .upstreams
                .config_by_name(upstream.name())
                .expect("an upstream has a configuration");
            (upstream, config)
        }
    };
    if grant_type != "client_credentials" {
        return Err(OAuthError::unauthorized_client(
            "a federated client may only use the client_credentials grant",
        ));
    }
    let request = Request {
        state,
        form,
        client_id,
        secret: Secret::new(secret),
        upstream: upstream.clone(),
        config: config.clone(),
        known,
        now,
    };
    request.run().await.map(Some)
}

struct Request<'a> {
    state: &'a AppState,
    form: &'a Form,
    client_id: String,
    secret: Secret,
    upstream: Upstream,
    config: UpstreamConfig,
    known: Option<Arc<Client>>,
    now: u64,
}

#[derive(Serialize)]
struct PassthroughResponse<'a> {
    access_token: &'a str,
    token_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl Request<'_> {
    async fn run(self) -> Result<Response, OAuthError> {
        let requested: Option<Vec<&str>> = self
            .form
            .single("scope")?
            .map(|scope| scope.split(' ').filter(|s| !s.is_empty()).collect());
        if let Some(requested) = &requested
            && let Some(bad) = requested.iter().find(|s| !crate::node::is_scope_token(s))
        {
            return Err(OAuthError::invalid_scope(format!("scope `{bad}` is malformed")));
        }
        let upstream_scope = requested
            .as_ref()
            .map(|requested| federated::upstream_scopes_for(&self.config.scope_map, requested).join(" "));
        if upstream_scope.as_deref() == Some("") {
            return Err(OAuthError::invalid_scope(
                "no upstream scope maps to the requested scopes",
            ));
        }
        let oauth2 = self.upstream.oauth2();
        let forwarded = oauth2
            .forward_client_credentials(
                &self.client_id,
                &self.secret,
                upstream_scope.as_deref(),
                oauth2.token_deadline(),
            )
            .await;
        match forwarded {
            Ok(token) => self.accepted(token, requested.as_deref()).await,
            Err(adapters::Error::TokenRejected { error }) => self.rejected(&error).await,
            Err(error) if error.is_upstream_failure() || matches!(error, adapters::Error::MissingEndpoint(_)) => {
                // The breaker's transitions are logged where they happen; while it stays open,
                // one line per request would only slow the degraded path down.
                if matches!(error, adapters::Error::CircuitOpen { .. }) {
                    tracing::debug!(
                        client_id = self.client_id,
                        upstream = self.upstream.name(),
                        "federated client: circuit open, authenticating locally"
                    );
                } else {
                    tracing::info!(
                        client_id = self.client_id,
                        upstream = self.upstream.name(),
                        %error,
                        "federated client: upstream unavailable, authenticating locally"
                    );
                }
                self.offline(requested.as_deref()).await
            }
            Err(error) => {
                tracing::warn!(
                    client_id = self.client_id,
                    upstream = self.upstream.name(),
                    %error,
                    "federated client: the upstream call failed"
                );
                self.offline(requested.as_deref()).await
            }
        }
    }

    /// The upstream accepted the credentials.
    async fn accepted(
        self,
        token: adapters::oauth2_upstream::UpstreamToken,
        requested: Option<&[&str]>,
    ) -> Result<Response, OAuthError> {
        let at = Duration::from_secs(self.now);
        let access_token = token.access_token.expose();
        // A JWT must verify against the upstream's keys (and carry its issuer and meshgate's
        // audience); an opaque token is taken at the token endpoint's word.
        let (sub, upstream_scopes, upstream_exp) = if looks_like_jwt(access_token) {
            let verified = self.upstream.oidc().verify(access_token, at).await;
            match verified {
                Ok(claims) => {
                    let scopes: Vec<String> = if claims.claim("scope").is_some() {
                        claims.scopes().into_iter().map(str::to_owned).collect()
                    } else {
                        token.scopes.clone().unwrap_or_default()
                    };
                    (
                        claims.subject.clone().unwrap_or_else(|| self.client_id.clone()),
                        scopes,
                        Some(claims.expires_at),
                    )
                }
                // The upstream answered but its keys cannot be had (it died right after
                // answering, or its JWKS is unreachable): the token cannot be judged, which is an
                // outage like any other — the client's degradation policy decides.
                Err(error) if !error.is_invalid_token() => {
                    tracing::info!(
                        client_id = self.client_id,
                        upstream = self.upstream.name(),
                        %error,
                        "federated client: the upstream's keys are unavailable, authenticating locally"
                    );
                    return self.offline(requested).await;
                }
                Err(error) => {
                    tracing::warn!(
                        client_id = self.client_id,
                        upstream = self.upstream.name(),
                        %error,
                        "federated client: the upstream's token does not verify"
                    );
                    return Err(OAuthError::temporarily_unavailable(
                        "the upstream identity provider answered with a token that does not verify",
                    )
                    .with_retry_after(5));
                }
            }
        } else {
            let scopes = token
                .scopes
                .clone()
                .unwrap_or_else(|| requested.unwrap_or_default().iter().map(|s| (*s).to_owned()).collect());
            (self.client_id.clone(), scopes, None)
        };
        let upstream_exp = upstream_exp.or_else(|| token.expires_in.map(|ttl| self.now.saturating_add(ttl.as_secs())));
        let mapped = federated::map_scopes(&self.config.scope_map, upstream_scopes.iter().map(String::as_str));
        let allowed = self.known.as_ref().map(|c| c.record.scopes.clone()).unwrap_or_default();
        let scopes = federated::narrow(mapped.clone(), &allowed, requested);
        if let Some(requested) = requested
            && let Some(missing) = requested.iter().find(|s| !scopes.iter().any(|g| g == *s))
        {
            return Err(OAuthError::invalid_scope(format!(
                "scope `{missing}` is not allowed for this client"
            )));
        }

        let client = self.record_secret(&mapped).await?;

        let passthrough = client.record.federation.as_ref().and_then(|f| f.mode.as_deref()) == Some(MODE_PASSTHROUGH);
        if passthrough {
            let body = PassthroughResponse {
                access_token,
                token_type: &token.token_type,
                expires_in: token.expires_in.map(|ttl| ttl.as_secs()),
                scope: token.scopes.as_ref().map(|scopes| scopes.join(" ")),
            };
            self.state.metrics().token_issued(0);
            return Ok(no_store(axum::Json(body).into_response()));
        }
        let aud = audiences(self.state, &client, self.form)?;
        let mut exp = self.now + self.state.settings().token_ttl;
        if let Some(upstream_exp) = upstream_exp {
            exp = exp.min(upstream_exp);
        }
        if exp <= self.now {
            return Err(
                OAuthError::temporarily_unavailable("the upstream identity provider issued an expired token")
                    .with_retry_after(5),
            );
        }
        let grant = Grant {
            sub,
            scopes,
            aud,
            exp,
            act: None,
            degraded: false,
            issued_token_type: None,
            metric: 0,
            plugin: None,
        };
        let view = self.state.view();
        Ok(issue(self.state, &view, &client, grant, self.now))
    }

    /// Records a salted hash of the accepted secret unless one already matches (and records an
    /// unknown client as federated); returns the client as the view now holds it.
    async fn record_secret(&self, mapped: &[String]) -> Result<Arc<Client>, OAuthError> {
        let cache = &self.state.0.verified;
        let stored: Vec<VerifiedSecret> = self
            .known
            .as_ref()
            .and_then(|c| c.record.federation.as_ref())
            .map(|f| f.verified_secrets.clone())
            .unwrap_or_default();
        if let Some(known) = &self.known
            && federated::cached_match(&self.client_id, &stored, self.secret.expose(), cache)
        {
            return Ok(known.clone());
        }
        let state = self.state.clone();
        let client_id = self.client_id.clone();
        let secret = self.secret.clone();
        let upstream = self.upstream.name().to_owned();
        let mapped = mapped.to_vec();
        let now = self.now;
        let default_alg = self.state.settings().default_alg.to_string();
        let recorded = tokio::task::spawn_blocking(move || {
            let cache = &state.0.verified;
            if !stored.is_empty() && federated::verify_secret(&client_id, &stored, secret.expose(), cache) {
                return Ok(None);
            }
            let verified = federated::hash_secret(secret.expose(), now).map_err(crate::error::Error::Admin)?;
            let answer = state.with_node(|node| {
                let record = match node.state().clients.get(&client_id) {
                    Some(record) => {
                        let mut record = record.clone();
                        let Some(federation) = record.federation.as_mut() else {
                            // Re-registered meanwhile as a local client: leave it alone.
                            return Ok((false, vec![]));
                        };
                        federation.verified_secrets.push(verified.clone());
                        federation.granted_scopes = mapped.clone();
                        let excess = federation.verified_secrets.len().saturating_sub(MAX_VERIFIED_SECRETS);
                        federation.verified_secrets.drain(..excess);
                        record
                    }
                    None => ClientRecord {
                        client_id: client_id.clone(),
                        name: format!("{client_id} (federated from {upstream})"),
                        secrets: Vec::new(),
                        grant_types: vec!["client_credentials".to_owned()],
                        scopes: mapped.clone(),
                        audiences: Vec::new(),
                        token_alg: default_alg.clone(),
                        jwks: None,
                        created_at: now,
                        degradation: None,
                        federation: Some(Box::new(ClientFederation {
                            upstream: upstream.clone(),
                            mode: None,
                            verified_secrets: vec![verified.clone()],
                            granted_scopes: mapped.clone(),
                            auto: true,
                        })),
                        ..Default::default()
                    },
                };
                let change = Change::PutClient(record);
                node.apply(std::slice::from_ref(&change))?;
                Ok((true, vec![change]))
            })?;
            if answer {
                federated::remember(&client_id, &verified, secret.expose(), cache);
                tracing::info!(
                    client_id,
                    upstream,
                    "federated client: recorded a secret the upstream accepted"
                );
            }
            Ok::<_, crate::error::Error>(Some(()))
        })
        .await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(OAuthError::server_error(&error)),
            Err(error) => return Err(OAuthError::server_error(&error)),
        }
        self.state
            .view()
            .clients
            .get(&self.client_id)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_client("client authentication failed"))
    }

    /// The upstream refused the credentials (or the scope).
    async fn rejected(self, error: &str) -> Result<Response, OAuthError> {
        tracing::info!(
            client_id = self.client_id,
            upstream = self.upstream.name(),
            error,
            "federated client: the upstream refused the request"
        );
        if error == "invalid_scope" {
            return Err(OAuthError::invalid_scope("the upstream refused the requested scope"));
        }
        // The upstream no longer accepts this secret: stop accepting it locally too. Only the
        // in-memory cache is asked (no slow hash per refused request): a secret this process
        // verified before is found there.
        let cache = &self.state.0.verified;
        if let Some(known) = &self.known
            && let Some(federation) = &known.record.federation
            && federation.verified_secrets.iter().any(|stored| {
                federated::cached_match(
                    &self.client_id,
                    std::slice::from_ref(stored),
                    self.secret.expose(),
                    cache,
                )
            })
        {
            let refused: Vec<VerifiedSecret> = federation
                .verified_secrets
                .iter()
                .filter(|stored| {
                    federated::cached_match(
                        &self.client_id,
                        std::slice::from_ref(stored),
                        self.secret.expose(),
                        cache,
                    )
                })
                .cloned()
                .collect();
            let state = self.state.clone();
            let client_id = self.client_id.clone();
            let dropped = tokio::task::spawn_blocking(move || {
                state.with_node(|node| {
                    let Some(mut record) = node.state().clients.get(&client_id).cloned() else {
                        return Ok(((), vec![]));
                    };
                    if let Some(f) = record.federation.as_mut() {
                        f.verified_secrets.retain(|v| !refused.contains(v));
                    }
                    let change = Change::PutClient(record);
                    node.apply(std::slice::from_ref(&change))?;
                    Ok(((), vec![change]))
                })
            })
            .await;
            match dropped {
                Ok(Ok(())) => tracing::info!(
                    client_id = self.client_id,
                    "federated client: dropped the hash of a secret the upstream no longer accepts"
                ),
                Ok(Err(error)) => {
                    tracing::warn!(client_id = self.client_id, %error, "federated client: cannot drop a refused secret's hash")
                }
                Err(error) => {
                    tracing::warn!(client_id = self.client_id, %error, "federated client: cannot drop a refused secret's hash")
                }
            }
        }
        Err(OAuthError::invalid_client("client authentication failed"))
    }

    /// The upstream is unavailable: authenticate against the recorded hashes; the client's
    /// degradation policy decides.
    async fn offline(self, requested: Option<&[&str]>) -> Result<Response, OAuthError> {
        let at = Duration::from_secs(self.now);
        let health = Health::from(&self.upstream.status(at));
        let retry_after = health
            .retry_at
            .map_or(1, |retry| retry.saturating_sub(at).as_secs().max(1));
        let Some(client) = self.known.clone() else {
            // Never accepted by the upstream: nothing to check the secret against.
            return Err(
                OAuthError::temporarily_unavailable("the upstream identity provider is unavailable")
                    .with_retry_after(retry_after),
            );
        };
        let stored = client
            .record
            .federation
            .as_ref()
            .map(|f| f.verified_secrets.clone())
            .unwrap_or_default();
        if stored.is_empty() {
            // No secret of this client was ever accepted: nothing to check the secret against.
            return Err(
                OAuthError::temporarily_unavailable("the upstream identity provider is unavailable")
                    .with_retry_after(retry_after),
            );
        }
        let cache = &self.state.0.verified;
        let verified = federated::cached_match(&self.client_id, &stored, self.secret.expose(), cache) || {
            let state = self.state.clone();
            let (client_id, secret) = (self.client_id.clone(), self.secret.clone());
            tokio::task::spawn_blocking(move || {
                federated::verify_secret(&client_id, &stored, secret.expose(), &state.0.verified)
            })
            .await
            .unwrap_or(false)
        };
        if !verified {
            tracing::debug!(
                client_id = self.client_id,
                "federated client: upstream unavailable and the secret matches no recorded hash"
            );
            return Err(OAuthError::invalid_client("client authentication failed"));
        }
        let federation = self.state.federation();
        let mut policy = federation.policies.policy(&self.client_id);
        if let Some(record) = &client.record.degradation {
            policy = PolicyOverride::from(record).over(policy);
        }
        let decision = match decide(&policy, &health, at, federation.jwks_fresh_for) {
            // The breaker is still closed but this call failed: the policy applies all the same.
            Decision::Normal => match policy.on_upstream_unavailable {
                crate::federation::OnUpstreamUnavailable::FailClosed => Decision::Refuse {
                    retry_after,
                    reason: "the upstream identity provider is unavailable",
                },
                _ => Decision::Degraded {
                    ttl: policy.degraded_ttl,
                },
            },
            decision => decision,
        };
        let ttl = match decision {
            Decision::Refuse { retry_after, reason } => {
                tracing::debug!(
                    client_id = self.client_id,
                    upstream = self.upstream.name(),
                    reason,
                    "federated client refused"
                );
                return Err(OAuthError::temporarily_unavailable(reason).with_retry_after(retry_after));
            }
            Decision::Degraded { ttl } => ttl,
            Decision::Normal => policy.degraded_ttl,
        };
        // The scopes the upstream last granted (as mapped when recorded) bound what a degraded
        // token may carry: the client's registered scopes, else those of its auto-registration.
        let ceiling = match &client.record.federation {
            Some(f) if client.record.scopes.is_empty() => f.granted_scopes.clone(),
            _ => client.record.scopes.clone(),
        };
        let scopes = federated::narrow(ceiling, &[], requested);
        if let Some(requested) = requested
            && let Some(missing) = requested.iter().find(|s| !scopes.iter().any(|g| g == *s))
        {
            return Err(OAuthError::invalid_scope(format!(
                "scope `{missing}` is not allowed for this client"
            )));
        }
        let aud = audiences(self.state, &client, self.form)?;
        let exp = self.now + ttl.as_secs().min(self.state.settings().token_ttl);
        tracing::debug!(
            client_id = self.client_id,
            ttl = exp - self.now,
            "issuing a degraded token to a federated client: upstream unavailable"
        );
        let grant = Grant {
            sub: self.client_id.clone(),
            scopes,
            aud,
            exp,
            act: None,
            degraded: true,
            issued_token_type: None,
            metric: 0,
            plugin: None,
        };
        let view = self.state.view();
        Ok(issue(self.state, &view, &client, grant, self.now))
    }
}

/// Whether `token` is a compact JWS whose payload is a JSON object.
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some()
}
