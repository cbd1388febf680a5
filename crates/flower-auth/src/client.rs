//! Client side: call credentials adding `Bearer <token>` to every call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

use crate::error::AuthError;
use crate::secret::{Fingerprint, SecretString};

/// Default metadata key the client sends the token in (what ai4flwr 0.2.0
/// sends; the server accepts it and `x-authorization`).
pub const DEFAULT_CLIENT_HEADER: &str = "authorization";

/// Refuses a plaintext transport for credentials unless explicitly allowed.
/// Call it with whether the channel uses TLS (an `https` endpoint or a TLS
/// config) before attaching [`BearerCredentials`].
///
/// # Errors
/// [`AuthError::InsecureTransport`] when `tls` is false and
/// `allow_insecure` is false.
pub fn ensure_secure_transport(tls: bool, allow_insecure: bool) -> Result<(), AuthError> {
    if tls {
        Ok(())
    } else if allow_insecure {
        tracing::warn!(
            "sending a bearer token over a plaintext connection (insecure authentication \
             explicitly allowed)"
        );
        Ok(())
    } else {
        Err(AuthError::InsecureTransport)
    }
}

/// True when `uri` names a TLS endpoint (`https` scheme).
#[must_use]
pub fn is_tls_uri(uri: &http::Uri) -> bool {
    uri.scheme_str() == Some("https")
}

/// Where the credentials get their token.
#[derive(Clone)]
enum TokenValue {
    Fixed(MetadataValue<Ascii>, Fingerprint),
    File(Arc<FileToken>),
}

/// A token file, re-read when its modification time or size changes.
struct FileToken {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    stamp: Option<(SystemTime, u64)>,
    value: MetadataValue<Ascii>,
    fingerprint: Fingerprint,
    /// A re-read failed and was logged; not logged again until it works.
    failing: bool,
}

fn file_stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

/// Reads the token from a file: its first non-blank line, trimmed.
fn read_token_file(path: &Path) -> Result<SecretString, AuthError> {
    let content = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    content
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(SecretString::new)
        .ok_or_else(|| AuthError::NoTokens {
            source_description: format!("token file {}", path.display()),
        })
}

fn header_value(token: &SecretString) -> Result<MetadataValue<Ascii>, AuthError> {
    if token.is_empty() {
        return Err(AuthError::InvalidToken {
            reason: "the client token is empty".into(),
        });
    }
    if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::InvalidToken {
            reason: "the client token contains whitespace or non-printable characters".into(),
        });
    }
    let mut value =
        MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
            AuthError::InvalidToken {
                reason: "the client token is not a valid header value".into(),
            }
        })?;
    // Keeps it out of HPACK tables and out of `Debug` output.
    value.set_sensitive(true);
    Ok(value)
}

impl FileToken {
    fn current(&self) -> (MetadataValue<Ascii>, Fingerprint) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = file_stamp(&self.path)
            .map_err(|source| AuthError::TokenFile {
                path: self.path.clone(),
                source,
            })
            .and_then(|stamp| {
                if state.stamp == Some(stamp) {
                    return Ok(None);
                }
                let token = read_token_file(&self.path)?;
                Ok(Some((stamp, header_value(&token)?, token.fingerprint())))
            });
        match result {
            Ok(None) => {}
            Ok(Some((stamp, value, fingerprint))) => {
                if fingerprint != state.fingerprint {
                    tracing::info!(
                        path = %self.path.display(),
                        token = %fingerprint,
                        "client token file changed; using the new token"
                    );
                }
                state.value = value;
                state.fingerprint = fingerprint;
                state.stamp = Some(stamp);
                state.failing = false;
            }
            Err(err) => {
                if !state.failing {
                    tracing::warn!(
                        error = %err,
                        "cannot re-read the client token file; keeping the previous token"
                    );
                    state.failing = true;
                }
            }
        }
        (state.value.clone(), state.fingerprint)
    }
}

/// Call credentials: a tonic [`Interceptor`](tonic::service::Interceptor)
/// adding `Bearer <token>` under `authorization` (or a configured key) to
/// every call.
///
/// ```no_run
/// # fn f(channel: tonic::transport::Channel) -> Result<(), flower_auth::AuthError> {
/// let creds = flower_auth::BearerCredentials::builder()
///     .token("my-token")
///     .tls(true) // the channel uses TLS
///     .build()?;
/// // FlowerServiceClient::with_interceptor(channel, creds)
/// # let _ = (channel, creds); Ok(()) }
/// ```
///
/// Building fails unless the transport is declared TLS or insecure
/// authentication is explicitly allowed. With [`token_file`](BearerCredentialsBuilder::token_file)
/// the file is checked (mtime and size) at every call and re-read when it
/// changed.
#[derive(Clone)]
pub struct BearerCredentials {
    header: MetadataKey<Ascii>,
    token: TokenValue,
}

impl BearerCredentials {
    /// A builder (defaults: header `authorization`, TLS not declared,
    /// insecure not allowed).
    pub fn builder() -> BearerCredentialsBuilder {
        BearerCredentialsBuilder::default()
    }

    /// Metadata key the token is sent in.
    #[must_use]
    pub fn header(&self) -> &str {
        self.header.as_str()
    }

    /// Fingerprint of the token currently sent.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        match &self.token {
            TokenValue::Fixed(_, fp) => *fp,
            TokenValue::File(file) => file.current().1,
        }
    }

    fn value(&self) -> MetadataValue<Ascii> {
        match &self.token {
            TokenValue::Fixed(value, _) => value.clone(),
            TokenValue::File(file) => file.current().0,
        }
    }
}

impl tonic::service::Interceptor for BearerCredentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = self.value();
        request.metadata_mut().insert(self.header.clone(), value);
        Ok(request)
    }
}

impl fmt::Debug for BearerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("BearerCredentials");
        s.field("header", &self.header.as_str());
        match &self.token {
            TokenValue::Fixed(_, fp) => s.field("token", fp),
            TokenValue::File(file) => s.field("token_file", &file.path),
        };
        s.finish()
    }
}

/// Builder of [`BearerCredentials`].
#[derive(Clone, Default)]
#[must_use]
pub struct BearerCredentialsBuilder {
    token: Option<SecretString>,
    token_file: Option<PathBuf>,
    header: Option<String>,
    tls: bool,
    allow_insecure: bool,
}

impl BearerCredentialsBuilder {
    /// The token to send.
    pub fn token(mut self, token: impl Into<SecretString>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Read the token from this file (first non-blank line, trimmed) and
    /// re-read it whenever the file changes.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Metadata key to send the token in (default `authorization`; the
    /// server also accepts `x-authorization`).
    pub fn header(mut self, key: impl Into<String>) -> Self {
        self.header = Some(key.into());
        self
    }

    /// Whether the channel the credentials go over uses TLS (default: no).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Allow sending the token over plaintext (default: no; test use only).
    pub fn allow_insecure(mut self, allow: bool) -> Self {
        self.allow_insecure = allow;
        self
    }

    /// Checks and builds the credentials.
    ///
    /// # Errors
    /// [`AuthError::InsecureTransport`] (see [`ensure_secure_transport`]),
    /// [`AuthError::Config`] with no or two token origins,
    /// [`AuthError::InvalidHeaderName`], [`AuthError::InvalidToken`],
    /// [`AuthError::TokenFile`] / [`AuthError::NoTokens`] for the file.
    pub fn build(self) -> Result<BearerCredentials, AuthError> {
        ensure_secure_transport(self.tls, self.allow_insecure)?;
        let name = self
            .header
            .unwrap_or_else(|| DEFAULT_CLIENT_HEADER.to_owned())
            .to_ascii_lowercase();
        if name.ends_with("-bin") || name.starts_with("grpc-") || name.starts_with(':') {
            return Err(AuthError::InvalidHeaderName(name));
        }
        let header = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| AuthError::InvalidHeaderName(name.clone()))?;
        let token = match (self.token, self.token_file) {
            (Some(token), None) => TokenValue::Fixed(header_value(&token)?, token.fingerprint()),
            (None, Some(path)) => {
                let stamp = file_stamp(&path).ok();
                let token = read_token_file(&path)?;
                TokenValue::File(Arc::new(FileToken {
                    state: Mutex::new(FileState {
                        stamp,
                        value: header_value(&token)?,
                        fingerprint: token.fingerprint(),
                        failing: false,
                    }),
                    path,
                }))
            }
            (None, None) => {
                return Err(AuthError::Config(
                    "client credentials need a token or a token file".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(AuthError::Config(
                    "give either a client token or a token file, not both".into(),
                ))
            }
        };
        Ok(BearerCredentials { header, token })
    }
}

impl fmt::Debug for BearerCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerCredentialsBuilder")
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("header", &self.header)
            .field("tls", &self.tls)
            .field("allow_insecure", &self.allow_insecure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn sent(creds: &mut BearerCredentials) -> String {
        let req = creds.call(tonic::Request::new(())).unwrap();
        req.metadata()
            .get(creds.header())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn refuses_plaintext_unless_allowed() {
        assert!(matches!(
            BearerCredentials::builder().token("t").build(),
            Err(AuthError::InsecureTransport)
        ));
        assert!(BearerCredentials::builder()
            .token("t")
            .allow_insecure(true)
            .build()
            .is_ok());
        assert!(ensure_secure_transport(true, false).is_ok());
        assert!(ensure_secure_transport(false, false).is_err());
        assert!(is_tls_uri(&"https://h:1".parse().unwrap()));
        assert!(!is_tls_uri(&"http://h:1".parse().unwrap()));
    }

    #[test]
    fn adds_bearer_header() {
        let mut c = BearerCredentials::builder()
            .token("abc")
            .tls(true)
            .build()
            .unwrap();
        assert_eq!(c.header(), "authorization");
        assert_eq!(sent(&mut c), "Bearer abc");
        let mut c = BearerCredentials::builder()
            .token("abc")
            .header("X-Authorization")
            .tls(true)
            .build()
            .unwrap();
        assert_eq!(c.header(), "x-authorization");
        assert_eq!(sent(&mut c), "Bearer abc");
        // (Not `contains("abc")`: the fingerprint is hex and may contain it.)
        assert!(!format!("{c:?}").contains("Bearer abc"));
        let secret = BearerCredentials::builder()
            .token("not-hex-secret")
            .tls(true)
            .build()
            .unwrap();
        assert!(!format!("{secret:?}").contains("not-hex-secret"));
        assert!(BearerCredentials::builder()
            .token("a b")
            .tls(true)
            .build()
            .is_err());
        assert!(BearerCredentials::builder()
            .token("")
            .tls(true)
            .build()
            .is_err());
        assert!(BearerCredentials::builder()
            .token("a")
            .header("bad header")
            .tls(true)
            .build()
            .is_err());
    }

    #[test]
    fn token_file_is_reread_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n  first \n").unwrap();
        let mut c = BearerCredentials::builder()
            .token_file(&path)
            .tls(true)
            .build()
            .unwrap();
        assert_eq!(sent(&mut c), "Bearer first");
        // A different size guarantees a changed stamp even within one mtime tick.
        std::fs::write(&path, "second-token\n").unwrap();
        assert_eq!(sent(&mut c), "Bearer second-token");
        assert_eq!(c.fingerprint(), Fingerprint::of("second-token"));
        // Unreadable: keep the last good token.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sent(&mut c), "Bearer second-token");
        assert!(BearerCredentials::builder()
            .token_file(dir.path().join("missing"))
            .tls(true)
            .build()
            .is_err());
    }
}
