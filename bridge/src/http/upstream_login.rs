//! "Sign in with the upstream": the login page's buttons for the upstreams configured with
//! `login:`, and the round trip through the upstream's own login (OpenID Connect authorization
//! code flow with PKCE S256, `state` and `nonce`, through [`adapters::Upstream::begin_login`] and
//! [`adapters::Upstream::finish_login`]).
//!
//! 1. `POST /login/upstream` (the button; CSRF-checked, naming the pending authorization request)
//!    checks that the upstream answers, starts a login there, keeps it node-locally under the
//!    digest of its `state`, bound to the browser's session, and redirects the browser to the
//!    upstream's authorization endpoint with `redirect_uri` = `{issuer}/login/upstream/callback`.
//! 2. `GET /login/upstream/callback` takes the login back by `state` (single use, constant-time
//!    comparison, same session, RFC 9207 `iss` checked when sent), exchanges the code and verifies
//!    the ID token (signature against the upstream's JWKS with an allowed algorithm — never
//!    `none` —, `iss`, `aud` = meshgate's client id, `exp`, `nonce`), maps the upstream subject to
//!    a meshgate user, replaces the session (no fixation) and resumes the original `/authorize`
//!    request (consent page or code).
//!
//! **User mapping.** The upstream identity (upstream `name`, ID token `sub`) is the meshgate user
//! `upstream:<name>:<sub>` — the way Keycloak's identity brokering and Dex key a federated
//! identity by (provider, subject), never by a mutable e-mail address or login name. The first
//! login creates the user (as Keycloak's default first-broker-login flow and Dex do); later logins
//! refresh its `name` and `email` from the ID token. With `login: { users: existing }` only
//! identities linked beforehand sign in: `meshgate user link --upstream NAME --subject SUB`
//! creates the user, and an unlinked identity gets a page saying to ask an administrator. Its
//! `sub` in meshgate's tokens is derived from the upstream's name and subject (SHA-256), so two
//! nodes creating the same user at once agree. The user has no password: it signs in only through
//! its upstream (`user remove` takes it away). A subject longer than 128 characters or with
//! characters outside `A-Za-z0-9._@-` (e.g. `auth0|123`) is replaced by `~` and its hash.
//!
//! **When the upstream is down**, the button leads back to the login page with a 503 saying so,
//! and local accounts keep signing in — except for clients whose degradation policy
//! (`federation.default_policy` / `federation.clients`, or the one replicated on the client) is
//! `on_upstream_unavailable: fail_closed`: while an upstream with `login:` is unavailable, their
//! sign-in page refuses with 503. `max_offline` does not apply to local accounts, which never
//! depended on the upstream's keys.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use adapters::Upstream;
use adapters::config::UpstreamConfig;
use adapters::login::{LoginIdentity, LoginRequest};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::login::{LoginChange, UserRecord};
use mesh::state::Change;
use sha2::{Digest, Sha256};

use super::AppState;
use super::authorize::{self, AuthRequest, digest, lock, prune};
use super::pages::{self, LoginChoices, UpstreamButton};
use crate::form::Form;

/// The path of the callback, under the issuer.
pub const CALLBACK_PATH: &str = "/login/upstream/callback";
/// The path the buttons post to, under the issuer.
pub const START_PATH: &str = "/login/upstream";
/// The prefix of the usernames of upstream identities.
pub const USER_PREFIX: &str = "upstream:";
/// How long a login may stay at the upstream, seconds.
const STARTED_TTL: u64 = 600;
/// Bound on the logins under way.
const MAX_STARTED: usize = 10_000;
/// A JWKS fetched this recently counts as proof that the upstream answers (no probe): it
/// coalesces the probes of a burst of button presses.
const PROBE_AFTER: Duration = Duration::from_secs(2);

/// The logins under way at upstreams, node-local, by the digest of their `state`.
#[derive(Default)]
pub struct Started(Mutex<HashMap<String, StartedLogin>>);

struct StartedLogin {
    upstream: String,
    login: LoginRequest,
    request: AuthRequest,
    session: String,
    expires: u64,
}

/// The meshgate username of the upstream identity `subject` at the upstream named `upstream`:
/// `upstream:<upstream>:<subject>`, the subject replaced by `~` and its SHA-256 (base64url) when
/// it is longer than 128 characters or holds characters outside `A-Za-z0-9._@-`.
pub fn username(upstream: &str, subject: &str) -> String {
    let plain = !subject.is_empty()
        && subject.len() <= 128
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if plain {
        format!("{USER_PREFIX}{upstream}:{subject}")
    } else {
        format!(
            "{USER_PREFIX}{upstream}:~{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(subject.as_bytes()))
        )
    }
}

/// The `sub` meshgate's tokens carry for the upstream identity `subject` at the upstream named
/// `upstream`: 128 bits of SHA-256 over both, base64url, the same on every node.
pub fn subject(upstream: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("upstream-login\n{upstream}\n{subject}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The upstreams with `login:`, in configuration order.
fn login_upstreams(state: &AppState) -> Vec<(&Upstream, &UpstreamConfig)> {
    let upstreams = &state.federation().upstreams;
    upstreams
        .configs()
        .into_iter()
        .filter(|config| config.login.is_some())
        .filter_map(|config| Some((upstreams.by_name(&config.name)?, config)))
        .collect()
}

fn label(config: &UpstreamConfig) -> &str {
    config
        .login
        .as_ref()
        .and_then(|login| login.display_name.as_deref())
        .unwrap_or(&config.name)
}

/// The login page for a pending request, with a button per upstream with `login:` and the local
/// form unless the client's policy refuses local sign-in now ([`local_login_refused`]).
pub(super) fn login_page(
    state: &AppState,
    client_id: &str,
    client_name: &str,
    request_id: &str,
    csrf: &str,
    username: &str,
    problem: Option<(StatusCode, &str)>,
) -> Response {
    let upstreams = login_upstreams(state);
    let buttons: Vec<UpstreamButton<'_>> = upstreams
        .iter()
        .map(|(_, config)| UpstreamButton {
            name: &config.name,
            label: label(config),
        })
        .collect();
    let refusal = local_refusal(state, client_id, state.now());
    let start = authorize::endpoint(state, START_PATH);
    let choices = LoginChoices {
        upstream_action: &start,
        upstreams: &buttons,
        local: match &refusal {
            None => Ok(()),
            Some(why) => Err(why.as_str()),
        },
    };
    pages::login(
        &authorize::endpoint(state, "/login"),
        client_name,
        request_id,
        csrf,
        username,
        problem,
        &choices,
    )
}

/// The page refusing a local account's sign-in to `client_id` now, if it is refused: while an
/// upstream with `login:` is unavailable and the client's degradation policy is `fail_closed`.
pub(super) fn local_login_refused(state: &AppState, client_id: &str, now: u64) -> Option<Response> {
    let why = local_refusal(state, client_id, now)?;
    Some(pages::error(StatusCode::SERVICE_UNAVAILABLE, &why))
}

fn local_refusal(state: &AppState, client_id: &str, now: u64) -> Option<String> {
    use crate::federation::{Health, OnUpstreamUnavailable};
    let upstreams = login_upstreams(state);
    if upstreams.is_empty() {
        return None;
    }
    let federation = state.federation();
    let mut policy = federation.policies.policy(client_id);
    if let Some(record) = state
        .view()
        .clients
        .get(client_id)
        .and_then(|c| c.record.degradation.clone())
    {
        policy = crate::federation::PolicyOverride::from(&record).over(policy);
    }
    if policy.on_upstream_unavailable != OnUpstreamUnavailable::FailClosed {
        return None;
    }
    let at = Duration::from_secs(now);
    let down = upstreams
        .iter()
        .find(|(upstream, _)| !Health::from(&upstream.status(at)).is_available(at, federation.jwks_fresh_for))?;
    Some(format!(
        "{} cannot be reached right now, and this application does not allow signing in without it. Try again later.",
        label(down.1)
    ))
}

/// Whether the upstream answers, so that the browser is not sent to a dead login page: not while
/// its breaker is open; otherwise a JWKS fetched within [`PROBE_AFTER`] is enough, else one
/// refresh (discovery and JWKS, through the breaker, within the upstream's timeouts) decides.
async fn reachable(upstream: &Upstream, now: u64) -> bool {
    let at = Duration::from_secs(now);
    let status = upstream.status(at);
    if status.circuit.state == adapters::breaker::State::Open {
        return false;
    }
    let recent = status
        .jwks_fetched_at
        .is_some_and(|fetched| at.saturating_sub(fetched) <= PROBE_AFTER);
    if recent && status.discovered {
        return true;
    }
    match upstream.oidc().refresh().await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(upstream = upstream.name(), %error, "upstream login: the upstream does not answer");
            false
        }
    }
}

fn callback_url(state: &AppState) -> Option<url::Url> {
    url::Url::parse(&format!("{}{CALLBACK_PATH}", state.settings().issuer)).ok()
}

/// Shows the login page again for `request` (kept pending) with `problem`.
fn again(state: &AppState, request: AuthRequest, session: (&str, &str), problem: (StatusCode, &str)) -> Response {
    let now = state.now();
    let view = state.view();
    let client_name = authorize::find_client(state, &view, &request.client_id)
        .map(|c| c.record.name.clone())
        .unwrap_or_default();
    let client_id = request.client_id.clone();
    let id = state.authz().add_pending(request, session.0, now);
    login_page(state, &client_id, &client_name, &id, session.1, "", Some(problem))
}

/// `POST /login/upstream`: a "Sign in with …" button.
pub(super) async fn start(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let now = state.now();
    let authz = state.authz();
    let Some((key, session)) = authz.session(&headers, now) else {
        return authorize::forbidden();
    };
    if !authorize::csrf_ok(&session, &form) {
        return authorize::forbidden();
    }
    let request_id = form.single("request").ok().flatten().unwrap_or_default();
    let Some(request) = authz.take_pending(request_id, &key, now) else {
        return authorize::expired();
    };
    let session_pair = (key.as_str(), session.csrf.as_str());
    let name = form.single("upstream").ok().flatten().unwrap_or_default();
    let found = login_upstreams(&state)
        .into_iter()
        .find(|(_, config)| config.name == name)
        .map(|(upstream, config)| (upstream.clone(), config.clone()));
    let Some((upstream, config)) = found else {
        return again(
            &state,
            request,
            session_pair,
            (StatusCode::BAD_REQUEST, "There is no such sign-in provider."),
        );
    };
    let unavailable = format!(
        "{} cannot be reached right now. Sign in with a local account, or try again later.",
        label(&config)
    );
    if !reachable(&upstream, now).await {
        return again(
            &state,
            request,
            session_pair,
            (StatusCode::SERVICE_UNAVAILABLE, &unavailable),
        );
    }
    let scopes: Vec<&str> = config
        .login
        .as_ref()
        .map(|login| login.scopes.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let Some(redirect_uri) = callback_url(&state) else {
        return pages::error(StatusCode::INTERNAL_SERVER_ERROR, "The issuer is not a URL.");
    };
    let login = match upstream.begin_login(&redirect_uri, &scopes) {
        Ok(login) => login,
        Err(error) => {
            tracing::warn!(upstream = upstream.name(), %error, "upstream login cannot start");
            return again(
                &state,
                request,
                session_pair,
                (StatusCode::SERVICE_UNAVAILABLE, &unavailable),
            );
        }
    };
    let target = login.url.to_string();
    {
        let mut started = lock(&authz.upstream_logins.0);
        prune(&mut started, |s| s.expires > now);
        if started.len() >= MAX_STARTED {
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins are under way. Try again in a minute.",
            );
        }
        started.insert(
            digest(login.state.expose()),
            StartedLogin {
                upstream: config.name.clone(),
                login,
                request,
                session: key,
                expires: now + STARTED_TTL,
            },
        );
    }
    authorize::redirect(&target)
}

/// `GET /login/upstream/callback`: the upstream's answer.
pub(super) async fn callback(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > state.max_body_bytes() {
        return pages::error(StatusCode::URI_TOO_LONG, "The request is too large.");
    }
    let Ok(form) = Form::parse(query.as_bytes()) else {
        return pages::error(StatusCode::BAD_REQUEST, "The sign-in response is malformed.");
    };
    let now = state.now();
    let authz = state.authz();
    let Ok(Some(returned)) = form.single("state") else {
        return pages::error(StatusCode::BAD_REQUEST, "The sign-in response carries no state.");
    };
    let started = lock(&authz.upstream_logins.0).remove(&digest(returned));
    let Some(started) = started.filter(|s| s.expires > now && s.login.state_matches(returned)) else {
        return authorize::expired();
    };
    // The browser that started the login must be the one finishing it (no login CSRF).
    let Some((key, session)) = authz.session(&headers, now).filter(|(key, _)| *key == started.session) else {
        return authorize::forbidden();
    };
    let session_pair = (key.as_str(), session.csrf.as_str());
    let Some((upstream, config)) = login_upstreams(&state)
        .into_iter()
        .find(|(_, config)| config.name == started.upstream)
        .map(|(upstream, config)| (upstream.clone(), config.clone()))
    else {
        return authorize::expired();
    };
    let name = label(&config).to_owned();
    // RFC 9207: an `iss` in the response must be this upstream's (mix-up defense).
    match form.single("iss") {
        Ok(None) => {}
        Ok(Some(iss)) if iss == config.issuer.as_str() => {}
        _ => {
            tracing::warn!(upstream = %config.name, "upstream login: the response's `iss` is not the upstream's");
            return again(
                &state,
                started.request,
                session_pair,
                (
                    StatusCode::BAD_REQUEST,
                    "The sign-in response came from another provider.",
                ),
            );
        }
    }
    if let Ok(Some(error)) = form.single("error") {
        let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        tracing::info!(upstream = %config.name, error = %error, "upstream login refused by the upstream");
        return again(
            &state,
            started.request,
            session_pair,
            (
                StatusCode::UNAUTHORIZED,
                &format!("{name} did not sign you in ({error})."),
            ),
        );
    }
    let (Ok(Some(code)), Some(redirect_uri)) = (form.single("code"), callback_url(&state)) else {
        return pages::error(StatusCode::BAD_REQUEST, "The sign-in response carries no code.");
    };
    let identity = match upstream
        .finish_login(&started.login, code, &redirect_uri, Duration::from_secs(now))
        .await
    {
        Ok(identity) => identity,
        Err(error) if error.is_upstream_failure() => {
            tracing::warn!(upstream = %config.name, %error, "upstream login: the upstream failed");
            return again(
                &state,
                started.request,
                session_pair,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{name} cannot be reached right now. Sign in with a local account, or try again later."),
                ),
            );
        }
        Err(error) => {
            tracing::warn!(upstream = %config.name, %error, "upstream login refused");
            return again(
                &state,
                started.request,
                session_pair,
                (
                    StatusCode::UNAUTHORIZED,
                    &format!("The sign-in at {name} could not be verified. Try again."),
                ),
            );
        }
    };
    let username = match record_user(&state, &config, &identity, now).await {
        Ok(Some(username)) => username,
        Ok(None) => {
            tracing::info!(upstream = %config.name, "upstream login of an identity that is not linked to a user");
            return again(
                &state,
                started.request,
                session_pair,
                (
                    StatusCode::FORBIDDEN,
                    &format!("Your {name} account is not linked to a user here. Ask an administrator to link it."),
                ),
            );
        }
        Err(()) => return pages::error(StatusCode::INTERNAL_SERVER_ERROR, "The sign-in could not be saved."),
    };
    tracing::info!(upstream = %config.name, "signed in through the upstream");
    authz.end_session(&key);
    let ttl = authz.settings().session_ttl_secs;
    let (key, session, id) = authz.new_session(Some((username, now)), now);
    let view = state.view();
    let mut response = authorize::decide(&state, &view, &key, &session, started.request, now, true);
    authorize::set_cookie(&state, &mut response, &id, ttl);
    response
}

/// Creates (first login, `users: create`) or refreshes the user of an upstream identity; returns
/// its username, `None` when `users: existing` and it is not linked.
async fn record_user(
    state: &AppState,
    config: &UpstreamConfig,
    identity: &LoginIdentity,
    now: u64,
) -> Result<Option<String>, ()> {
    let create = config
        .login
        .as_ref()
        .is_none_or(|login| login.users == adapters::config::LoginUsers::Create);
    let username = username(&config.name, &identity.subject);
    let claim = |name: &str| {
        identity
            .id_token_claims
            .claim(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= 200 && !v.chars().any(char::is_control))
            .map(str::to_owned)
    };
    let fresh = UserRecord {
        sub: subject(&config.name, &identity.subject),
        username: username.clone(),
        password: String::new(),
        name: claim("name"),
        email: claim("email"),
        created_at: now,
        updated_at: now,
    };
    let writer = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let record = match node.state().users.get(&fresh.username) {
                None if !create => return Ok((false, vec![])),
                Some(old) if old.name == fresh.name && old.email == fresh.email => return Ok((true, vec![])),
                Some(old) => UserRecord {
                    name: fresh.name,
                    email: fresh.email,
                    updated_at: fresh.updated_at,
                    ..old.clone()
                },
                None => fresh,
            };
            let changes = vec![Change::Login(LoginChange::PutUser(record))];
            node.apply(&changes)?;
            Ok((true, changes))
        })
    })
    .await;
    match result {
        Ok(Ok(true)) => Ok(Some(username)),
        Ok(Ok(false)) => Ok(None),
        _ => {
            tracing::error!(upstream = %config.name, "could not record the user of an upstream login");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_identities_map_to_stable_names_and_subjects() {
        assert_eq!(username("corp", "alice"), "upstream:corp:alice");
        assert_eq!(
            username("corp", "0f1e-2d3c@realm.example"),
            "upstream:corp:0f1e-2d3c@realm.example"
        );
        let odd = username("corp", "auth0|123");
        assert!(odd.starts_with("upstream:corp:~") && !odd.contains('|'), "{odd}");
        assert_eq!(odd, username("corp", "auth0|123"));
        assert_ne!(odd, username("corp", "auth0|124"));
        assert!(username("corp", &"x".repeat(129)).starts_with("upstream:corp:~"));
        assert_eq!(subject("corp", "alice"), subject("corp", "alice"));
        assert_ne!(subject("corp", "alice"), subject("other", "alice"));
        assert_ne!(subject("corp", "alice"), subject("corp", "alicf"));
        assert_eq!(subject("corp", "alice").len(), 22);
    }
}
