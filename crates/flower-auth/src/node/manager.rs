//! Loading the authorized node keys (file and/or Vault) and keeping them
//! current: on `SIGUSR1`, on an interval, on demand. Mirrors
//! [`AuthManager`](crate::AuthManager) for bearer tokens and reuses its
//! [`ReloadOptions`] and the Vault source ([`VaultTokens`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;

use super::authorized::{AuthorizedKeysFile, AuthorizedNodeKeys, KeySetChange};
use super::error::NodeAuthError;
use super::key::NodePublicKey;
use crate::config::{AuthFlags, TokenSourceConfig};
use crate::error::AuthError;
use crate::manager::ReloadOptions;
use crate::source::TokenSource;
use crate::vault::{deployment_secret_path, VaultConfig, VaultLogin, VaultTokens};

/// Default path, under the Vault mount (or under
/// `users/<sub>/deployments/<ID>/` with a deployment id), of the node keys.
pub const DEFAULT_VAULT_NODE_KEYS_PATH: &str = "node-keys";

/// Where the authorized node keys come from and when they are reloaded.
/// At least one source (file, Vault) is needed; with both, the set is their
/// union.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct NodeKeysConfig {
    /// `--authorized-keys FILE` (default: none).
    pub authorized_keys_file: Option<PathBuf>,
    /// Vault/OpenBao source (default: none). Its `secret_path` is the
    /// node-keys path (see [`node_keys_vault_config`]); each secret listed
    /// there holds one public key (OpenSSH line or PEM) under the `token`
    /// key, read by the same [`VaultTokens`] source as bearer tokens.
    pub vault: Option<VaultConfig>,
    /// Periodic reload interval. `None`: the Vault config's
    /// `refresh_interval` (default 60 s) when Vault is a source, none
    /// otherwise. Zero disables it.
    pub refresh_interval: Option<Duration>,
    /// Reload on `SIGUSR1` (default: yes).
    pub reload_on_sigusr1: bool,
}

impl Default for NodeKeysConfig {
    fn default() -> Self {
        Self {
            authorized_keys_file: None,
            vault: None,
            refresh_interval: None,
            reload_on_sigusr1: true,
        }
    }
}

impl NodeKeysConfig {
    /// No source yet; reload on `SIGUSR1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads keys from this file (see
    /// [`parse_authorized_keys`](super::parse_authorized_keys)).
    pub fn authorized_keys_file(mut self, path: Option<impl Into<PathBuf>>) -> Self {
        self.authorized_keys_file = path.map(Into::into);
        self
    }

    /// Reads keys from Vault (a config whose `secret_path` is the
    /// node-keys path, e.g. from [`node_keys_vault_config`]).
    pub fn vault(mut self, vault: Option<VaultConfig>) -> Self {
        self.vault = vault;
        self
    }

    /// Periodic reload interval, overriding Vault's own; zero disables it.
    pub fn refresh_interval(mut self, interval: Option<Duration>) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Whether `SIGUSR1` reloads the keys (default: yes).
    pub fn reload_on_sigusr1(mut self, enabled: bool) -> Self {
        self.reload_on_sigusr1 = enabled;
        self
    }

    /// The reload options this configuration means.
    pub fn reload_options(&self) -> ReloadOptions {
        let interval = self
            .refresh_interval
            .or_else(|| self.vault.as_ref().and_then(|v| v.refresh_interval));
        ReloadOptions::new()
            .interval(interval)
            .on_sigusr1(self.reload_on_sigusr1)
    }

    /// The configuration of the server flags `--authorized-keys FILE` and
    /// `--vault-node-keys-path PATH`, the latter logging in to Vault with
    /// the same options as bearer tokens (`flags`: `--vault-addr`,
    /// `--vault-token` / `--oidc-access-token`, `--vault-mount`,
    /// `--deployment-id`, ...). `Ok(None)` when neither is given.
    ///
    /// # Errors
    /// [`NodeAuthError::Config`] when `--vault-node-keys-path` is given
    /// without `--vault-addr`, or the Vault options are incomplete.
    pub fn from_flags(
        flags: &AuthFlags,
        authorized_keys: Option<PathBuf>,
        vault_node_keys_path: Option<&str>,
    ) -> Result<Option<Self>, NodeAuthError> {
        let vault = match vault_node_keys_path {
            None => None,
            Some(path) => {
                if flags.vault_addr.is_none() {
                    return Err(NodeAuthError::Config(
                        "--vault-node-keys-path needs --vault-addr and a Vault login".into(),
                    ));
                }
                // The bearer-token mapping, with Vault as the only source.
                let vault_only = AuthFlags {
                    tokens: Vec::new(),
                    token_file: None,
                    ..flags.clone()
                };
                let base = match vault_only.into_config()?.map(|c| c.source) {
                    Some(TokenSourceConfig::Vault(v)) => v,
                    _ => {
                        return Err(NodeAuthError::Config(
                            "the Vault options do not describe a Vault source".into(),
                        ))
                    }
                };
                Some(node_keys_vault_config(&base, path)?)
            }
        };
        if authorized_keys.is_none() && vault.is_none() {
            return Ok(None);
        }
        Ok(Some(
            Self::new()
                .authorized_keys_file(authorized_keys)
                .vault(vault),
        ))
    }
}

/// The Vault configuration of the node keys: `base` (the bearer-token
/// Vault configuration: address, login, mount, CA, intervals) with the
/// secret path set to `path`, or, when `base` has a deployment id, to
/// `users/<sub>/deployments/<ID>/<path>`. An empty `path` means
/// [`DEFAULT_VAULT_NODE_KEYS_PATH`].
///
/// # Errors
/// [`NodeAuthError::Source`] when the deployment path cannot be built (no
/// OIDC token, unreadable `sub`, bad deployment id).
pub fn node_keys_vault_config(
    base: &VaultConfig,
    path: &str,
) -> Result<VaultConfig, NodeAuthError> {
    let path = match path.trim().trim_matches('/') {
        "" => DEFAULT_VAULT_NODE_KEYS_PATH,
        p => p,
    };
    let mut config = base.clone();
    if let Some(id) = config.deployment_id.take() {
        let VaultLogin::Oidc { access_token, .. } = &config.login else {
            return Err(AuthError::Config(
                "a deployment id needs an OIDC access token (its `sub` claim names the user)"
                    .into(),
            )
            .into());
        };
        // `users/<sub>/deployments/<ID>/federated`, validated; swap the leaf.
        let tokens_path = deployment_secret_path(access_token.expose(), &id)?;
        let prefix = tokens_path
            .strip_suffix("federated")
            .unwrap_or(&tokens_path);
        config.secret_path = format!("{prefix}{path}");
    } else {
        config.secret_path = path.to_owned();
    }
    Ok(config)
}

/// One source of keys.
enum KeySource {
    File(AuthorizedKeysFile),
    Vault(VaultTokens),
}

impl KeySource {
    fn describe(&self) -> String {
        match self {
            Self::File(file) => file.describe(),
            Self::Vault(vault) => format!("node keys in {}", vault.describe()),
        }
    }

    async fn load(&self) -> Result<Vec<NodePublicKey>, NodeAuthError> {
        match self {
            Self::File(file) => file.load().await,
            Self::Vault(vault) => {
                let values = vault.load().await.map_err(|e| match e {
                    AuthError::NoTokens { .. } => NodeAuthError::NoKeys {
                        source_description: self.describe(),
                    },
                    other => NodeAuthError::Source(other),
                })?;
                values
                    .iter()
                    .enumerate()
                    .map(|(i, value)| {
                        NodePublicKey::parse_any(value).map_err(|e| {
                            NodeAuthError::AuthorizedKeysEntry {
                                origin: self.describe(),
                                line: i + 1,
                                source: Box::new(e),
                            }
                        })
                    })
                    .collect()
            }
        }
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

/// Per-source reload state.
struct SourceState {
    source: KeySource,
    description: String,
    /// Keys of the last successful load (kept while the source fails).
    last_good: Vec<NodePublicKey>,
    /// Consecutive failed loads (0 when healthy).
    failures: u32,
}

struct Shared {
    keys: AuthorizedNodeKeys,
    description: String,
    sources: tokio::sync::Mutex<Vec<SourceState>>,
    /// Reload outcomes, for metrics (refusal counts stay zero here).
    stats: crate::AuthStats,
}

impl Shared {
    /// Loads every source; a failing source keeps its last good keys.
    /// Swaps in the union. Returns the change, or the first source error
    /// (after applying the other sources' changes).
    async fn reload(&self, trigger: Trigger) -> Result<KeySetChange, NodeAuthError> {
        let mut sources = self.sources.lock().await;
        let mut first_error = None;
        for state in sources.iter_mut() {
            match state.source.load().await {
                Ok(keys) => {
                    if state.failures > 0 {
                        tracing::info!(
                            source = %state.description,
                            failed_attempts = state.failures,
                            keys = keys.len(),
                            "node key source recovered; node key reload works again"
                        );
                        state.failures = 0;
                    }
                    state.last_good = keys;
                }
                Err(err) => {
                    state.failures += 1;
                    let explicit = matches!(trigger, Trigger::Signal | Trigger::Manual);
                    if state.failures == 1 || explicit {
                        // Once per outage for periodic reloads; every time
                        // for an explicit request (the operator waits).
                        tracing::warn!(
                            source = %state.description,
                            trigger = trigger.as_str(),
                            error = %err,
                            kept_keys = state.last_good.len(),
                            "node key reload failed; keeping this source's previous keys"
                        );
                    } else {
                        tracing::debug!(
                            source = %state.description,
                            error = %err,
                            failed_attempts = state.failures,
                            "node key reload still failing"
                        );
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        let union: Vec<NodePublicKey> = sources
            .iter()
            .flat_map(|s| s.last_good.iter().cloned())
            .collect();
        drop(sources);
        let change = self.keys.replace(union);
        if change.added.is_empty() && change.removed.is_empty() {
            tracing::debug!(
                source = %self.description,
                trigger = trigger.as_str(),
                keys = change.total,
                "node key reload: no change"
            );
        } else {
            tracing::info!(
                source = %self.description,
                trigger = trigger.as_str(),
                keys = change.total,
                added = %KeyList(&change.added),
                removed = %KeyList(&change.removed),
                "authorized node keys reloaded"
            );
        }
        for key in &change.removed {
            tracing::info!(
                node_key = %key.fingerprint(),
                "node key no longer authorized; its node is to be deactivated"
            );
        }
        self.stats.reloaded(first_error.is_none());
        match first_error {
            Some(err) => Err(err),
            None => Ok(change),
        }
    }
}

/// Fingerprints, `[SHA256:..,SHA256:..]`.
struct KeyList<'a>(&'a [NodePublicKey]);

impl fmt::Display for KeyList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(key.fingerprint())?;
        }
        f.write_str("]")
    }
}

/// Aborts the background tasks when the last [`NodeKeyManager`] clone goes.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Owns the node-key sources and keeps an [`AuthorizedNodeKeys`] in step
/// with them.
///
/// [`NodeKeyManager::start`] loads every source once (any failure is
/// fatal), then reloads on `SIGUSR1`, on the interval and on
/// [`NodeKeyManager::reload_now`]. A failing source keeps its last good
/// keys (and is logged once per outage, every time for an explicit reload);
/// keys that disappear are removed, and reported through
/// [`AuthorizedNodeKeys::revocation`] and
/// [`AuthorizedNodeKeys::subscribe_removals`].
///
/// Cloneable; the background tasks stop when the last clone is dropped or
/// [`NodeKeyManager::shutdown`] is called.
#[derive(Clone)]
pub struct NodeKeyManager {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

impl NodeKeyManager {
    /// Connects the sources of `config` (logging in to Vault), loads them
    /// once and starts the reload triggers. Must be called inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`NodeAuthError::Config`] without any source; otherwise the first
    /// load's error (unreadable file, bad entry, no keys, Vault refusing
    /// the login, ...), or [`NodeAuthError::Signal`].
    pub async fn start(config: &NodeKeysConfig) -> Result<Self, NodeAuthError> {
        let mut sources = Vec::new();
        if let Some(path) = &config.authorized_keys_file {
            sources.push(KeySource::File(AuthorizedKeysFile::new(path.clone())));
        }
        if let Some(vault) = &config.vault {
            sources.push(KeySource::Vault(VaultTokens::connect(vault.clone()).await?));
        }
        if sources.is_empty() {
            return Err(NodeAuthError::Config(
                "no node key source given (authorized-keys file or Vault path)".into(),
            ));
        }
        let mut states = Vec::new();
        for source in sources {
            let description = source.describe();
            let keys = source.load().await?;
            states.push(SourceState {
                source,
                description,
                last_good: keys,
                failures: 0,
            });
        }
        let description = states
            .iter()
            .map(|s| s.description.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        let keys = AuthorizedNodeKeys::new(states.iter().flat_map(|s| s.last_good.iter().cloned()));
        tracing::info!(
            source = %description,
            keys = keys.len(),
            "SuperNode authentication: authorized node keys loaded"
        );
        tracing::debug!(keys = ?keys, "authorized node key fingerprints");
        let shared = Arc::new(Shared {
            keys,
            description,
            sources: tokio::sync::Mutex::new(states),
            stats: crate::AuthStats::default(),
        });

        let options = config.reload_options();
        let mut tasks = Vec::new();
        if options.on_sigusr1 {
            let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGUSR1])
                .map_err(NodeAuthError::Signal)?;
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                while signals.next().await.is_some() {
                    tracing::info!(source = %shared.description, "SIGUSR1: reloading node keys");
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

    /// The live set the manager keeps up to date.
    #[must_use]
    pub fn keys(&self) -> AuthorizedNodeKeys {
        self.shared.keys.clone()
    }

    /// Log-safe description of the sources.
    #[must_use]
    pub fn source_description(&self) -> &str {
        &self.shared.description
    }

    /// Reload outcomes and the time since the last successful one (a
    /// reload with any failing source counts as failed).
    #[must_use]
    pub fn stats(&self) -> &crate::AuthStats {
        &self.shared.stats
    }

    /// Reloads now (as `SIGUSR1` would) and waits for the result.
    ///
    /// # Errors
    /// The first failing source's error; that source's previous keys are
    /// kept, the other sources' changes are applied.
    pub async fn reload_now(&self) -> Result<KeySetChange, NodeAuthError> {
        self.shared.reload(Trigger::Manual).await
    }

    /// Stops the background reload tasks (of every clone). The set keeps
    /// its current keys.
    pub fn shutdown(&self) {
        for task in &self.tasks.0 {
            task.abort();
        }
    }
}

impl fmt::Debug for NodeKeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeyManager")
            .field("source", &self.shared.description)
            .field("keys", &self.shared.keys.len())
            .finish()
    }
}
