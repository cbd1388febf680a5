//! Tokens kept in HashiCorp Vault / OpenBao (KV version 1), with login by
//! Vault token or by OIDC access token (JWT auth method), and self-renewal
//! of the server's own Vault token.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use base64::Engine as _;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::instrument::{WithDispatch, WithSubscriber as _};
use tracing::subscriber::NoSubscriber;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::error::AuthError;
use crate::secret::SecretString;
use crate::source::TokenSource;

/// Default KV version 1 mount holding the tokens.
pub const DEFAULT_VAULT_MOUNT: &str = "secrets";
/// Default path under the mount listing one secret per token.
pub const DEFAULT_VAULT_SECRET_PATH: &str = "federated";
/// Default mount path of the JWT auth method used for OIDC login.
pub const DEFAULT_JWT_AUTH_PATH: &str = "jwt";
/// Default interval between two refreshes of the token list from Vault.
pub const DEFAULT_VAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Default timeout of one HTTP request to Vault.
pub const DEFAULT_VAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Increment asked for when the server renews its own Vault token.
pub const VAULT_RENEW_INCREMENT: &str = "24h";
/// Key of a secret whose value is an accepted token.
pub const TOKEN_KEY: &str = "token";

/// How the server logs in to Vault.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum VaultLogin {
    /// Use this Vault token directly (`--vault-token` / `VAULT_TOKEN`).
    Token(SecretString),
    /// Exchange an OIDC access token for a Vault token through Vault's JWT
    /// auth method (`--oidc-access-token` / `OIDC_ACCESS_TOKEN`).
    Oidc {
        /// The OIDC access token (a JWT).
        access_token: SecretString,
        /// Mount path of the JWT auth method (default `jwt`).
        auth_path: String,
        /// Role to log in with (`None`: the auth method's default role).
        role: Option<String>,
    },
}

/// Where and how to read tokens from Vault. Build with
/// [`VaultConfig::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VaultConfig {
    /// Vault address, e.g. `https://vault.example.org:8200`.
    pub addr: String,
    /// Login method.
    pub login: VaultLogin,
    /// KV version 1 mount (default `secrets`).
    pub mount: String,
    /// Path under the mount (default `federated`). Ignored when
    /// `deployment_id` is set.
    pub secret_path: String,
    /// When set, the path is `users/<sub>/deployments/<ID>/federated`, with
    /// `<sub>` read from the OIDC access token.
    pub deployment_id: Option<String>,
    /// Interval of the periodic refresh (default 60 s; `None` disables it,
    /// leaving `SIGUSR1` and explicit reloads).
    pub refresh_interval: Option<Duration>,
    /// Extra CA certificate (PEM) to trust for an `https` Vault address.
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one HTTP request to Vault (default 10 s).
    pub request_timeout: Duration,
}

impl VaultConfig {
    /// Starts a configuration for the Vault at `addr`. A login method must
    /// be chosen with [`VaultConfigBuilder::token`] or
    /// [`VaultConfigBuilder::oidc_access_token`].
    pub fn builder(addr: impl Into<String>) -> VaultConfigBuilder {
        VaultConfigBuilder {
            addr: addr.into(),
            token: None,
            oidc_access_token: None,
            auth_path: None,
            role: None,
            mount: None,
            secret_path: None,
            deployment_id: None,
            refresh_interval: Some(DEFAULT_VAULT_REFRESH_INTERVAL),
            ca_cert: None,
            request_timeout: DEFAULT_VAULT_REQUEST_TIMEOUT,
        }
    }

    /// The secret path actually listed: `secret_path`, or
    /// `users/<sub>/deployments/<ID>/federated` when a deployment id is set.
    ///
    /// # Errors
    /// [`AuthError::InvalidOidcToken`] when the `sub` claim cannot be read.
    pub fn effective_secret_path(&self) -> Result<String, AuthError> {
        match (&self.deployment_id, &self.login) {
            (Some(id), VaultLogin::Oidc { access_token, .. }) => {
                deployment_secret_path(access_token.expose(), id)
            }
            (Some(_), _) => Err(AuthError::Config(
                "a deployment id needs an OIDC access token (its `sub` claim names the user)"
                    .into(),
            )),
            (None, _) => Ok(self.secret_path.trim_matches('/').to_owned()),
        }
    }
}

/// Builder of [`VaultConfig`]; every setter documents its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct VaultConfigBuilder {
    addr: String,
    token: Option<SecretString>,
    oidc_access_token: Option<SecretString>,
    auth_path: Option<String>,
    role: Option<String>,
    mount: Option<String>,
    secret_path: Option<String>,
    deployment_id: Option<String>,
    refresh_interval: Option<Duration>,
    ca_cert: Option<PathBuf>,
    request_timeout: Duration,
}

impl VaultConfigBuilder {
    /// Log in with this Vault token.
    pub fn token(mut self, token: impl Into<SecretString>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Log in with this OIDC access token through the JWT auth method.
    pub fn oidc_access_token(mut self, token: impl Into<SecretString>) -> Self {
        self.oidc_access_token = Some(token.into());
        self
    }

    /// Mount path of the JWT auth method (default `jwt`). OIDC login only.
    pub fn auth_path(mut self, path: impl Into<String>) -> Self {
        self.auth_path = Some(path.into());
        self
    }

    /// Role for the JWT login (default: the auth method's default role).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }

    /// KV version 1 mount (default `secrets`).
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = Some(mount.into());
        self
    }

    /// Path under the mount (default `federated`).
    pub fn secret_path(mut self, path: impl Into<String>) -> Self {
        self.secret_path = Some(path.into());
        self
    }

    /// Per-user deployment: path `users/<sub>/deployments/<ID>/federated`
    /// (default: none). Needs OIDC login.
    pub fn deployment_id(mut self, id: impl Into<String>) -> Self {
        self.deployment_id = Some(id.into());
        self
    }

    /// Periodic refresh interval (default 60 s); `None` or zero disables it.
    pub fn refresh_interval(mut self, interval: Option<Duration>) -> Self {
        self.refresh_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Extra CA certificate (PEM file) for an `https` address (default:
    /// system roots, plus `VAULT_CACERT` if set).
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Timeout of one HTTP request (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Checks and builds the configuration.
    ///
    /// # Errors
    /// [`AuthError::Config`] for a bad address, no or two login methods, an
    /// empty mount, or a deployment id without OIDC login;
    /// [`AuthError::InvalidOidcToken`] when a deployment id is set and the
    /// token's `sub` claim cannot be read.
    pub fn build(self) -> Result<VaultConfig, AuthError> {
        validate_addr(&self.addr)?;
        let login = match (self.token, self.oidc_access_token) {
            (Some(token), None) => {
                if token.is_empty() {
                    return Err(AuthError::Config("the Vault token is empty".into()));
                }
                VaultLogin::Token(token)
            }
            (None, Some(access_token)) => {
                if access_token.is_empty() {
                    return Err(AuthError::Config("the OIDC access token is empty".into()));
                }
                VaultLogin::Oidc {
                    access_token,
                    auth_path: non_empty(self.auth_path, DEFAULT_JWT_AUTH_PATH),
                    role: self.role.filter(|r| !r.is_empty()),
                }
            }
            (None, None) => {
                return Err(AuthError::Config(
                    "Vault needs a Vault token or an OIDC access token to log in".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(AuthError::Config(
                    "give either a Vault token or an OIDC access token, not both".into(),
                ))
            }
        };
        let config = VaultConfig {
            addr: self.addr.trim_end_matches('/').to_owned(),
            login,
            mount: non_empty(self.mount, DEFAULT_VAULT_MOUNT)
                .trim_matches('/')
                .to_owned(),
            secret_path: non_empty(self.secret_path, DEFAULT_VAULT_SECRET_PATH),
            deployment_id: self.deployment_id.filter(|d| !d.is_empty()),
            refresh_interval: self.refresh_interval,
            ca_cert: self.ca_cert,
            request_timeout: self.request_timeout,
        };
        if config.mount.is_empty() {
            return Err(AuthError::Config("the Vault mount is empty".into()));
        }
        config.effective_secret_path()?;
        Ok(config)
    }
}

fn non_empty(value: Option<String>, default: &str) -> String {
    value
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn validate_addr(addr: &str) -> Result<(), AuthError> {
    let uri: http::Uri = addr
        .parse()
        .map_err(|_| AuthError::Config(format!("invalid Vault address {addr:?}")))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => {
            // Allowed (a Vault on localhost or behind a TLS proxy), but the
            // login token and every bearer token then cross the network in clear.
            tracing::warn!(
                vault = addr,
                "Vault address is plain http://: the Vault token and the bearer tokens are sent unencrypted; use https://"
            );
            Ok(())
        }
        Some("https") if uri.authority().is_some() => Ok(()),
        _ => Err(AuthError::Config(format!(
            "invalid Vault address {addr:?} (expected http(s)://host:port)"
        ))),
    }
}

/// The `sub` claim of a JWT, read WITHOUT verifying the signature (Vault
/// verifies the token at login; the claim is only used to build a path).
///
/// # Errors
/// [`AuthError::InvalidOidcToken`] when the token is not a JWT or has no
/// string `sub` claim.
pub fn oidc_subject(access_token: &str) -> Result<String, AuthError> {
    let mut parts = access_token.trim().split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => {
            return Err(AuthError::InvalidOidcToken(
                "not a JWT (expected three dot-separated parts)".into(),
            ))
        }
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::InvalidOidcToken("payload is not base64url".into()))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::InvalidOidcToken("payload is not JSON".into()))?;
    match claims.get("sub").and_then(serde_json::Value::as_str) {
        Some(sub) if !sub.is_empty() => Ok(sub.to_owned()),
        _ => Err(AuthError::InvalidOidcToken("no `sub` claim".into())),
    }
}

/// The per-user secret path of a deployment:
/// `users/<sub>/deployments/<deployment_id>/federated`.
///
/// # Errors
/// As [`oidc_subject`], and [`AuthError::Config`] for a deployment id or
/// subject containing `/`.
pub fn deployment_secret_path(
    access_token: &str,
    deployment_id: &str,
) -> Result<String, AuthError> {
    let sub = oidc_subject(access_token)?;
    if sub.contains('/') {
        return Err(AuthError::InvalidOidcToken(
            "the `sub` claim contains '/'".into(),
        ));
    }
    let id = deployment_id.trim();
    if id.is_empty() || id.contains('/') {
        return Err(AuthError::Config(format!(
            "invalid deployment id {deployment_id:?}"
        )));
    }
    Ok(format!("users/{sub}/deployments/{id}/federated"))
}

/// One-line description of a vaultrs error with its causes; never contains
/// a token (Vault error messages and URLs only).
fn describe(err: &ClientError) -> String {
    match err {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("HTTP {code}"),
        ClientError::APIError { code, errors } => format!("HTTP {code}: {}", errors.join("; ")),
        other => {
            let mut out = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                out.push_str(": ");
                out.push_str(&cause.to_string());
                source = cause.source();
            }
            out
        }
    }
}

/// Runs a vaultrs call with its own logging silenced.
///
/// vaultrs and rustify log every failed request at ERROR level (through
/// `#[instrument(err)]`), once per attempt: during a Vault outage that would
/// flood the log on every periodic refresh, defeating "log an outage once".
/// Failures are reported by this crate instead, with the full error chain.
fn quiet<F: Future>(call: F) -> WithDispatch<F> {
    call.with_subscriber(NoSubscriber::default())
}

fn is_status(err: &ClientError, status: u16) -> bool {
    matches!(err, ClientError::APIError { code, .. } if *code == status)
}

/// Lifetime facts about the Vault token in use.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Seconds left; 0 means "never expires" (e.g. a root token).
    ttl: u64,
    renewable: bool,
}

struct VaultInner {
    config: VaultConfig,
    secret_path: String,
    description: String,
    client: RwLock<VaultClient>,
}

impl VaultInner {
    fn vault_error(&self, operation: &str, err: &ClientError) -> AuthError {
        AuthError::Vault {
            operation: operation.to_owned(),
            addr: self.config.addr.clone(),
            detail: describe(err),
        }
    }

    fn new_client(config: &VaultConfig, token: &str) -> Result<VaultClient, AuthError> {
        // vaultrs uses rustls without a built-in provider: use ring, the
        // provider of the whole workspace, unless the process chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // vaultrs logs while building (environment defaults) and on errors:
        // keep it quiet, as for requests (see `quiet`).
        tracing::subscriber::with_default(NoSubscriber::default(), || {
            let mut settings = VaultClientSettingsBuilder::default();
            settings
                .address(&config.addr)
                .token(token)
                .timeout(Some(config.request_timeout));
            if let Some(ca) = &config.ca_cert {
                settings.ca_certs(vec![ca.display().to_string()]);
            }
            let settings = settings
                .build()
                .map_err(|e| AuthError::Config(format!("invalid Vault client settings: {e}")))?;
            VaultClient::new(settings).map_err(|e| AuthError::Vault {
                operation: "client setup".into(),
                addr: config.addr.clone(),
                detail: describe(&e),
            })
        })
        .inspect(|client| {
            if !client.settings.verify && config.addr.starts_with("https://") {
                tracing::warn!(
                    vault = %config.addr,
                    "VAULT_SKIP_VERIFY is set: the Vault server's TLS certificate is NOT verified"
                );
            }
        })
    }

    /// Logs in (or checks the given Vault token) and returns its lease.
    async fn login(&self) -> Result<Lease, AuthError> {
        match &self.config.login {
            VaultLogin::Token(token) => {
                let mut client = self.client.write().await;
                client.set_token(token.expose());
                let info = quiet(vaultrs::token::lookup_self(&*client))
                    .await
                    .map_err(|e| self.vault_error("token lookup", &e))?;
                let lease = Lease {
                    ttl: info.ttl,
                    renewable: info.renewable.unwrap_or(false),
                };
                tracing::info!(
                    vault = %self.config.addr,
                    token = %token.fingerprint(),
                    ttl_s = lease.ttl,
                    renewable = lease.renewable,
                    "using Vault token"
                );
                Ok(lease)
            }
            VaultLogin::Oidc {
                access_token,
                auth_path,
                role,
            } => {
                let mut client = self.client.write().await;
                client.set_token("");
                let auth = quiet(vaultrs::auth::oidc::login(
                    &*client,
                    auth_path,
                    access_token.expose(),
                    role.clone(),
                ))
                .await
                .map_err(|e| self.vault_error("JWT login", &e))?;
                client.set_token(&auth.client_token);
                tracing::info!(
                    vault = %self.config.addr,
                    auth_path = %auth_path,
                    role = role.as_deref().unwrap_or("(default)"),
                    token = %SecretString::new(auth.client_token.clone()).fingerprint(),
                    ttl_s = auth.lease_duration,
                    renewable = auth.renewable,
                    "logged in to Vault with the OIDC access token"
                );
                Ok(Lease {
                    ttl: auth.lease_duration,
                    renewable: auth.renewable,
                })
            }
        }
    }

    async fn list_tokens(&self) -> Result<Vec<String>, ClientErrorAt> {
        let client = self.client.read().await;
        let mount = self.config.mount.as_str();
        let path = self.secret_path.as_str();
        let keys = match quiet(vaultrs::kv1::list(&*client, mount, path)).await {
            Ok(listing) => listing.data.keys,
            Err(e) if is_status(&e, 404) => Vec::new(),
            Err(e) => return Err(ClientErrorAt("list", e)),
        };
        let client = &*client;
        let values: Vec<Option<String>> =
            futures::stream::iter(keys.into_iter().filter(|k| !k.ends_with('/')))
                .map(|key| async move {
                    let full = format!("{path}/{key}");
                    match quiet(vaultrs::kv1::get::<HashMap<String, serde_json::Value>>(
                        client, mount, &full,
                    ))
                    .await
                    {
                        Ok(data) => Ok(data
                            .get(TOKEN_KEY)
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_owned)),
                        // Deleted between LIST and GET.
                        Err(e) if is_status(&e, 404) => Ok(None),
                        Err(e) => Err(ClientErrorAt("read", e)),
                    }
                })
                .buffered(8)
                .try_collect()
                .await?;
        Ok(values.into_iter().flatten().collect())
    }

    async fn load(&self) -> Result<Vec<String>, AuthError> {
        let tokens = match self.list_tokens().await {
            Ok(tokens) => tokens,
            Err(ClientErrorAt(op, e))
                if is_status(&e, 403) && matches!(self.config.login, VaultLogin::Oidc { .. }) =>
            {
                // Our Vault token probably expired: log in again, once.
                tracing::info!(
                    vault = %self.config.addr,
                    "Vault refused the {op} (permission denied); logging in again"
                );
                self.login().await?;
                self.list_tokens()
                    .await
                    .map_err(|ClientErrorAt(op, e)| self.vault_error(op, &e))?
            }
            Err(ClientErrorAt(op, e)) => return Err(self.vault_error(op, &e)),
        };
        if tokens.is_empty() {
            return Err(AuthError::NoTokens {
                source_description: self.description.clone(),
            });
        }
        Ok(tokens)
    }
}

struct ClientErrorAt(&'static str, ClientError);

/// Token source reading Vault (KV version 1): every secret listed under
/// `<mount>/<path>` that has a `token` key contributes its value.
///
/// [`VaultTokens::connect`] logs in and starts a background task renewing
/// the server's own Vault token (increment 24 h, next renewal at half the
/// remaining TTL; re-login for OIDC when the token can no longer be
/// renewed). The task stops when the source is dropped.
pub struct VaultTokens {
    inner: Arc<VaultInner>,
    renewal: JoinHandle<()>,
}

impl VaultTokens {
    /// Logs in to Vault and starts the renewal task. Does not read tokens
    /// yet (that is [`TokenSource::load`]).
    ///
    /// # Errors
    /// [`AuthError::Vault`] when Vault is unreachable or refuses the login,
    /// [`AuthError::Config`] / [`AuthError::InvalidOidcToken`] for a bad
    /// configuration.
    pub async fn connect(config: VaultConfig) -> Result<Self, AuthError> {
        let secret_path = config.effective_secret_path()?;
        let client = VaultInner::new_client(&config, "")?;
        let description = format!("Vault {} ({}/{})", config.addr, config.mount, secret_path);
        let inner = Arc::new(VaultInner {
            config,
            secret_path,
            description,
            client: RwLock::new(client),
        });
        let lease = inner.login().await?;
        let renewal = tokio::spawn(renewal_loop(Arc::clone(&inner), lease));
        Ok(Self { inner, renewal })
    }

    /// The KV path listed (after deployment-id resolution).
    #[must_use]
    pub fn secret_path(&self) -> &str {
        &self.inner.secret_path
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &VaultConfig {
        &self.inner.config
    }
}

impl Drop for VaultTokens {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl fmt::Debug for VaultTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTokens")
            .field("description", &self.inner.description)
            .finish_non_exhaustive()
    }
}

impl TokenSource for VaultTokens {
    fn describe(&self) -> String {
        self.inner.description.clone()
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<String>, AuthError>> {
        Box::pin(self.inner.load())
    }
}

/// Shortest pause between two renewal attempts.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

/// Pause after a failed re-login before the next attempt.
const RELOGIN_BACKOFF: Duration = Duration::from_secs(5);

/// Keeps the server's Vault token alive: renew at half the remaining TTL,
/// log a failing streak once, re-login (OIDC) when the token is lost.
async fn renewal_loop(inner: Arc<VaultInner>, mut lease: Lease) {
    let addr = inner.config.addr.clone();
    let oidc = matches!(inner.config.login, VaultLogin::Oidc { .. });
    let mut expiry = Instant::now() + Duration::from_secs(lease.ttl);
    let mut failing = false;
    let mut login_failures = 0u32;
    loop {
        if lease.ttl == 0 {
            tracing::info!(vault = %addr, "Vault token does not expire; no renewal needed");
            return;
        }
        if !lease.renewable && !oidc {
            tracing::warn!(
                vault = %addr,
                ttl_s = lease.ttl,
                "Vault token is not renewable; it will expire"
            );
            return;
        }
        let remaining = expiry.saturating_duration_since(Instant::now());
        tokio::time::sleep((remaining / 2).max(MIN_RENEW_DELAY)).await;

        let result = if lease.renewable {
            let client = inner.client.read().await;
            quiet(vaultrs::token::renew_self(
                &*client,
                Some(VAULT_RENEW_INCREMENT),
            ))
            .await
            .map(|auth| Lease {
                ttl: auth.lease_duration,
                renewable: auth.renewable,
            })
            .map_err(|e| inner.vault_error("token renewal", &e))
        } else {
            Err(AuthError::Vault {
                operation: "token renewal".into(),
                addr: addr.clone(),
                detail: "token is not renewable".into(),
            })
        };
        match result {
            Ok(new_lease) => {
                if failing {
                    tracing::info!(vault = %addr, "Vault token renewal works again");
                    failing = false;
                }
                tracing::info!(
                    vault = %addr,
                    ttl_s = new_lease.ttl,
                    "renewed the Vault token"
                );
                lease = new_lease;
                expiry = Instant::now() + Duration::from_secs(lease.ttl);
            }
            Err(err) => {
                let remaining = expiry.saturating_duration_since(Instant::now());
                if !failing && lease.renewable {
                    tracing::warn!(
                        vault = %addr,
                        error = %err,
                        remaining_s = remaining.as_secs(),
                        "Vault token renewal failed; will retry"
                    );
                    failing = true;
                }
                if oidc && (remaining <= MIN_RENEW_DELAY * 4 || !lease.renewable) {
                    match inner.login().await {
                        Ok(new_lease) => {
                            failing = false;
                            login_failures = 0;
                            lease = new_lease;
                            expiry = Instant::now() + Duration::from_secs(lease.ttl);
                        }
                        Err(e) => {
                            if login_failures == 0 {
                                tracing::warn!(
                                    vault = %addr,
                                    error = %e,
                                    "Vault re-login with the OIDC access token failed; will retry"
                                );
                            }
                            login_failures += 1;
                            // Do not hammer Vault (or the log) while it refuses.
                            tokio::time::sleep(RELOGIN_BACKOFF).await;
                        }
                    }
                } else if remaining.is_zero() {
                    tracing::error!(
                        vault = %addr,
                        "the Vault token has expired; token reloads will fail until the server \
                         is restarted with a valid Vault token"
                    );
                    return;
                } else {
                    // Retry at half of what is left (at least MIN_RENEW_DELAY).
                    lease.ttl = remaining.as_secs().max(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"none"}"#),
            e.encode(payload)
        )
    }

    #[test]
    fn subject_and_deployment_path() {
        let t = jwt(r#"{"sub":"user-42","aud":"x"}"#);
        assert_eq!(oidc_subject(&t).unwrap(), "user-42");
        assert_eq!(
            deployment_secret_path(&t, "dep-1").unwrap(),
            "users/user-42/deployments/dep-1/federated"
        );
        assert!(oidc_subject("abc").is_err());
        assert!(oidc_subject(&jwt(r#"{"aud":"x"}"#)).is_err());
        assert!(oidc_subject("a.!!!.c").is_err());
        assert!(deployment_secret_path(&t, "a/b").is_err());
    }

    #[test]
    fn builder_defaults_and_checks() {
        let c = VaultConfig::builder("http://127.0.0.1:8200")
            .token("root")
            .build()
            .unwrap();
        assert_eq!(c.mount, "secrets");
        assert_eq!(c.secret_path, "federated");
        assert_eq!(c.refresh_interval, Some(Duration::from_secs(60)));
        assert!(!format!("{c:?}").contains("root\""));

        let o = VaultConfig::builder("https://vault:8200")
            .oidc_access_token(jwt(r#"{"sub":"u"}"#))
            .deployment_id("d")
            .role("r")
            .build()
            .unwrap();
        assert_eq!(
            o.effective_secret_path().unwrap(),
            "users/u/deployments/d/federated"
        );
        assert!(matches!(&o.login, VaultLogin::Oidc { auth_path, .. } if auth_path == "jwt"));

        assert!(VaultConfig::builder("vault:8200")
            .token("t")
            .build()
            .is_err());
        assert!(VaultConfig::builder("http://v:1").build().is_err());
        assert!(VaultConfig::builder("http://v:1")
            .token("t")
            .oidc_access_token("x.y.z")
            .build()
            .is_err());
        assert!(VaultConfig::builder("http://v:1")
            .token("t")
            .deployment_id("d")
            .build()
            .is_err());
    }
}
