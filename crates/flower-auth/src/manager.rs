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
    /// Revoke every token when the process receives `SIGUSR2` (default:
    /// yes); see [`AuthManager::revoke_all`].
    pub revoke_all_on_sigusr2: bool,
    /// Fail closed: once the last successful load is older than this, every
    /// token is refused until a reload succeeds (default: none). Only
    /// meaningful with periodic reloads.
    pub max_staleness: Option<Duration>,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            interval: None,
            on_sigusr1: true,
            revoke_all_on_sigusr2: true,
            max_staleness: None,
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

    /// Whether `SIGUSR2` revokes every token.
    pub fn revoke_all_on_sigusr2(mut self, enabled: bool) -> Self {
        self.revoke_all_on_sigusr2 = enabled;
        self
    }

    /// Longest time without a successful load before every token is
    /// refused; `None` or zero: no bound.
    pub fn max_staleness(mut self, max: Option<Duration>) -> Self {
        self.max_staleness = max.filter(|d| !d.is_zero());
        self
    }
}

/// Tokens shorter than this are accepted with a warning (guessable).
pub const MIN_RECOMMENDED_TOKEN_BYTES: usize = 16;

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

#[derive(Debug)]
struct ReloadState {
    /// Consecutive failed reloads (0 when the source is healthy).
    failures: u32,
    /// When a load last succeeded.
    last_success: tokio::time::Instant,
    /// Every token revoked by the operator: periodic reloads do not bring
    /// them back, only an explicit one (`SIGUSR1`, [`AuthManager::reload_now`]).
    revoked_all: bool,
    /// Every token revoked because the set went stale.
    stale: bool,
    /// Short tokens already warned about.
    warned_short: std::collections::HashSet<Fingerprint>,
}

impl ReloadState {
    fn new() -> Self {
        ReloadState {
            failures: 0,
            last_success: tokio::time::Instant::now(),
            revoked_all: false,
            stale: false,
            warned_short: Default::default(),
        }
    }
}

struct Shared {
    store: TokenStore,
    source: Arc<dyn TokenSource>,
    description: String,
    state: tokio::sync::Mutex<ReloadState>,
}

impl Shared {
    /// Loads the source and swaps the set; keeps the old set on failure,
    /// except that a source that loads but is empty revokes every token.
    async fn reload(&self, trigger: Trigger) -> Result<SwapOutcome, AuthError> {
        let mut state = self.state.lock().await;
        let explicit = matches!(trigger, Trigger::Signal | Trigger::Manual);
        let result = self.source.load().await.and_then(|tokens| {
            warn_short_tokens(&tokens, &mut state.warned_short, &self.description);
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
                state.last_success = tokio::time::Instant::now();
                if state.revoked_all && !explicit {
                    tracing::debug!(
                        source = %self.description,
                        "token reload ignored: all tokens revoked until an explicit reload (SIGUSR1)"
                    );
                    return Ok(SwapOutcome::default());
                }
                let outcome = self.store.replace(set);
                if state.revoked_all || state.stale {
                    tracing::warn!(
                        source = %self.description,
                        tokens = outcome.total,
                        "tokens accepted again after a revocation of all tokens"
                    );
                    state.revoked_all = false;
                    state.stale = false;
                }
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
            Err(AuthError::NoTokens { .. }) => {
                // The source answered, and its answer is "no tokens": an
                // explicit revocation of all of them, not an outage.
                state.last_success = tokio::time::Instant::now();
                Ok(self.revoke_all_locked(&mut state, "the token source is empty", false))
            }
            Err(err) => {
                state.failures += 1;
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

    /// Swaps in the empty set: every call is refused and every live stream
    /// closed.
    /// With `sticky` (the operator's revocation), periodic reloads do not
    /// bring tokens back; without (an empty source), the source's next
    /// non-empty answer does.
    fn revoke_all_locked(&self, state: &mut ReloadState, why: &str, sticky: bool) -> SwapOutcome {
        state.revoked_all |= sticky;
        let outcome = self
            .store
            .replace(TokenSet::from_digests(std::iter::empty()));
        let until = if state.revoked_all {
            "the next successful explicit reload (SIGUSR1)"
        } else {
            "the source lists tokens again"
        };
        tracing::warn!(
            source = %self.description,
            revoked = outcome.removed.len(),
            "all tokens revoked ({why}); live streams closed; every call is refused until {until}"
        );
        outcome
    }

    /// Revokes every token when no load has succeeded for `max`.
    async fn check_staleness(&self, max: Duration) {
        let mut state = self.state.lock().await;
        let age = state.last_success.elapsed();
        if age <= max || state.stale || self.store.is_empty() {
            return;
        }
        state.stale = true;
        let outcome = self
            .store
            .replace(TokenSet::from_digests(std::iter::empty()));
        tracing::error!(
            source = %self.description,
            age_secs = age.as_secs(),
            max_staleness_secs = max.as_secs(),
            revoked = outcome.removed.len(),
            "no successful token reload for {age:?}: failing closed, every token refused until a reload succeeds"
        );
    }
}

/// Warns (once per token) about tokens shorter than
/// [`MIN_RECOMMENDED_TOKEN_BYTES`].
fn warn_short_tokens(
    tokens: &[String],
    warned: &mut std::collections::HashSet<Fingerprint>,
    description: &str,
) {
    for token in tokens {
        if token.len() < MIN_RECOMMENDED_TOKEN_BYTES {
            let fp = Fingerprint::of(token);
            if warned.insert(fp) {
                tracing::warn!(
                    source = %description,
                    token = %fp,
                    bytes = token.len(),
                    "token shorter than {MIN_RECOMMENDED_TOKEN_BYTES} bytes: easy to guess; use a long random token"
                );
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
/// once per outage, and the recovery is logged too), but never for longer
/// than [`ReloadOptions::max_staleness`]: then every token is refused until
/// a reload succeeds. A source that loads but lists no token revokes them
/// all; [`AuthManager::revoke_all`] (or `SIGUSR2`) does so on request.
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
        let mut state = ReloadState::new();
        warn_short_tokens(&tokens, &mut state.warned_short, &description);
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
            state: tokio::sync::Mutex::new(state),
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
        if options.revoke_all_on_sigusr2 {
            let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGUSR2])
                .map_err(AuthError::Signal)?;
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                while signals.next().await.is_some() {
                    let mut state = shared.state.lock().await;
                    shared.revoke_all_locked(&mut state, "SIGUSR2", true);
                }
            }));
        }
        if let Some(max) = options.max_staleness.filter(|d| !d.is_zero()) {
            // A separate watchdog: a reload that hangs must not keep a stale
            // set alive either.
            let shared = Arc::clone(&shared);
            let period = (max / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    shared.check_staleness(max).await;
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

    /// Revokes every token now: every call is refused and every live stream
    /// closed. Periodic reloads do not bring the tokens back; the next
    /// successful explicit reload (`SIGUSR1`, [`AuthManager::reload_now`])
    /// does. `SIGUSR2` does the same. (A reload that finds the source
    /// empty, such as an emptied token file, also revokes every token, until
    /// the source lists tokens again.)
    pub async fn revoke_all(&self) -> SwapOutcome {
        let mut state = self.shared.state.lock().await;
        self.shared.revoke_all_locked(&mut state, "requested", true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;

    /// A source whose answer the test sets.
    struct Switch(std::sync::Mutex<Option<Vec<String>>>);

    impl Switch {
        fn set(&self, tokens: Option<&[&str]>) {
            *self.0.lock().unwrap() = tokens.map(|t| t.iter().map(|s| s.to_string()).collect());
        }
    }

    impl TokenSource for Switch {
        fn describe(&self) -> String {
            "test source".into()
        }
        fn load(&self) -> BoxFuture<'_, Result<Vec<String>, AuthError>> {
            let answer = self.0.lock().unwrap().clone();
            Box::pin(async move { answer.ok_or_else(|| AuthError::Config("source down".into())) })
        }
    }

    const TOKEN: &str = "a-token-of-enough-length";

    async fn manager(options: ReloadOptions) -> (Arc<Switch>, AuthManager) {
        let source = Arc::new(Switch(std::sync::Mutex::new(Some(vec![TOKEN.into()]))));
        let options = options.on_sigusr1(false).revoke_all_on_sigusr2(false);
        let manager = AuthManager::start(source.clone(), options).await.unwrap();
        (source, manager)
    }

    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_stale_set_fails_closed_and_recovers() {
        let options = ReloadOptions::new()
            .interval(Some(Duration::from_millis(50)))
            .max_staleness(Some(Duration::from_millis(300)));
        let (source, manager) = manager(options).await;
        let store = manager.store();
        assert!(store.authenticate(TOKEN).is_some());
        source.set(None);
        assert!(
            eventually(|| store.authenticate(TOKEN).is_none()).await,
            "fails closed"
        );
        source.set(Some(&[TOKEN]));
        assert!(
            eventually(|| store.authenticate(TOKEN).is_some()).await,
            "recovers"
        );
    }

    #[tokio::test]
    async fn failures_within_the_bound_keep_the_set() {
        let options = ReloadOptions::new()
            .interval(Some(Duration::from_millis(20)))
            .max_staleness(Some(Duration::from_secs(60)));
        let (source, manager) = manager(options).await;
        source.set(None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(manager.store().authenticate(TOKEN).is_some());
    }

    #[tokio::test]
    async fn revoke_all_holds_until_an_explicit_reload() {
        let options = ReloadOptions::new().interval(Some(Duration::from_millis(20)));
        let (_source, manager) = manager(options).await;
        let store = manager.store();
        let outcome = manager.revoke_all().await;
        assert_eq!(outcome.removed.len(), 1);
        assert!(store.authenticate(TOKEN).is_none());
        // Periodic reloads succeed but do not bring the token back...
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.authenticate(TOKEN).is_none());
        // ... an explicit one does.
        manager.reload_now().await.unwrap();
        assert!(store.authenticate(TOKEN).is_some());
    }

    #[tokio::test]
    async fn an_empty_source_revokes_until_it_lists_tokens_again() {
        let (source, manager) = manager(ReloadOptions::new()).await;
        source.set(Some(&[]));
        let outcome = manager.reload_now().await.unwrap();
        assert_eq!(outcome.total, 0);
        assert!(manager.store().is_empty());
        source.set(Some(&[TOKEN]));
        manager.reload_now().await.unwrap();
        assert!(manager.store().authenticate(TOKEN).is_some());
    }
}
