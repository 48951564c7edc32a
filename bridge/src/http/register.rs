//! `POST /register` (RFC 7591) and `GET`/`PUT`/`DELETE /register/{client_id}` (RFC 7592); the
//! policy and the metadata checks live in [`crate::registration`].

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mesh::state::Change;
use serde_json::Value;

use super::AppState;
use super::token::no_store;
use crate::error::OAuthError;
use crate::registration::{self, Metadata};

/// Adds `registration_endpoint` and `client_id_metadata_document_supported` to the RFC 8414
/// metadata.
pub(super) fn advertise(state: &AppState, body: &mut Value) {
    let config = state.registry().config();
    if config.enabled {
        body["registration_endpoint"] = Value::String(format!("{}/register", state.0.settings.issuer));
    }
    body["client_id_metadata_document_supported"] = Value::Bool(config.client_id_metadata_documents);
}

pub(super) async fn register(State(state): State<AppState>, request: Request) -> Result<Response, OAuthError> {
    let registry = state.registry();
    if !registry.config().enabled {
        return Err(OAuthError::not_found());
    }
    // Registration floods: a per-source budget (`bridge.rate_limits.registrations_per_source`).
    let source = crate::ratelimit::source(&request);
    state.rate_limits().map(|l| l.check_registration(source)).transpose()?;
    let (headers, body) = json_body(request).await?;
    let metadata = Metadata::parse(&body)?;
    match bearer(&headers)? {
        Some(token) if registry.is_initial_access_token(token) => {}
        Some(_) => return Err(OAuthError::invalid_token("unknown initial access token")),
        None if registry.config().open_public && metadata.is_public() => {}
        None if metadata.is_public() => {
            return Err(OAuthError::invalid_token(
                "registration requires an initial access token on this server",
            ));
        }
        None => {
            return Err(OAuthError::invalid_token(
                "registering a confidential client requires an initial access token",
            ));
        }
    }
    if registration::dynamic_clients(&state.view()) >= registry.config().max_dynamic_clients {
        return Err(
            OAuthError::temporarily_unavailable("too many dynamically registered clients; try again later")
                .with_retry_after(3600),
        );
    }
    let now = state.now();
    let alg = state.0.settings.default_alg.to_string();
    let new = registration::new_client(metadata, &alg, now);
    let mut answer = registration::describe(&new.record, &client_uri(&state, &new.record.client_id));
    answer["registration_access_token"] = Value::String(new.registration_access_token);
    if let Some(secret) = new.client_secret {
        answer["client_secret"] = Value::String(secret);
    }
    let record = new.record;
    tracing::info!(client_id = %record.client_id, public = record.secrets.is_empty(), "client registered dynamically");
    write(&state, vec![Change::PutClient(record)]).await?;
    Ok(no_store((StatusCode::CREATED, axum::Json(answer)).into_response()))
}

pub(super) async fn read(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let record = authorized(&state, &client_id, &headers)?;
    let mut body = registration::describe(&record, &client_uri(&state, &client_id));
    echo_token(&mut body, &headers);
    Ok(no_store(axum::Json(body).into_response()))
}

pub(super) async fn update(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    request: Request,
) -> Result<Response, OAuthError> {
    let mut record = authorized(&state, &client_id, request.headers())?;
    let (headers, body) = json_body(request).await?;
    if body.get("client_id").and_then(Value::as_str) != Some(client_id.as_str()) {
        return Err(OAuthError::invalid_request(
            "the body's client_id must name the client being updated (RFC 7592 §2.2)",
        ));
    }
    let metadata = Metadata::parse(&body)?;
    let was_public = record.secrets.is_empty();
    if metadata.is_public() != was_public {
        return Err(OAuthError::invalid_client_metadata(
            "token_endpoint_auth_method cannot change between public (none) and confidential",
        ));
    }
    registration::update(&mut record, metadata);
    let mut answer = registration::describe(&record, &client_uri(&state, &client_id));
    echo_token(&mut answer, &headers);
    write(&state, vec![Change::PutClient(record)]).await?;
    Ok(no_store(axum::Json(answer).into_response()))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    authorized(&state, &client_id, &headers)?;
    write(&state, vec![Change::RemoveClient(client_id.clone())]).await?;
    tracing::info!(%client_id, "dynamically registered client deleted itself");
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

/// The dynamically registered client `client_id`, if `headers` carry its registration access
/// token; `invalid_token` otherwise, without telling an unknown client from a wrong token.
fn authorized(state: &AppState, client_id: &str, headers: &HeaderMap) -> Result<mesh::state::ClientRecord, OAuthError> {
    let token = bearer(headers)?.ok_or_else(|| OAuthError::invalid_token("a registration access token is required"))?;
    let view = state.view();
    view.clients
        .get(client_id)
        .filter(|c| registration::is_registration_access_token(&c.record, token))
        .map(|c| c.record.clone())
        .ok_or_else(|| OAuthError::invalid_token("unknown client or wrong registration access token"))
}

/// RFC 7592 §3 answers carry the registration access token: the one presented (it is stored
/// only as a hash, and it stays valid).
fn echo_token(body: &mut Value, headers: &HeaderMap) {
    if let Ok(Some(token)) = bearer(headers) {
        body["registration_access_token"] = Value::String(token.to_owned());
    }
}

fn client_uri(state: &AppState, client_id: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    format!("{}/register/{encoded}", state.0.settings.issuer)
}

/// The bearer token of `Authorization`, if any (RFC 6750 §2.1).
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| OAuthError::invalid_token("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(OAuthError::invalid_token(
            "the Authorization header must carry a Bearer token",
        )),
    }
}

/// A JSON object body of at most [`registration::MAX_REQUEST_BYTES`].
async fn json_body(request: Request) -> Result<(HeaderMap, Value), OAuthError> {
    let (parts, body): (_, Body) = request.into_parts();
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(OAuthError::invalid_request("the body must be application/json"));
    }
    let limit = registration::MAX_REQUEST_BYTES;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| OAuthError::payload_too_large(limit))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| OAuthError::invalid_client_metadata("the body is not valid JSON"))?;
    Ok((parts.headers, value))
}

async fn write(state: &AppState, changes: Vec<Change>) -> Result<(), OAuthError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        state.with_node(|node| {
            node.apply(&changes)?;
            Ok(((), changes))
        })
    })
    .await
    .map_err(|e| OAuthError::server_error(&e))?
    .map_err(|e| OAuthError::server_error(&e))
}
