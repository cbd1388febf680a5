//! The server layer with a real tonic server and client on loopback: good
//! tokens pass, every kind of bad credential is refused at once on a Join
//! stream whose client never sends, `...Unauthenticated` methods bypass.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flower_auth::{
    AuthLayer, AuthenticatedPeer, BearerCredentials, Fingerprint, TokenSet, TokenStore,
};
use flower_testkit::DevCertificates;
use http_body::Body as _;
use tower::{Layer, Service, ServiceExt};

use crate::harness::*;

const GOOD: &str = "good-token-0123456789";
const OTHER: &str = "other-token-abcdef";

fn store() -> TokenStore {
    TokenStore::from_tokens([GOOD, OTHER]).unwrap()
}

fn creds(token: &str, header: &str, tls: bool) -> BearerCredentials {
    BearerCredentials::builder()
        .token(token)
        .header(header)
        .tls(tls)
        .allow_insecure(!tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn good_token_passes_in_either_header() {
    let server = start_server(AuthLayer::new(store()), None).await;
    for header in ["authorization", "x-authorization"] {
        let (mut inbound, _tx) = join(channel(&server, None).await, creds(GOOD, header, false))
            .await
            .unwrap_or_else(|s| panic!("{header}: {s:?}"));
        // The server speaks first; the client has sent nothing.
        next_message(&mut inbound).await;
    }
    assert_eq!(
        *server.service.joined.lock().unwrap(),
        vec![Some(Fingerprint::of(GOOD)), Some(Fingerprint::of(GOOD))]
    );
}

#[tokio::test]
async fn good_token_passes_over_tls_and_stream_works() {
    let certs = DevCertificates::generate();
    let server = start_server(AuthLayer::new(store()), Some(&certs)).await;
    let (mut inbound, tx) = join(
        channel(&server, Some(&certs)).await,
        creds(OTHER, "authorization", true),
    )
    .await
    .expect("accepted over TLS");
    next_message(&mut inbound).await;
    tx.send(flower_proto::ClientMessage::default())
        .await
        .unwrap();
    next_message(&mut inbound).await;
    assert_eq!(
        *server.service.joined.lock().unwrap(),
        vec![Some(Fingerprint::of(OTHER))]
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_at_once_on_a_silent_join() {
    let server = start_server(AuthLayer::new(store()), None).await;
    let cases: [Option<(&'static str, &'static str)>; 10] = [
        None,
        Some(("authorization", "")),
        Some(("authorization", "Basic x")),
        Some(("authorization", "Bearer")),
        Some(("authorization", "Bearer ")),
        Some(("authorization", "Bearer  ")),
        Some(("authorization", "Bearer wrong-token")),
        Some(("x-authorization", "Bearer wrong-token")),
        Some(("authorization", "good-token-0123456789")),
        Some(("x-other", "Bearer good-token-0123456789")),
    ];
    for case in cases {
        let started = Instant::now();
        let result = join(channel(&server, None).await, raw_header(case)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{case:?} took {:?}",
            started.elapsed()
        );
        match &result {
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                panic!("{case:?}: the client hung instead of being refused")
            }
            _ => assert_refused(result),
        }
    }
    assert!(
        server.service.joined.lock().unwrap().is_empty(),
        "the handler must never run for a refused call"
    );
}

#[tokio::test]
async fn bad_token_is_refused_over_tls() {
    let certs = DevCertificates::generate();
    let server = start_server(AuthLayer::new(store()), Some(&certs)).await;
    let started = Instant::now();
    let result = join(
        channel(&server, Some(&certs)).await,
        creds("not-a-valid-token", "authorization", true),
    )
    .await;
    assert_refused(result);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn x_authorization_wins_over_a_foreign_authorization_header() {
    // A proxy in front may use `authorization` for itself.
    let server = start_server(AuthLayer::new(store()), None).await;
    let interceptor = |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", "Basic cHJveHk6cHc=".parse().unwrap());
        req.metadata_mut()
            .insert("x-authorization", format!("Bearer {GOOD}").parse().unwrap());
        Ok(req)
    };
    let (mut inbound, _tx) = join(channel(&server, None).await, interceptor)
        .await
        .expect("accepted");
    next_message(&mut inbound).await;
}

#[tokio::test]
async fn revoking_a_token_closes_its_live_stream_only() {
    let store = store();
    let server = start_server(AuthLayer::new(store.clone()), None).await;
    let (mut doomed, _tx1) = join(
        channel(&server, None).await,
        creds(GOOD, "authorization", false),
    )
    .await
    .unwrap();
    let (mut kept, tx2) = join(
        channel(&server, None).await,
        creds(OTHER, "authorization", false),
    )
    .await
    .unwrap();
    next_message(&mut doomed).await;
    next_message(&mut kept).await;

    let outcome = store.replace(TokenSet::from_tokens([OTHER]).unwrap());
    assert_eq!(outcome.removed, vec![Fingerprint::of(GOOD)]);
    assert_closed_unauthenticated(&mut doomed).await;

    // The other stream is untouched and still answers.
    tx2.send(flower_proto::ClientMessage::default())
        .await
        .unwrap();
    next_message(&mut kept).await;
    // A new call with the revoked token is refused.
    assert_refused(
        join(
            channel(&server, None).await,
            creds(GOOD, "authorization", false),
        )
        .await,
    );
}

/// Tower-level checks with a fake inner service: bypass by method name,
/// trailers-only refusal, the guard in the extensions.
#[tokio::test]
async fn tower_level_bypass_and_trailers_only_refusal() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_peer = Arc::new(std::sync::Mutex::new(None::<Fingerprint>));
    let inner = {
        let calls = Arc::clone(&calls);
        let seen_peer = Arc::clone(&seen_peer);
        tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            *seen_peer.lock().unwrap() = req
                .extensions()
                .get::<AuthenticatedPeer>()
                .map(AuthenticatedPeer::fingerprint);
            async { Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default())) }
        })
    };
    let mut svc = AuthLayer::new(store()).layer(inner);
    let request = |path: &str, auth: Option<&str>| {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(tonic::body::Body::default()).unwrap()
    };

    // Bypass: no header, method ending in Unauthenticated.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(request("/pkg.Service/PingUnauthenticated", None))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(resp.headers().get("grpc-status").is_none());
    assert_eq!(*seen_peer.lock().unwrap(), None);

    // Refused: trailers-only response, inner service not called.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(request("/pkg.Service/Ping", None))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "16");
    // gRPC percent-encodes the message on the wire.
    assert_eq!(resp.headers()["grpc-message"], "Invalid%20token");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert!(resp.body().is_end_stream(), "trailers-only: no body");

    // Also refused: the service name (not the method) ends in Unauthenticated.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(request("/pkg.ServiceUnauthenticated/Ping", None))
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "16");

    // Accepted: the guard is in the extensions.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(request(
            "/pkg.Service/Ping",
            Some(&format!("Bearer {OTHER}")),
        ))
        .await
        .unwrap();
    assert!(resp.headers().get("grpc-status").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(*seen_peer.lock().unwrap(), Some(Fingerprint::of(OTHER)));
}
