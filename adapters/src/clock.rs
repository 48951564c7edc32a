//! Injected time.
//!
//! Everything in this crate that compares against "now" — the circuit breaker, the JWKS staleness
//! bound, the refresh rate limit — reads a [`Clock`], so tests move time instead of sleeping. Time
//! is a [`Duration`] since the Unix epoch, with sub-second resolution (the breaker's open interval
//! is a few seconds with ±20 % jitter, which whole seconds would not express).
//!
//! Timeouts of actual network I/O (connect, total, response deadline) are real tokio timers, not
//! this clock: they bound how long a task waits, which no injected clock can shorten.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place in this crate that reads the wall clock
    fn now(&self) -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told to; for tests. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `now` (since the Unix epoch), kept to millisecond resolution.
    pub fn new(now: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(millis(now))))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(millis(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let other = clock.clone();
        assert_eq!(clock.now(), Duration::from_secs(1_000));
        other.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now(), Duration::from_millis(1_001_500));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > Duration::from_secs(1_577_836_800));
    }
}
