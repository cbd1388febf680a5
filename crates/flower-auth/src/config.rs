//! One configuration struct for the server's authentication, and the
//! one-call setup [`token_store_from`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::AuthError;
use crate::manager::{AuthManager, ReloadOptions};
use crate::secret::SecretString;
use crate::source::{FileTokens, StaticTokens, TokenSource};
use crate::token_set::TokenStore;
use crate::vault::{VaultConfig, VaultTokens};

/// Where the server's accepted tokens come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenSourceConfig {
    /// A fixed list (`--token`, repeatable).
    Static(Vec<SecretString>),
    /// A file, one token per line (`--token-file`).
    File(PathBuf),
    /// Vault (`--vault-addr` and friends).
    Vault(VaultConfig),
}

/// The server's authentication settings. Build with [`AuthConfig::builder`],
/// or straight from the CLI flags with [`AuthFlags::into_config`]:
///
/// | flag | builder call |
/// | --- | --- |
/// | `--token T` (repeatable) | [`AuthConfigBuilder::token`] / [`AuthConfigBuilder::tokens`] |
/// | `--token-file F` | [`AuthConfigBuilder::token_file`] |
/// | `--vault-addr`, `--vault-token`, `--oidc-access-token`, `--vault-auth-path`, `--vault-role`, `--vault-mount`, `--vault-secret-path`, `--deployment-id`, `--vault-refresh-interval` | [`AuthConfigBuilder::vault`] with a [`VaultConfig`] |
/// | (reload interval for a token file) | [`AuthConfigBuilder::refresh_interval`] |
///
/// `--allow-insecure-auth` is not part of it: the server checks its transport
/// with [`ensure_secure_transport`](crate::ensure_secure_transport).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The token source.
    pub source: TokenSourceConfig,
    /// Periodic reload interval. `None`: Vault's
    /// [`VaultConfig::refresh_interval`] (default 60 s) for Vault, no
    /// periodic reload otherwise.
    pub refresh_interval: Option<Duration>,
    /// Reload on `SIGUSR1` (default: yes).
    pub reload_on_sigusr1: bool,
    /// Fail closed once no reload has succeeded for this long (see
    /// [`AuthConfig::effective_max_staleness`]).
    pub max_staleness: Option<Duration>,
}

/// Default bound on the age of the token set when tokens are reloaded
/// periodically (Vault): one hour without a successful reload and every
/// token is refused until one succeeds.
pub const DEFAULT_MAX_TOKEN_STALENESS: Duration = Duration::from_secs(3600);

impl AuthConfig {
    /// An empty builder (no source yet).
    pub fn builder() -> AuthConfigBuilder {
        AuthConfigBuilder::default()
    }

    /// Staleness bound actually used: the configured one (zero: none), else
    /// [`DEFAULT_MAX_TOKEN_STALENESS`] when tokens are reloaded periodically,
    /// else none (a set loaded once, or on `SIGUSR1` only, cannot go stale).
    #[must_use]
    pub fn effective_max_staleness(&self) -> Option<Duration> {
        match self.max_staleness {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => self
                .effective_refresh_interval()
                .map(|_| DEFAULT_MAX_TOKEN_STALENESS),
        }
    }

    /// Reload interval actually used (see [`AuthConfig::refresh_interval`]).
    #[must_use]
    pub fn effective_refresh_interval(&self) -> Option<Duration> {
        let interval = match (&self.refresh_interval, &self.source) {
            (Some(d), _) => Some(*d),
            (None, TokenSourceConfig::Vault(v)) => v.refresh_interval,
            (None, _) => None,
        };
        interval.filter(|d| !d.is_zero())
    }
}

/// Builder of [`AuthConfig`]. Exactly one source (tokens, file or Vault)
/// must be given, as in ai4flwr where tokens and file are exclusive.
#[derive(Debug, Clone)]
#[must_use]
pub struct AuthConfigBuilder {
    tokens: Vec<SecretString>,
    token_file: Option<PathBuf>,
    vault: Option<VaultConfig>,
    refresh_interval: Option<Duration>,
    reload_on_sigusr1: bool,
    max_staleness: Option<Duration>,
}

impl Default for AuthConfigBuilder {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            token_file: None,
            vault: None,
            refresh_interval: None,
            max_staleness: None,
            reload_on_sigusr1: true,
        }
    }
}

impl AuthConfigBuilder {
    /// Adds one accepted token.
    pub fn token(mut self, token: impl Into<SecretString>) -> Self {
        self.tokens.push(token.into());
        self
    }

    /// Adds accepted tokens.
    pub fn tokens<I, S>(mut self, tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<SecretString>,
    {
        self.tokens.extend(tokens.into_iter().map(Into::into));
        self
    }

    /// Reads tokens from this file (default: none).
    pub fn token_file(mut self, path: Option<impl Into<PathBuf>>) -> Self {
        self.token_file = path.map(Into::into);
        self
    }

    /// Reads tokens from Vault (default: none).
    pub fn vault(mut self, vault: Option<VaultConfig>) -> Self {
        self.vault = vault;
        self
    }

    /// Periodic reload interval, overriding Vault's own (default: none for
    /// static tokens and files, 60 s for Vault). Zero disables it.
    pub fn refresh_interval(mut self, interval: Option<Duration>) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Longest time without a successful reload before every token is
    /// refused (`Some(0)`: never; `None`: the default, see
    /// [`AuthConfig::effective_max_staleness`]).
    pub fn max_staleness(mut self, max: Option<Duration>) -> Self {
        self.max_staleness = max;
        self
    }

    /// Whether `SIGUSR1` reloads the tokens (default: yes).
    pub fn reload_on_sigusr1(mut self, enabled: bool) -> Self {
        self.reload_on_sigusr1 = enabled;
        self
    }

    /// Builds the configuration; `Ok(None)` when no source was given
    /// (authentication off).
    ///
    /// # Errors
    /// [`AuthError::Config`] when more than one source is given, or the
    /// token list contains only blank tokens.
    pub fn build_optional(self) -> Result<Option<AuthConfig>, AuthError> {
        let given = usize::from(!self.tokens.is_empty())
            + usize::from(self.token_file.is_some())
            + usize::from(self.vault.is_some());
        if given > 1 {
            return Err(AuthError::Config(
                "tokens, a token file and Vault are mutually exclusive; give only one".into(),
            ));
        }
        let source = if let Some(path) = self.token_file {
            TokenSourceConfig::File(path)
        } else if let Some(vault) = self.vault {
            TokenSourceConfig::Vault(vault)
        } else if !self.tokens.is_empty() {
            if self.tokens.iter().all(|t| t.expose().trim().is_empty()) {
                return Err(AuthError::Config("every given token is blank".into()));
            }
            TokenSourceConfig::Static(self.tokens)
        } else {
            return Ok(None);
        };
        Ok(Some(AuthConfig {
            source,
            refresh_interval: self.refresh_interval,
            reload_on_sigusr1: self.reload_on_sigusr1,
            max_staleness: self.max_staleness,
        }))
    }

    /// Builds the configuration.
    ///
    /// # Errors
    /// As [`AuthConfigBuilder::build_optional`], and [`AuthError::Config`]
    /// when no source was given.
    pub fn build(self) -> Result<AuthConfig, AuthError> {
        self.build_optional()?.ok_or_else(|| {
            AuthError::Config("no token source given (tokens, token file or Vault)".into())
        })
    }
}

/// The server's authentication flags, as parsed by its CLI (all optional),
/// turned into an [`AuthConfig`] by [`AuthFlags::into_config`].
///
/// Vault options are only looked at when `vault_addr` is set, so that a
/// `VAULT_TOKEN` or `OIDC_ACCESS_TOKEN` lying in the environment does not
/// matter to a server configured with `--token` or `--token-file`.
#[derive(Debug, Clone, Default)]
pub struct AuthFlags {
    /// `--token` (repeatable).
    pub tokens: Vec<SecretString>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--vault-addr`.
    pub vault_addr: Option<String>,
    /// `--vault-token` / `VAULT_TOKEN`.
    pub vault_token: Option<SecretString>,
    /// `--oidc-access-token` / `OIDC_ACCESS_TOKEN`.
    pub oidc_access_token: Option<SecretString>,
    /// `--vault-auth-path` (default `jwt`).
    pub vault_auth_path: Option<String>,
    /// `--vault-role`.
    pub vault_role: Option<String>,
    /// `--vault-mount` (default `secrets`).
    pub vault_mount: Option<String>,
    /// `--vault-secret-path` (default `federated`).
    pub vault_secret_path: Option<String>,
    /// `--deployment-id`.
    pub deployment_id: Option<String>,
    /// `--vault-refresh-interval` (default 60 s; zero disables it).
    pub vault_refresh_interval: Option<Duration>,
    /// `--vault-ca-cert` (extra CA for an `https` Vault).
    pub vault_ca_cert: Option<PathBuf>,
    /// `--max-token-staleness` (zero: no bound; default
    /// [`DEFAULT_MAX_TOKEN_STALENESS`] with periodic reloads).
    pub max_token_staleness: Option<Duration>,
}

impl AuthFlags {
    /// The configuration these flags describe; `Ok(None)` when none of
    /// `--token`, `--token-file`, `--vault-addr` was given (authentication
    /// off).
    ///
    /// # Errors
    /// [`AuthError::Config`] for conflicting sources or an incomplete Vault
    /// login, [`AuthError::InvalidOidcToken`] when a deployment id is given
    /// and the OIDC token's `sub` cannot be read.
    pub fn into_config(self) -> Result<Option<AuthConfig>, AuthError> {
        let vault = match self.vault_addr {
            None => None,
            Some(addr) => {
                let mut b = VaultConfig::builder(addr);
                if let Some(t) = self.vault_token.filter(|t| !t.is_empty()) {
                    b = b.token(t);
                }
                if let Some(t) = self.oidc_access_token.filter(|t| !t.is_empty()) {
                    b = b.oidc_access_token(t);
                }
                if let Some(p) = self.vault_auth_path {
                    b = b.auth_path(p);
                }
                if let Some(r) = self.vault_role {
                    b = b.role(r);
                }
                if let Some(m) = self.vault_mount {
                    b = b.mount(m);
                }
                if let Some(p) = self.vault_secret_path {
                    b = b.secret_path(p);
                }
                if let Some(d) = self.deployment_id {
                    b = b.deployment_id(d);
                }
                if let Some(i) = self.vault_refresh_interval {
                    b = b.refresh_interval(Some(i));
                }
                if let Some(ca) = self.vault_ca_cert {
                    b = b.ca_cert(ca);
                }
                Some(b.build()?)
            }
        };
        AuthConfig::builder()
            .tokens(self.tokens)
            .token_file(self.token_file)
            .vault(vault)
            .max_staleness(self.max_token_staleness)
            .build_optional()
    }
}

/// One-call server setup: builds the source (logging in to Vault if
/// needed), loads the tokens once, starts the reload triggers, and returns
/// the store plus the manager that keeps it current. Add
/// [`AuthManager::layer`] (or `AuthLayer::new(store)`) to the server.
///
/// # Errors
/// Anything that prevents a first successful load; the message says what
/// (missing file, Vault unreachable or refusing the login, no tokens, ...).
/// Treat it as fatal.
pub async fn token_store_from(config: &AuthConfig) -> Result<(TokenStore, AuthManager), AuthError> {
    let source: Arc<dyn TokenSource> = match &config.source {
        TokenSourceConfig::Static(tokens) => Arc::new(StaticTokens::new(
            tokens.iter().map(|t| t.expose().to_owned()),
        )?),
        TokenSourceConfig::File(path) => Arc::new(FileTokens::new(path.clone())),
        TokenSourceConfig::Vault(vault) => Arc::new(VaultTokens::connect(vault.clone()).await?),
    };
    let options = ReloadOptions::new()
        .interval(config.effective_refresh_interval())
        .on_sigusr1(config.reload_on_sigusr1)
        .max_staleness(config.effective_max_staleness());
    let manager = AuthManager::start(source, options).await?;
    Ok((manager.store(), manager))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_onto_the_config() {
        assert!(AuthFlags::default().into_config().unwrap().is_none());
        // Vault credentials in the environment do not matter without --vault-addr.
        let flags = AuthFlags {
            tokens: vec!["t1".into()],
            vault_token: Some("from-env".into()),
            ..AuthFlags::default()
        };
        let c = flags.into_config().unwrap().unwrap();
        assert!(matches!(c.source, TokenSourceConfig::Static(_)));

        let flags = AuthFlags {
            vault_addr: Some("http://127.0.0.1:8200".into()),
            vault_token: Some("root".into()),
            vault_mount: Some("kv".into()),
            vault_refresh_interval: Some(Duration::from_secs(5)),
            ..AuthFlags::default()
        };
        let c = flags.into_config().unwrap().unwrap();
        match &c.source {
            TokenSourceConfig::Vault(v) => {
                assert_eq!(v.mount, "kv");
                assert_eq!(v.secret_path, "federated");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.effective_refresh_interval(), Some(Duration::from_secs(5)));

        let flags = AuthFlags {
            vault_addr: Some("http://127.0.0.1:8200".into()),
            token_file: Some("/tmp/t".into()),
            vault_token: Some("root".into()),
            ..AuthFlags::default()
        };
        assert!(flags.into_config().is_err());
        let flags = AuthFlags {
            vault_addr: Some("http://127.0.0.1:8200".into()),
            ..AuthFlags::default()
        };
        assert!(flags.into_config().is_err(), "no Vault login");
    }

    #[test]
    fn sources_are_exclusive() {
        assert!(AuthConfig::builder().build_optional().unwrap().is_none());
        assert!(AuthConfig::builder().build().is_err());
        assert!(AuthConfig::builder()
            .token("a")
            .token_file(Some("/tmp/x"))
            .build()
            .is_err());
        let c = AuthConfig::builder().tokens(["a", "b"]).build().unwrap();
        assert!(matches!(c.source, TokenSourceConfig::Static(ref t) if t.len() == 2));
        assert_eq!(c.effective_refresh_interval(), None);
        let v = VaultConfig::builder("http://127.0.0.1:1")
            .token("t")
            .build()
            .unwrap();
        let c = AuthConfig::builder().vault(Some(v)).build().unwrap();
        assert_eq!(
            c.effective_refresh_interval(),
            Some(Duration::from_secs(60))
        );
    }
}
