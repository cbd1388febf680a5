//! The server and client side of the tests: a minimal real `FlowerService`,
//! a real tonic server behind the auth layer (plain or TLS) and tonic
//! clients, with bounded waits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flower_auth::{close_on_revocation, AuthLayer, AuthenticatedPeer, Fingerprint};
use flower_proto::flower_service_client::FlowerServiceClient;
use flower_proto::flower_service_server::{FlowerService, FlowerServiceServer};
use flower_proto::{server_message, ClientMessage, ServerMessage};
use flower_testkit::DevCertificates;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Upper bound of every wait in the tests.
pub(crate) const BOUND: Duration = Duration::from_secs(5);

/// A Join handler in the spirit of Flower's: the server speaks first
/// (one `GetPropertiesIns` as soon as the stream opens), then answers every
/// client message with another one. The outbound stream is closed with
/// `UNAUTHENTICATED` when the token is revoked.
#[derive(Debug, Clone, Default)]
pub(crate) struct TestService {
    /// Fingerprints of the tokens that opened streams, in order.
    pub(crate) joined: Arc<Mutex<Vec<Option<Fingerprint>>>>,
}

type JoinStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

pub(crate) fn get_properties() -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::GetPropertiesIns(
            server_message::GetPropertiesIns::default(),
        )),
    }
}

#[tonic::async_trait]
impl FlowerService for TestService {
    type JoinStream = JoinStream;

    async fn join(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = AuthenticatedPeer::from_request(&request);
        self.joined
            .lock()
            .unwrap()
            .push(peer.as_ref().map(AuthenticatedPeer::fingerprint));
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(get_properties())).await.ok();
        tokio::spawn(async move {
            while let Ok(Some(_msg)) = inbound.message().await {
                if tx.send(Ok(get_properties())).await.is_err() {
                    break;
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(close_on_revocation(out, peer))))
    }
}

/// A running tonic server; shut down (gracefully, bounded) on drop.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) service: TestService,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the test service behind `layer` on a free loopback port, with TLS
/// when `certs` is given.
pub(crate) async fn start_server(layer: AuthLayer, certs: Option<&DevCertificates>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = TestService::default();
    let mut builder = Server::builder();
    if let Some(certs) = certs {
        let identity = Identity::from_pem(
            std::fs::read(certs.cert()).unwrap(),
            std::fs::read(certs.key()).unwrap(),
        );
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    let (tx, rx) = oneshot::channel::<()>();
    let router = builder
        .layer(layer)
        .add_service(FlowerServiceServer::new(service.clone()));
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    TestServer {
        addr,
        service,
        shutdown: Some(tx),
    }
}

/// A connected channel to `server` (TLS, checking the test CA, when `certs`
/// is given).
pub(crate) async fn channel(server: &TestServer, certs: Option<&DevCertificates>) -> Channel {
    let endpoint = match certs {
        Some(certs) => Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(certs.ca()).unwrap()))
                    .domain_name("localhost"),
            )
            .unwrap(),
        None => Channel::from_shared(format!("http://{}", server.addr)).unwrap(),
    };
    tokio::time::timeout(BOUND, endpoint.connect_timeout(BOUND).connect())
        .await
        .expect("connect within bound")
        .expect("connect")
}

/// An interceptor that puts `value` under `key` verbatim (for malformed
/// headers), or nothing when `key` is `None`.
pub(crate) fn raw_header(
    entry: Option<(&'static str, &'static str)>,
) -> impl Interceptor + Clone + Send + 'static {
    move |mut req: Request<()>| {
        if let Some((key, value)) = entry {
            req.metadata_mut().insert(key, value.parse().unwrap());
        }
        Ok(req)
    }
}

/// Opens a Join stream WITHOUT ever sending a client message (a Flower
/// client never sends first), bounded by [`BOUND`]. `Ok` carries the inbound
/// stream; the outbound sender is returned so that the caller can send.
pub(crate) async fn join<I>(
    channel: Channel,
    interceptor: I,
) -> Result<(Streaming<ServerMessage>, mpsc::Sender<ClientMessage>), Status>
where
    I: Interceptor + Send + 'static,
{
    let mut client = FlowerServiceClient::with_interceptor(channel, interceptor);
    let (tx, rx) = mpsc::channel::<ClientMessage>(4);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let response = tokio::time::timeout(BOUND, client.join(outbound))
        .await
        .map_err(|_| Status::deadline_exceeded("test bound: no answer to Join within 5 s"))??;
    Ok((response.into_inner(), tx))
}

/// Asserts that `result` is the auth layer's refusal.
pub(crate) fn assert_refused<T>(result: Result<T, Status>) {
    match result {
        Ok(_) => panic!("call was accepted, expected UNAUTHENTICATED"),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), "Invalid token");
        }
    }
}

/// Waits (bounded) for the next server message, panicking on error.
pub(crate) async fn next_message(inbound: &mut Streaming<ServerMessage>) -> ServerMessage {
    tokio::time::timeout(BOUND, inbound.message())
        .await
        .expect("message within bound")
        .expect("stream ok")
        .expect("stream not closed")
}

/// Waits (bounded) for the stream to fail and asserts it was closed with
/// `UNAUTHENTICATED` / `Invalid token`.
pub(crate) async fn assert_closed_unauthenticated(inbound: &mut Streaming<ServerMessage>) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let next = tokio::time::timeout_at(deadline, inbound.message())
            .await
            .expect("stream closed within bound");
        match next {
            Ok(Some(_)) => continue, // a message already in flight
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                assert_eq!(status.message(), "Invalid token");
                return;
            }
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `bound` passes.
pub(crate) async fn eventually<F, Fut>(bound: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
