//! `/authorize` (OAuth 2.1 authorization code + PKCE S256, RFC 9207 `iss`, OIDC `prompt`,
//! `max_age`, `nonce`), the login and consent forms, RP-initiated logout, and the
//! `authorization_code` grant at `/token`.
//!
//! Node-local, in memory: browser sessions (cookie `meshgate_session`: HttpOnly, SameSite=Lax,
//! Secure under an https issuer), pending authorization requests and codes (60 s, single use). A
//! session is an anonymous one (with a CSRF token) until its user logs in, when it is replaced by a
//! fresh one (no fixation). Every form carries the session's CSRF token. [`Authz::session_user`]
//! is the hook other browser pages (a device verification page) use to find the signed-in user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::login::{ConsentRecord, LoginChange};
use mesh::state::Change;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::form_post::{self, ResponseMode};
use super::pages;
use super::refresh::{self, RefreshLink, UserGrant};
use super::token::{audiences, granted_scopes};
use crate::error::OAuthError;
use crate::form::Form;
use crate::view::{Client, View};

/// Lifetime of an authorization code, seconds.
pub const CODE_TTL: u64 = 60;
/// How long a pending authorization request (login or consent page shown) stays valid.
const PENDING_TTL: u64 = 600;
/// Lifetime of a session before its user logs in.
pub(super) const ANONYMOUS_TTL: u64 = 1800;
/// Bound on each in-memory map (sessions, pending requests, codes).
const MAX_ENTRIES: usize = 100_000;
/// The session cookie.
pub const COOKIE: &str = "meshgate_session";
/// The `acr` value meshgate's password login satisfies.
pub const ACR_PASSWORD: &str = "urn:meshgate:acr:password";

/// Login settings from `bridge:`.
#[derive(Debug, Clone, Copy)]
pub struct LoginSettings {
    /// `bridge.refresh_grace`: during it a concurrent refresh with a just-rotated token gets the
    /// same new pair.
    pub refresh_grace_secs: u64,
    /// `bridge.refresh_token_ttl`: lifetime of a refresh-token family.
    pub refresh_ttl_secs: u64,
    /// `bridge.session_ttl`: lifetime of a signed-in browser session.
    pub session_ttl_secs: u64,
}

impl Default for LoginSettings {
    fn default() -> Self {
        Self {
            refresh_grace_secs: 3,
            refresh_ttl_secs: 30 * 86_400,
            session_ttl_secs: 12 * 3600,
        }
    }
}

/// The node-local state of the login flow.
#[derive(Default)]
pub struct Authz {
    settings: OnceLock<LoginSettings>,
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<String, Code>>,
    /// Refresh responses by spent token id, for the grace window.
    pub(super) grace: Mutex<HashMap<String, (u64, serde_json::Value)>>,
    /// Logins under way at an upstream, by the digest of their `state`.
    pub(super) upstream_logins: super::upstream_login::Started,
}

/// A browser session.
#[derive(Clone)]
pub(super) struct Session {
    /// The CSRF token of its forms.
    pub(super) csrf: String,
    /// The signed-in user (username, auth_time).
    pub(super) user: Option<(String, u64)>,
    expires: u64,
}

/// A validated authorization request.
#[derive(Clone, Debug)]
pub(super) struct AuthRequest {
    pub(super) client_id: String,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    nonce: Option<String>,
    challenge: String,
    scopes: Vec<String>,
    aud: Vec<String>,
    prompt_login: bool,
    prompt_consent: bool,
    prompt_none: bool,
    max_age: Option<u64>,
    acr: bool,
    response_mode: ResponseMode,
}

struct Pending {
    request: AuthRequest,
    session: String,
    expires: u64,
}

struct Code {
    request: AuthRequest,
    username: String,
    auth_time: u64,
    expires: u64,
    used: bool,
    issued: Option<(String, u64, Option<String>)>,
}

impl Authz {
    /// Sets the settings (once, at start; later calls are ignored).
    pub fn configure(&self, settings: LoginSettings) {
        let _ = self.settings.set(settings);
    }

    /// The settings.
    pub fn settings(&self) -> LoginSettings {
        self.settings.get().copied().unwrap_or_default()
    }

    /// The signed-in user (username, auth_time) of the request's session cookie, if any, and the
    /// session's CSRF token: for browser pages that need a signed-in user.
    pub fn session_user(&self, headers: &HeaderMap, now: u64) -> Option<(String, u64, String)> {
        let (_, session) = self.session(headers, now)?;
        let (user, auth_time) = session.user?;
        Some((user, auth_time, session.csrf))
    }

    /// The session of the request's cookie: its key and the session.
    pub(super) fn session(&self, headers: &HeaderMap, now: u64) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let key = digest(id);
        let sessions = lock(&self.sessions);
        let session = sessions.get(&key).filter(|s| s.expires > now)?;
        Some((key, session.clone()))
    }

    /// A new session; returns its key, the session and the cookie value.
    pub(super) fn new_session(&self, user: Option<(String, u64)>, now: u64) -> (String, Session, String) {
        let id = random();
        let ttl = if user.is_some() {
            self.settings().session_ttl_secs
        } else {
            ANONYMOUS_TTL
        };
        let session = Session {
            csrf: random(),
            user,
            expires: now + ttl,
        };
        let key = digest(&id);
        let mut sessions = lock(&self.sessions);
        prune(&mut sessions, |s| s.expires > now);
        sessions.insert(key.clone(), session.clone());
        (key, session, id)
    }

    /// Ends the session `key`.
    pub(super) fn end_session(&self, key: &str) {
        lock(&self.sessions).remove(key);
    }

    pub(super) fn add_pending(&self, request: AuthRequest, session: &str, now: u64) -> String {
        let id = random();
        let mut pending = lock(&self.pending);
        prune(&mut pending, |p| p.expires > now);
        pending.insert(
            id.clone(),
            Pending {
                request,
                session: session.to_owned(),
                expires: now + PENDING_TTL,
            },
        );
        id
    }

    pub(super) fn take_pending(&self, id: &str, session: &str, now: u64) -> Option<AuthRequest> {
        let mut pending = lock(&self.pending);
        let entry = pending.get(id)?;
        if entry.session != session || entry.expires <= now {
            return None;
        }
        pending.remove(id).map(|p| p.request)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn prune<V>(map: &mut HashMap<String, V>, keep: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES / 2 {
        map.retain(|_, v| keep(v));
    }
    if map.len() >= MAX_ENTRIES {
        // Still full of live entries: drop an arbitrary half rather than grow without bound.
        let drop: Vec<String> = map.keys().take(MAX_ENTRIES / 2).cloned().collect();
        for k in drop {
            map.remove(&k);
        }
    }
}

/// 256 random bits, base64url.
pub(super) fn random() -> String {
    URL_SAFE_NO_PAD.encode(crate::node::random_bytes::<32>())
}

/// SHA-256, base64url.
pub(super) fn digest(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Sets the session cookie.
pub(super) fn set_cookie(state: &AppState, response: &mut Response, value: &str, max_age: u64) {
    let s = &state.0;
    let path = if s.path_prefix.is_empty() { "/" } else { &s.path_prefix };
    let secure = if s.settings.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The path of `path` under the issuer's path.
pub(super) fn endpoint(state: &AppState, path: &str) -> String {
    format!("{}{path}", state.0.path_prefix)
}

/// Where an error of an authorization request goes.
enum Failure {
    /// To the browser as a page: the client or redirect URI cannot be trusted.
    Page(StatusCode, String),
    /// To the client's redirect URI.
    Redirect(Box<AuthRequest>, &'static str, String),
}

/// `GET /authorize`.
pub(super) async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > state.max_body_bytes() {
        return pages::error(StatusCode::URI_TOO_LONG, "The request is too large.");
    }
    match Form::parse(query.as_bytes()) {
        Ok(form) => authorize_with_document(&state, &headers, &form).await,
        Err(_) => pages::error(StatusCode::BAD_REQUEST, "The request is malformed."),
    }
}

/// `POST /authorize` (form-encoded parameters).
pub(super) async fn authorize_post(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    authorize_with_document(&state, &headers, &form).await
}

/// Fetches the Client ID Metadata Document a URL `client_id` names first, then authorizes.
async fn authorize_with_document(state: &AppState, headers: &HeaderMap, form: &Form) -> Response {
    if let Err(why) = prefetch_document(state, form).await {
        return pages::error(
            StatusCode::BAD_REQUEST,
            &format!("The application's client metadata document cannot be used: {why}"),
        );
    }
    authorize(state, headers, form)
}

/// For a `client_id` that is not a registered client but a metadata-document URL
/// ([`crate::cimd`]): fetches (or finds cached) its document, so that [`find_client`] finds it;
/// the reason when it cannot be used. Other client ids are left to the lookup.
pub(super) async fn prefetch_document(state: &AppState, form: &Form) -> Result<(), String> {
    let Ok(Some(client_id)) = form.single("client_id") else {
        return Ok(());
    };
    let documents = &state.registry().documents;
    if state.view().clients.contains_key(client_id) || !documents.accepts(client_id) {
        return Ok(());
    }
    documents
        .resolve(client_id, state.now())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The client `client_id` names: a registered client, or one described by a metadata document
/// fetched before ([`prefetch_document`]).
pub(super) fn find_client(state: &AppState, view: &View, client_id: &str) -> Option<Arc<Client>> {
    if let Some(client) = view.clients.get(client_id) {
        return Some(client.clone());
    }
    let resolved = state.registry().documents.cached(client_id)?;
    let alg = state.0.settings.default_alg.to_string();
    let record = crate::cimd::client_record(&resolved, &alg, state.now());
    Some(Arc::new(Client::from_metadata_document(record)))
}

fn authorize(state: &AppState, headers: &HeaderMap, form: &Form) -> Response {
    let now = state.now();
    let view = state.view();
    let request = match validate(state, &view, form) {
        Ok(r) => r,
        Err(failure) => return fail(state, failure),
    };
    let (key, session, new_cookie) = match state.0.authz.session(headers, now) {
        Some((key, session)) => (key, session, None),
        None => {
            let (key, session, id) = state.0.authz.new_session(None, now);
            (key, session, Some(id))
        }
    };
    let mut response = decide(state, &view, &key, &session, request, now, false);
    if let Some(id) = new_cookie {
        set_cookie(state, &mut response, &id, ANONYMOUS_TTL);
    }
    response
}

/// Shows the login page, the consent page, or issues the code.
pub(super) fn decide(
    state: &AppState,
    view: &View,
    key: &str,
    session: &Session,
    request: AuthRequest,
    now: u64,
    just_logged_in: bool,
) -> Response {
    let Some(client) = find_client(state, view, &request.client_id) else {
        return pages::error(StatusCode::BAD_REQUEST, "The application is not registered.");
    };
    let user = session.user.clone().filter(|(name, auth_time)| {
        let exists = state.with_node_read(|node| node.state().users.contains_key(name));
        let fresh = request.max_age.is_none_or(|max| now.saturating_sub(*auth_time) <= max);
        exists && fresh && (just_logged_in || !request.prompt_login)
    });
    let Some((username, auth_time)) = user else {
        if request.prompt_none {
            return fail(
                state,
                Failure::Redirect(Box::new(request), "login_required", "the user is not signed in".into()),
            );
        }
        let client_id = request.client_id.clone();
        let id = state.0.authz.add_pending(request, key, now);
        return super::upstream_login::login_page(state, &client_id, &client.record.name, &id, &session.csrf, "", None);
    };
    let consented = state.with_node_read(|node| {
        node.state()
            .consents
            .get(&mesh::login::consent_key(&username, &request.client_id))
            .is_some_and(|c| request.scopes.iter().all(|s| c.scopes.contains(s)))
    });
    if !consented || request.prompt_consent {
        if request.prompt_none {
            return fail(
                state,
                Failure::Redirect(
                    Box::new(request),
                    "consent_required",
                    "the user has not consented".into(),
                ),
            );
        }
        let scopes = request.scopes.clone();
        let resources = request.aud.clone();
        let id = state.0.authz.add_pending(request, key, now);
        return pages::consent(
            &endpoint(state, "/consent"),
            &client.record.name,
            &username,
            &scopes,
            &resources,
            &id,
            &session.csrf,
        );
    }
    issue_code(state, request, username, auth_time, now)
}

fn issue_code(state: &AppState, request: AuthRequest, username: String, auth_time: u64, now: u64) -> Response {
    let code = random();
    let mut params = vec![("code", code.clone())];
    if let Some(s) = &request.state {
        params.push(("state", s.clone()));
    }
    params.push(("iss", state.0.settings.issuer.clone()));
    let target = respond(&request, &params);
    {
        let mut codes = lock(&state.0.authz.codes);
        prune(&mut codes, |c| c.expires + PENDING_TTL > now);
        codes.insert(
            digest(&code),
            Code {
                request,
                username,
                auth_time,
                expires: now + CODE_TTL,
                used: false,
                issued: None,
            },
        );
    }
    target
}

/// The authorization response carrying `params` to the request's redirect URI, in its
/// `response_mode`.
fn respond(request: &AuthRequest, params: &[(&str, String)]) -> Response {
    match request.response_mode {
        ResponseMode::Query => redirect(&with_query(&request.redirect_uri, params)),
        ResponseMode::FormPost => form_post::response(&request.redirect_uri, params),
    }
}

fn with_query(uri: &str, params: &[(&str, String)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in params {
                    pairs.append_pair(k, v);
                }
            }
            url.to_string()
        }
        Err(_) => uri.to_owned(),
    }
}

pub(super) fn redirect(target: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    pages::secure_headers(response.headers_mut());
    response
}

fn fail(state: &AppState, failure: Failure) -> Response {
    match failure {
        Failure::Page(status, message) => pages::error(status, &message),
        Failure::Redirect(request, code, description) => {
            let mut params = vec![("error", code.to_owned()), ("error_description", description)];
            if let Some(s) = &request.state {
                params.push(("state", s.clone()));
            }
            params.push(("iss", state.0.settings.issuer.clone()));
            respond(&request, &params)
        }
    }
}

/// Validates an authorization request: client and redirect URI first (failures are pages), then
/// everything else (failures go to the redirect URI).
fn validate(state: &AppState, view: &View, form: &Form) -> Result<AuthRequest, Failure> {
    let page = |m: &str| Failure::Page(StatusCode::BAD_REQUEST, m.to_owned());
    let client_id = form
        .single("client_id")
        .map_err(|_| page("client_id is repeated."))?
        .ok_or_else(|| page("The request names no application (client_id is missing)."))?;
    let client = find_client(state, view, client_id).ok_or_else(|| page("The application is not registered."))?;
    let given = form
        .single("redirect_uri")
        .map_err(|_| page("redirect_uri is repeated."))?;
    let (redirect_uri, redirect_uri_given) = match given {
        Some(uri) => {
            if !redirect_uri_matches(&client.record.redirect_uris, uri) {
                return Err(page("The redirect URI is not registered for this application."));
            }
            (uri.to_owned(), true)
        }
        None if client.record.redirect_uris.len() == 1 => (client.record.redirect_uris[0].clone(), false),
        None => return Err(page("The request names no redirect URI.")),
    };
    let mut request = AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri,
        redirect_uri_given,
        state: None,
        nonce: None,
        challenge: String::new(),
        scopes: vec![],
        aud: vec![],
        prompt_login: false,
        prompt_consent: false,
        prompt_none: false,
        max_age: None,
        acr: false,
        response_mode: ResponseMode::Query,
    };
    // `state` first, so later errors carry it back.
    match form.single("state") {
        Ok(s) => request.state = s.map(str::to_owned),
        Err(_) => {
            return Err(Failure::Redirect(
                Box::new(request),
                "invalid_request",
                "state is repeated".into(),
            ));
        }
    }
    // Then `response_mode`, so later errors travel the way the client asked.
    match form.single("response_mode").ok().map(ResponseMode::parse) {
        Some(Some(mode)) => request.response_mode = mode,
        _ => {
            return Err(Failure::Redirect(
                Box::new(request),
                "invalid_request",
                "response_mode must be query or form_post".into(),
            ));
        }
    }
    match rest(state, &client, form, &mut request) {
        Ok(()) => Ok(request),
        Err((code, description)) => Err(Failure::Redirect(Box::new(request), code, description)),
    }
}

fn rest(
    state: &AppState,
    client: &Client,
    form: &Form,
    request: &mut AuthRequest,
) -> Result<(), (&'static str, String)> {
    let invalid = |e: OAuthError| ("invalid_request", e.to_string());
    let response_type = form.single("response_type").map_err(invalid)?;
    match response_type {
        Some("code") => {}
        None => return Err(("invalid_request", "response_type is missing".into())),
        Some(_) => {
            return Err((
                "unsupported_response_type",
                "only response_type=code is supported".into(),
            ));
        }
    }
    if !client.allows_grant("authorization_code") {
        return Err((
            "unauthorized_client",
            "the client is not registered for the authorization code flow".into(),
        ));
    }
    if form.single("request").map_err(invalid)?.is_some() {
        return Err(("request_not_supported", "request objects are not supported".into()));
    }
    if form.single("request_uri").map_err(invalid)?.is_some() {
        return Err(("request_uri_not_supported", "request_uri is not supported".into()));
    }
    let challenge = form.single("code_challenge").map_err(invalid)?.ok_or((
        "invalid_request",
        "PKCE is required: code_challenge is missing".to_owned(),
    ))?;
    match form.single("code_challenge_method").map_err(invalid)? {
        Some("S256") => {}
        Some(other) => {
            return Err((
                "invalid_request",
                format!("code_challenge_method `{other}` is not supported; use S256"),
            ));
        }
        None => {
            return Err((
                "invalid_request",
                "code_challenge_method must be S256 (plain is not supported)".into(),
            ));
        }
    }
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).map(|b| b.len()) != Ok(32) {
        return Err((
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)".into(),
        ));
    }
    request.challenge = challenge.to_owned();
    let scopes = granted_scopes(client, form.single("scope").map_err(invalid)?, None)
        .map_err(|e| ("invalid_scope", e.to_string()))?;
    request.scopes = scopes;
    request.aud = audiences(state, client, form).map_err(|e| ("invalid_target", e.to_string()))?;
    if let Some(nonce) = form.single("nonce").map_err(invalid)? {
        if nonce.len() > 512 {
            return Err(("invalid_request", "nonce is too long".into()));
        }
        request.nonce = Some(nonce.to_owned());
    }
    if let Some(prompt) = form.single("prompt").map_err(invalid)? {
        for value in prompt.split(' ').filter(|p| !p.is_empty()) {
            match value {
                "none" => request.prompt_none = true,
                "login" => request.prompt_login = true,
                "consent" => request.prompt_consent = true,
                "select_account" => {}
                other => return Err(("invalid_request", format!("prompt `{other}` is not supported"))),
            }
        }
        if request.prompt_none && (request.prompt_login || request.prompt_consent) {
            return Err((
                "invalid_request",
                "prompt=none cannot be combined with other values".into(),
            ));
        }
    }
    if let Some(max_age) = form.single("max_age").map_err(invalid)? {
        request.max_age = Some(
            max_age
                .parse()
                .map_err(|_| ("invalid_request", "max_age must be a number of seconds".to_owned()))?,
        );
    }
    request.acr = form.single("acr_values").map_err(invalid)?.is_some();
    Ok(())
}

/// Whether `given` matches a registered redirect URI: exactly, or — for a registered `http`
/// loopback IP literal (`127.0.0.1`, `[::1]`) — on any port with the same scheme, host, path and
/// query (RFC 8252 §7.3). `localhost` is matched exactly (RFC 8252 §8.3 advises IP literals).
pub fn redirect_uri_matches(registered: &[String], given: &str) -> bool {
    if registered.iter().any(|r| r == given) {
        return true;
    }
    let Ok(url) = url::Url::parse(given) else { return false };
    let loopback_ip = |u: &url::Url| {
        u.scheme() == "http"
            && match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                _ => false,
            }
    };
    if !loopback_ip(&url) || !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return false;
    }
    registered.iter().any(|r| {
        url::Url::parse(r).is_ok_and(|r| {
            loopback_ip(&r)
                && r.host() == url.host()
                && r.path() == url.path()
                && r.query() == url.query()
                && r.username().is_empty()
        })
    })
}

/// Whether the form carries the session's CSRF token.
pub(super) fn csrf_ok(session: &Session, form: &Form) -> bool {
    form.single("csrf_token")
        .ok()
        .flatten()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The page answering a form without the session's CSRF token.
pub(super) fn forbidden() -> Response {
    pages::error(
        StatusCode::FORBIDDEN,
        "This form has expired or was not sent from this site's page. Go back to the application and sign in again.",
    )
}

pub(super) fn expired() -> Response {
    pages::error(
        StatusCode::BAD_REQUEST,
        "The sign-in request has expired. Go back to the application and start again.",
    )
}

/// `POST /login`: checks the CSRF token and the password, replaces the session, continues.
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: Form,
) -> Response {
    let now = state.now();
    let authz = &state.0.authz;
    let Some((key, session)) = authz.session(&headers, now) else {
        return forbidden();
    };
    if !csrf_ok(&session, &form) {
        return forbidden();
    }
    let request_id = form.single("request").ok().flatten().unwrap_or_default().to_owned();
    let Some(request) = authz.take_pending(&request_id, &key, now) else {
        return expired();
    };
    if let Some(refusal) = super::upstream_login::local_login_refused(&state, &request.client_id, now) {
        return refusal;
    }
    let username = form.single("username").ok().flatten().unwrap_or_default().to_owned();
    let password = form.single("password").ok().flatten().unwrap_or_default().to_owned();
    let source = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let throttle = state.rate_limits().map(|limits| (limits, limits.login()));
    if let Some((limits, throttle)) = throttle
        && let Err((scope, retry)) = throttle.check(source, &username)
    {
        limits.count_refusal(scope);
        let client_name = find_client(&state, &state.view(), &request.client_id)
            .map(|c| c.record.name.clone())
            .unwrap_or_default();
        let request_client_id = request.client_id.clone();
        let id = authz.add_pending(request, &key, now);
        let (problem, secs) = pages::login_throttled(retry);
        let mut response = super::upstream_login::login_page(
            &state,
            &request_client_id,
            &client_name,
            &id,
            &session.csrf,
            &username,
            Some((StatusCode::TOO_MANY_REQUESTS, &problem)),
        );
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        return response;
    }
    let checked = check_password(&state, &username, password).await;
    let view = state.view();
    if !checked {
        tracing::info!("login failed");
        if let Some((_, throttle)) = throttle {
            throttle.failed(source, &username);
        }
        let client_name = find_client(&state, &view, &request.client_id)
            .map(|c| c.record.name.clone())
            .unwrap_or_default();
        let client_id = request.client_id.clone();
        let id = authz.add_pending(request, &key, now);
        return super::upstream_login::login_page(
            &state,
            &client_id,
            &client_name,
            &id,
            &session.csrf,
            &username,
            Some((StatusCode::UNAUTHORIZED, "Wrong username or password.")),
        );
    }
    authz.end_session(&key);
    let ttl = authz.settings().session_ttl_secs;
    let (key, session, id) = authz.new_session(Some((username, now)), now);
    let mut response = decide(&state, &view, &key, &session, request, now, true);
    set_cookie(&state, &mut response, &id, ttl);
    response
}

/// Replaces `username`'s stored hash `old` by the argon2 hash `new` through the normal replicated
/// user update, unless the record changed meanwhile (a concurrent `user passwd`). A failure is
/// logged: the login itself has succeeded.
async fn upgrade_hash(state: &AppState, username: &str, old: String, new: String, now: u64) {
    let writer = state.clone();
    let name = username.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let Some(mut record) = node.state().users.get(&name).cloned() else {
                return Ok((false, vec![]));
            };
            if record.password != old {
                return Ok((false, vec![]));
            }
            record.password = new;
            record.updated_at = now;
            let changes = vec![Change::Login(LoginChange::PutUser(record))];
            node.apply(&changes)?;
            Ok((true, changes))
        })
    })
    .await;
    match result {
        Ok(Ok(true)) => tracing::info!(user = %username, "upgraded an imported password hash to argon2"),
        Ok(Ok(false)) => {}
        _ => tracing::warn!(user = %username, "could not upgrade an imported password hash to argon2"),
    }
}

/// Whether `password` is `username`'s; as slow for unknown names as for known ones.
pub(super) async fn check_password(state: &AppState, username: &str, password: String) -> bool {
    let now = state.now();
    let record = state.with_node_read(|node| node.state().users.get(username).cloned());
    let phc = record.as_ref().map(|u| u.password.clone());
    let (checked, upgrade) = tokio::task::spawn_blocking(move || match phc {
        Some(phc) => {
            let checked = crate::users::verify_password(&phc, &password);
            // An imported (PBKDF2) hash is replaced by an argon2 one now that the password is known.
            let upgrade = (checked && crate::users::needs_rehash(&phc))
                .then(|| crate::users::hash_password(&password).ok().map(|new| (phc, new)))
                .flatten();
            (checked, upgrade)
        }
        None => {
            // Spend the same time as a real check, so timing does not reveal which names exist.
            let _ = crate::users::verify_password(dummy_hash(), &password);
            (false, None)
        }
    })
    .await
    .unwrap_or((false, None));
    if let Some((old, new)) = upgrade {
        upgrade_hash(state, username, old, new, now).await;
    }
    checked
}

fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| crate::users::hash_password("meshgate-dummy-password").unwrap_or_default())
}

/// `POST /consent`: allow (remembered) or deny.
pub(super) async fn consent(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let now = state.now();
    let authz = &state.0.authz;
    let Some((key, session)) = authz.session(&headers, now) else {
        return forbidden();
    };
    if !csrf_ok(&session, &form) {
        return forbidden();
    }
    let Some((username, auth_time)) = session.user.clone() else {
        return forbidden();
    };
    let request_id = form.single("request").ok().flatten().unwrap_or_default();
    let Some(request) = authz.take_pending(request_id, &key, now) else {
        return expired();
    };
    match form.single("decision").ok().flatten() {
        Some("allow") => {}
        _ => {
            return fail(
                &state,
                Failure::Redirect(Box::new(request), "access_denied", "the user denied the request".into()),
            );
        }
    }
    let record = ConsentRecord {
        username: username.clone(),
        client_id: request.client_id.clone(),
        scopes: request.scopes.clone(),
        granted_at: now,
    };
    let writer = state.clone();
    let saved = tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let mut record = record;
            if let Some(old) = node.state().consents.get(&record.key()) {
                for s in &old.scopes {
                    if !record.scopes.contains(s) {
                        record.scopes.push(s.clone());
                    }
                }
            }
            let changes = vec![Change::Login(LoginChange::PutConsent(record))];
            node.apply(&changes)?;
            Ok(((), changes))
        })
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        return pages::error(StatusCode::INTERNAL_SERVER_ERROR, "The consent could not be saved.");
    }
    issue_code(&state, request, username, auth_time, now)
}

/// `GET /logout` (OIDC RP-initiated logout): asks to confirm.
pub(super) async fn logout_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > state.max_body_bytes() {
        return pages::error(StatusCode::URI_TOO_LONG, "The request is too large.");
    }
    let Ok(form) = Form::parse(query.as_bytes()) else {
        return pages::error(StatusCode::BAD_REQUEST, "The request is malformed.");
    };
    let now = state.now();
    let target = match logout_target(&state, &form, now) {
        Ok(t) => t,
        Err(message) => return pages::error(StatusCode::BAD_REQUEST, &message),
    };
    let Some((_, session)) = state.0.authz.session(&headers, now) else {
        // Nobody is signed in here: nothing to confirm.
        return match target {
            Some(target) => redirect(&target),
            None => pages::logged_out(),
        };
    };
    let mut hidden = Vec::new();
    for name in ["client_id", "post_logout_redirect_uri", "state", "id_token_hint"] {
        if let Ok(Some(v)) = form.single(name) {
            hidden.push((name, v));
        }
    }
    pages::logout_confirm(&endpoint(&state, "/logout"), &hidden, &session.csrf)
}

/// `POST /logout`: ends the session (CSRF-checked) and returns to the client if asked.
pub(super) async fn logout_post(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let now = state.now();
    let target = match logout_target(&state, &form, now) {
        Ok(t) => t,
        Err(message) => return pages::error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some((key, session)) = state.0.authz.session(&headers, now) {
        if !csrf_ok(&session, &form) {
            return forbidden();
        }
        state.0.authz.end_session(&key);
    }
    let mut response = match target {
        Some(target) => redirect(&target),
        None => pages::logged_out(),
    };
    set_cookie(&state, &mut response, "", 0);
    response
}

/// Where to go after logout: `post_logout_redirect_uri` (with `state`) if it exactly matches one
/// registered by the client named by `client_id` or by the `id_token_hint`'s audience.
fn logout_target(state: &AppState, form: &Form, now: u64) -> Result<Option<String>, String> {
    let repeated = |_| "a parameter is repeated".to_owned();
    let Some(uri) = form.single("post_logout_redirect_uri").map_err(repeated)? else {
        return Ok(None);
    };
    let hinted = match form.single("id_token_hint").map_err(repeated)? {
        Some(hint) => Some(super::oidc::id_token_audience(state, hint, now).ok_or("the id_token_hint is not valid")?),
        None => None,
    };
    let client_id = match (form.single("client_id").map_err(repeated)?, hinted) {
        (Some(a), Some(b)) if a != b => return Err("client_id does not match the id_token_hint".into()),
        (Some(a), _) => a.to_owned(),
        (None, Some(b)) => b,
        (None, None) => return Err("post_logout_redirect_uri needs client_id or id_token_hint".into()),
    };
    let view = state.view();
    let client = view
        .clients
        .get(&client_id)
        .ok_or("the application is not registered")?;
    if !client.record.post_logout_redirect_uris.iter().any(|r| r == uri) {
        return Err("the post-logout redirect URI is not registered for this application".into());
    }
    let mut params = Vec::new();
    if let Some(s) = form.single("state").map_err(repeated)? {
        params.push(("state", s.to_owned()));
    }
    Ok(Some(with_query(uri, &params)))
}

/// The `authorization_code` grant (RFC 6749 §4.1.3, RFC 7636 §4.6).
pub(super) async fn code_grant(
    state: &AppState,
    client: Arc<Client>,
    form: &Form,
    now: u64,
) -> Result<Response, OAuthError> {
    let code = form.required("code")?;
    let verifier = form.single("code_verifier")?;
    let redirect_uri = form.single("redirect_uri")?;
    let key = digest(code);
    // Marking the code spent and naming the tokens it will mint happen at once, under the lock:
    // a replay racing this redemption finds the names and revokes those tokens, even before
    // they are minted.
    let found = {
        let mut codes = lock(&state.0.authz.codes);
        match codes.get_mut(&key) {
            None => Err(None),
            Some(entry) if entry.used => Err(entry.issued.take()),
            Some(entry) => {
                entry.used = true;
                let jti = crate::token::new_jti();
                let family = client.allows_grant("refresh_token").then(random);
                entry.issued = Some((jti.clone(), now + state.0.settings.token_ttl, family.clone()));
                Ok((
                    entry.expires,
                    entry.request.clone(),
                    entry.username.clone(),
                    entry.auth_time,
                    jti,
                    family,
                ))
            }
        }
    };
    let (expires, request, username, auth_time, jti, family) = match found {
        Ok(found) => found,
        Err(None) => {
            return Err(OAuthError::invalid_grant(
                "the authorization code is invalid or expired",
            ));
        }
        Err(Some((jti, exp, family))) => {
            tracing::warn!("authorization code replayed; revoking the tokens issued from it");
            revoke_issued(state, jti, exp, family, now).await;
            return Err(OAuthError::invalid_grant("the authorization code was already used"));
        }
    };
    if expires <= now {
        return Err(OAuthError::invalid_grant(
            "the authorization code is invalid or expired",
        ));
    }
    if request.client_id != client.record.client_id {
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client",
        ));
    }
    match redirect_uri {
        Some(uri) if uri != request.redirect_uri => {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        None if request.redirect_uri_given => {
            return Err(OAuthError::invalid_request("redirect_uri is required"));
        }
        _ => {}
    }
    let verifier = verifier.ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 unreserved characters",
        ));
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !bool::from(computed.as_bytes().ct_eq(request.challenge.as_bytes())) {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let settings = state.0.authz.settings();
    let aud = narrowed_audiences(&request.aud, form)?;
    let grant = UserGrant {
        username,
        scopes: request.scopes.clone(),
        family_aud: request.aud.clone(),
        aud,
        auth_time,
        acr: request.acr.then(|| ACR_PASSWORD.to_owned()),
        nonce: request.nonce.clone(),
    };
    let link = family.map(|family| RefreshLink {
        family,
        parent: None,
        expires_at: now + settings.refresh_ttl_secs,
    });
    let issued = refresh::issue(state, client, grant, link, jti, now).await?;
    Ok(super::token::no_store(axum::Json(issued.body).into_response()))
}

/// RFC 8707 §2.2: `resource` at the token endpoint picks audiences among those authorized; none
/// keeps them all.
pub(super) fn narrowed_audiences(authorized: &[String], form: &Form) -> Result<Vec<String>, OAuthError> {
    let mut aud: Vec<String> = Vec::new();
    for resource in form.all("resource") {
        if !authorized.iter().any(|a| a == resource) {
            return Err(OAuthError::invalid_target(format!(
                "resource `{resource}` was not authorized for this grant"
            )));
        }
        if !aud.iter().any(|a| a == resource) {
            aud.push(resource.to_owned());
        }
    }
    Ok(if aud.is_empty() { authorized.to_vec() } else { aud })
}

pub(super) async fn revoke_issued(state: &AppState, jti: String, exp: u64, family: Option<String>, now: u64) {
    let writer = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        writer.with_node(|node| {
            let mut changes = vec![Change::Revoke { jti, exp }];
            if let Some(family) = family {
                changes.extend(refresh::revoke_family(node.state(), &family, "code_replay", now));
            }
            node.apply(&changes)?;
            Ok(((), changes))
        })
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::error!("could not revoke the tokens of a replayed authorization code");
    }
}

/// A public client (`token_endpoint_auth_method: none`) identified by `client_id` alone, for the
/// grants it may use without authenticating; `None` when the request authenticates otherwise.
pub(super) fn public_client(
    state: &AppState,
    view: &View,
    headers: &HeaderMap,
    form: &Form,
    grant_type: &str,
) -> Result<Option<Arc<Client>>, OAuthError> {
    if grant_type != "authorization_code" && grant_type != "refresh_token" && grant_type != super::device::DEVICE_CODE {
        return Ok(None);
    }
    if headers.contains_key(header::AUTHORIZATION)
        || form.single("client_secret")?.is_some()
        || form.single("client_assertion")?.is_some()
    {
        return Ok(None);
    }
    let Some(client_id) = form.single("client_id")? else {
        return Ok(None);
    };
    let client =
        find_client(state, view, client_id).filter(|c| c.record.token_endpoint_auth_method.as_deref() == Some("none"));
    // A use keeps a dynamically registered public client from expiring, as authentication does
    // for confidential ones.
    if let Some(client) = &client {
        client.touch(state.now());
    }
    Ok(client)
}

impl AppState {
    /// The login flow's node-local state.
    pub fn authz(&self) -> &Authz {
        &self.0.authz
    }

    /// Reads the replicated state under the node lock.
    pub fn read_state<T>(&self, f: impl FnOnce(&mesh::state::State) -> T) -> T {
        self.with_node_read(|node| f(node.state()))
    }

    /// Runs a read of the node under its lock.
    pub(crate) fn with_node_read<T>(&self, f: impl FnOnce(&crate::node::Node) -> T) -> T {
        let node = self.0.node.lock().unwrap_or_else(|e| e.into_inner());
        f(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port_only_for_ip_literals() {
        let registered = vec![
            "http://127.0.0.1/callback".to_owned(),
            "http://[::1]/cb".to_owned(),
            "http://localhost:3000/cb".to_owned(),
            "https://app.example/cb?x=1".to_owned(),
        ];
        assert!(redirect_uri_matches(&registered, "http://127.0.0.1:51234/callback"));
        assert!(redirect_uri_matches(&registered, "http://[::1]:8080/cb"));
        assert!(redirect_uri_matches(&registered, "https://app.example/cb?x=1"));
        for bad in [
            "http://127.0.0.1:51234/callback/",
            "http://127.0.0.1:51234/callback?extra=1",
            "http://127.0.0.1:1@evil.example/callback",
            "http://user@127.0.0.1:5/callback",
            "http://localhost:3001/cb",
            "https://app.example/cb",
            "https://app.example/cb?x=1&y=2",
            "https://app.example:444/cb?x=1",
            "https://app.example/cb/?x=1",
            "https://evil.example/?https://app.example/cb?x=1",
        ] {
            assert!(!redirect_uri_matches(&registered, bad), "{bad}");
        }
    }
}
