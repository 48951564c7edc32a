//! CORS for browser-based clients (e.g. MCP Inspector) on the endpoints that carry no cookies:
//! the two metadata documents, the JWKS, `/register`, `/token`, `/introspect` and `/revoke`.
//!
//! Any origin is allowed and credentials never are (`Access-Control-Allow-Credentials` is not
//! sent): these endpoints authenticate with explicit headers or form fields, so a page gains
//! nothing by calling them from the browser that it could not from a server. Pages with cookies
//! (authorize, login, consent) get no CORS headers at all.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, MCP-Protocol-Version";
const EXPOSE_HEADERS: &str = "WWW-Authenticate, Retry-After";

/// Whether `path` (below the issuer's path) is one of the cookie-free, CORS-enabled endpoints.
fn cors_enabled(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-authorization-server")
        || path.starts_with("/.well-known/openid-configuration")
        || matches!(path, "/jwks.json" | "/token" | "/introspect" | "/revoke" | "/register")
        || path.starts_with("/register/")
}

pub(super) async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let below = path.strip_prefix(state.0.path_prefix.as_str()).unwrap_or(path);
    if !(cors_enabled(below) || cors_enabled(path)) || !request.headers().contains_key(header::ORIGIN) {
        return next.run(request).await;
    }
    if request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    response
}
