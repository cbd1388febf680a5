//! Server side: a tower [`Layer`] that checks `Bearer` tokens before any
//! gRPC handler runs.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{ready, Either, Ready};
use tower::{Layer, Service};

use crate::log_limit::{truncate_for_log, LogLimiter};
use crate::secret::Fingerprint;
use crate::token_set::TokenStore;

/// Metadata keys that may carry the credentials, in the order they are
/// tried. `authorization` is what ai4flwr 0.2.0 sends, `x-authorization` what
/// its later source sends (and what survives proxies that consume
/// `authorization` themselves).
pub const AUTH_HEADERS: [&str; 2] = ["authorization", "x-authorization"];

/// gRPC message of every refusal, as in ai4flwr.
pub const INVALID_TOKEN_MESSAGE: &str = "Invalid token";

/// Suffix of the method names that skip authentication.
pub const UNAUTHENTICATED_SUFFIX: &str = "Unauthenticated";

/// The `Status` every refused call (and every revoked stream) ends with:
/// `UNAUTHENTICATED`, `Invalid token`.
#[must_use]
pub fn invalid_token_status() -> tonic::Status {
    tonic::Status::unauthenticated(INVALID_TOKEN_MESSAGE)
}

/// True when the method of a gRPC path (`/package.Service/Method`) ends in
/// `Unauthenticated` and therefore bypasses the check.
#[must_use]
pub fn bypasses_auth(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|method| method.ends_with(UNAUTHENTICATED_SUFFIX))
}

/// Tower layer adding bearer-token authentication to a tonic server:
///
/// ```no_run
/// # async fn run(store: flower_auth::TokenStore) -> Result<(), Box<dyn std::error::Error>> {
/// # let routes = tonic::service::Routes::default();
/// tonic::transport::Server::builder()
///     .layer(flower_auth::AuthLayer::new(store))
///     .add_routes(routes)
///     .serve("127.0.0.1:8080".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
///
/// Every call whose method does not end in `Unauthenticated` must carry
/// `Bearer <token>` in `authorization` or `x-authorization`, with a token of
/// the store's current set. Anything else (no header, empty, wrong scheme,
/// unknown token) is answered at once, before the handler runs and without
/// waiting for a request message, with a trailers-only response
/// `UNAUTHENTICATED` / `Invalid token`. Accepted calls get an
/// [`AuthenticatedPeer`](crate::AuthenticatedPeer) in their extensions.
#[derive(Clone)]
pub struct AuthLayer {
    store: TokenStore,
    refusals: Arc<LogLimiter>,
}

impl AuthLayer {
    /// A layer checking tokens against `store` (which may be reloaded at any
    /// time; every call sees the set current when it arrives).
    #[must_use]
    pub fn new(store: TokenStore) -> Self {
        Self {
            store,
            refusals: Arc::new(LogLimiter::new(REFUSAL_LOG_INTERVAL, REFUSAL_LOG_BURST)),
        }
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("tokens", &self.store.len())
            .finish()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            store: self.store.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    store: TokenStore,
    refusals: Arc<LogLimiter>,
}

impl<S> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("tokens", &self.store.len())
            .finish_non_exhaustive()
    }
}

/// Why a call was refused (for logs; the client always sees the same status).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Missing,
    Malformed,
    Unknown(Fingerprint),
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if bypasses_auth(path) {
            tracing::debug!(method = %truncate_for_log(path), "method bypasses authentication");
            return Either::Right(self.inner.call(request));
        }
        match check(&self.store, request.headers()) {
            Ok(peer) => {
                tracing::debug!(
                    method = %truncate_for_log(path),
                    peer = %DisplayPeer(remote_addr(&request)),
                    token = %peer.fingerprint(),
                    "authenticated call"
                );
                request.extensions_mut().insert(peer);
                Either::Right(self.inner.call(request))
            }
            Err(refusal) => {
                self.store.stats().refused(match &refusal {
                    Refusal::Missing => crate::RefusalReason::Missing,
                    Refusal::Malformed => crate::RefusalReason::Malformed,
                    Refusal::Unknown(_) => crate::RefusalReason::Unknown,
                });
                if let Some(suppressed) = self.refusals.admit() {
                    log_refusal(refusal, path, remote_addr(&request), suppressed);
                }
                Either::Left(ready(Ok(invalid_token_status().into_http())))
            }
        }
    }
}

/// Refused calls logged per interval (per layer, i.e. per server); the rest
/// are counted, and the next line logged reports the count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// See [`REFUSAL_LOG_INTERVAL`].
const REFUSAL_LOG_BURST: u32 = 5;

fn log_refusal(refusal: Refusal, path: &str, peer: Option<SocketAddr>, suppressed: u64) {
    if suppressed > 0 {
        tracing::warn!(
            suppressed,
            "{suppressed} more calls were refused (not logged: at most {REFUSAL_LOG_BURST} lines per {} s)",
            REFUSAL_LOG_INTERVAL.as_secs()
        );
    }
    let method = truncate_for_log(path);
    let peer = DisplayPeer(peer);
    match refusal {
        Refusal::Missing => {
            tracing::warn!(method = %method, %peer, "refused call: no bearer token")
        }
        Refusal::Malformed => tracing::warn!(
            method = %method,
            %peer,
            "refused call: malformed authorization header"
        ),
        Refusal::Unknown(fp) => tracing::warn!(
            method = %method,
            %peer,
            token = %fp,
            "refused call: unknown or revoked token"
        ),
    }
}

/// Looks for a valid `Bearer` token in any of the [`AUTH_HEADERS`].
fn check(
    store: &TokenStore,
    headers: &http::HeaderMap,
) -> Result<crate::AuthenticatedPeer, Refusal> {
    let mut refusal = Refusal::Missing;
    for name in AUTH_HEADERS {
        for value in headers.get_all(name) {
            match bearer_token(value.as_bytes()) {
                None => {
                    if matches!(refusal, Refusal::Missing) {
                        refusal = Refusal::Malformed;
                    }
                }
                Some(token) => match store.authenticate(token) {
                    Some(peer) => return Ok(peer),
                    None => refusal = Refusal::Unknown(Fingerprint::of(token)),
                },
            }
        }
    }
    Err(refusal)
}

/// Extracts `<token>` from `Bearer <token>` (scheme case-insensitive, one
/// space, non-empty token without whitespace). `None` when malformed.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(token)
}

fn remote_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

struct DisplayPeer(Option<SocketAddr>);

impl fmt::Display for DisplayPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer  "), None);
        assert_eq!(bearer_token(b"Bearer  abc"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b""), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
    }

    #[test]
    fn bypass_suffix() {
        assert!(bypasses_auth("/pkg.Svc/PingUnauthenticated"));
        assert!(!bypasses_auth("/flwr.proto.FlowerService/Join"));
        assert!(!bypasses_auth("/pkg.SvcUnauthenticated/Join"));
        assert!(!bypasses_auth(""));
    }
}
