//! Bounded logging of refusals: a peer must not be able to fill the disk by
//! being refused (20,000 refused calls used to write 2.9 MB of WARN lines).
//!
//! A [`LogLimiter`] lets the first few events of each interval through and
//! counts the rest; the next event logged says how many were not.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events per interval and admits at most `burst` of them to the log.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    burst: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// At most `burst` events logged per `interval`.
    #[must_use]
    pub const fn new(interval: Duration, burst: u32) -> Self {
        LogLimiter {
            interval,
            burst,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Records one event. `Some(n)` when it may be logged, `n` being the
    /// number of events not logged since the last one that was (report it
    /// with the line); `None` when it is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.burst {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }

    /// The interval the burst applies to.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Longest peer-chosen string (a request path, a header) put into a log line.
pub const MAX_LOGGED_CHARS: usize = 64;

/// `s` cut to [`MAX_LOGGED_CHARS`] characters (marked with `…`), with control
/// characters escaped: peer-chosen text can neither flood nor forge lines.
#[must_use]
pub fn truncate_for_log(s: &str) -> Cow<'_, str> {
    let clean = s.chars().all(|c| !c.is_control()) && s.chars().count() <= MAX_LOGGED_CHARS;
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out: String = s
        .chars()
        .take(MAX_LOGGED_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().count() > MAX_LOGGED_CHARS {
        out.push('…');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_then_a_count() {
        let limiter = LogLimiter::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at(t0), Some(0));
        assert_eq!(limiter.admit_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(limiter.admit_at(t0 + Duration::from_secs(1)), None);
        }
        // The next window's first line reports what was left out.
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn peer_text_is_cut_and_escaped() {
        assert_eq!(truncate_for_log("/a/b"), "/a/b");
        let long = "x".repeat(10_000);
        let cut = truncate_for_log(&long);
        assert_eq!(cut.chars().count(), MAX_LOGGED_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_for_log("a\nb"), "a\\nb");
    }
}
