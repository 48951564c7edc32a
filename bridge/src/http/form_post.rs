//! OAuth 2.0 Form Post Response Mode (`response_mode=form_post`): the authorization response —
//! a code or an error — is delivered as the body of a POST to the client's redirect URI, sent
//! by an HTML form that submits itself.
//!
//! The page works without JavaScript: a `<noscript>` submit button does what the script does.
//! The one inline script is allowed by a per-response CSP nonce; nothing else may run.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::pages::{self, escape};

/// `response_mode` of an authorization request (OAuth 2.0 Multiple Response Type Encoding
/// Practices §2.1; Form Post Response Mode §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum ResponseMode {
    /// Parameters in the redirect URI's query (the default for `response_type=code`).
    #[default]
    Query,
    /// Parameters posted to the redirect URI by an auto-submitting form.
    FormPost,
}

impl ResponseMode {
    /// Parses a `response_mode` value; `None` when it is not supported.
    pub(super) fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("query") => Some(Self::Query),
            Some("form_post") => Some(Self::FormPost),
            Some(_) => None,
        }
    }
}

/// The values of `response_modes_supported`.
pub(super) const SUPPORTED: [&str; 2] = ["query", "form_post"];

/// The page that posts `params` to `redirect_uri`.
pub(super) fn response(redirect_uri: &str, params: &[(&str, String)]) -> Response {
    let nonce = super::authorize::random();
    let fields: String = params
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let body = format!(
        "<p>Returning you to the application…</p>\n\
<form method=\"post\" action=\"{action}\">\n{fields}\
<noscript><p>JavaScript is off: select Continue to return to the application.</p>\
<button type=\"submit\">Continue</button></noscript>\n</form>\n\
<script nonce=\"{nonce}\">document.forms[0].submit();</script>",
        action = escape(redirect_uri),
    );
    let mut response = pages::page(StatusCode::OK, "Continue to the application", &body);
    let policy =
        format!("default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; frame-ancestors 'none'");
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.headers_mut().insert("content-security-policy", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_values_and_allows_only_its_own_script() {
        let response = response(
            "https://app.example/cb?a=1&b=\"2\"",
            &[("code", "<c>".to_owned()), ("state", "s\"'".to_owned())],
        );
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let nonce = policy
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap()
            .to_owned();
        assert_eq!(nonce.len(), 43, "{policy}");
        assert!(!policy.contains("unsafe-eval") && !policy.contains("script-src 'unsafe-inline'"));
        let body = futures_body(response);
        assert!(
            body.contains("action=\"https://app.example/cb?a=1&amp;b=&quot;2&quot;\""),
            "{body}"
        );
        assert!(body.contains("name=\"code\" value=\"&lt;c&gt;\""), "{body}");
        assert!(body.contains("name=\"state\" value=\"s&quot;&#39;\""), "{body}");
        assert!(body.contains(&format!("<script nonce=\"{nonce}\">")), "{body}");
        assert!(body.contains("<noscript>") && body.contains("<button type=\"submit\">"));
    }

    #[test]
    fn only_query_and_form_post_are_supported() {
        assert_eq!(ResponseMode::parse(None), Some(ResponseMode::Query));
        assert_eq!(ResponseMode::parse(Some("query")), Some(ResponseMode::Query));
        assert_eq!(ResponseMode::parse(Some("form_post")), Some(ResponseMode::FormPost));
        assert_eq!(ResponseMode::parse(Some("fragment")), None);
    }

    fn futures_body(response: Response) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
