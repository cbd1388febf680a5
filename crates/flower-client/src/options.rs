//! [`ClientOptions`]: where and how to connect.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use flower_auth::BearerCredentials;

use crate::metadata::{RequestMetadata, Secret, SharedInterceptor};
use crate::retry::RetryPolicy;
use crate::ClientError;

/// Default metadata key of the bearer token (`authorization`, what ai4flwr
/// 0.2.0 sends; flower-rs servers also accept `x-authorization`).
pub const DEFAULT_AUTH_HEADER_KEY: &str = flower_auth::DEFAULT_CLIENT_HEADER;

/// Default connect (TCP + TLS handshake) timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to wait, after answering `ReconnectIns`, for the server to
/// end the stream before the client cancels it.
pub const DEFAULT_DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// Which certificates the client trusts.
#[derive(Clone)]
enum Transport {
    /// TLS with the operating system's roots.
    SystemRoots,
    /// TLS with these PEM roots only.
    RootsPem(Vec<u8>),
    /// TLS with the PEM roots in this file only (read when the run starts).
    RootsFile(PathBuf),
    /// Plaintext HTTP/2.
    Insecure,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::SystemRoots => f.write_str("Tls(system roots)"),
            Transport::RootsPem(pem) => {
                write!(f, "Tls(root certificates, {} PEM bytes)", pem.len())
            }
            Transport::RootsFile(p) => write!(f, "Tls(root certificates from {})", p.display()),
            Transport::Insecure => f.write_str("Insecure"),
        }
    }
}

/// Where and how [`start_client`](crate::start_client) connects.
///
/// A builder: every method takes and returns `self`. Nothing is checked until
/// the run starts, where problems surface as
/// [`ClientError::InvalidOptions`].
///
/// | setting | default |
/// |---|---|
/// | transport | TLS, trusting the system's root certificates ([`insecure`](Self::insecure) for plaintext) |
/// | bearer token | none ([`token`](Self::token) or [`token_file`](Self::token_file)); header key `authorization`; only sent over TLS |
/// | max message size | 2 147 483 647 bytes both ways (Flower's `GRPC_MAX_MESSAGE_LENGTH`) |
/// | HTTP/2 keepalive | off (as Python's client) |
/// | connect timeout | 10 s |
/// | retries | [`RetryPolicy::default`]: 1 s doubling to 20 s, full jitter, unbounded |
/// | disconnect grace | 500 ms |
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use flower_client::ClientOptions;
///
/// let options = ClientOptions::new("127.0.0.1:8080")
///     .root_certificates_file("certificates/ca.pem")
///     .token("my-secret-token")
///     .max_retries(5)
///     .max_wait_time(Duration::from_secs(60));
/// # let _ = options;
/// ```
#[must_use]
#[derive(Clone)]
pub struct ClientOptions {
    server_address: String,
    transport: Transport,
    tls_domain_name: Option<String>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
    auth_header_key: String,
    allow_insecure_auth: bool,
    headers: Vec<(String, Secret)>,
    interceptor: Option<SharedInterceptor>,
    max_decoding_message_size: usize,
    max_encoding_message_size: usize,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Option<Duration>,
    keepalive_while_idle: bool,
    connect_timeout: Duration,
    retry: RetryPolicy,
    disconnect_grace: Duration,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server_address", &self.server_address)
            .field("transport", &self.transport)
            .field("tls_domain_name", &self.tls_domain_name)
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("auth_header_key", &self.auth_header_key)
            .field("allow_insecure_auth", &self.allow_insecure_auth)
            .field(
                "header_keys",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("interceptor", &self.interceptor.is_some())
            .field("max_decoding_message_size", &self.max_decoding_message_size)
            .field("max_encoding_message_size", &self.max_encoding_message_size)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("keepalive_while_idle", &self.keepalive_while_idle)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("disconnect_grace", &self.disconnect_grace)
            .finish()
    }
}

impl ClientOptions {
    /// Options for the server at `server_address`: `HOST:PORT`, e.g.
    /// `127.0.0.1:8080`, `localhost:8080` or `[::1]:8080`, as Python's
    /// `start_client(server_address=...)` takes it. The scheme (`https://`,
    /// or `http://` with [`insecure`](Self::insecure)) is added; an address
    /// that already has one must agree with the transport.
    pub fn new(server_address: impl Into<String>) -> Self {
        Self {
            server_address: server_address.into(),
            transport: Transport::SystemRoots,
            tls_domain_name: None,
            token: None,
            token_file: None,
            auth_header_key: DEFAULT_AUTH_HEADER_KEY.to_owned(),
            allow_insecure_auth: false,
            headers: Vec::new(),
            interceptor: None,
            max_decoding_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            max_encoding_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            keepalive_interval: None,
            keepalive_timeout: None,
            keepalive_while_idle: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            disconnect_grace: DEFAULT_DISCONNECT_GRACE,
        }
    }

    /// The server address as given.
    pub fn server_address(&self) -> &str {
        &self.server_address
    }

    // ---- transport --------------------------------------------------------

    /// Plaintext HTTP/2, no TLS (Python's `insecure=True`). Only when asked:
    /// the default is TLS.
    pub fn insecure(mut self) -> Self {
        self.transport = Transport::Insecure;
        self
    }

    /// TLS trusting only these PEM root certificates (Python's
    /// `root_certificates=` bytes).
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.transport = Transport::RootsPem(pem.into());
        self
    }

    /// TLS trusting only the PEM root certificates in this file, read when
    /// the run starts.
    pub fn root_certificates_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.transport = Transport::RootsFile(path.into());
        self
    }

    /// TLS trusting the operating system's root certificates (the default).
    pub fn system_roots(mut self) -> Self {
        self.transport = Transport::SystemRoots;
        self
    }

    /// The name the server certificate must carry (and the SNI sent), when it
    /// differs from the address's host. Default: the host of the address.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls_domain_name = Some(name.into());
        self
    }

    /// True unless [`insecure`](Self::insecure) was chosen.
    pub fn is_tls(&self) -> bool {
        !matches!(self.transport, Transport::Insecure)
    }

    // ---- credentials ------------------------------------------------------

    /// Sends `Bearer <token>` under [`auth_header_key`](Self::auth_header_key)
    /// with every `Join`, through `flower-auth`'s
    /// [`BearerCredentials`](flower_auth::BearerCredentials). Only over TLS
    /// unless [`allow_insecure_auth`](Self::allow_insecure_auth); never
    /// logged (only its 8-hex-digit SHA-256 fingerprint). Replaces a
    /// [`token_file`](Self::token_file) given before.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret(token.into()));
        self.token_file = None;
        self
    }

    /// Like [`token`](Self::token), with the token read from a file (its
    /// first non-blank line, trimmed) when the run starts, and re-read
    /// whenever the file changes (checked at every `Join`, so a rotated
    /// token is used from the next connection on). A missing or empty file
    /// fails the run at start with [`ClientError::InvalidOptions`]; a later
    /// unreadable file keeps the last good token. Replaces a
    /// [`token`](Self::token) given before.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self.token = None;
        self
    }

    /// True when a token or a token file is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// The metadata key carrying the token. Default: `authorization`
    /// (Flower's test servers also accept `x-authorization`).
    pub fn auth_header_key(mut self, key: impl Into<String>) -> Self {
        self.auth_header_key = key.into();
        self
    }

    /// Allows the token over a plaintext connection (tests only: anyone on
    /// the path can read it). Without this, a token plus
    /// [`insecure`](Self::insecure) fails with
    /// [`ClientError::InsecureCredentials`].
    pub fn allow_insecure_auth(mut self) -> Self {
        self.allow_insecure_auth = true;
        self
    }

    /// Adds a static metadata entry to every `Join` (key lowercased; value
    /// visible ASCII, treated as sensitive). Unlike the token, a header is
    /// also sent over plaintext.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), Secret(value.into())));
        self
    }

    /// Runs `interceptor` on every `Join` request, after the headers and the
    /// token are added. This is where another credential provider plugs in
    /// (the bearer token itself needs none: [`token`](Self::token) and
    /// [`token_file`](Self::token_file) already use `flower-auth`'s
    /// [`BearerCredentials`](flower_auth::BearerCredentials)); an `Err` it
    /// returns ends the run like a server's answer with that status would
    /// (an `UNAUTHENTICATED` one is not retried).
    pub fn interceptor<I>(mut self, interceptor: I) -> Self
    where
        I: Interceptor + Send + 'static,
    {
        self.interceptor = Some(Arc::new(Mutex::new(interceptor)));
        self
    }

    // ---- channel ----------------------------------------------------------

    /// Maximum size of one message, both ways. Default: 2 147 483 647 bytes
    /// (Python Flower's `grpc_max_message_length`).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_decoding_message_size = bytes;
        self.max_encoding_message_size = bytes;
        self
    }

    /// Maximum size of a received `ServerMessage`. Default: 2 147 483 647.
    pub fn max_decoding_message_size(mut self, bytes: usize) -> Self {
        self.max_decoding_message_size = bytes;
        self
    }

    /// Maximum size of a sent `ClientMessage`. Default: 2 147 483 647.
    pub fn max_encoding_message_size(mut self, bytes: usize) -> Self {
        self.max_encoding_message_size = bytes;
        self
    }

    /// Sends HTTP/2 PINGs at this interval. Default: off, as in Python's
    /// client. A stock gRPC server answers pings sent more often than every
    /// 5 minutes while no data flows with `GOAWAY(ENHANCE_YOUR_CALM)`, so
    /// keep this long unless the server allows more.
    pub fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = Some(interval);
        self
    }

    /// How long to wait for a PING acknowledgement before the connection
    /// counts as broken (and is retried). Default: tonic's (20 s).
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = Some(timeout);
        self
    }

    /// Also ping while no call is open. Default: false.
    pub fn keepalive_while_idle(mut self, enabled: bool) -> Self {
        self.keepalive_while_idle = enabled;
        self
    }

    /// Timeout of one TCP connect and TLS handshake. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After answering `ReconnectIns`, how long to wait for the server to end
    /// the stream before cancelling it, so that the `DisconnectRes` can reach
    /// the server. Zero cancels at once, as Python's client does (its
    /// `DisconnectRes` is then practically never delivered). Default: 500 ms;
    /// with `seconds > 0` this wait is part of the reconnect delay.
    pub fn disconnect_grace(mut self, grace: Duration) -> Self {
        self.disconnect_grace = grace;
        self
    }

    // ---- retries ----------------------------------------------------------

    /// Replaces the whole retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy in effect.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Retries after the first failure of a streak (0 = never retry).
    /// Default: unbounded.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.retry.max_retries = Some(retries);
        self
    }

    /// Gives up once this long has passed since the first failure of a
    /// streak. Default: unbounded.
    pub fn max_wait_time(mut self, time: Duration) -> Self {
        self.retry.max_wait_time = Some(time);
        self
    }

    /// Never retries: the first connection failure ends the run, as in
    /// Python's grpc-bidi client.
    pub fn no_retries(self) -> Self {
        self.max_retries(0)
    }

    /// Backoff delays: `initial` before the first retry, doubling (see
    /// [`backoff_multiplier`](Self::backoff_multiplier)) up to `max_delay`.
    /// Default: 1 s and 20 s.
    pub fn backoff(mut self, initial: Duration, max_delay: Duration) -> Self {
        self.retry.initial_delay = initial;
        self.retry.max_delay = max_delay;
        self
    }

    /// Growth factor of the backoff delay (values below 1 count as 1).
    /// Default: 2.
    pub fn backoff_multiplier(mut self, multiplier: f64) -> Self {
        self.retry.multiplier = multiplier;
        self
    }

    /// Full jitter on each backoff delay. Default: on.
    pub fn jitter(mut self, enabled: bool) -> Self {
        self.retry.jitter = enabled;
        self
    }

    // ---- preparation ------------------------------------------------------

    /// Validates everything and builds what the driver needs.
    pub(crate) fn prepare(&self) -> Result<Prepared, ClientError> {
        let invalid = |m: String| ClientError::InvalidOptions(m);
        let tls = self.is_tls();

        let address = self.server_address.trim();
        if address.is_empty() {
            return Err(invalid("empty server address".into()));
        }
        let uri = match address.split_once("://") {
            Some(("https", _)) if tls => address.to_owned(),
            Some(("http", _)) if !tls => address.to_owned(),
            Some((scheme, _)) => {
                return Err(invalid(format!(
                    "server address {address:?} has scheme {scheme:?}, but the transport is {}",
                    if tls {
                        "TLS (https)"
                    } else {
                        "insecure (http)"
                    }
                )))
            }
            None => format!("{}://{address}", if tls { "https" } else { "http" }),
        };

        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| invalid(format!("server address {address:?}: {e}")))?;
        if endpoint.uri().port_u16().is_none() {
            return Err(invalid(format!(
                "server address {address:?} has no port (expected HOST:PORT)"
            )));
        }
        endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("flower-rs/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| invalid(format!("user agent: {e}")))?;
        if let Some(interval) = self.keepalive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_while_idle(self.keepalive_while_idle);
            if let Some(timeout) = self.keepalive_timeout {
                endpoint = endpoint.keep_alive_timeout(timeout);
            }
        }

        if tls {
            let mut config = ClientTlsConfig::new().timeout(self.connect_timeout);
            config = match &self.transport {
                Transport::SystemRoots => config.with_native_roots(),
                Transport::RootsPem(pem) => {
                    config.ca_certificate(checked_pem(pem, "root_certificates_pem")?)
                }
                Transport::RootsFile(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        invalid(format!(
                            "cannot read root certificates from {}: {e}",
                            path.display()
                        ))
                    })?;
                    config.ca_certificate(checked_pem(&pem, &path.display().to_string())?)
                }
                Transport::Insecure => unreachable!("tls is true"),
            };
            if let Some(name) = &self.tls_domain_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| invalid(format!("TLS configuration: {}", error_chain(&e))))?;
        }

        let credentials = self.credentials(tls)?;
        let metadata = RequestMetadata::new(&self.headers, credentials, self.interceptor.clone())
            .map_err(invalid)?;

        Ok(Prepared {
            uri,
            endpoint,
            metadata,
            max_decoding_message_size: self.max_decoding_message_size,
            max_encoding_message_size: self.max_encoding_message_size,
            retry: self.retry.clone(),
            disconnect_grace: self.disconnect_grace,
            has_token: self.has_token(),
        })
    }

    /// The bearer credentials, when a token is configured: refused over
    /// plaintext unless allowed ([`ClientError::InsecureCredentials`]).
    fn credentials(&self, tls: bool) -> Result<Option<BearerCredentials>, ClientError> {
        let builder = BearerCredentials::builder()
            .tls(tls)
            .allow_insecure(self.allow_insecure_auth)
            .header(self.auth_header_key.clone());
        let builder = match (&self.token, &self.token_file) {
            (Some(token), _) => builder.token(token.0.as_str()),
            (None, Some(path)) => builder.token_file(path.clone()),
            (None, None) => return Ok(None),
        };
        Ok(Some(builder.build()?))
    }
}

fn checked_pem(pem: &[u8], what: &str) -> Result<Certificate, ClientError> {
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(ClientError::InvalidOptions(format!(
            "{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
        )));
    }
    Ok(Certificate::from_pem(pem))
}

/// Flattens an error and its sources into one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Validated options, ready for the driver.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) uri: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) metadata: RequestMetadata,
    pub(crate) max_decoding_message_size: usize,
    pub(crate) max_encoding_message_size: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) disconnect_grace: Duration,
    pub(crate) has_token: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> Vec<u8> {
        let certs = flower_testkit::DevCertificates::generate();
        std::fs::read(certs.ca()).unwrap()
    }

    #[test]
    fn scheme_is_added_from_the_transport() {
        let p = ClientOptions::new("127.0.0.1:9092")
            .insecure()
            .prepare()
            .unwrap();
        assert_eq!(p.uri, "http://127.0.0.1:9092");
        let p = ClientOptions::new("[::1]:9092")
            .root_certificates_pem(ca_pem())
            .prepare()
            .unwrap();
        assert_eq!(p.uri, "https://[::1]:9092");
        assert!(ClientOptions::new("https://h:1")
            .insecure()
            .prepare()
            .is_err());
        assert!(ClientOptions::new("h").insecure().prepare().is_err());
        assert!(ClientOptions::new("").insecure().prepare().is_err());
    }

    #[test]
    fn token_needs_tls_unless_allowed() {
        let o = ClientOptions::new("127.0.0.1:1").insecure().token("t");
        assert!(matches!(o.prepare(), Err(ClientError::InsecureCredentials)));
        assert!(o.allow_insecure_auth().prepare().is_ok());
        let o = ClientOptions::new("127.0.0.1:1")
            .insecure()
            .token_file("/nonexistent/token");
        assert!(matches!(o.prepare(), Err(ClientError::InsecureCredentials)));
    }

    #[test]
    fn bad_tokens_are_invalid_options() {
        let tls = || ClientOptions::new("127.0.0.1:1").root_certificates_pem(ca_pem());
        for o in [
            tls().token(""),
            tls().token("two words"),
            tls().token("t").auth_header_key("bad key"),
            tls().token_file("/nonexistent/token"),
        ] {
            assert!(
                matches!(o.prepare(), Err(ClientError::InvalidOptions(_))),
                "{o:?}"
            );
        }
    }

    #[test]
    fn token_file_is_sent_and_reread() {
        use tonic::service::Interceptor as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n  first-token \n").unwrap();
        let o = ClientOptions::new("127.0.0.1:1")
            .root_certificates_pem(ca_pem())
            .token("ignored")
            .token_file(&path)
            .auth_header_key("X-Authorization");
        assert!(o.has_token());
        let mut metadata = o.prepare().unwrap().metadata;
        let sent = |m: &mut RequestMetadata| {
            let r = m.call(tonic::Request::new(())).unwrap();
            r.metadata()
                .get("x-authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(sent(&mut metadata), "Bearer first-token");
        std::fs::write(&path, "second-token-longer\n").unwrap();
        assert_eq!(sent(&mut metadata), "Bearer second-token-longer");
        assert!(!format!("{metadata:?}").contains("second-token"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let o = ClientOptions::new("127.0.0.1:1")
            .root_certificates_pem(ca_pem())
            .token("tok-123")
            .header("x-api-key", "key-456");
        let s = format!("{o:?}");
        assert!(!s.contains("tok-123") && !s.contains("key-456"), "{s}");
        let p = o.prepare().unwrap_or_else(|e| panic!("{e}"));
        let s = format!("{p:?}");
        assert!(!s.contains("tok-123") && !s.contains("key-456"), "{s}");
    }

    #[test]
    fn bad_pem_is_rejected() {
        let o = ClientOptions::new("127.0.0.1:1").root_certificates_pem("nope");
        assert!(matches!(o.prepare(), Err(ClientError::InvalidOptions(_))));
        let o = ClientOptions::new("127.0.0.1:1").root_certificates_file("/nonexistent/ca.pem");
        assert!(matches!(o.prepare(), Err(ClientError::InvalidOptions(_))));
    }
}
