//! Server-rendered pages: login, consent, logout and errors. Plain accessible HTML (labelled
//! fields, one heading per page, `lang`), readable without JavaScript, never framed, never cached.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;\
line-height:1.5;color:#1a1a1a}label{display:block;margin-top:1rem;font-weight:600}\
input[type=text],input[type=password]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}\
button{margin-top:1.25rem;margin-right:.5rem;padding:.5rem 1.25rem;font-size:1rem}\
.error{color:#a40000;border-left:4px solid #a40000;padding-left:.5rem}ul{padding-left:1.25rem}\
:focus-visible{outline:3px solid #1a4fbf;outline-offset:2px}";

/// A whole page with the given status.
pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} – meshgate</title><style>{STYLE}</style></head>\
<body><main><h1>{title}</h1>\n{body}\n</main></body></html>\n",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    secure_headers(response.headers_mut());
    response
}

/// Headers every page and redirect of the login flow carries.
pub(crate) fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
}

/// An error page (the request cannot be answered by redirecting to the client).
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<p class=\"error\" role=\"alert\">{}</p>\n<p>Return to the application and try again.</p>",
        escape(message)
    );
    page(status, "Sign-in error", &body)
}

/// A "Sign in with …" button of the login page: the upstream's configured name and its label.
pub(crate) struct UpstreamButton<'a> {
    /// The upstream's `name` (the form value).
    pub(crate) name: &'a str,
    /// What follows "Sign in with".
    pub(crate) label: &'a str,
}

/// What the login page offers besides its request: the upstream buttons (posted to
/// `upstream_action`), and whether the local username and password form is shown.
pub(crate) struct LoginChoices<'a> {
    /// Where the buttons post.
    pub(crate) upstream_action: &'a str,
    /// The buttons, in configuration order.
    pub(crate) upstreams: &'a [UpstreamButton<'a>],
    /// Whether local accounts may sign in (else a note says why not).
    pub(crate) local: Result<(), &'a str>,
}

/// The login form, with a "Sign in with …" button per upstream. `problem` is shown as an alert,
/// with its status; without one the page answers 200.
pub(crate) fn login(
    action: &str,
    client_name: &str,
    request_id: &str,
    csrf: &str,
    username: &str,
    problem: Option<(StatusCode, &str)>,
    choices: &LoginChoices<'_>,
) -> Response {
    let alert = problem
        .map(|(_, p)| format!("<p class=\"error\" role=\"alert\" id=\"problem\">{}</p>\n", escape(p)))
        .unwrap_or_default();
    // After a failed attempt the username is filled in: focus goes to the password, and both
    // fields point at the alert for screen readers.
    let (username_focus, password_focus) = if username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    let described = if problem.is_some() {
        " aria-describedby=\"problem\""
    } else {
        ""
    };
    let local = match choices.local {
        Ok(()) => format!(
            "<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
<label for=\"username\">Username</label>\n\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username\" \
autocapitalize=\"none\" required{username_focus}{described}>\n\
<label for=\"password\">Password</label>\n\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" \
required{password_focus}{described}>\n\
<button type=\"submit\">Sign in</button>\n</form>",
            action = escape(action),
            csrf = escape(csrf),
            request = escape(request_id),
            username = escape(username),
        ),
        Err(why) => format!("<p id=\"local-unavailable\">{}</p>", escape(why)),
    };
    let upstreams = if choices.upstreams.is_empty() {
        String::new()
    } else {
        let buttons: String = choices
            .upstreams
            .iter()
            .map(|b| {
                format!(
                    "<button type=\"submit\" name=\"upstream\" value=\"{}\">Sign in with {}</button>\n",
                    escape(b.name),
                    escape(b.label)
                )
            })
            .collect();
        format!(
            "\n<p>Or use your organisation's account:</p>\n\
<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\n{buttons}</form>",
            action = escape(choices.upstream_action),
            csrf = escape(csrf),
            request = escape(request_id),
        )
    };
    let body = format!(
        "<p>Sign in to continue to <strong>{client}</strong>.</p>\n{alert}{local}{upstreams}",
        client = escape(client_name),
    );
    let status = problem.map_or(StatusCode::OK, |(status, _)| status);
    page(status, "Sign in", &body)
}

/// The alert of a login page answered 429 (too many failed logins from this source or for this
/// username, [`crate::login_throttle`]) and the `Retry-After` seconds that go with it.
pub(crate) fn login_throttled(retry: std::time::Duration) -> (String, u64) {
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    let unit = if secs == 1 { "second" } else { "seconds" };
    (
        format!("Too many failed sign-in attempts. Wait {secs} {unit}, then try again."),
        secs.max(1),
    )
}

/// The consent form.
pub(crate) fn consent(
    action: &str,
    client_name: &str,
    username: &str,
    scopes: &[String],
    resources: &[String],
    request_id: &str,
    csrf: &str,
) -> Response {
    let resources: String = resources
        .iter()
        .map(|r| format!("<li><code>{}</code></li>", escape(r)))
        .collect();
    let items: String = if scopes.is_empty() {
        "<li>no particular permissions</li>".to_owned()
    } else {
        scopes
            .iter()
            .map(|s| format!("<li><code>{}</code> – {}</li>", escape(s), escape(describe(s))))
            .collect()
    };
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>.</p>\n\
<p><strong>{client}</strong> asks for:</p>\n<ul>{items}</ul>\n\
<p>to use at:</p>\n<ul>{resources}</ul>\n\
<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\n\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        user = escape(username),
        client = escape(client_name),
        action = escape(action),
        csrf = escape(csrf),
        request = escape(request_id),
    );
    page(StatusCode::OK, "Allow access?", &body)
}

fn describe(scope: &str) -> &'static str {
    match scope {
        "openid" => "confirm who you are",
        "profile" => "your name and username",
        "email" => "your e-mail address",
        "offline_access" => "keep access while you are away",
        _ => "access granted to the application",
    }
}

/// The logout confirmation form.
pub(crate) fn logout_confirm(action: &str, hidden: &[(&str, &str)], csrf: &str) -> Response {
    let fields: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let body = format!(
        "<p>Sign out of meshgate on this browser?</p>\n<form method=\"post\" action=\"{action}\">\n\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\n{fields}\
<button type=\"submit\">Sign out</button>\n</form>",
        action = escape(action),
        csrf = escape(csrf),
    );
    page(StatusCode::OK, "Sign out", &body)
}

/// The page after a logout with nowhere to return to.
pub(crate) fn logged_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out. You may close this window.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
