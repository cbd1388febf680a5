//! The gRPC service for `flwr.proto.FlowerService/Join`.
//!
//! Each open `Join` stream is one registered client. A task per stream owns
//! the stream and runs exchanges strictly in lock-step: one `ServerMessage`
//! out, then one `ClientMessage` back. The stream closing for any reason
//! unregisters the client at once and fails the pending exchange.
//!
//! The request side uses tonic's decoder. The response side is written here:
//! instructions go out as already-encoded, shared [`Bytes`] (see
//! [`OutgoingMessage`]), so that sending one model to K clients neither
//! encodes it K times nor holds K copies in memory (tonic's encoder would copy
//! every message into a per-stream buffer).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use flower_core::ClientMessage;
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body::Frame;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::{info, warn};

use super::inbound::Inbound;
use super::stream::{Instruction, StreamTask};
use super::StreamError;
use crate::client_manager::ClientManager;
use crate::node::{ClientHandle, ExchangeError, OutgoingMessage};

/// Clients refused at `--max-clients`, logged a few per interval.
static CLIENT_LIMIT_REFUSALS: flower_auth::log_limit::LogLimiter =
    flower_auth::log_limit::LogLimiter::new(Duration::from_secs(10), 3);
/// The transport's name in metrics labels.
const NAME: &str = "grpc-bidi";

/// The Join service (a tower service for tonic's router).
///
/// When the auth layer accepted the call, the stream remembers which token
/// (fingerprint) it used and is closed with `UNAUTHENTICATED` as soon as a
/// reload revokes that token.
#[derive(Clone)]
pub struct FlowerTransport {
    manager: ClientManager,
    max_decoding_message_size: usize,
    max_encoding_message_size: usize,
    upload_idle_timeout: Duration,
}

impl std::fmt::Debug for FlowerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowerTransport")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl FlowerTransport {
    /// A transport registering its clients in `manager`, with Flower's
    /// default max message size (2,147,483,647 bytes) both ways.
    pub fn new(manager: ClientManager) -> Self {
        FlowerTransport {
            manager,
            max_decoding_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            max_encoding_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            upload_idle_timeout: super::serve::DEFAULT_UPLOAD_IDLE_TIMEOUT,
        }
    }

    /// Cuts a stream whose reply in progress has not progressed (64 KiB)
    /// for this long (default 30 s).
    #[must_use]
    pub fn upload_idle_timeout(mut self, timeout: Duration) -> Self {
        self.upload_idle_timeout = timeout;
        self
    }

    /// Sets the max message size, both ways.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_decoding_message_size = bytes;
        self.max_encoding_message_size = bytes;
        self
    }

    fn join<B>(&self, request: http::Request<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        if let Some(encoding) = request.headers().get("grpc-encoding") {
            if encoding != "identity" {
                let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
                return Status::from(StreamError::UnsupportedEncoding(encoding)).into_http();
            }
        }
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| {
                request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|i| i.get_ref().remote_addr())
            })
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let auth = request
            .extensions()
            .get::<flower_auth::AuthenticatedPeer>()
            .cloned();
        let token = auth.as_ref().map(|p| p.fingerprint().to_string());
        let revoked = auth.map(|p| p.revocation_future().boxed());

        let metrics = self.manager.metrics();
        let mut inbound = Inbound::new(
            crate::metrics::CountingBody::new(request.into_body(), metrics.bytes_received(NAME)),
            self.manager.upload_gate().clone(),
            self.max_decoding_message_size,
        );

        // Room for one exchange plus the fire-and-forget ReconnectIns, so
        // that shutdown's `try_send` never finds the channel full. The
        // ReconnectIns still waits for a pending reply: Python's client
        // crashes (`queue.Full`) if the next instruction is already there
        // when it sends its reply.
        let (ins_tx, ins_rx) = mpsc::channel(2);
        let handle = Arc::new(GrpcClient {
            instructions: ins_tx,
            peer: peer.clone(),
        });
        let Some(id) = self.manager.register(handle) else {
            if let Some(suppressed) = CLIENT_LIMIT_REFUSALS.admit() {
                warn!(%peer, suppressed, "refusing client: client limit reached");
            }
            return Status::from(StreamError::ClientLimit).into_http();
        };
        inbound.set_client(id);
        info!(client = %id, %peer, token = token.as_deref().unwrap_or("-"), connected = self.manager.len(), "client joined");
        let (out_tx, out_rx) = mpsc::channel(1);
        let manager = self.manager.clone();
        let max_out = self.max_encoding_message_size;
        let idle = self.upload_idle_timeout;
        tokio::spawn(async move {
            let end = StreamTask::new(inbound, ins_rx, out_tx, revoked, max_out, idle)
                .run()
                .await;
            manager.unregister(id);
            info!(client = %id, %peer, reason = %end, connected = manager.len(), "client left");
        });
        let body = JoinBody {
            outbound: out_rx,
            payload: None,
            done: false,
        };
        let sent = self.manager.metrics().bytes_sent(NAME);
        let mut response = http::Response::new(tonic::body::Body::new(
            crate::metrics::CountingBody::new(body, sent),
        ));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

impl<B> tower::Service<http::Request<B>> for FlowerTransport
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = if request.uri().path() == flower_proto::JOIN_PATH {
            self.join(request)
        } else {
            let path = request.uri().path().to_string();
            Status::from(StreamError::UnknownMethod(path)).into_http()
        };
        std::future::ready(Ok(response))
    }
}

impl tonic::server::NamedService for FlowerTransport {
    const NAME: &'static str = "flwr.proto.FlowerService";
}

/// Response body of one Join: gRPC length-prefixed frames of pre-encoded
/// messages (the shared payload is yielded as is, without a copy), then the
/// status in trailers.
struct JoinBody {
    outbound: mpsc::Receiver<Result<Bytes, Status>>,
    payload: Option<Bytes>,
    done: bool,
}

impl http_body::Body for JoinBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(payload) = self.payload.take() {
            return Poll::Ready(Some(Ok(Frame::data(payload))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let trailers = |status: Status| {
            let mut map = http::HeaderMap::new();
            if status.add_header(&mut map).is_err() {
                map.insert("grpc-status", http::HeaderValue::from_static("13"));
            }
            Frame::trailers(map)
        };
        match self.outbound.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let mut prefix = BytesMut::with_capacity(5);
                prefix.put_u8(0); // not compressed
                prefix.put_u32(message.len() as u32);
                self.payload = Some(message);
                Poll::Ready(Some(Ok(Frame::data(prefix.freeze()))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(status))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(Status::ok("")))))
            }
        }
    }
}

/// [`ClientHandle`] of one gRPC stream.
struct GrpcClient {
    instructions: mpsc::Sender<Instruction>,
    peer: String,
}

impl ClientHandle for GrpcClient {
    fn exchange(
        &self,
        message: Arc<OutgoingMessage>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>> {
        let (tx, rx) = oneshot::channel();
        let instruction = Instruction {
            message,
            timeout,
            reply: Some(tx),
        };
        let sender = self.instructions.clone();
        async move {
            sender
                .send(instruction)
                .await
                .map_err(|_| ExchangeError::Closed("stream already closed".into()))?;
            rx.await
                .unwrap_or_else(|_| Err(ExchangeError::Closed("stream closed".into())))
        }
        .boxed()
    }

    fn send_only(&self, message: Arc<OutgoingMessage>) {
        let instruction = Instruction {
            message,
            timeout: None,
            reply: None,
        };
        let _ = self.instructions.try_send(instruction);
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn transport(&self) -> &'static str {
        NAME
    }
}
