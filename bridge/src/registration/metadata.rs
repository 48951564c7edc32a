//! Client metadata (RFC 7591 §2) parsed into a [`Metadata`] that holds only acceptable values.

use serde_json::{Map, Value, json};

use super::{MAX_CONTACTS, MAX_REDIRECT_URIS, MAX_SCOPES, MAX_TEXT_LEN, MAX_URI_LEN};
use crate::error::OAuthError;

/// How a registered client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `none`: a public client.
    None,
    /// `client_secret_basic`.
    ClientSecretBasic,
    /// `client_secret_post`.
    ClientSecretPost,
}

impl AuthMethod {
    /// Its RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// Client metadata that passed every check (RFC 7591 §2).
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Exact redirection URIs.
    pub redirect_uris: Vec<String>,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// Grant types.
    pub grant_types: Vec<String>,
    /// Response types (`code` or none).
    pub response_types: Vec<String>,
    /// Display name.
    pub client_name: Option<String>,
    /// Scopes the client may be granted.
    pub scopes: Vec<String>,
    /// Other understood fields, checked (URIs, contacts, software id/version).
    pub extra: Map<String, Value>,
}

const URI_FIELDS: &[&str] = &["client_uri", "logo_uri", "tos_uri", "policy_uri"];
const TEXT_FIELDS: &[&str] = &["software_id", "software_version"];
const GRANTS: &[&str] = &[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    crate::http::device::DEVICE_CODE,
];

impl Metadata {
    /// Parses a registration request body (a JSON object). Unknown fields are ignored (RFC 7591
    /// §2) and not stored.
    pub fn parse(body: &Value) -> Result<Self, OAuthError> {
        let Some(object) = body.as_object() else {
            return Err(OAuthError::invalid_client_metadata("the body must be a JSON object"));
        };
        let strings = |name: &'static str| -> Result<Option<Vec<String>>, OAuthError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| OAuthError::invalid_client_metadata(format!("`{name}` must hold strings")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(OAuthError::invalid_client_metadata(format!(
                    "`{name}` must be an array of strings"
                ))),
            }
        };
        let text = |name: &'static str| -> Result<Option<String>, OAuthError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.chars().count() <= MAX_TEXT_LEN && !s.chars().any(char::is_control) => {
                    Ok(Some(s.clone()))
                }
                Some(Value::String(_)) => Err(OAuthError::invalid_client_metadata(format!(
                    "`{name}` must be at most {MAX_TEXT_LEN} characters without control characters"
                ))),
                Some(_) => Err(OAuthError::invalid_client_metadata(format!(
                    "`{name}` must be a string"
                ))),
            }
        };

        let auth_method = match text("token_endpoint_auth_method")?.as_deref() {
            None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
            Some("client_secret_post") => AuthMethod::ClientSecretPost,
            Some("none") => AuthMethod::None,
            Some(other) => {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "token_endpoint_auth_method `{other}` is not supported (none, client_secret_basic, client_secret_post)"
                )));
            }
        };
        let grant_types = strings("grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
        let mut grants: Vec<String> = Vec::new();
        for grant in grant_types {
            if !GRANTS.contains(&grant.as_str()) {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "grant type `{}` is not supported for registered clients",
                    truncated(&grant)
                )));
            }
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        if grants.iter().any(|g| g == "client_credentials") && auth_method == AuthMethod::None {
            return Err(OAuthError::invalid_client_metadata(
                "a public client (token_endpoint_auth_method none) cannot use client_credentials",
            ));
        }
        let code_flow = grants.iter().any(|g| g == "authorization_code");
        let response_types =
            strings("response_types")?.unwrap_or_else(|| if code_flow { vec!["code".into()] } else { vec![] });
        if response_types.iter().any(|r| r != "code") {
            return Err(OAuthError::invalid_client_metadata(
                "only the `code` response type is supported",
            ));
        }
        if code_flow != response_types.iter().any(|r| r == "code") {
            return Err(OAuthError::invalid_client_metadata(
                "response_types `code` and grant_types `authorization_code` go together (RFC 7591 §2.1)",
            ));
        }

        let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
        if redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(OAuthError::invalid_redirect_uri(format!(
                "at most {MAX_REDIRECT_URIS} redirect_uris"
            )));
        }
        if code_flow && redirect_uris.is_empty() {
            return Err(OAuthError::invalid_redirect_uri(
                "redirect_uris is required for the authorization_code grant",
            ));
        }
        for uri in &redirect_uris {
            check_redirect_uri(uri)?;
        }
        let mut unique: Vec<String> = Vec::new();
        for uri in redirect_uris {
            if !unique.contains(&uri) {
                unique.push(uri);
            }
        }

        let scopes = match object.get("scope") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(scope)) => {
                let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
                if scopes.len() > MAX_SCOPES || scope.len() > MAX_SCOPES * 64 {
                    return Err(OAuthError::invalid_client_metadata(format!(
                        "at most {MAX_SCOPES} scopes"
                    )));
                }
                let mut out: Vec<String> = Vec::new();
                for s in scopes {
                    if !crate::node::is_scope_token(s) || s.len() > 64 {
                        return Err(OAuthError::invalid_client_metadata(format!(
                            "invalid scope `{}`",
                            truncated(s)
                        )));
                    }
                    if !out.iter().any(|o| o == s) {
                        out.push(s.to_owned());
                    }
                }
                out
            }
            Some(_) => return Err(OAuthError::invalid_client_metadata("`scope` must be a string")),
        };

        let mut extra = Map::new();
        for name in URI_FIELDS {
            if let Some(uri) = text_uri(object, name)? {
                extra.insert((*name).into(), Value::String(uri));
            }
        }
        for name in TEXT_FIELDS {
            if let Some(value) = text(name)? {
                extra.insert((*name).into(), Value::String(value));
            }
        }
        if let Some(contacts) = strings("contacts")? {
            if contacts.len() > MAX_CONTACTS
                || contacts
                    .iter()
                    .any(|c| c.chars().count() > MAX_TEXT_LEN || c.chars().any(char::is_control))
            {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "at most {MAX_CONTACTS} contacts of at most {MAX_TEXT_LEN} characters"
                )));
            }
            extra.insert("contacts".into(), json!(contacts));
        }
        if object.contains_key("jwks") || object.contains_key("jwks_uri") {
            return Err(OAuthError::invalid_client_metadata(
                "jwks and jwks_uri are not accepted at registration (private_key_jwt clients are added by an operator)",
            ));
        }
        Ok(Self {
            redirect_uris: unique,
            auth_method,
            grant_types: grants,
            response_types,
            client_name: text("client_name")?,
            scopes,
            extra,
        })
    }

    /// Whether the client is public (authenticates with `none`).
    pub fn is_public(&self) -> bool {
        self.auth_method == AuthMethod::None
    }
}

fn text_uri(object: &Map<String, Value>, name: &'static str) -> Result<Option<String>, OAuthError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(uri)) => {
            check_web_uri(uri).map_err(|why| OAuthError::invalid_client_metadata(format!("`{name}`: {why}")))?;
            Ok(Some(uri.clone()))
        }
        Some(_) => Err(OAuthError::invalid_client_metadata(format!(
            "`{name}` must be a string"
        ))),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// Whether `host` is a loopback host name for RFC 8252 native clients.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// An `https` URL, or an `http` URL on a loopback host; no user info, no fragment, bounded.
fn check_web_uri(uri: &str) -> Result<url::Url, String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("longer than {MAX_URI_LEN} characters"));
    }
    let url = url::Url::parse(uri).map_err(|e| format!("not an absolute URI ({e})"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("must not contain a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".into());
    }
    let Some(host) = url.host() else {
        return Err("must have a host".into());
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&host) => Ok(url),
        "http" => Err("http is only allowed on a loopback host (127.0.0.1, [::1], localhost); use https".into()),
        other => Err(format!(
            "the scheme `{}` is not allowed (https, or http on loopback)",
            truncated(other)
        )),
    }
}

/// Checks one redirection URI: `https`, or `http` on loopback (RFC 8252 §7.3); no fragment (RFC
/// 6749 §3.1.2), no user information, no `javascript:`/`data:` or other schemes.
pub fn check_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    check_web_uri(uri)
        .map(|_| ())
        .map_err(|why| OAuthError::invalid_redirect_uri(format!("redirect URI `{}`: {why}", truncated(uri))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_loopback_or_https_only() {
        for good in [
            "http://127.0.0.1/callback",
            "http://127.0.0.1:33418/cb",
            "http://[::1]:8080/cb",
            "http://localhost:3000/cb",
            "https://app.example/cb?x=1",
        ] {
            assert!(check_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "http://evil.example/cb",
            "https://app.example/cb#frag",
            "https://user:pw@app.example/cb",
            "https://user@app.example/cb",
            "ftp://app.example/cb",
            "/relative",
            "com.example.app:/cb",
        ] {
            let error = check_redirect_uri(bad).unwrap_err();
            assert_eq!(error.code(), "invalid_redirect_uri", "{bad}");
        }
        assert!(check_redirect_uri(&format!("https://a.example/{}", "x".repeat(MAX_URI_LEN))).is_err());
    }
}
