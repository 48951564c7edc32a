//! The device verification page (RFC 8628 §3.3): `GET /device[?user_code=…]` (sign in first,
//! then the user-code form, prefilled from `verification_uri_complete`), `POST /device/login`,
//! `POST /device` (the code: a confirmation page naming the client and scopes) and
//! `POST /device/confirm` (approve or deny).
//!
//! It shares the login flow's session cookie ([`super::authorize`]); every form carries the
//! session's CSRF token; pages are never cached or framed ([`pages::page`]). Entering a user code
//! needs a signed-in user, and wrong entries are throttled per user ([`super::device`]); failed
//! sign-ins spend the budgets of the login page ([`crate::login_throttle`]).
//! Stable element ids for page drivers: `username`, `password`, `sign_in`; `user_code`,
//! `continue`; `approve`, `deny`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::authorize::{self, ANONYMOUS_TTL, Session, csrf_ok, endpoint, forbidden, set_cookie};
use super::device::{Lookup, Pending, display, normalize};
use super::pages::{self, escape};
use crate::form::Form;

/// `GET /device`.
pub(super) async fn device_get(
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
    let entered = prefill(form.single("user_code").ok().flatten().unwrap_or_default());
    let now = state.now();
    let authz = state.authz();
    match authz.session(&headers, now) {
        Some((_, session)) if signed_in(&state, &session).is_some() => code_page(&state, &session, &entered, None),
        Some((_, session)) => login_page(&state, &session.csrf, &entered, "", None),
        None => {
            let (_, session, id) = authz.new_session(None, now);
            let mut response = login_page(&state, &session.csrf, &entered, "", None);
            set_cookie(&state, &mut response, &id, ANONYMOUS_TTL);
            response
        }
    }
}

/// `POST /device/login`: signs in (replacing the session), then shows the code form. Failed
/// attempts are throttled like those of `/login` and share its budgets
/// ([`crate::login_throttle`]): a source or username that used them up gets the form again with
/// 429 and `Retry-After`, its password unchecked.
pub(super) async fn device_login(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: Form,
) -> Response {
    let now = state.now();
    let authz = state.authz();
    let Some((key, session)) = authz.session(&headers, now) else {
        return forbidden();
    };
    if !csrf_ok(&session, &form) {
        return forbidden();
    }
    let entered = prefill(form.single("user_code").ok().flatten().unwrap_or_default());
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
        tracing::info!("device page: login throttled");
        let (problem, secs) = pages::login_throttled(retry);
        let mut response = login_page(
            &state,
            &session.csrf,
            &entered,
            &username,
            Some((StatusCode::TOO_MANY_REQUESTS, &problem)),
        );
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        return response;
    }
    if !authorize::check_password(&state, &username, password).await {
        tracing::info!("device page: login failed");
        if let Some((_, throttle)) = throttle {
            throttle.failed(source, &username);
        }
        return login_page(
            &state,
            &session.csrf,
            &entered,
            &username,
            Some((StatusCode::UNAUTHORIZED, "Wrong username or password.")),
        );
    }
    authz.end_session(&key);
    let ttl = authz.settings().session_ttl_secs;
    let (_, session, id) = authz.new_session(Some((username, now)), now);
    let mut response = code_page(&state, &session, &entered, None);
    set_cookie(&state, &mut response, &id, ttl);
    response
}

/// `POST /device`: checks the user code; shows the confirmation page.
pub(super) async fn device_post(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let now = state.now();
    let Some((_, session)) = state.authz().session(&headers, now) else {
        return forbidden();
    };
    if !csrf_ok(&session, &form) {
        return forbidden();
    }
    let entered = form.single("user_code").ok().flatten().unwrap_or_default();
    let Some((username, _)) = signed_in(&state, &session) else {
        return login_page(&state, &session.csrf, &prefill(entered), "", None);
    };
    match state.0.devices.lookup(&username, entered, now) {
        Lookup::Found(pending) => confirm_page(&state, &session, &username, &pending),
        Lookup::NotFound => {
            tracing::info!("device page: wrong or expired user code entered");
            code_page(
                &state,
                &session,
                &prefill(entered),
                Some((
                    StatusCode::BAD_REQUEST,
                    "That code is not valid or has expired. Check the code your device shows; if it \
                     has expired, start again on the device.",
                )),
            )
        }
        Lookup::Throttled(seconds) => {
            tracing::warn!("device page: user-code entry throttled");
            let minutes = seconds.div_ceil(60);
            let message = format!("Too many wrong codes. Wait {minutes} minute(s), then try again.");
            code_page(
                &state,
                &session,
                "",
                Some((StatusCode::TOO_MANY_REQUESTS, message.as_str())),
            )
        }
    }
}

/// `POST /device/confirm`: approve or deny.
pub(super) async fn device_confirm(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let now = state.now();
    let Some((_, session)) = state.authz().session(&headers, now) else {
        return forbidden();
    };
    if !csrf_ok(&session, &form) {
        return forbidden();
    }
    let Some((username, auth_time)) = signed_in(&state, &session) else {
        return forbidden();
    };
    let user_code = form.single("user_code").ok().flatten().unwrap_or_default();
    let approved = match form.single("decision").ok().flatten() {
        Some("approve") => true,
        Some("deny") => false,
        _ => return pages::error(StatusCode::BAD_REQUEST, "Choose Approve or Deny."),
    };
    let decision = approved.then_some((username, auth_time));
    if !state.0.devices.decide(user_code, decision, now) {
        return code_page(
            &state,
            &session,
            "",
            Some((
                StatusCode::BAD_REQUEST,
                "This request has expired or was already answered. Start again on the device.",
            )),
        );
    }
    if approved {
        tracing::info!("device page: request approved");
        pages::page(
            StatusCode::OK,
            "Device connected",
            "<p id=\"result\">You approved the request. Return to your device; you may close this window.</p>",
        )
    } else {
        tracing::info!("device page: request denied");
        pages::page(
            StatusCode::OK,
            "Request denied",
            "<p id=\"result\">You denied the request. The device gets no access.</p>",
        )
    }
}

/// The session's user (username, auth_time), if signed in and still a user.
fn signed_in(state: &AppState, session: &Session) -> Option<(String, u64)> {
    let (username, auth_time) = session.user.clone()?;
    let exists = state.read_state(|s| s.users.contains_key(&username));
    exists.then_some((username, auth_time))
}

/// The value the code field is prefilled with: a well-formed code as `XXXX-XXXX`, else nothing.
fn prefill(entered: &str) -> String {
    normalize(entered).map(|c| display(&c)).unwrap_or_default()
}

/// The problem alert of a page, and the attributes that point a field at it for screen readers.
fn alert(problem: Option<&str>) -> (String, &'static str) {
    match problem {
        Some(p) => (
            format!("<p class=\"error\" role=\"alert\" id=\"problem\">{}</p>\n", escape(p)),
            " aria-describedby=\"problem\"",
        ),
        None => (String::new(), ""),
    }
}

fn login_page(
    state: &AppState,
    csrf: &str,
    user_code: &str,
    username: &str,
    problem: Option<(StatusCode, &str)>,
) -> Response {
    let (alert, described) = alert(problem.map(|(_, p)| p));
    // After a failed attempt the username is filled in: focus goes to the password (as on /login).
    let (username_focus, password_focus) = if username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    let body = format!(
        "<p>Sign in to connect a device.</p>\n{alert}\
<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"user_code\" value=\"{user_code}\">\n\
<label for=\"username\">Username</label>\n\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username\" \
autocapitalize=\"none\" required{username_focus}{described}>\n\
<label for=\"password\">Password</label>\n\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" \
required{password_focus}{described}>\n\
<button type=\"submit\" id=\"sign_in\">Sign in</button>\n</form>",
        action = escape(&endpoint(state, "/device/login")),
        csrf = escape(csrf),
        user_code = escape(user_code),
        username = escape(username),
    );
    let status = problem.map_or(StatusCode::OK, |(status, _)| status);
    pages::page(status, "Sign in", &body)
}

fn code_page(state: &AppState, session: &Session, user_code: &str, problem: Option<(StatusCode, &str)>) -> Response {
    let (alert, described) = alert(problem.map(|(_, p)| p));
    let invalid = if problem.is_some() {
        " aria-invalid=\"true\""
    } else {
        ""
    };
    let user = session.user.as_ref().map(|(u, _)| u.as_str()).unwrap_or_default();
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>.</p>\n{alert}\
<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<label for=\"user_code\">Code shown on your device</label>\n\
<input type=\"text\" id=\"user_code\" name=\"user_code\" value=\"{user_code}\" autocomplete=\"off\" \
autocapitalize=\"characters\" spellcheck=\"false\" maxlength=\"20\" placeholder=\"XXXX-XXXX\" required autofocus{invalid}{described}>\n\
<button type=\"submit\" id=\"continue\">Continue</button>\n</form>",
        user = escape(user),
        action = escape(&endpoint(state, "/device")),
        csrf = escape(&session.csrf),
        user_code = escape(user_code),
    );
    let status = problem.map_or(StatusCode::OK, |(s, _)| s);
    pages::page(status, "Connect a device", &body)
}

fn confirm_page(state: &AppState, session: &Session, username: &str, pending: &Pending) -> Response {
    let view = state.view();
    let client_name = view
        .clients
        .get(&pending.client_id)
        .map(|c| c.record.name.clone())
        .unwrap_or_else(|| pending.client_id.clone());
    let items: String = if pending.scopes.is_empty() {
        "<li>no particular permissions</li>".to_owned()
    } else {
        pending
            .scopes
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", escape(s)))
            .collect()
    };
    let resources: String = pending
        .aud
        .iter()
        .map(|r| format!("<li><code>{}</code></li>", escape(r)))
        .collect();
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>.</p>\n\
<p>Check that your device shows the code <strong id=\"shown_code\">{code}</strong>.</p>\n\
<p><strong id=\"client_name\">{client}</strong> asks for:</p>\n<ul id=\"scopes\">{items}</ul>\n\
<p>to use at:</p>\n<ul>{resources}</ul>\n\
<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"user_code\" value=\"{code}\">\n\
<button type=\"submit\" id=\"approve\" name=\"decision\" value=\"approve\">Approve</button>\n\
<button type=\"submit\" id=\"deny\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        user = escape(username),
        code = escape(&pending.user_code),
        client = escape(&client_name),
        action = escape(&endpoint(state, "/device/confirm")),
        csrf = escape(&session.csrf),
    );
    pages::page(StatusCode::OK, "Connect this device?", &body)
}
