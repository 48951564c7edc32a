//! [`Circuit`]: a [`Breaker`] shared by async callers, with a clock, a name for logs and the
//! token-path response deadline.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::Error;
use crate::breaker::{Breaker, BreakerConfig, Decision, Outcome, Permit, Snapshot, State};
use crate::clock::Clock;

/// One upstream's circuit breaker, shared by every call to that upstream.
///
/// [`Circuit::call`] asks the breaker, runs the call, and records its outcome: success, or a
/// failure when the error [is an upstream failure](Error::is_upstream_failure). A call whose
/// future is dropped before it finishes records nothing (a lost half-open probe is replaced after
/// [`BreakerConfig::probe_timeout`]); a call cut off by [`Circuit::call_with_deadline`] records a
/// failure.
pub struct Circuit {
    name: String,
    breaker: Mutex<Breaker>,
    clock: Arc<dyn Clock>,
}

impl Circuit {
    /// A closed circuit for the upstream `name`, its jitter seeded from the operating system.
    pub fn new(name: impl Into<String>, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| clock.now().as_nanos() as u64);
        Self::with_seed(name, config, clock, seed)
    }

    /// A closed circuit whose jitter is seeded with `seed`, for reproducible tests.
    pub fn with_seed(name: impl Into<String>, config: BreakerConfig, clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self {
            name: name.into(),
            breaker: Mutex::new(Breaker::new(config, seed)),
            clock,
        }
    }

    /// Runs `call` if the breaker allows it, and records how it went.
    ///
    /// Fails with [`Error::CircuitOpen`] without running `call` while the breaker is open or its
    /// probe is in flight; otherwise returns `call`'s result.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let permit = self.allow()?;
        let result = call.await;
        self.finish(permit, outcome(&result));
        result
    }

    /// Like [`Circuit::call`], but gives up after `deadline` with [`Error::DeadlineExceeded`],
    /// which counts as a failure: the token-path response deadline, which catches an upstream that
    /// accepts connections and never answers well before the HTTP client's total timeout.
    pub async fn call_with_deadline<T>(
        &self,
        deadline: Duration,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let permit = self.allow()?;
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::DeadlineExceeded(deadline)),
        };
        self.finish(permit, outcome(&result));
        result
    }

    /// The breaker's current state, for metrics and `meshgate upstream status`.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot()
    }

    /// The upstream's name, as given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn allow(&self) -> Result<Permit, Error> {
        match self.lock().allow(self.clock.now()) {
            Decision::Allowed(permit) => Ok(permit),
            Decision::Rejected { retry_after } => Err(Error::CircuitOpen { retry_after }),
        }
    }

    fn finish(&self, permit: Permit, outcome: Outcome) {
        let entered = self.lock().record(permit, outcome, self.clock.now());
        match entered {
            Some(State::Open) => tracing::warn!(upstream = %self.name, "upstream circuit opened"),
            Some(State::Closed) => tracing::info!(upstream = %self.name, "upstream circuit closed"),
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The breaker is updated in single statements; a panic elsewhere cannot leave it torn.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Circuit")
            .field("name", &self.name)
            .field("state", &self.snapshot())
            .finish()
    }
}

fn outcome<T>(result: &Result<T, Error>) -> Outcome {
    match result {
        Err(error) if error.is_upstream_failure() => Outcome::Failure,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::clock::ManualClock;

    fn circuit(clock: &ManualClock) -> Circuit {
        let config = BreakerConfig {
            failure_threshold: NonZeroU32::new(2).unwrap(),
            jitter_percent: 0,
            ..BreakerConfig::default()
        };
        Circuit::with_seed("test", config, Arc::new(clock.clone()), 1)
    }

    #[tokio::test]
    async fn failures_open_it_and_an_open_circuit_does_not_call() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let circuit = circuit(&clock);
        for _ in 0..2 {
            let error = circuit
                .call(async { Err::<(), _>(Error::Timeout(Duration::from_secs(2))) })
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Timeout(_)));
        }
        assert_eq!(circuit.snapshot().state, State::Open);
        let mut called = false;
        let error = circuit
            .call(async {
                called = true;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(!called);
        assert!(matches!(error, Error::CircuitOpen { retry_after } if retry_after == Duration::from_secs(5)));
        clock.advance(Duration::from_secs(5));
        circuit.call(async { Ok(()) }).await.unwrap();
        assert_eq!(circuit.snapshot().state, State::Closed);
    }

    #[tokio::test]
    async fn an_oauth_refusal_is_not_a_failure() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let circuit = circuit(&clock);
        for _ in 0..5 {
            let _ = circuit
                .call(async {
                    Err::<(), _>(Error::TokenRejected {
                        error: "invalid_client".into(),
                    })
                })
                .await;
        }
        let snapshot = circuit.snapshot();
        assert_eq!((snapshot.state, snapshot.consecutive_failures), (State::Closed, 0));
    }

    #[tokio::test]
    async fn the_deadline_cuts_a_hanging_call_and_counts_as_failure() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let circuit = circuit(&clock);
        let error = circuit
            .call_with_deadline(Duration::from_millis(20), std::future::pending::<Result<(), Error>>())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::DeadlineExceeded(limit) if limit == Duration::from_millis(20)));
        assert_eq!(circuit.snapshot().consecutive_failures, 1);
    }
}
