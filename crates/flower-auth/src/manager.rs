//! Loading tokens at start-up and reloading them: on `SIGUSR1`, on an
//! interval, or on demand.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::error::AuthError;
use crate::layer::AuthLayer;
use crate::secret::Fingerprint;
use crate::source::TokenSource;
use crate::token_set::{SwapOutcome, TokenSet, TokenStore};

/// When the [`AuthManager`] reloads its source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct ReloadOptions {
    /// Periodic reload interval (default: none).
    pub interval: Option<Duration>,
    /// Reload when the process receives `SIGUSR1` (default: yes).
    pub on_sigusr1: bool,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            interval: None,
            on_sigusr1: true,
        }
    }
}

impl ReloadOptions {
    /// Defaults: no interval, reload on `SIGUSR1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Periodic reload interval; `None` or zero disables it.
    pub fn interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Whether `SIGUSR1` triggers a reload.
    pub fn on_sigusr1(mut self, enabled: bool) -> Self {
        self.on_sigusr1 = enabled;
        self
    }
}

/// What started a reload (affects logging only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    Interval,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "SIGUSR1",
            Self::Interval => "interval",
            Self::Manual => "request",
        }
    }
}

#[derive(Debug, Default)]
struct ReloadState {
    /// Consecutive failed reloads (0 when the source is healthy).
    failures: u32,
}

struct Shared {
    store: TokenStore,
    source: Arc<dyn TokenSource>,
    description: String,
    state: tokio::sync::Mutex<ReloadState>,
}

impl Shared {
    /// Loads the source and swaps the set; keeps the old set on failure.
    async fn reload(&self, trigger: Trigger) -> Result<SwapOutcome, AuthError> {
        let mut state = self.state.lock().await;
        let result = self.source.load().await.and_then(|tokens| {
            let set = build_set(&tokens, &self.description);
            if set.is_empty() {
                Err(AuthError::NoTokens {
                    source_description: self.description.clone(),
                })
            } else {
                Ok(set)
            }
        });
        self.store.stats().reloaded(result.is_ok());
        match result {
            Ok(set) => {
                let outcome = self.store.replace(set);
                if state.failures > 0 {
                    tracing::info!(
                        source = %self.description,
                        failed_attempts = state.failures,
                        tokens = outcome.total,
                        "token source recovered; token reload works again"
                    );
                    state.failures = 0;
                }
                if outcome.added.is_empty() && outcome.removed.is_empty() {
                    tracing::debug!(
                        source = %self.description,
                        trigger = trigger.as_str(),
                        tokens = outcome.total,
                        "token reload: no change"
                    );
                } else {
                    tracing::info!(
                        source = %self.description,
                        trigger = trigger.as_str(),
                        tokens = outcome.total,
                        added = %FingerprintList(&outcome.added),
                        removed = %FingerprintList(&outcome.removed),
                        "token set reloaded"
                    );
                }
                for fp in &outcome.removed {
                    tracing::info!(token = %fp, "token revoked; closing its live streams");
                }
                Ok(outcome)
            }
            Err(err) => {
                state.failures += 1;
                let explicit = matches!(trigger, Trigger::Signal | Trigger::Manual);
                if state.failures == 1 || explicit {
                    // Once per outage for periodic reloads; every time for an
                    // explicit request (the operator is waiting for an answer).
                    tracing::warn!(
                        source = %self.description,
                        trigger = trigger.as_str(),
                        error = %err,
                        kept_tokens = self.store.len(),
                        "token reload failed; keeping the previous token set"
                    );
                } else {
                    tracing::debug!(
                        source = %self.description,
                        error = %err,
                        failed_attempts = state.failures,
                        "token reload still failing"
                    );
                }
                Err(err)
            }
        }
    }
}

fn build_set(tokens: &[String], description: &str) -> TokenSet {
    TokenSet::from_tokens_lenient(tokens, |fp, reason| {
        tracing::warn!(
            source = %description,
            token = %fp,
            "ignoring a token that {reason}"
        );
    })
}

struct FingerprintList<'a>(&'a [Fingerprint]);

impl fmt::Display for FingerprintList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, fp) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{fp}")?;
        }
        f.write_str("]")
    }
}

/// Aborts the background tasks when the last [`AuthManager`] clone goes.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Owns a [`TokenSource`] and keeps a [`TokenStore`] in step with it.
///
/// [`AuthManager::start`] loads the source once (a failure is fatal), then
/// reloads it on `SIGUSR1`, on an optional interval and on
/// [`AuthManager::reload_now`]. A reload swaps the set atomically and
/// revokes removed tokens (their live streams are told through
/// [`AuthenticatedPeer`](crate::AuthenticatedPeer)); a failed reload keeps
/// the previous set and says why in the log (periodic failures are logged
/// once per outage, and the recovery is logged too).
///
/// Cloneable; the background tasks stop when the last clone is dropped or
/// [`AuthManager::shutdown`] is called.
#[derive(Clone)]
pub struct AuthManager {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

impl AuthManager {
    /// Loads `source` once and starts the reload triggers of `options`.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// The first load's error (missing file, Vault unreachable, no tokens,
    /// ...), or [`AuthError::Signal`] when the `SIGUSR1` handler cannot be
    /// installed.
    pub async fn start(
        source: Arc<dyn TokenSource>,
        options: ReloadOptions,
    ) -> Result<Self, AuthError> {
        let description = source.describe();
        let tokens = source.load().await?;
        let set = build_set(&tokens, &description);
        drop(tokens);
        if set.is_empty() {
            return Err(AuthError::NoTokens {
                source_description: description,
            });
        }
        tracing::info!(
            source = %description,
            tokens = set.len(),
            "authentication enabled"
        );
        tracing::debug!(
            fingerprints = %FingerprintList(&set.fingerprints()),
            "accepted token fingerprints"
        );
        let shared = Arc::new(Shared {
            store: TokenStore::new(set),
            source,
            description,
            state: tokio::sync::Mutex::new(ReloadState::default()),
        });

        let mut tasks = Vec::new();
        if options.on_sigusr1 {
            let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGUSR1])
                .map_err(AuthError::Signal)?;
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                while signals.next().await.is_some() {
                    tracing::info!(source = %shared.description, "SIGUSR1: reloading tokens");
                    let _ = shared.reload(Trigger::Signal).await;
                }
            }));
        }
        if let Some(period) = options.interval.filter(|d| !d.is_zero()) {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let _ = shared.reload(Trigger::Interval).await;
                }
            }));
        }
        Ok(Self {
            shared,
            tasks: Arc::new(Tasks(tasks)),
        })
    }

    /// The store the manager keeps up to date.
    #[must_use]
    pub fn store(&self) -> TokenStore {
        self.shared.store.clone()
    }

    /// An [`AuthLayer`] over the managed store, for
    /// `tonic::transport::Server::builder().layer(..)`.
    #[must_use]
    pub fn layer(&self) -> AuthLayer {
        AuthLayer::new(self.store())
    }

    /// Log-safe description of the source.
    #[must_use]
    pub fn source_description(&self) -> &str {
        &self.shared.description
    }

    /// Reloads now (as `SIGUSR1` would) and waits for the result.
    ///
    /// # Errors
    /// The source's error; the previous set is then kept.
    pub async fn reload_now(&self) -> Result<SwapOutcome, AuthError> {
        self.shared.reload(Trigger::Manual).await
    }

    /// Stops the background reload tasks (of every clone). The store keeps
    /// its current set.
    pub fn shutdown(&self) {
        for task in &self.tasks.0 {
            task.abort();
        }
    }
}

impl fmt::Debug for AuthManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthManager")
            .field("source", &self.shared.description)
            .field("tokens", &self.shared.store.len())
            .finish()
    }
}
