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
use flower_proto as pb;
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body::Frame;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::client_manager::ClientManager;
use crate::exchange::{ClientHandle, ExchangeError, OutgoingMessage};
use crate::inbound::Inbound;

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
        }
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
                return Status::unimplemented(format!(
                    "message compression {encoding:?} is not supported"
                ))
                .into_http();
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

        let mut inbound = Inbound::new(
            request.into_body(),
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
            warn!(%peer, "refusing client: connection limit reached");
            return Status::resource_exhausted("the server's configured client limit is reached")
                .into_http();
        };
        inbound.set_client(id);
        info!(client = id, %peer, token = token.as_deref().unwrap_or("-"), connected = self.manager.len(), "client joined");
        let (out_tx, out_rx) = mpsc::channel(1);
        let manager = self.manager.clone();
        let max_out = self.max_encoding_message_size;
        tokio::spawn(async move {
            let end = drive_stream(inbound, ins_rx, out_tx, revoked, max_out).await;
            manager.unregister(id);
            info!(client = id, %peer, reason = %end, connected = manager.len(), "client left");
        });
        let mut response = http::Response::new(tonic::body::Body::new(JoinBody {
            outbound: out_rx,
            payload: None,
            done: false,
        }));
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
            Status::unimplemented(format!("unknown method {}", request.uri().path())).into_http()
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

struct Instruction {
    message: Arc<OutgoingMessage>,
    kind: &'static str,
    timeout: Option<Duration>,
    /// `None` for fire-and-forget instructions (the final ReconnectIns).
    reply: Option<oneshot::Sender<Result<ClientMessage, ExchangeError>>>,
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
            kind: message.message().kind(),
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
            kind: message.message().kind(),
            message,
            timeout: None,
            reply: None,
        };
        let _ = self.instructions.try_send(instruction);
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

/// Why a stream task ended (for the log).
#[derive(Debug)]
enum StreamEnd {
    Disconnected(String),
    AfterReconnect,
    ServerDropped,
    Timeout(Duration),
    Unsolicited,
    Invalid,
    Revoked,
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Disconnected(why) => write!(f, "disconnected ({why})"),
            StreamEnd::AfterReconnect => f.write_str("disconnected after ReconnectIns"),
            StreamEnd::ServerDropped => f.write_str("server released the client"),
            StreamEnd::Timeout(t) => write!(f, "no reply within {t:?}; stream cancelled"),
            StreamEnd::Unsolicited => f.write_str("unsolicited message; stream closed"),
            StreamEnd::Invalid => f.write_str("invalid reply; stream closed"),
            StreamEnd::Revoked => f.write_str("token revoked; stream closed"),
        }
    }
}

fn describe(result: &Result<Option<pb::ClientMessage>, Status>) -> String {
    match result {
        Ok(Some(_)) => "message".into(),
        Ok(None) => "end of stream".into(),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// The reply kind that answers an instruction kind.
fn expected_reply(instruction: &str) -> &'static str {
    match instruction {
        "reconnect_ins" => "disconnect_res",
        "get_properties_ins" => "get_properties_res",
        "get_parameters_ins" => "get_parameters_res",
        "fit_ins" => "fit_res",
        _ => "evaluate_res",
    }
}

async fn drive_stream(
    mut inbound: Inbound,
    mut instructions: mpsc::Receiver<Instruction>,
    outbound: mpsc::Sender<Result<Bytes, Status>>,
    revoked: Option<BoxFuture<'static, ()>>,
    max_message_size: usize,
) -> StreamEnd {
    let mut revoked = revoked.unwrap_or_else(|| futures::future::pending().boxed());
    let mut reconnect_sent = false;
    loop {
        // Idle: wait for the next instruction, but notice at once if the
        // client goes away (or speaks out of turn).
        let instruction = tokio::select! {
            ins = instructions.recv() => match ins {
                Some(ins) => ins,
                None => return StreamEnd::ServerDropped,
            },
            msg = inbound.message() => {
                if reconnect_sent {
                    // A late DisconnectRes, or the stream ending: both normal now.
                    if matches!(msg, Ok(Some(_))) { continue; }
                    return StreamEnd::AfterReconnect;
                }
                if let Ok(Some(_)) = msg {
                    let _ = outbound.send(Err(Status::failed_precondition(
                        "unsolicited ClientMessage: the client must answer exactly one message per ServerMessage",
                    ))).await;
                    return StreamEnd::Unsolicited;
                }
                return StreamEnd::Disconnected(describe(&msg));
            }
            _ = outbound.closed() => return if reconnect_sent { StreamEnd::AfterReconnect } else { StreamEnd::Disconnected("cancelled".into()) },
            _ = &mut revoked => {
                let _ = outbound.send(Err(Status::unauthenticated("Invalid token"))).await;
                return StreamEnd::Revoked;
            }
        };

        let kind = instruction.kind;
        let is_reconnect = kind == "reconnect_ins";
        debug!(kind = instruction.kind, "sending instruction");
        let encoded = instruction.message.encoded();
        if encoded.len() > max_message_size {
            let why = format!(
                "{} of {} bytes exceeds the max message size {max_message_size}",
                kind,
                encoded.len()
            );
            let _ = outbound.send(Err(Status::out_of_range(why.clone()))).await;
            if let Some(reply) = instruction.reply {
                let _ = reply.send(Err(ExchangeError::Protocol(why.clone())));
            }
            return StreamEnd::Disconnected(why);
        }
        if outbound.send(Ok(encoded)).await.is_err() {
            if let Some(reply) = instruction.reply {
                let _ = reply.send(Err(ExchangeError::Closed("cancelled".into())));
            }
            return StreamEnd::Disconnected("cancelled".into());
        }
        if is_reconnect {
            reconnect_sent = true;
        }
        let Some(reply) = instruction.reply else {
            continue;
        };

        let timeout = instruction.timeout;
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut deadline_active = timeout.is_some();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(message)) => {
                        let typed = ClientMessage::try_from(message)
                            .map_err(|e| ExchangeError::Protocol(e.to_string()))
                            .and_then(|m| {
                                if m.kind() == expected_reply(kind) {
                                    Ok(m)
                                } else {
                                    Err(ExchangeError::Protocol(format!(
                                        "answered {} with {}",
                                        kind,
                                        m.kind()
                                    )))
                                }
                            });
                        if let Err(e) = &typed {
                            // A desynchronized peer cannot be trusted with the
                            // next exchange: end its stream.
                            let _ = outbound.send(Err(Status::invalid_argument(e.to_string()))).await;
                            let _ = reply.send(typed);
                            return StreamEnd::Invalid;
                        }
                        let _ = reply.send(typed);
                        break;
                    }
                    other => {
                        let why = describe(&other);
                        let _ = reply.send(Err(ExchangeError::Closed(why.clone())));
                        return if reconnect_sent { StreamEnd::AfterReconnect } else { StreamEnd::Disconnected(why) };
                    }
                },
                () = &mut deadline, if deadline_active => {
                    if inbound.reply_started() {
                        // The reply began in time; the upload gate may be
                        // holding it back, which is not the client's fault.
                        deadline_active = false;
                        continue;
                    }
                    let t = timeout.unwrap_or_default();
                    let _ = outbound
                        .send(Err(Status::deadline_exceeded(format!(
                            "Timeout of {}sec was exceeded.",
                            t.as_secs_f64()
                        ))))
                        .await;
                    let _ = reply.send(Err(ExchangeError::Timeout(t)));
                    return StreamEnd::Timeout(t);
                }
                _ = &mut revoked => {
                    let _ = outbound.send(Err(Status::unauthenticated("Invalid token"))).await;
                    let _ = reply.send(Err(ExchangeError::Closed("token revoked".into())));
                    return StreamEnd::Revoked;
                }
            }
        }
    }
}
