//! Retry policy (exponential backoff, full jitter, bounds) and its state.
//!
//! The state machine reads no clock: callers pass `now`, so it is tested
//! without sleeping.

use std::time::{Duration, Instant};

use rand::Rng;

/// How the driver retries when the server cannot be reached or goes away.
///
/// Retried: a failed TCP connect, `UNAVAILABLE`, a connection or stream that
/// breaks mid-run (reset, `GOAWAY`, EOF), and a stream the server ends
/// without a `ReconnectIns`. Never retried: authentication failures, TLS
/// failures, other gRPC status codes.
///
/// The delay before retry *n* (1-based) is `min(initial_delay ·
/// multiplier^(n-1), max_delay)`, and with `jitter` a uniformly random
/// duration in `[0, that]` ("full jitter"). The defaults are those of Python
/// Flower's `RetryInvoker` for its other transports (`exponential(max_delay=20)`
/// with `full_jitter`, no bound on tries or time); Python's grpc-bidi
/// transport itself never retries.
///
/// A streak of failures ends (and the counters reset) once a session has
/// completed a round trip: the server sent an instruction after taking one
/// of our replies. Any server message alone does not, so a server that
/// answers each join with one message and a dropped stream still exhausts
/// `max_retries`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Delay before the first retry. Default: 1 s.
    pub initial_delay: Duration,
    /// Growth factor of the delay. Default: 2.
    pub multiplier: f64,
    /// Upper bound of one delay. Default: 20 s.
    pub max_delay: Duration,
    /// Full jitter (uniform in `[0, delay]`). Default: on.
    pub jitter: bool,
    /// Retries after the first failure of a streak; `None` is unbounded,
    /// `Some(0)` never retries. Default: `None`.
    pub max_retries: Option<u32>,
    /// Give up once this long has passed since the first failure of a
    /// streak; `None` is unbounded. Default: `None`.
    pub max_wait_time: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(20),
            jitter: true,
            max_retries: None,
            max_wait_time: None,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (Python grpc-bidi's behaviour).
    pub fn never() -> Self {
        Self {
            max_retries: Some(0),
            ..Self::default()
        }
    }

    /// The un-jittered delay before retry `n` (1-based).
    pub(crate) fn base_delay(&self, n: u32) -> Duration {
        let max = self.max_delay.as_secs_f64();
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let secs = if secs.is_finite() { secs.min(max) } else { max };
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Sleep this long, then try again.
    Retry(Duration),
    /// Stop: `attempts` consecutive failures over `elapsed`.
    GiveUp { attempts: u32, elapsed: Duration },
}

/// The consecutive-failure streak.
#[derive(Debug)]
pub(crate) struct RetryState {
    policy: RetryPolicy,
    failures: u32,
    streak_start: Option<Instant>,
}

impl RetryState {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            streak_start: None,
        }
    }

    /// The server answered: the next failure starts a new streak.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.streak_start = None;
    }

    /// Records one failure at `now` and decides what comes next.
    pub(crate) fn on_failure(&mut self, now: Instant, rng: &mut impl Rng) -> Decision {
        let start = *self.streak_start.get_or_insert(now);
        self.failures = self.failures.saturating_add(1);
        let elapsed = now.saturating_duration_since(start);
        let retries_done = self.failures - 1;
        let out_of_tries = self
            .policy
            .max_retries
            .is_some_and(|max| retries_done >= max);
        let out_of_time = self.policy.max_wait_time.is_some_and(|max| elapsed >= max);
        if out_of_tries || out_of_time {
            return Decision::GiveUp {
                attempts: self.failures,
                elapsed,
            };
        }
        let mut delay = self.policy.base_delay(self.failures);
        if self.policy.jitter && !delay.is_zero() {
            delay = Duration::from_secs_f64(rng.gen_range(0.0..=delay.as_secs_f64()));
        }
        if let Some(max) = self.policy.max_wait_time {
            delay = delay.min(max.saturating_sub(elapsed));
        }
        Decision::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_max_delay() {
        let p = no_jitter();
        let secs: Vec<u64> = (1..=7).map(|n| p.base_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(20));
    }

    #[test]
    fn max_retries_bounds_the_streak() {
        let mut s = RetryState::new(RetryPolicy {
            max_retries: Some(2),
            ..no_jitter()
        });
        let t0 = Instant::now();
        let mut rng = StepRng::new(0, 1);
        assert_eq!(
            s.on_failure(t0, &mut rng),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            s.on_failure(t0, &mut rng),
            Decision::Retry(Duration::from_secs(2))
        );
        assert!(matches!(
            s.on_failure(t0, &mut rng),
            Decision::GiveUp { attempts: 3, .. }
        ));
        s.reset();
        assert_eq!(
            s.on_failure(t0, &mut rng),
            Decision::Retry(Duration::from_secs(1))
        );
    }

    #[test]
    fn max_wait_time_bounds_and_clamps() {
        let mut s = RetryState::new(RetryPolicy {
            max_wait_time: Some(Duration::from_secs(5)),
            ..no_jitter()
        });
        let t0 = Instant::now();
        let mut rng = StepRng::new(0, 1);
        assert_eq!(
            s.on_failure(t0, &mut rng),
            Decision::Retry(Duration::from_secs(1))
        );
        let t = t0 + Duration::from_secs(4);
        // base delay 2 s, clamped to the 1 s that remain
        assert_eq!(
            s.on_failure(t, &mut rng),
            Decision::Retry(Duration::from_secs(1))
        );
        let t = t0 + Duration::from_secs(5);
        assert_eq!(
            s.on_failure(t, &mut rng),
            Decision::GiveUp {
                attempts: 3,
                elapsed: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn never_gives_up_immediately() {
        let mut s = RetryState::new(RetryPolicy::never());
        let mut rng = StepRng::new(0, 1);
        assert!(matches!(
            s.on_failure(Instant::now(), &mut rng),
            Decision::GiveUp { attempts: 1, .. }
        ));
    }

    #[test]
    fn jitter_stays_within_the_delay() {
        let mut s = RetryState::new(RetryPolicy::default());
        let mut rng = rand::thread_rng();
        let t0 = Instant::now();
        for n in 1..=10 {
            let Decision::Retry(d) = s.on_failure(t0, &mut rng) else {
                panic!("unbounded policy gave up");
            };
            assert!(d <= RetryPolicy::default().base_delay(n));
        }
    }
}
