//! `/introspect` of an upstream's token (RFC 7662): forwarded to the upstream's introspection
//! endpoint when meshgate has credentials there and it answers within the token-path deadline
//! (it knows about revocations); otherwise validated locally through the upstream's cached JWKS
//! (signature, issuer, audience, `exp`, `nbf`) — active with its claims.
//!
//! Either way the answer names the upstream (`upstream`) and says how it was judged
//! (`verified_offline`).

use std::time::Duration;

use serde_json::{Map, Value};

use super::AppState;

/// The introspection answer for `token` when its `iss` names a configured upstream; `None`
/// when it does not (the token is simply inactive here).
pub(super) async fn introspect(state: &AppState, token: &str, now: u64) -> Option<Map<String, Value>> {
    let issuer = super::exchange::peek_issuer(token)?;
    let upstream = state.federation().upstreams.by_issuer(&issuer)?.clone();
    if upstream.can_introspect() {
        match upstream.introspect(token).await {
            Ok(mut answer) => {
                answer.insert("upstream".into(), Value::String(upstream.name().to_owned()));
                answer.insert("verified_offline".into(), Value::Bool(false));
                return Some(answer);
            }
            Err(error) => tracing::info!(
                upstream = upstream.name(),
                %error,
                "introspection at the upstream failed: validating locally"
            ),
        }
    }
    let mut answer = match upstream.oidc().verify(token, Duration::from_secs(now)).await {
        Ok(claims) => {
            let mut answer = claims.claims;
            answer.insert("active".into(), Value::Bool(true));
            answer.insert("token_type".into(), Value::String("Bearer".into()));
            answer
        }
        Err(error) => {
            tracing::debug!(upstream = upstream.name(), %error, "introspection: upstream token refused");
            let mut answer = Map::new();
            answer.insert("active".into(), Value::Bool(false));
            return Some(answer);
        }
    };
    answer.insert("upstream".into(), Value::String(upstream.name().to_owned()));
    answer.insert("verified_offline".into(), Value::Bool(true));
    Some(answer)
}
