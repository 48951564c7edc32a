//! The hooks of ABI version 1: what each receives and answers (JSON), and the checks on the answer.
//!
//! Every hook answers a [`Decision`]. The host enforces that a plugin only ever narrows: scopes it
//! returns must be a subset of those it was given, added claims may not name a reserved claim
//! ([`RESERVED_CLAIMS`]), and capabilities (from `map_upstream_claims` only) must name one of the
//! token's audiences. An answer that breaks a rule is a failed call (the failure policy applies).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Plugin};

/// Claims a plugin can never set: the node decides them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "cap",
    "node",
    "act",
    "degraded",
    "cnf",
    "may_act",
    "active",
    "token_type",
];

/// `on_token_request` input: a token about to be issued.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRequest<'a> {
    /// The client asking.
    pub client_id: &'a str,
    /// `client_credentials` or the token-exchange grant URN.
    pub grant_type: &'a str,
    /// The token's subject.
    pub sub: &'a str,
    /// The scopes the node would grant.
    pub scopes: &'a [String],
    /// The token's audiences.
    pub audiences: &'a [String],
    /// Unix seconds (the node's clock: plugins have none of their own).
    pub now: u64,
}

/// `map_upstream_claims` input: an upstream token's verified claims during token exchange.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamClaims<'a> {
    /// The client asking.
    pub client_id: &'a str,
    /// The subject.
    pub sub: &'a str,
    /// The upstream token's claims (e.g. `groups`).
    pub upstream: &'a Value,
    /// The scopes the node would grant.
    pub scopes: &'a [String],
    /// The token's audiences.
    pub audiences: &'a [String],
    /// Unix seconds.
    pub now: u64,
}

/// `on_introspect` input: an active token's claims.
#[derive(Debug, Clone, Serialize)]
pub struct Introspection<'a> {
    /// The client that introspects.
    pub client_id: &'a str,
    /// The token's claims.
    pub claims: &'a Value,
    /// Unix seconds.
    pub now: u64,
}

/// What a hook answers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `allow` or `deny`.
    pub decision: Verdict,
    /// Why a request is denied (shown to the client in `error_description`).
    #[serde(default)]
    pub reason: Option<String>,
    /// The narrowed scopes (absent: unchanged).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Claims to add.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Capabilities to add (`map_upstream_claims` only).
    #[serde(default)]
    pub cap: Vec<Capability>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Go on (with the decision's changes).
    #[default]
    Allow,
    /// Refuse the request.
    Deny,
}

/// A capability a plugin adds: `can` on `with`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// The audience.
    pub with: String,
    /// The action.
    pub can: String,
}

impl Plugin {
    /// Runs `on_token_request`: the answer may deny, narrow `request.scopes` and add claims.
    pub fn on_token_request(&self, request: &TokenRequest<'_>) -> Result<Decision, Error> {
        let decision = self.decide("on_token_request", request)?;
        self.check(&decision, "on_token_request", request.scopes, request.audiences, false)?;
        Ok(decision)
    }

    /// Runs `map_upstream_claims`: the answer may deny, narrow scopes, add claims and add
    /// capabilities on the token's audiences.
    pub fn map_upstream_claims(&self, request: &UpstreamClaims<'_>) -> Result<Decision, Error> {
        let decision = self.decide("map_upstream_claims", request)?;
        self.check(
            &decision,
            "map_upstream_claims",
            request.scopes,
            request.audiences,
            true,
        )?;
        Ok(decision)
    }

    /// Runs `on_introspect`: the answer may deny (the token introspects inactive) or add claims.
    pub fn on_introspect(&self, request: &Introspection<'_>) -> Result<Decision, Error> {
        let decision = self.decide("on_introspect", request)?;
        if decision.scopes.is_some() {
            return Err(self.bad("on_introspect", "`scopes` is not an answer of on_introspect".into()));
        }
        self.check(&decision, "on_introspect", &[], &[], false)?;
        Ok(decision)
    }

    fn decide(&self, hook: &str, input: &impl Serialize) -> Result<Decision, Error> {
        let mut document = serde_json::to_value(input).map_err(|e| self.bad(hook, e.to_string()))?;
        if let Value::Object(fields) = &mut document {
            fields.insert("hook".into(), Value::String(hook.to_owned()));
            fields.insert("abi".into(), Value::from(mesh::plugin::ABI_VERSION));
        }
        let bytes = serde_json::to_vec(&document).map_err(|e| self.bad(hook, e.to_string()))?;
        let output = self.call(hook, &bytes)?;
        serde_json::from_slice(&output).map_err(|e| self.bad(hook, format!("malformed answer: {e}")))
    }

    fn check(
        &self,
        decision: &Decision,
        hook: &str,
        scopes: &[String],
        audiences: &[String],
        caps: bool,
    ) -> Result<(), Error> {
        if let Some(narrowed) = &decision.scopes
            && let Some(extra) = narrowed.iter().find(|s| !scopes.contains(s))
        {
            return Err(self.bad(hook, format!("it would widen the scopes with `{extra}`")));
        }
        if let Some(name) = decision.claims.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
            return Err(self.bad(hook, format!("claim `{name}` is reserved")));
        }
        if !caps && !decision.cap.is_empty() {
            return Err(self.bad(hook, "only map_upstream_claims may add capabilities".into()));
        }
        if let Some(cap) = decision.cap.iter().find(|c| !audiences.contains(&c.with)) {
            return Err(self.bad(
                hook,
                format!("capability on `{}`, which is not an audience of the token", cap.with),
            ));
        }
        Ok(())
    }

    fn bad(&self, hook: &str, reason: String) -> Error {
        Error::Call {
            name: self.manifest().name.clone(),
            hook: hook.to_owned(),
            reason,
        }
    }
}
