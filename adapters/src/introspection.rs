//! RFC 7662 introspection at an upstream, with meshgate's own client credentials, through the
//! upstream's circuit breaker and within a deadline.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use url::Url;
use url::form_urlencoded;

use crate::Error;
use crate::circuit::Circuit;
use crate::config::Secret;
use crate::http::HttpClient;

/// Most claims an introspection answer may carry back to meshgate's caller.
const MAX_CLAIMS: usize = 64;

/// POSTs `token` to `endpoint` (RFC 7662 §2.1) authenticated with HTTP Basic (`client_id`,
/// `client_secret`, form-urlencoded as RFC 6749 §2.3.1 requires) and returns the answer's JSON
/// object, which must carry a boolean `active`.
///
/// Errors: a 5xx or 429 is [`Error::UpstreamStatus`]; another non-200 is
/// [`Error::TokenRejected`] (meshgate's credentials refused); a body that is not a JSON object
/// with a boolean `active` is [`Error::InvalidDocument`]; the breaker's and the deadline's
/// errors as [`Circuit::call_with_deadline`] gives them. No error carries the token.
pub async fn introspect(
    http: &HttpClient,
    circuit: &Circuit,
    endpoint: &Url,
    client_id: &str,
    client_secret: &Secret,
    token: &str,
    deadline: Duration,
) -> Result<Map<String, Value>, Error> {
    let encode = |value: &str| form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    let credentials = STANDARD.encode(format!("{}:{}", encode(client_id), encode(client_secret.expose())));
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let request = ::http::Request::post(endpoint.as_str())
        .header(::http::header::AUTHORIZATION, format!("Basic {credentials}"))
        .header(::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(::http::header::ACCEPT, "application/json")
        .body(body.into_bytes())
        .map_err(|_| Error::InvalidDocument {
            what: "introspection endpoint",
            reason: "its URL is not a valid URI".into(),
        })?;
    circuit
        .call_with_deadline(deadline, async {
            let response = http.execute(request).await?;
            let status = response.status();
            if status.is_server_error() || status == ::http::StatusCode::TOO_MANY_REQUESTS {
                return Err(Error::UpstreamStatus {
                    what: "the introspection request",
                    status: status.as_u16(),
                });
            }
            if status != ::http::StatusCode::OK {
                return Err(Error::TokenRejected {
                    error: format!("introspection: HTTP {}", status.as_u16()),
                });
            }
            let invalid = |reason: &str| Error::InvalidDocument {
                what: "introspection response",
                reason: reason.into(),
            };
            let object: Map<String, Value> =
                serde_json::from_slice(response.body()).map_err(|_| invalid("not a JSON object"))?;
            if !object.get("active").is_some_and(Value::is_boolean) {
                return Err(invalid("no boolean `active`"));
            }
            if object.len() > MAX_CLAIMS {
                return Err(invalid("too many members"));
            }
            Ok(object)
        })
        .await
}
