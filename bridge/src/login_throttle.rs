//! Throttling of failed password logins on the login page: two token buckets of
//! `bridge.rate_limits`, one per source address and one per username.
//!
//! - A source that has used up `login_failures_per_source` is refused (429, `Retry-After`)
//!   before its password is checked, for any username.
//! - A username that has used up `login_failures_per_user` slows down rather than locks out:
//!   the attempt is refused only when its source has itself failed recently (its own bucket is
//!   not full). A source with no recent failures — the account holder on their usual network —
//!   always gets its password checked, so an attacker spreading guesses over many addresses
//!   cannot lock the holder out; each address the attacker uses buys one guess per refill of its
//!   own bucket while the username is throttled. `docs/security.md` explains the choice.
//!
//! Failures are recorded for unknown usernames too, so throttling does not reveal which exist.
//! A successful login spends nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ratelimit::{Limiter, RateLimitConfig, Scope, ip_key};

/// The two login limiters of one listener.
#[derive(Debug)]
pub struct LoginThrottle {
    start: Instant,
    per_source: Limiter,
    per_user: Limiter,
}

impl LoginThrottle {
    /// Limiters for `config`'s `login_failures_per_source` and `login_failures_per_user`.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            start: Instant::now(),
            per_source: Limiter::new(config.login_failures_per_source, config.max_keys),
            per_user: Limiter::new(config.login_failures_per_user, config.max_keys),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Whether a login attempt from `source` for `username` may have its password checked now;
    /// `Err((scope, retry_after))` when it is throttled.
    pub fn check(&self, source: Option<IpAddr>, username: &str) -> Result<(), (Scope, Duration)> {
        self.check_at(source, username, self.now_ns())
    }

    /// Records a failed login from `source` for `username`.
    pub fn failed(&self, source: Option<IpAddr>, username: &str) {
        self.failed_at(source, username, self.now_ns());
    }

    fn check_at(&self, source: Option<IpAddr>, username: &str, now: u64) -> Result<(), (Scope, Duration)> {
        let source_key = source.map(ip_key);
        if let Some(key) = &source_key {
            self.per_source
                .peek(key, now)
                .map_err(|retry| (Scope::LoginFailuresSource, retry))?;
        }
        let clean_source = source_key.as_ref().is_some_and(|key| self.per_source.is_full(key, now));
        if !clean_source {
            self.per_user
                .peek(username.as_bytes(), now)
                .map_err(|retry| (Scope::LoginFailuresUser, retry))?;
        }
        Ok(())
    }

    fn failed_at(&self, source: Option<IpAddr>, username: &str, now: u64) {
        if let Some(ip) = source {
            let _ = self.per_source.check(&ip_key(ip), now);
        }
        let _ = self.per_user.check(username.as_bytes(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Bucket;

    const SECOND: u64 = 1_000_000_000;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(&RateLimitConfig {
            login_failures_per_source: Bucket { rate: 0.1, burst: 3 },
            login_failures_per_user: Bucket { rate: 0.1, burst: 5 },
            ..Default::default()
        })
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn a_source_is_refused_after_its_budget_and_recovers_at_the_rate() {
        let t = throttle();
        for _ in 0..3 {
            t.check_at(ip(1), "alice", 0).unwrap();
            t.failed_at(ip(1), "alice", 0);
        }
        let (scope, retry) = t.check_at(ip(1), "bob", 0).unwrap_err();
        assert_eq!(scope, Scope::LoginFailuresSource);
        assert_eq!(retry, Duration::from_secs(10));
        t.check_at(ip(1), "bob", 10 * SECOND).unwrap();
    }

    #[test]
    fn a_throttled_username_slows_guessers_but_not_a_clean_source() {
        let t = throttle();
        for last in 1..=5 {
            t.failed_at(ip(last), "alice", 0);
        }
        // Each guessing address has failed: while the username is throttled, it waits.
        let (scope, _) = t.check_at(ip(1), "alice", SECOND).unwrap_err();
        assert_eq!(scope, Scope::LoginFailuresUser);
        // An address without recent failures (the account holder) is checked.
        t.check_at(ip(9), "alice", SECOND).unwrap();
        // An unknown source never counts as clean.
        assert!(t.check_at(None, "alice", SECOND).is_err());
        // Other usernames are not affected.
        t.check_at(ip(1), "bob", SECOND).unwrap();
        // After one refill interval of its own bucket, a guessing address is clean again.
        t.check_at(ip(1), "alice", 10 * SECOND).unwrap();
    }
}
