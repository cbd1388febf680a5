//! Counters of what authentication did, for the server's metrics: refusals
//! by reason and token reloads. Never a token or fingerprint: only counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a call was refused, as counted by [`AuthStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No `authorization` / `x-authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A token not in the current set (unknown or revoked).
    Unknown,
}

impl RefusalReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RefusalReason; 3] = [
        RefusalReason::Missing,
        RefusalReason::Malformed,
        RefusalReason::Unknown,
    ];

    /// A short name (`missing`, `malformed`, `unknown`) for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Missing => "missing",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Unknown => "unknown",
        }
    }
}

/// Counts kept by a [`TokenStore`](crate::TokenStore) (refusals of its
/// layer) and its [`AuthManager`](crate::AuthManager) (reloads). Lock-free
/// on the request path.
#[derive(Debug)]
pub struct AuthStats {
    refusals: [AtomicU64; 3],
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// When the set was last loaded successfully (first load included).
    last_success: Mutex<Instant>,
}

impl Default for AuthStats {
    fn default() -> Self {
        AuthStats {
            refusals: Default::default(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_success: Mutex::new(Instant::now()),
        }
    }
}

impl AuthStats {
    pub(crate) fn refused(&self, reason: RefusalReason) {
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        } else {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls refused for `reason` so far.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals[reason as usize].load(Ordering::Relaxed)
    }

    /// Successful reloads (after the first load).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Failed reloads (the previous set was kept).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Time since the token set was last loaded successfully.
    pub fn since_last_success(&self) -> Duration {
        self.last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_reload_outcome() {
        let stats = AuthStats::default();
        stats.refused(RefusalReason::Unknown);
        stats.refused(RefusalReason::Unknown);
        stats.refused(RefusalReason::Missing);
        stats.reloaded(false);
        stats.reloaded(true);
        assert_eq!(stats.refusals(RefusalReason::Unknown), 2);
        assert_eq!(stats.refusals(RefusalReason::Missing), 1);
        assert_eq!(stats.refusals(RefusalReason::Malformed), 0);
        assert_eq!((stats.reloads(), stats.reload_failures()), (1, 1));
        assert!(stats.since_last_success() < Duration::from_secs(5));
    }
}
