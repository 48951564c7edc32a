//! Per-client degradation policy: what token exchange does for a client while the upstream that
//! issued the subject token is unavailable (DESIGN.md, "Upstream and degradation").
//!
//! ```yaml
//! federation:
//!   jwks_fresh_for: 15m          # an upstream JWKS older than this counts as "upstream unavailable"
//!   default_policy: { on_upstream_unavailable: issue_local, max_offline: 72h, degraded_ttl: 2m }
//!   clients:
//!     <client_id>: { on_upstream_unavailable: fail_closed }
//! ```
//!
//! The policy is looked up through [`PolicySource`], so it can move from the configuration onto
//! the replicated client record without touching the exchange logic. [`decide`] is the pure
//! decision: normal issuance, degraded issuance, or a refusal with a retry hint.

use std::collections::BTreeMap;
use std::time::Duration;

use adapters::breaker::State as BreakerState;
use adapters::oidc::ProviderStatus;
use serde::{Deserialize, Deserializer, Serialize};

/// What to do for a client when the upstream is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnUpstreamUnavailable {
    /// Keep issuing from the cached upstream JWKS (within `max_stale`), with the shorter
    /// `degraded_ttl` and a `degraded: true` claim, for at most `max_offline`.
    #[default]
    IssueLocal,
    /// Answer `503 temporarily_unavailable` at once.
    FailClosed,
}

/// The resolved policy of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DegradationPolicy {
    /// Issue locally or fail closed.
    pub on_upstream_unavailable: OnUpstreamUnavailable,
    /// How long after the outage began local issuance continues; past it, `503`.
    #[serde(with = "seconds")]
    pub max_offline: Duration,
    /// Lifetime of tokens minted while the upstream is unavailable.
    #[serde(with = "seconds")]
    pub degraded_ttl: Duration,
}

impl Default for DegradationPolicy {
    /// `issue_local`, `max_offline` 72 h, `degraded_ttl` 2 min.
    fn default() -> Self {
        Self {
            on_upstream_unavailable: OnUpstreamUnavailable::IssueLocal,
            max_offline: Duration::from_secs(72 * 3600),
            degraded_ttl: Duration::from_secs(120),
        }
    }
}

/// A partial policy as written in the configuration; unset fields come from
/// `federation.default_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PolicyOverride {
    /// `issue_local` or `fail_closed`.
    pub on_upstream_unavailable: Option<OnUpstreamUnavailable>,
    /// Humantime duration, e.g. `24h`.
    #[serde(deserialize_with = "optional_duration")]
    pub max_offline: Option<Duration>,
    /// Humantime duration between 1 s and 24 h, e.g. `2m`.
    #[serde(deserialize_with = "optional_ttl")]
    pub degraded_ttl: Option<Duration>,
}

impl PolicyOverride {
    /// This override applied over `base`.
    pub fn over(&self, base: DegradationPolicy) -> DegradationPolicy {
        DegradationPolicy {
            on_upstream_unavailable: self.on_upstream_unavailable.unwrap_or(base.on_upstream_unavailable),
            max_offline: self.max_offline.unwrap_or(base.max_offline),
            degraded_ttl: self.degraded_ttl.unwrap_or(base.degraded_ttl),
        }
    }
}

impl From<&mesh::state::ClientDegradation> for PolicyOverride {
    /// The policy replicated on a client record (validated when it was set; an unknown mode is
    /// ignored, so the configured one applies).
    fn from(record: &mesh::state::ClientDegradation) -> Self {
        let on_upstream_unavailable = match record.on_upstream_unavailable.as_deref() {
            Some("issue_local") => Some(OnUpstreamUnavailable::IssueLocal),
            Some("fail_closed") => Some(OnUpstreamUnavailable::FailClosed),
            _ => None,
        };
        Self {
            on_upstream_unavailable,
            max_offline: record.max_offline_secs.map(Duration::from_secs),
            degraded_ttl: record.degraded_ttl_secs.map(Duration::from_secs),
        }
    }
}

/// `federation:` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FederationConfig {
    /// An upstream whose cached JWKS is older than this (the background refresh keeps failing)
    /// counts as unavailable, as does one whose circuit breaker is not closed. Default: 15 min.
    #[serde(deserialize_with = "duration")]
    pub jwks_fresh_for: Duration,
    /// The policy of clients without an entry in `clients`, and the base of those entries.
    pub default_policy: PolicyOverride,
    /// Per-client overrides by `client_id`.
    pub clients: BTreeMap<String, PolicyOverride>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            jwks_fresh_for: Duration::from_secs(15 * 60),
            default_policy: PolicyOverride::default(),
            clients: BTreeMap::new(),
        }
    }
}

/// Where a client's degradation policy comes from. Implemented by [`FederationConfig`] today;
/// once the replicated client record carries the policy, an implementation reading it replaces
/// this one.
pub trait PolicySource: Send + Sync + 'static {
    /// The policy for `client_id`.
    fn policy(&self, client_id: &str) -> DegradationPolicy;
}

impl PolicySource for FederationConfig {
    fn policy(&self, client_id: &str) -> DegradationPolicy {
        let base = self.default_policy.over(DegradationPolicy::default());
        match self.clients.get(client_id) {
            Some(entry) => entry.over(base),
            None => base,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The upstream is available: issue normally.
    Normal,
    /// The upstream is unavailable and the policy allows local issuance: issue with the policy's
    /// shorter lifetime and `degraded: true`.
    Degraded {
        /// Lifetime of the token.
        ttl: Duration,
    },
    /// Refuse with `503 temporarily_unavailable`.
    Refuse {
        /// `Retry-After`, whole seconds (at least 1).
        retry_after: u64,
        /// Why, for the log and `error_description`.
        reason: &'static str,
    },
}

/// What [`decide`] needs to know of an upstream: its breaker and the age of its JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The breaker's state.
    pub state: BreakerState,
    /// When the breaker last went from closed to open (the outage's start), while not closed.
    pub opened_at: Option<Duration>,
    /// When the breaker allows the next probe, while open.
    pub retry_at: Option<Duration>,
    /// When the cached JWKS was fetched.
    pub jwks_fetched_at: Option<Duration>,
}

impl From<&ProviderStatus> for Health {
    fn from(status: &ProviderStatus) -> Self {
        Self {
            state: status.circuit.state,
            opened_at: status.circuit.opened_at,
            retry_at: status.circuit.retry_at,
            jwks_fetched_at: status.jwks_fetched_at,
        }
    }
}

impl Health {
    /// Whether the upstream counts as available at `now` (since the Unix epoch): circuit closed
    /// and a JWKS fetched no longer than `fresh_for` ago.
    pub fn is_available(&self, now: Duration, fresh_for: Duration) -> bool {
        self.state == BreakerState::Closed
            && self
                .jwks_fetched_at
                .is_some_and(|at| now.saturating_sub(at) <= fresh_for)
    }

    /// When the current outage began: the breaker's `opened_at`, else the moment the JWKS went
    /// stale.
    pub fn outage_began(&self, fresh_for: Duration) -> Option<Duration> {
        self.opened_at
            .or_else(|| self.jwks_fetched_at.map(|at| at.saturating_add(fresh_for)))
    }
}

/// Decides how a token exchange whose subject token comes from an upstream in `health` proceeds
/// at `now` for a client with `policy`.
pub fn decide(policy: &DegradationPolicy, health: &Health, now: Duration, fresh_for: Duration) -> Decision {
    if health.is_available(now, fresh_for) {
        return Decision::Normal;
    }
    let retry_after = health
        .retry_at
        .map(|at| at.saturating_sub(now).as_secs_f64().ceil() as u64)
        .unwrap_or(5)
        .max(1);
    match policy.on_upstream_unavailable {
        OnUpstreamUnavailable::FailClosed => Decision::Refuse {
            retry_after,
            reason: "the upstream identity provider is unavailable",
        },
        OnUpstreamUnavailable::IssueLocal => {
            let offline = health
                .outage_began(fresh_for)
                .map_or(Duration::ZERO, |began| now.saturating_sub(began));
            if offline > policy.max_offline {
                Decision::Refuse {
                    retry_after,
                    reason: "the upstream identity provider has been unavailable for longer than this client's max_offline",
                }
            } else {
                Decision::Degraded {
                    ttl: policy.degraded_ttl,
                }
            }
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    let duration = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be longer than 0s"));
    }
    Ok(Some(duration))
}

fn optional_ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    let duration = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(86_400) {
        return Err(serde::de::Error::custom("must be between 1s and 24h"));
    }
    Ok(Some(duration))
}

mod seconds {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn health(state: BreakerState, opened_at: Option<u64>, fetched_at: Option<u64>) -> Health {
        Health {
            state,
            opened_at: opened_at.map(Duration::from_secs),
            retry_at: opened_at.map(|at| Duration::from_secs(at + 5)),
            jwks_fetched_at: fetched_at.map(Duration::from_secs),
        }
    }

    #[test]
    fn decisions_follow_the_policy() {
        let fresh_for = Duration::from_secs(900);
        let now = Duration::from_secs(100_000);
        let issue_local = DegradationPolicy {
            max_offline: HOUR,
            ..DegradationPolicy::default()
        };
        let fail_closed = DegradationPolicy {
            on_upstream_unavailable: OnUpstreamUnavailable::FailClosed,
            ..issue_local
        };
        let healthy = health(BreakerState::Closed, None, Some(99_950));
        assert_eq!(decide(&fail_closed, &healthy, now, fresh_for), Decision::Normal);
        let open = health(BreakerState::Open, Some(99_998), Some(99_950));
        assert_eq!(
            decide(&issue_local, &open, now, fresh_for),
            Decision::Degraded {
                ttl: Duration::from_secs(120)
            }
        );
        assert!(matches!(
            decide(&fail_closed, &open, now, fresh_for),
            Decision::Refuse { retry_after: 3, .. }
        ));
        let long_open = health(BreakerState::Open, Some(100_000 - 3601), Some(90_000));
        assert!(matches!(
            decide(&issue_local, &long_open, now, fresh_for),
            Decision::Refuse { .. }
        ));
        // Closed but stale: the outage is measured from when the JWKS went stale.
        let stale = health(BreakerState::Closed, None, Some(100_000 - 900 - 10));
        assert!(matches!(
            decide(&issue_local, &stale, now, fresh_for),
            Decision::Degraded { .. }
        ));
        let never = health(BreakerState::Closed, None, None);
        assert!(!never.is_available(now, fresh_for));
    }

    #[test]
    fn overrides_fall_back_to_the_default_policy() {
        let config: FederationConfig = serde_yaml::from_str(
            "default_policy: { max_offline: 24h }\nclients:\n  abc: { on_upstream_unavailable: fail_closed }\n",
        )
        .unwrap();
        let abc = config.policy("abc");
        assert_eq!(abc.on_upstream_unavailable, OnUpstreamUnavailable::FailClosed);
        assert_eq!(abc.max_offline, Duration::from_secs(86_400));
        assert_eq!(abc.degraded_ttl, Duration::from_secs(120));
        let other = config.policy("other");
        assert_eq!(other.on_upstream_unavailable, OnUpstreamUnavailable::IssueLocal);
        assert_eq!(config.jwks_fresh_for, Duration::from_secs(900));
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(serde_yaml::from_str::<PolicyOverride>("degraded_ttl: 0s").is_err());
        assert!(serde_yaml::from_str::<PolicyOverride>("degraded_ttl: 2d").is_err());
        assert!(serde_yaml::from_str::<PolicyOverride>("max_offline: soon").is_err());
        assert!(serde_yaml::from_str::<PolicyOverride>("on_upstream_unavailable: maybe").is_err());
    }
}
