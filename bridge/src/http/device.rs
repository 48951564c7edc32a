//! The device authorization grant (RFC 8628): `POST /device_authorization`, the device-code
//! grant at `/token`, and the node-local state the verification page ([`super::device_page`])
//! decides.
//!
//! Node-local, in memory, like authorization codes: a device code lives `bridge.device_code_ttl`
//! (default 10 min) on the node that issued it, whose `{issuer}/device` page the user visits and
//! whose token endpoint the device polls. A device code starts with a tag of the issuing node, so
//! another node of the mesh answers a poll with a clear `invalid_grant` instead of a silent
//! "unknown code". Only the device code's SHA-256 is kept. User codes are 8 characters of
//! `BCDFGHJKLMNPQRSTVWXZ` (20⁸ ≈ 2.6·10¹⁰, no vowels, no look-alikes), shown as `XXXX-XXXX` and
//! read case- and dash-insensitively; entering them needs a signed-in user, and each user's wrong
//! entries are throttled ([`MAX_FAILURES`] per [`FAILURE_WINDOW`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::authorize::{digest, random};
use super::refresh::{RefreshLink, UserGrant};
use super::token::{audiences, granted_scopes, no_store};
use crate::error::OAuthError;
use crate::form::Form;
use crate::view::Client;

/// The grant type of the device flow (RFC 8628 §3.4).
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The alphabet of user codes (RFC 8628 §6.1: no vowels, nothing easily confused).
const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code.
const USER_CODE_LEN: usize = 8;
/// Seconds a `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: u64 = 5;
/// Bound on live device authorizations per node.
const MAX_ENTRIES: usize = 10_000;
/// How long an expired device code is still answered with `expired_token` before it is forgotten.
const EXPIRED_KEPT: u64 = 600;
/// Wrong user-code entries a user may make per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window of [`MAX_FAILURES`], seconds.
pub const FAILURE_WINDOW: u64 = 300;

/// Device-flow settings from `bridge:`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSettings {
    /// `bridge.device_code_ttl`: lifetime of a device code, seconds.
    pub code_ttl_secs: u64,
    /// `bridge.device_poll_interval`: the minimum polling interval a device is told, seconds.
    pub interval_secs: u64,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        Self {
            code_ttl_secs: 600,
            interval_secs: 5,
        }
    }
}

/// The node-local state of the device flow.
#[derive(Default)]
pub struct Devices {
    settings: OnceLock<DeviceSettings>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By SHA-256 of the device code.
    grants: HashMap<String, DeviceGrant>,
    /// Normalized user code → key in `grants`.
    user_codes: HashMap<String, String>,
    /// Wrong user-code entries by username: (window start, count).
    failures: HashMap<String, (u64, u32)>,
}

struct DeviceGrant {
    user_code: String,
    client_id: String,
    scopes: Vec<String>,
    aud: Vec<String>,
    expires: u64,
    interval: u64,
    last_poll: Option<u64>,
    status: Status,
}

enum Status {
    Pending,
    Approved {
        username: String,
        auth_time: u64,
    },
    Denied,
    /// Redeemed: the ids of the tokens it minted, taken by the first replay to revoke them.
    Redeemed(Option<(String, u64, Option<String>)>),
}

/// A pending request as the verification page shows it.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// The user code, formatted `XXXX-XXXX`.
    pub(super) user_code: String,
    /// The client.
    pub(super) client_id: String,
    /// Requested scopes.
    pub(super) scopes: Vec<String>,
    /// Requested audiences.
    pub(super) aud: Vec<String>,
}

/// What a user-code lookup found.
pub(super) enum Lookup {
    /// A pending request.
    Found(Pending),
    /// No such pending request (wrong, expired or already decided).
    NotFound,
    /// The user made too many wrong entries; retry after this many seconds.
    Throttled(u64),
}

impl Devices {
    /// Sets the settings (once, at start; later calls are ignored).
    pub fn configure(&self, settings: DeviceSettings) {
        let _ = self.settings.set(settings);
    }

    /// The settings.
    pub fn settings(&self) -> DeviceSettings {
        self.settings.get().copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds the pending request of a user code `username` entered, counting a miss against the
    /// user's budget of wrong entries.
    pub(super) fn lookup(&self, username: &str, entered: &str, now: u64) -> Lookup {
        let mut inner = self.lock();
        if let Some((start, count)) = inner.failures.get(username)
            && *count >= MAX_FAILURES
            && now < start + FAILURE_WINDOW
        {
            return Lookup::Throttled(start + FAILURE_WINDOW - now);
        }
        if let Some(pending) = normalize(entered).and_then(|code| inner.pending(&code, now)) {
            return Lookup::Found(pending);
        }
        if inner.failures.len() >= MAX_ENTRIES {
            inner.failures.retain(|_, (start, _)| now < *start + FAILURE_WINDOW);
        }
        let entry = inner.failures.entry(username.to_owned()).or_insert((now, 0));
        if now >= entry.0 + FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        Lookup::NotFound
    }

    /// Records the user's decision on a pending request; false when it is no longer pending.
    pub(super) fn decide(&self, user_code: &str, approved: Option<(String, u64)>, now: u64) -> bool {
        let mut inner = self.lock();
        let Some(code) = normalize(user_code) else { return false };
        if inner.pending(&code, now).is_none() {
            return false;
        }
        let Some(key) = inner.user_codes.get(&code).cloned() else {
            return false;
        };
        let Some(grant) = inner.grants.get_mut(&key) else {
            return false;
        };
        grant.status = match approved {
            Some((username, auth_time)) => Status::Approved { username, auth_time },
            None => Status::Denied,
        };
        true
    }

    fn add(&self, grant: DeviceGrant, device_key: String, now: u64) -> Result<(), OAuthError> {
        let mut inner = self.lock();
        if inner.grants.len() >= MAX_ENTRIES / 2 {
            let Inner { grants, user_codes, .. } = &mut *inner;
            grants.retain(|_, g| now < g.expires + EXPIRED_KEPT);
            user_codes.retain(|_, key| grants.get(key).is_some_and(|g| now < g.expires));
        }
        if inner.grants.len() >= MAX_ENTRIES {
            return Err(OAuthError::temporarily_unavailable(
                "too many device authorizations are pending; try again later",
            ));
        }
        if inner.user_codes.contains_key(&grant.user_code) {
            return Err(OAuthError::temporarily_unavailable("try again"));
        }
        inner.user_codes.insert(grant.user_code.clone(), device_key.clone());
        inner.grants.insert(device_key, grant);
        Ok(())
    }
}

impl Inner {
    fn pending(&self, code: &str, now: u64) -> Option<Pending> {
        let grant = self.grants.get(self.user_codes.get(code)?)?;
        if !matches!(grant.status, Status::Pending) || grant.expires <= now {
            return None;
        }
        Some(Pending {
            user_code: display(&grant.user_code),
            client_id: grant.client_id.clone(),
            scopes: grant.scopes.clone(),
            aud: grant.aud.clone(),
        })
    }
}

/// A new user code (normalized: 8 letters of [`ALPHABET`]).
fn new_user_code() -> String {
    let mut code = String::with_capacity(USER_CODE_LEN);
    while code.len() < USER_CODE_LEN {
        for b in crate::node::random_bytes::<16>() {
            // 240 = 12 × 20: rejecting the rest keeps every letter equally likely.
            if b < 240 && code.len() < USER_CODE_LEN {
                code.push(char::from(ALPHABET[usize::from(b % 20)]));
            }
        }
    }
    code
}

/// A user code as typed (any case, dashes and spaces anywhere) in normalized form, if it can be
/// one.
pub(super) fn normalize(entered: &str) -> Option<String> {
    if entered.len() > 64 {
        return None;
    }
    let code: String = entered
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = code.len() == USER_CODE_LEN && code.bytes().all(|b| ALPHABET.contains(&b));
    valid.then_some(code)
}

/// `XXXX-XXXX`.
pub(super) fn display(code: &str) -> String {
    let (a, b) = code.split_at(code.len().min(USER_CODE_LEN / 2));
    format!("{a}-{b}")
}

/// The tag device codes of this node start with.
fn node_tag(state: &AppState) -> String {
    digest(&state.0.did).chars().take(8).collect()
}

/// The verification page's URL.
fn verification_uri(state: &AppState) -> String {
    format!("{}/device", state.0.settings.issuer)
}

/// The device authorization endpoint's URL.
pub(super) fn endpoint_url(state: &AppState) -> String {
    format!("{}/device_authorization", state.0.settings.issuer)
}

/// Adds the device flow to the authorization-server metadata.
pub(super) fn metadata_fields(state: &AppState, body: &mut serde_json::Value) {
    let Some(body) = body.as_object_mut() else { return };
    body.insert("device_authorization_endpoint".into(), json!(endpoint_url(state)));
    let mut grants = body
        .get("grant_types_supported")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !grants.iter().any(|g| g == DEVICE_CODE) {
        grants.push(json!(DEVICE_CODE));
    }
    body.insert("grant_types_supported".into(), serde_json::Value::Array(grants));
}

/// `POST /device_authorization` (RFC 8628 §3.1, §3.2).
pub(super) async fn device_authorization(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, OAuthError> {
    let now = state.now();
    let view = state.view();
    let client = match super::authorize::public_client(&state, &view, &headers, &form, DEVICE_CODE)? {
        Some(client) => client,
        None => state.authenticate(&view, &headers, &form, &endpoint_url(&state), now)?,
    };
    if !client.allows_grant(DEVICE_CODE) {
        return Err(OAuthError::unauthorized_client(
            "the client is not registered for the device authorization grant",
        ));
    }
    let scopes = granted_scopes(&client, form.single("scope")?, None)?;
    let aud = audiences(&state, &client, &form)?;
    drop(view);
    let devices = &state.0.devices;
    let settings = devices.settings();
    let device_code = format!("{}.{}", node_tag(&state), random());
    let user_code = new_user_code();
    let grant = DeviceGrant {
        user_code: user_code.clone(),
        client_id: client.record.client_id.clone(),
        scopes,
        aud,
        expires: now + settings.code_ttl_secs,
        interval: settings.interval_secs,
        last_poll: None,
        status: Status::Pending,
    };
    devices.add(grant, digest(&device_code), now)?;
    let shown = display(&user_code);
    let uri = verification_uri(&state);
    let body = json!({
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": uri,
        "verification_uri_complete": format!("{uri}?user_code={shown}"),
        "expires_in": settings.code_ttl_secs,
        "interval": settings.interval_secs,
    });
    Ok(no_store(axum::Json(body).into_response()))
}

/// What a poll decided.
enum Poll {
    Mint {
        username: String,
        auth_time: u64,
        scopes: Vec<String>,
        aud: Vec<String>,
        jti: String,
        family: Option<String>,
    },
    Replay(Option<(String, u64, Option<String>)>),
}

/// The device-code grant at `/token` (RFC 8628 §3.4, §3.5).
pub(super) async fn device_grant(
    state: &AppState,
    client: Arc<Client>,
    form: &Form,
    now: u64,
) -> Result<Response, OAuthError> {
    let device_code = form.required("device_code")?;
    let key = digest(device_code);
    let refresh = client.allows_grant("refresh_token");
    let poll = {
        let mut inner = state.0.devices.lock();
        let Some(grant) = inner.grants.get_mut(&key) else {
            let tag = node_tag(state);
            return Err(if device_code.split('.').next() != Some(tag.as_str()) {
                OAuthError::invalid_grant(
                    "the device code was not issued by this node; device codes are node-local: poll the \
                     token endpoint of the issuer that answered the device authorization request",
                )
            } else {
                OAuthError::invalid_grant("the device code is invalid or expired")
            });
        };
        if grant.client_id != client.record.client_id {
            return Err(OAuthError::invalid_grant(
                "the device code was issued to another client",
            ));
        }
        if let Status::Redeemed(issued) = &mut grant.status {
            Poll::Replay(issued.take())
        } else {
            if grant.expires <= now {
                return Err(OAuthError::expired_token());
            }
            if let Some(last) = grant.last_poll
                && now < last + grant.interval
            {
                grant.interval += SLOW_DOWN_STEP;
                grant.last_poll = Some(now);
                return Err(OAuthError::slow_down(grant.interval));
            }
            grant.last_poll = Some(now);
            match &grant.status {
                Status::Pending => return Err(OAuthError::authorization_pending()),
                Status::Denied => return Err(OAuthError::access_denied("the user denied the request")),
                Status::Approved { username, auth_time } => {
                    // Spent and its tokens named at once: a replay racing this redemption
                    // revokes them.
                    let jti = crate::token::new_jti();
                    let family = refresh.then(random);
                    let poll = Poll::Mint {
                        username: username.clone(),
                        auth_time: *auth_time,
                        scopes: grant.scopes.clone(),
                        aud: grant.aud.clone(),
                        jti: jti.clone(),
                        family: family.clone(),
                    };
                    grant.status = Status::Redeemed(Some((jti, now + state.0.settings.token_ttl, family)));
                    poll
                }
                Status::Redeemed(_) => return Err(OAuthError::invalid_grant("the device code was already used")),
            }
        }
    };
    match poll {
        Poll::Replay(issued) => {
            if let Some((jti, exp, family)) = issued {
                tracing::warn!("device code presented again after its redemption; revoking its tokens");
                super::authorize::revoke_issued(state, jti, exp, family, now).await;
            }
            Err(OAuthError::invalid_grant("the device code was already used"))
        }
        Poll::Mint {
            username,
            auth_time,
            scopes,
            aud,
            jti,
            family,
        } => {
            let grant = UserGrant {
                username,
                scopes,
                family_aud: aud.clone(),
                aud,
                auth_time,
                acr: None,
                nonce: None,
            };
            let link = family.map(|family| RefreshLink {
                family,
                parent: None,
                expires_at: now + state.0.authz.settings().refresh_ttl_secs,
            });
            let issued = super::refresh::issue(state, client, grant, link, jti, now).await?;
            Ok(no_store(axum::Json(issued.body).into_response()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_use_the_alphabet_and_read_leniently() {
        for _ in 0..200 {
            let code = new_user_code();
            assert_eq!(code.len(), USER_CODE_LEN);
            assert!(code.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
            let shown = display(&code);
            assert_eq!(shown.len(), 9);
            assert_eq!(normalize(&shown).as_deref(), Some(code.as_str()));
            assert_eq!(normalize(&shown.to_lowercase()).as_deref(), Some(code.as_str()));
            assert_eq!(normalize(&code).as_deref(), Some(code.as_str()));
        }
        assert_eq!(normalize(" bcdf - ghjk ").as_deref(), Some("BCDFGHJK"));
        for bad in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-EFGH",
            "BCDF-GHJ1",
            "BCDF-GHJ\u{212A}",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }
}
