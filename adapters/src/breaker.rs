//! The circuit breaker: a pure state machine that decides whether an upstream is worth calling.
//!
//! [`Breaker`] does no I/O and reads no clock: every call takes `now` (a [`Duration`] since the
//! Unix epoch, see [`crate::clock`]) and its jitter comes from a seeded generator, so tests replay
//! it exactly. [`crate::circuit::Circuit`] wraps one in a lock and a clock for async callers.
//!
//! # States
//!
//! ```text
//!            failure_threshold consecutive failures
//!   Closed ───────────────────────────────────────────▶ Open ◀──────────┐
//!     ▲                                                  │ open interval │ probe failed
//!     │ probe succeeded                                  ▼ elapsed       │ (interval doubles)
//!     └────────────────────────────────────────────── HalfOpen ─────────┘
//! ```
//!
//! - **Closed**: every call is allowed. A success resets the failure count; a failure increments
//!   it, and [`BreakerConfig::failure_threshold`] *consecutive* failures open the breaker. A
//!   consecutive count rather than a failure ratio: an upstream serving meshgate's handful of
//!   federated calls has too little traffic for a ratio window to mean anything, and a run of
//!   failures is exactly what a dead or frozen upstream produces.
//! - **Open**: every call is rejected with the time left until the next probe. The interval is
//!   [`BreakerConfig::open_for`], doubled for every probe that failed since the breaker last
//!   closed, capped at [`BreakerConfig::max_open_for`], and spread by ±
//!   [`BreakerConfig::jitter_percent`] so a fleet of nodes does not probe in lockstep.
//! - **HalfOpen**: the first call after the interval is the single probe; every other call is
//!   rejected until the probe is recorded. A success closes the breaker, a failure re-opens it. A
//!   probe never recorded within [`BreakerConfig::probe_timeout`] (its task was cancelled) is
//!   presumed lost and the next call becomes the probe.
//!
//! Every transition starts a new *generation*; a [`Permit`] remembers the generation that issued
//! it, and recording a permit from an older generation changes nothing. So a slow call started
//! before the breaker opened cannot close it, and a lost probe's late answer cannot disturb its
//! replacement.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of a [`Breaker`]; see [`BreakerConfig::default`] for the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker. Default: 5.
    pub failure_threshold: NonZeroU32,
    /// How long the breaker stays open after it first opens, before a probe. Default: 5 s.
    #[serde(with = "crate::config::duration")]
    pub open_for: Duration,
    /// Upper bound of the open interval as it doubles after failed probes. Default: 60 s.
    #[serde(with = "crate::config::duration")]
    pub max_open_for: Duration,
    /// Random spread of every open interval, in percent either way (values above 100 count as
    /// 100). Default: 20, i.e. 5 s becomes 4–6 s.
    pub jitter_percent: u8,
    /// How long a half-open probe may stay unrecorded before another call may probe. Default:
    /// 2 s, the HTTP client's total timeout.
    #[serde(with = "crate::config::duration")]
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    /// Threshold 5, open 5 s (up to 60 s after failed probes), jitter ±20 %, probe timeout 2 s.
    fn default() -> Self {
        Self {
            failure_threshold: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            jitter_percent: 20,
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// The coarse state of a breaker, as shown in metrics and `meshgate upstream status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are rejected until the open interval ends.
    Open,
    /// One probe call is in flight or may be made; others are rejected.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A point-in-time view of a breaker for metrics and status output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The current state.
    pub state: State,
    /// Failures in a row since the last success.
    pub consecutive_failures: u32,
    /// When the current outage began: the time the breaker last went from closed to open. Kept
    /// while it re-opens after failed probes; `None` once it closes. This is the clock a
    /// per-client `max_offline` budget runs against.
    pub opened_at: Option<Duration>,
    /// When the next probe may be made, while open.
    pub retry_at: Option<Duration>,
    /// How many times the breaker went from closed to open since it was created.
    pub trips: u64,
}

/// The answer of [`Breaker::allow`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Make the call, then hand the permit back to [`Breaker::record`].
    Allowed(Permit),
    /// Do not call the upstream; it may be tried again after `retry_after`.
    Rejected {
        /// Time until a call may be allowed again (the open interval's end, or the in-flight
        /// probe's timeout).
        retry_after: Duration,
    },
}

/// Leave to make one upstream call, issued by [`Breaker::allow`]. Record its outcome exactly once
/// with [`Breaker::record`]; it cannot be copied.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Permit {
    generation: u64,
    probe: bool,
}

impl Permit {
    /// Whether this permit is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// How an upstream call went, as far as the upstream's health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered as a healthy server does (an OAuth error answer included).
    Success,
    /// The upstream was unreachable, too slow, or answered like a broken server.
    Failure,
}

/// The circuit breaker state machine. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    rng: u64,
    generation: u64,
    phase: Phase,
    consecutive_failures: u32,
    failed_probes: u32,
    opened_at: Option<Duration>,
    trips: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Duration },
    HalfOpen { probe_started: Duration },
}

impl Breaker {
    /// A closed breaker. `seed` drives the jitter; give each breaker a different one (the
    /// [`crate::circuit::Circuit`] draws it from the OS) and tests a fixed one.
    pub fn new(config: BreakerConfig, seed: u64) -> Self {
        Self {
            config,
            rng: seed,
            generation: 0,
            phase: Phase::Closed,
            consecutive_failures: 0,
            failed_probes: 0,
            opened_at: None,
            trips: 0,
        }
    }

    /// Asks to make one upstream call at `now`.
    pub fn allow(&mut self, now: Duration) -> Decision {
        match self.phase {
            Phase::Closed => Decision::Allowed(self.permit(false)),
            Phase::Open { until } if now < until => Decision::Rejected {
                retry_after: until - now,
            },
            Phase::Open { .. } => self.start_probe(now),
            Phase::HalfOpen { probe_started } => {
                let lost_at = probe_started.saturating_add(self.config.probe_timeout);
                if now < lost_at {
                    Decision::Rejected {
                        retry_after: lost_at - now,
                    }
                } else {
                    self.start_probe(now)
                }
            }
        }
    }

    /// Records how the call made under `permit` went. Returns the state entered if this record
    /// changed it; a permit from an earlier generation is ignored (returns `None`).
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Duration) -> Option<State> {
        if permit.generation != self.generation {
            return None;
        }
        match (self.phase, outcome) {
            (Phase::Closed, Outcome::Success) => {
                self.consecutive_failures = 0;
                None
            }
            (Phase::Closed, Outcome::Failure) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures < self.config.failure_threshold.get() {
                    return None;
                }
                self.trips += 1;
                self.opened_at = Some(now);
                self.open(now);
                Some(State::Open)
            }
            (Phase::HalfOpen { .. }, Outcome::Success) => {
                self.generation += 1;
                self.phase = Phase::Closed;
                self.consecutive_failures = 0;
                self.failed_probes = 0;
                self.opened_at = None;
                Some(State::Closed)
            }
            (Phase::HalfOpen { .. }, Outcome::Failure) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.failed_probes = self.failed_probes.saturating_add(1);
                self.open(now);
                Some(State::Open)
            }
            // No permit is issued while open, so none can carry the open generation.
            (Phase::Open { .. }, _) => None,
        }
    }

    /// The breaker's current state for metrics and status output.
    pub fn snapshot(&self) -> Snapshot {
        let (state, retry_at) = match self.phase {
            Phase::Closed => (State::Closed, None),
            Phase::Open { until } => (State::Open, Some(until)),
            Phase::HalfOpen { .. } => (State::HalfOpen, None),
        };
        Snapshot {
            state,
            consecutive_failures: self.consecutive_failures,
            opened_at: self.opened_at,
            retry_at,
            trips: self.trips,
        }
    }

    /// The coarse state: closed, open or half-open.
    pub fn state(&self) -> State {
        self.snapshot().state
    }

    /// The settings this breaker runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            generation: self.generation,
            probe,
        }
    }

    fn start_probe(&mut self, now: Duration) -> Decision {
        self.generation += 1;
        self.phase = Phase::HalfOpen { probe_started: now };
        Decision::Allowed(self.permit(true))
    }

    fn open(&mut self, now: Duration) {
        self.generation += 1;
        let interval = self.open_interval();
        self.phase = Phase::Open {
            until: now.saturating_add(interval),
        };
    }

    /// `open_for` doubled per failed probe, capped, then jittered.
    fn open_interval(&mut self) -> Duration {
        let doublings = self.failed_probes.min(16);
        let base = self
            .config
            .open_for
            .saturating_mul(1 << doublings)
            .min(self.config.max_open_for.max(self.config.open_for));
        let spread = f64::from(self.config.jitter_percent.min(100)) / 100.0;
        // A uniform factor in [1 - spread, 1 + spread].
        let factor = 1.0 + spread * (2.0 * self.next_unit() - 1.0);
        base.mul_f64(factor)
    }

    /// A uniform number in [0, 1) from a splitmix64 generator.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn allowed(decision: Decision) -> Permit {
        match decision {
            Decision::Allowed(permit) => permit,
            Decision::Rejected { retry_after } => panic!("rejected, retry after {retry_after:?}"),
        }
    }

    fn open_breaker(config: BreakerConfig) -> Breaker {
        let mut breaker = Breaker::new(config, 7);
        for _ in 0..breaker.config.failure_threshold.get() {
            let permit = allowed(breaker.allow(T0));
            let _ = breaker.record(permit, Outcome::Failure, T0);
        }
        assert_eq!(breaker.state(), State::Open);
        breaker
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = BreakerConfig::default();
        assert_eq!(config.failure_threshold.get(), 5);
        assert_eq!(config.open_for, Duration::from_secs(5));
        assert_eq!(config.max_open_for, Duration::from_secs(60));
        assert_eq!(config.jitter_percent, 20);
        assert_eq!(config.probe_timeout, Duration::from_secs(2));
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let mut breaker = Breaker::new(BreakerConfig::default(), 1);
        for _ in 0..4 {
            let permit = allowed(breaker.allow(T0));
            assert_eq!(breaker.record(permit, Outcome::Failure, T0), None);
        }
        let permit = allowed(breaker.allow(T0));
        assert_eq!(breaker.record(permit, Outcome::Success, T0), None);
        assert_eq!(breaker.snapshot().consecutive_failures, 0);
        for _ in 0..4 {
            let permit = allowed(breaker.allow(T0));
            let _ = breaker.record(permit, Outcome::Failure, T0);
        }
        let permit = allowed(breaker.allow(T0));
        assert_eq!(breaker.record(permit, Outcome::Failure, T0), Some(State::Open));
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.opened_at, Some(T0));
        assert_eq!(snapshot.trips, 1);
        assert!(matches!(breaker.allow(T0 + ms(1)), Decision::Rejected { .. }));
    }

    #[test]
    fn open_interval_is_jittered_within_twenty_percent() {
        for seed in 0..200 {
            let mut breaker = Breaker::new(BreakerConfig::default(), seed);
            for _ in 0..5 {
                let permit = allowed(breaker.allow(T0));
                let _ = breaker.record(permit, Outcome::Failure, T0);
            }
            let retry_at = breaker.snapshot().retry_at.unwrap();
            assert!(retry_at >= T0 + ms(4_000) && retry_at <= T0 + ms(6_000), "{retry_at:?}");
        }
    }

    #[test]
    fn half_opens_after_interval_with_a_single_probe_and_closes_on_success() {
        let mut breaker = open_breaker(BreakerConfig::default());
        let retry_at = breaker.snapshot().retry_at.unwrap();
        let Decision::Rejected { retry_after } = breaker.allow(T0) else {
            panic!("allowed while open")
        };
        assert_eq!(T0 + retry_after, retry_at);
        let probe = allowed(breaker.allow(retry_at));
        assert!(probe.is_probe());
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(matches!(breaker.allow(retry_at + ms(10)), Decision::Rejected { .. }));
        assert_eq!(
            breaker.record(probe, Outcome::Success, retry_at + ms(20)),
            Some(State::Closed)
        );
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.state, snapshot.opened_at), (State::Closed, None));
        assert!(!allowed(breaker.allow(retry_at + ms(30))).is_probe());
    }

    #[test]
    fn failed_probe_reopens_with_a_doubled_interval_up_to_the_cap() {
        let config = BreakerConfig {
            jitter_percent: 0,
            max_open_for: Duration::from_secs(12),
            ..BreakerConfig::default()
        };
        let mut breaker = open_breaker(config);
        let mut now = breaker.snapshot().retry_at.unwrap();
        assert_eq!(now, T0 + Duration::from_secs(5));
        for expected in [10, 12, 12] {
            let probe = allowed(breaker.allow(now));
            assert_eq!(breaker.record(probe, Outcome::Failure, now), Some(State::Open));
            let snapshot = breaker.snapshot();
            assert_eq!(snapshot.opened_at, Some(T0), "the outage start is kept");
            assert_eq!(snapshot.trips, 1);
            let retry_at = snapshot.retry_at.unwrap();
            assert_eq!(retry_at - now, Duration::from_secs(expected));
            now = retry_at;
        }
    }

    #[test]
    fn a_lost_probe_is_replaced_after_the_probe_timeout() {
        let mut breaker = open_breaker(BreakerConfig::default());
        let at = breaker.snapshot().retry_at.unwrap();
        let lost = allowed(breaker.allow(at));
        let Decision::Rejected { retry_after } = breaker.allow(at + ms(500)) else {
            panic!("second probe allowed")
        };
        assert_eq!(retry_after, ms(1_500));
        let replacement = allowed(breaker.allow(at + ms(2_000)));
        assert!(replacement.is_probe());
        // The lost probe's late answer is ignored; the replacement's counts.
        assert_eq!(breaker.record(lost, Outcome::Success, at + ms(2_100)), None);
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(
            breaker.record(replacement, Outcome::Success, at + ms(2_200)),
            Some(State::Closed)
        );
    }

    #[test]
    fn a_call_started_before_opening_cannot_close_it() {
        let mut breaker = Breaker::new(BreakerConfig::default(), 3);
        let slow = allowed(breaker.allow(T0));
        for _ in 0..5 {
            let permit = allowed(breaker.allow(T0));
            let _ = breaker.record(permit, Outcome::Failure, T0);
        }
        let before = breaker.clone();
        assert_eq!(breaker.record(slow, Outcome::Success, T0 + ms(100)), None);
        assert_eq!(breaker, before);
    }

    #[test]
    fn state_names_are_the_metric_labels() {
        let names: Vec<_> = [State::Closed, State::Open, State::HalfOpen]
            .into_iter()
            .map(State::as_str)
            .collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
        assert_eq!(serde_json::to_string(&State::HalfOpen).unwrap(), "\"half_open\"");
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Advance time by this many milliseconds, then ask for a permit.
        Allow(u64),
        /// Advance time, then record the held permit at this index (modulo) with this outcome.
        Record(u64, usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..4_000).prop_map(Op::Allow),
            (0u64..4_000, any::<usize>(), any::<bool>()).prop_map(|(dt, i, ok)| Op::Record(dt, i, ok)),
        ]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (1u32..6, 100u64..8_000, 0u8..=100, 100u64..3_000).prop_map(|(threshold, open, jitter, probe)| BreakerConfig {
            failure_threshold: NonZeroU32::new(threshold).unwrap(),
            open_for: ms(open),
            max_open_for: ms(open * 4),
            jitter_percent: jitter,
            probe_timeout: ms(probe),
        })
    }

    proptest! {
        #[test]
        fn at_most_one_live_probe_and_stale_records_change_nothing(
            config in config(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut breaker = Breaker::new(config, seed);
            let mut now = T0;
            let mut held: Vec<Permit> = Vec::new();
            for op in ops {
                match op {
                    Op::Allow(dt) => {
                        now += ms(dt);
                        if let Decision::Allowed(permit) = breaker.allow(now) {
                            held.push(permit);
                        }
                    }
                    Op::Record(dt, index, ok) => {
                        now += ms(dt);
                        if held.is_empty() {
                            continue;
                        }
                        let permit = held.remove(index % held.len());
                        let stale = permit.generation != breaker.generation;
                        let before = breaker.clone();
                        let outcome = if ok { Outcome::Success } else { Outcome::Failure };
                        let changed = breaker.record(permit, outcome, now);
                        if stale {
                            prop_assert_eq!(&breaker, &before);
                            prop_assert_eq!(changed, None);
                        }
                    }
                }
                let live_probes = held
                    .iter()
                    .filter(|permit| permit.probe && permit.generation == breaker.generation)
                    .count();
                if breaker.state() == State::HalfOpen {
                    prop_assert!(live_probes <= 1, "{} live probes", live_probes);
                } else {
                    prop_assert_eq!(live_probes, 0);
                }
            }
        }

        #[test]
        fn an_open_breaker_half_opens_once_its_interval_has_elapsed(
            config in config(),
            seed in any::<u64>(),
            failures in 0u32..4,
        ) {
            let ceiling = config.max_open_for.mul_f64(1.0 + f64::from(config.jitter_percent) / 100.0);
            let mut breaker = Breaker::new(config, seed);
            let mut now = T0;
            while breaker.state() == State::Closed {
                let permit = allowed(breaker.allow(now));
                let _ = breaker.record(permit, Outcome::Failure, now);
            }
            for _ in 0..failures {
                now = breaker.snapshot().retry_at.unwrap();
                let probe = allowed(breaker.allow(now));
                let _ = breaker.record(probe, Outcome::Failure, now);
            }
            let retry_at = breaker.snapshot().retry_at.unwrap();
            prop_assert!(retry_at - now <= ceiling + ms(1));
            if retry_at > now {
                prop_assert!(
                    matches!(breaker.allow(retry_at - ms(1).min(retry_at - now)), Decision::Rejected { .. }),
                    "allowed before the interval ended"
                );
            }
            let probe = allowed(breaker.allow(retry_at));
            prop_assert!(probe.is_probe());
            prop_assert_eq!(breaker.state(), State::HalfOpen);
        }
    }
}
