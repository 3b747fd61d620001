//! A circuit breaker for the payment gateway.
//!
//! After `threshold` consecutive gateway failures (timeouts, lost
//! connections, 5xx) the breaker opens: calls fail at once, without being
//! sent, for `cooldown`. Then one probe is let through (half-open); its
//! success closes the breaker, its failure opens it again. Time comes from
//! the injected [`Clock`], so the cycle is tested without sleeping.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::domain::time::{Clock, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Timestamp },
    HalfOpen { probing: bool },
}

/// What [`Breaker::state`] reports, for metrics and `/readyz`-style views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

pub struct Breaker {
    clock: Arc<dyn Clock>,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Leave to send one call. Report how it went with [`Permit::record`]; a
/// permit dropped unreported (the caller was cancelled) counts as neither.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    pub fn new(clock: Arc<dyn Clock>, threshold: u32, cooldown: Duration) -> Self {
        Self { clock, threshold: threshold.max(1), cooldown, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    /// A permit to call the gateway, or the time (epoch ms) when calls will
    /// be tried again.
    pub fn admit(&self) -> Result<Permit<'_>, i64> {
        let mut state = self.state.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if self.clock.now() < until => return Err(until.as_millis()),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            // One probe at a time; the rest wait for its verdict.
            State::HalfOpen { probing: true } => return Err(self.clock.now().plus(self.cooldown).as_millis()),
        };
        Ok(Permit { breaker: self, probe, recorded: false })
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn record(&self, healthy: bool) {
        let mut state = self.state.lock();
        let was_open = !matches!(*state, State::Closed { .. });
        *state = match (*state, healthy) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open { until: self.clock.now().plus(self.cooldown) },
        };
        let open = !matches!(*state, State::Closed { .. });
        if open != was_open {
            if open {
                tracing::warn!(
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "payment gateway circuit breaker opened"
                );
            } else {
                tracing::info!("payment gateway circuit breaker closed");
            }
        }
        metrics::gauge!("boxoffice_gateway_breaker_open").set(if open { 1.0 } else { 0.0 });
    }
}

impl Permit<'_> {
    /// `healthy`: the gateway answered (any definite answer, declines
    /// included). Unhealthy: a timeout, a lost connection or a 5xx.
    pub fn record(mut self, healthy: bool) {
        self.recorded = true;
        self.breaker.record(healthy);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.state.lock();
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::FakeClock;

    fn breaker() -> (Breaker, FakeClock) {
        let clock = FakeClock::starting_now();
        (Breaker::new(Arc::new(clock.clone()), 3, Duration::from_secs(30)), clock)
    }

    #[test]
    fn opens_after_consecutive_failures_and_only_then() {
        let (b, _) = breaker();
        b.admit().unwrap().record(false);
        b.admit().unwrap().record(false);
        b.admit().unwrap().record(true); // a success resets the count
        b.admit().unwrap().record(false);
        b.admit().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err(), "open: calls are refused without being sent");
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.admit().unwrap().record(false);
        }
        let retry_at = b.admit().err().unwrap();
        clock.advance(Duration::from_secs(29));
        assert!(b.admit().is_err());
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now().as_millis(), retry_at);
        let probe = b.admit().unwrap();
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.record(false);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        clock.advance(Duration::from_secs(30));
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Closed, "the count starts again from zero");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.admit().unwrap().record(false);
        }
        clock.advance(Duration::from_secs(30));
        drop(b.admit().unwrap());
        assert!(b.admit().is_ok(), "a cancelled probe must not wedge the breaker half-open");
    }
}
