//! flower-auth: the bearer-token check of the server's tower layer.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use flower_auth::{AuthLayer, AuthenticatedPeer, Fingerprint, TokenStore};
use futures::FutureExt as _;
use tower::{Layer as _, Service};

/// The tokens the fuzzed server accepts (they appear in the seed corpus; the
/// fuzzer cannot find them through the SHA-256 comparison).
const TOKENS: [&str; 2] = ["fuzz-token-1", "T0k3n/with+odd=chars!"];

const DEFAULT_PATH: &str = "/flwr.proto.FlowerService/Join";

/// Header names a line of the input may set, chosen by its first byte.
const NAMES: [&str; 4] = [
    "authorization",
    "x-authorization",
    "authorization",
    "x-other",
];

fn store() -> TokenStore {
    static STORE: OnceLock<TokenStore> = OnceLock::new();
    STORE
        .get_or_init(|| TokenStore::from_tokens(TOKENS).expect("valid tokens"))
        .clone()
}

/// The handler behind the layer: answers 200 and reports the peer the layer
/// attached.
#[derive(Clone, Copy)]
struct Inner;

/// Marker that the inner service ran, with the fingerprint it was given.
#[derive(Clone, Copy)]
struct Called(Option<Fingerprint>);

impl Service<http::Request<()>> for Inner {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<AuthenticatedPeer>()
            .map(AuthenticatedPeer::fingerprint);
        let mut response = http::Response::new(String::new());
        response.extensions_mut().insert(Called(peer));
        ready(Ok(response))
    }
}

/// Reference model of the check: `Bearer <token>` (scheme in any case, one
/// space) with a known token, first match in header order.
fn model_token(value: &[u8]) -> Option<&'static str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    TOKENS.into_iter().find(|t| *t == token)
}

/// One call through [`AuthLayer`]. Input: the first line is the request's
/// URI (a default gRPC path when it does not parse); each further line is a
/// header, its first byte choosing the name (`authorization`,
/// `x-authorization`, or another) and the rest its value. Oracle: the call
/// reaches the handler exactly when the method bypasses auth or the
/// reference model accepts a header, with that token's fingerprint;
/// otherwise the answer is gRPC `UNAUTHENTICATED`.
pub fn auth_header(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let uri = lines
        .next()
        .and_then(|l| http::Uri::try_from(l).ok())
        .filter(|u| u.path().starts_with('/'))
        .unwrap_or_else(|| http::Uri::from_static(DEFAULT_PATH));
    let mut request = http::Request::new(());
    *request.uri_mut() = uri;
    let mut auth_values: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    for line in lines {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = NAMES[usize::from(selector) % NAMES.len()];
        if let Some(slot) = ["authorization", "x-authorization"]
            .iter()
            .position(|n| *n == name)
        {
            auth_values[slot].push(value.as_bytes().to_vec());
        }
        request.headers_mut().append(name, value);
    }
    let path = request.uri().path().to_owned();
    let bypass = path
        .rsplit('/')
        .next()
        .is_some_and(|m| m.ends_with("Unauthenticated"));
    let accepted = auth_values.iter().flatten().find_map(|v| model_token(v));

    let mut service = AuthLayer::new(store()).layer(Inner);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(service.poll_ready(&mut cx).is_ready());
    let response = service
        .call(request)
        .now_or_never()
        .expect("the auth check answers synchronously")
        .unwrap_or_else(|never| match never {});
    let called = response.extensions().get::<Called>().copied();
    if bypass {
        assert!(called.is_some(), "{path} bypasses auth but was refused");
        return;
    }
    match accepted {
        Some(token) => {
            let Some(Called(peer)) = called else {
                panic!("a valid token ({token}) was refused");
            };
            assert!(
                peer == Some(Fingerprint::of(token)),
                "the call was attributed to another token than the first valid one"
            );
        }
        None => {
            assert!(called.is_none(), "a call without a valid token got through");
            assert_eq!(
                response
                    .headers()
                    .get("grpc-status")
                    .map(http::HeaderValue::as_bytes),
                Some(&b"16"[..]),
                "a refusal is not UNAUTHENTICATED"
            );
        }
    }
}
