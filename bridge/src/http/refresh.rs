//! Tokens for people: minting the access / ID / refresh triple of the code and refresh grants, the
//! `refresh_token` grant with rotation on every use, and reuse detection.
//!
//! Refresh tokens are opaque (256 random bits); the state keeps only their SHA-256. Rotating token
//! `p` into `c` writes the spent record `p|c` (see [`mesh::login`]). A token presented again after
//! its rotation is a reuse and revokes its whole family — its refresh tokens and the access tokens
//! issued with them — unless it comes within `bridge.refresh_grace` of the rotation: then this
//! node answers the same new pair it answered the first time (another node, which does not hold
//! that pair, answers `invalid_grant` without revoking). Reuse on another node, or on both sides of
//! a partition, shows up as two spent records of one parent once the states merge;
//! [`revoke_reused`] revokes the family then, on whichever node sees it first.

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::response::Response;
use mesh::login::{FamilyRevocation, LoginChange, RefreshRecord, SpentRecord};
use mesh::state::{Change, State as MeshState};
use serde_json::{Value, json};

use super::AppState;
use super::authorize::{digest, random};
use crate::error::OAuthError;
use crate::form::Form;
use crate::node::Node;
use crate::token::{AccessClaims, Audience, capabilities, mint as mint_access, new_jti};
use crate::view::{Client, View};

/// What the user granted, to be minted.
#[derive(Debug, Clone)]
pub(super) struct UserGrant {
    pub(super) username: String,
    pub(super) scopes: Vec<String>,
    pub(super) aud: Vec<String>,
    /// Every audience the grant authorized (the refresh token keeps them).
    pub(super) family_aud: Vec<String>,
    pub(super) auth_time: u64,
    pub(super) acr: Option<String>,
    pub(super) nonce: Option<String>,
}

/// Where a new refresh token belongs.
#[derive(Debug, Clone)]
pub(super) struct RefreshLink {
    pub(super) family: String,
    pub(super) parent: Option<String>,
    pub(super) expires_at: u64,
}

/// Minted tokens: the response body and the state changes recording them.
pub(super) struct Issued {
    pub(super) body: Value,
    pub(super) changes: Vec<Change>,
}

/// Mints the access token, the ID token (with `openid`) and the refresh token (with `link`).
pub(super) fn mint(
    state: &AppState,
    mesh_state: &MeshState,
    view: &View,
    client: &Client,
    grant: &UserGrant,
    now: u64,
    link: Option<RefreshLink>,
) -> Result<Issued, OAuthError> {
    mint_as(state, mesh_state, view, client, grant, now, link, new_jti())
}

/// Mints the tokens of a user's grant (code or device grant) with the access token id `jti`
/// chosen beforehand, and records them in the state.
pub(super) async fn issue(
    state: &AppState,
    client: Arc<Client>,
    grant: UserGrant,
    link: Option<RefreshLink>,
    jti: String,
    now: u64,
) -> Result<Issued, OAuthError> {
    let writer = state.clone();
    tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let view = writer.view();
            let issued = match mint_as(&writer, node.state(), &view, &client, &grant, now, link, jti) {
                Ok(issued) => issued,
                Err(e) => return Ok((Err(e), vec![])),
            };
            node.apply(&issued.changes)?;
            let changes = issued.changes.clone();
            Ok((Ok(issued), changes))
        })
    })
    .await
    .map_err(|e| OAuthError::server_error(&e))?
    .map_err(|e| OAuthError::server_error(&e))?
}

/// [`mint`] with the access token id `jti`.
#[allow(clippy::too_many_arguments)]
fn mint_as(
    state: &AppState,
    mesh_state: &MeshState,
    view: &View,
    client: &Client,
    grant: &UserGrant,
    now: u64,
    link: Option<RefreshLink>,
    jti: String,
) -> Result<Issued, OAuthError> {
    let s = &state.0;
    let user = mesh_state
        .users
        .get(&grant.username)
        .ok_or_else(|| OAuthError::invalid_grant("the user no longer exists"))?;
    let alg = client.token_alg.unwrap_or(s.settings.default_alg);
    let key = view
        .signing_key(alg)
        .ok_or_else(|| OAuthError::server_error(&format!("no active {alg} signing key")))?;
    let scope_list: Vec<&str> = grant.scopes.iter().map(String::as_str).collect();
    let scope = scope_list.join(" ");
    let exp = now + s.settings.token_ttl;
    let claims = AccessClaims {
        iss: s.settings.issuer.clone(),
        sub: user.sub.clone(),
        cap: capabilities(&grant.aud, &scope_list),
        aud: Audience::from_list(grant.aud.clone()),
        client_id: client.record.client_id.clone(),
        scope: scope.clone(),
        iat: now,
        nbf: now,
        exp,
        jti,
        node: s.did.clone(),
        act: None,
        degraded: false,
    };
    let access_token = mint_access(&claims, key).map_err(|e| OAuthError::server_error(&e))?;
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": exp - now,
    });
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    if scope_list.contains(&"openid") {
        let id_token = super::oidc::id_token(state, view, client, user, grant, &access_token, now, exp)?;
        body["id_token"] = json!(id_token);
    }
    let mut changes = Vec::new();
    if let Some(link) = link {
        let token = random();
        let id = digest(&token);
        let record = RefreshRecord {
            id: id.clone(),
            family: link.family.clone(),
            parent: link.parent.clone(),
            client_id: client.record.client_id.clone(),
            username: grant.username.clone(),
            scopes: grant.scopes.clone(),
            aud: grant.family_aud.clone(),
            auth_time: grant.auth_time,
            acr: grant.acr.clone(),
            issued_at: now,
            expires_at: link.expires_at,
            access_jti: claims.jti.clone(),
            access_exp: exp,
            node: s.did.clone(),
        };
        changes.push(Change::Login(LoginChange::PutRefresh(record)));
        if let Some(parent) = link.parent {
            changes.push(Change::Login(LoginChange::PutSpent(SpentRecord {
                parent,
                child: id,
                family: link.family,
                at: now,
                expires_at: link.expires_at,
            })));
        }
        body["refresh_token"] = json!(token);
    }
    s.metrics.token_issued(0);
    Ok(Issued { body, changes })
}

/// The changes revoking `family`: the family record and every unexpired access token issued
/// with one of its refresh tokens.
pub(crate) fn revoke_family(state: &MeshState, family: &str, reason: &str, now: u64) -> Vec<Change> {
    let records = state.refresh.family(family);
    let expires_at = records.iter().map(|r| r.expires_at).max().unwrap_or(now + 86_400);
    let mut changes = vec![Change::Login(LoginChange::RevokeFamily(FamilyRevocation {
        family: family.to_owned(),
        reason: reason.to_owned(),
        at: now,
        expires_at,
    }))];
    changes.extend(
        records
            .iter()
            .filter(|r| r.access_exp > now && !state.revocations.contains_key(&r.access_jti))
            .map(|r| Change::Revoke {
                jti: r.access_jti.clone(),
                exp: r.access_exp,
            }),
    );
    changes
}

/// After a merge: revokes every family in which one token was rotated into two different
/// children, and the access tokens of revoked families that arrived after the revocation.
/// Applies and returns the changes.
pub fn revoke_reused(node: &mut Node, now: u64) -> Result<Vec<Change>, crate::error::Error> {
    let state = node.state();
    let mut changes = Vec::new();
    for family in state.refresh.reused_families() {
        tracing::warn!("refresh token reuse detected after a merge; revoking the token family");
        changes.extend(revoke_family(state, &family, "reuse", now));
    }
    changes.extend(
        state
            .refresh
            .tokens
            .values()
            .filter(|r| state.refresh.revoked.contains_key(&r.family))
            .filter(|r| r.access_exp > now && !state.revocations.contains_key(&r.access_jti))
            .map(|r| Change::Revoke {
                jti: r.access_jti.clone(),
                exp: r.access_exp,
            }),
    );
    if !changes.is_empty() {
        node.apply(&changes)?;
    }
    Ok(changes)
}

/// The `refresh_token` grant (RFC 6749 §6) with rotation.
pub(super) async fn refresh_grant(
    state: &AppState,
    client: Arc<Client>,
    form: &Form,
    now: u64,
) -> Result<Response, OAuthError> {
    let id = digest(form.required("refresh_token")?);
    let requested: Option<Vec<String>> = form
        .single("scope")?
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect());
    let resources: Vec<String> = form.all("resource").map(str::to_owned).collect();
    let writer = state.clone();
    let answer = tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let result = rotate(&writer, node, &client, &id, requested, &resources, now);
            match result {
                Ok((body, changes)) => Ok((Ok(body), changes)),
                Err((error, changes)) => Ok((Err(error), changes)),
            }
        })
    })
    .await
    .map_err(|e| OAuthError::server_error(&e))?
    .map_err(|e| OAuthError::server_error(&e))??;
    Ok(super::token::no_store(axum::Json(answer).into_response()))
}

type Rotated = Result<(Value, Vec<Change>), (OAuthError, Vec<Change>)>;

fn rotate(
    state: &AppState,
    node: &mut Node,
    client: &Client,
    id: &str,
    requested: Option<Vec<String>>,
    resources: &[String],
    now: u64,
) -> Rotated {
    let invalid = |m: &'static str| Err((OAuthError::invalid_grant(m), vec![]));
    let mesh_state = node.state();
    let Some(record) = mesh_state.refresh.tokens.get(id).cloned() else {
        return invalid("the refresh token is invalid or expired");
    };
    if record.client_id != client.record.client_id {
        return invalid("the refresh token was issued to another client");
    }
    if mesh_state.refresh.revoked.contains_key(&record.family) {
        return invalid("the refresh token has been revoked");
    }
    if record.expires_at <= now {
        return invalid("the refresh token is invalid or expired");
    }
    let children = mesh_state.refresh.children(id);
    if !children.is_empty() {
        let grace = state.0.authz.settings().refresh_grace_secs;
        let cached = {
            let cache = state.0.authz.grace.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(id)
                .filter(|(at, _)| now < at + grace)
                .map(|(_, body)| body.clone())
        };
        if let Some(body) = cached {
            return Ok((body, vec![]));
        }
        if children.iter().all(|c| now < c.at + grace) {
            return invalid("the refresh token was just rotated; use the new one");
        }
        tracing::warn!("spent refresh token presented again; revoking its family");
        let changes = revoke_family(mesh_state, &record.family, "reuse", now);
        if let Err(e) = node.apply(&changes) {
            return Err((OAuthError::server_error(&e), vec![]));
        }
        return Err((
            OAuthError::invalid_grant("the refresh token was already used; its grant is revoked"),
            changes,
        ));
    }
    let scopes = match requested {
        None => record.scopes.clone(),
        Some(requested) => {
            if let Some(extra) = requested.iter().find(|s| !record.scopes.contains(s)) {
                return Err((
                    OAuthError::invalid_scope(format!("scope `{extra}` was not granted")),
                    vec![],
                ));
            }
            requested
        }
    };
    // RFC 8707: a refresh may ask for some of the grant's audiences; the family keeps them all.
    if let Some(extra) = resources.iter().find(|r| !record.aud.contains(r)) {
        return Err((
            OAuthError::invalid_target(format!("resource `{extra}` was not authorized for this grant")),
            vec![],
        ));
    }
    let aud = if resources.is_empty() {
        record.aud.clone()
    } else {
        resources.to_vec()
    };
    let grant = UserGrant {
        username: record.username.clone(),
        scopes,
        family_aud: record.aud.clone(),
        aud,
        auth_time: record.auth_time,
        acr: record.acr.clone(),
        nonce: None,
    };
    let link = RefreshLink {
        family: record.family.clone(),
        parent: Some(record.id.clone()),
        expires_at: record.expires_at,
    };
    let view = state.view();
    let issued = mint(state, mesh_state, &view, client, &grant, now, Some(link)).map_err(|e| (e, vec![]))?;
    if let Err(e) = node.apply(&issued.changes) {
        return Err((OAuthError::server_error(&e), vec![]));
    }
    {
        let grace = state.0.authz.settings().refresh_grace_secs;
        let mut cache = state.0.authz.grace.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (at, _)| now < *at + grace);
        if grace > 0 {
            cache.insert(id.to_owned(), (now, issued.body.clone()));
        }
    }
    Ok((issued.body, issued.changes))
}
