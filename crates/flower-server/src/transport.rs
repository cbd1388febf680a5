//! The tonic service for `flwr.proto.FlowerService/Join`.
//!
//! Each open `Join` stream is one registered client. A task per stream owns
//! the stream and runs exchanges strictly in lock-step: one `ServerMessage`
//! out, then one `ClientMessage` back. The stream closing for any reason
//! unregisters the client at once and fails the pending exchange.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flower_core::{ClientMessage, ServerMessage};
use flower_proto as pb;
use flower_proto::flower_service_server::{FlowerService, FlowerServiceServer};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::client_manager::ClientManager;
use crate::exchange::{ClientHandle, ExchangeError};

/// The Join service. Build with [`FlowerTransport::new`], serve with [`FlowerTransport::into_service`].
///
/// When the auth layer accepted the call, the stream remembers which token
/// (fingerprint) it used and is closed with `UNAUTHENTICATED` as soon as a
/// reload revokes that token.
#[derive(Clone)]
pub struct FlowerTransport {
    manager: ClientManager,
}

impl std::fmt::Debug for FlowerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowerTransport")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl FlowerTransport {
    /// A transport registering its clients in `manager`.
    pub fn new(manager: ClientManager) -> Self {
        FlowerTransport { manager }
    }

    /// The tonic service, with the given max message size both ways.
    pub fn into_service(self, max_message_size: usize) -> FlowerServiceServer<Self> {
        FlowerServiceServer::new(self)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size)
    }
}

struct Instruction {
    message: pb::ServerMessage,
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
        message: ServerMessage,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>> {
        let (tx, rx) = oneshot::channel();
        let instruction = Instruction {
            kind: message.kind(),
            message: message.into(),
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

    fn send_only(&self, message: ServerMessage) {
        let instruction = Instruction {
            kind: message.kind(),
            message: message.into(),
            timeout: None,
            reply: None,
        };
        let _ = self.instructions.try_send(instruction);
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

type JoinStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl FlowerService for FlowerTransport {
    type JoinStream = JoinStream;

    async fn join(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let peer_auth = flower_auth::AuthenticatedPeer::from_request(&request);
        let token = peer_auth.as_ref().map(|p| p.fingerprint().to_string());
        let revoked = peer_auth.map(|p| p.revocation_future().boxed());
        let (ins_tx, ins_rx) = mpsc::channel(1);
        let handle = Arc::new(GrpcClient {
            instructions: ins_tx,
            peer: peer.clone(),
        });
        let Some(id) = self.manager.register(handle) else {
            warn!(%peer, "refusing client: connection limit reached");
            return Err(Status::resource_exhausted(
                "the server's configured client limit is reached",
            ));
        };
        info!(client = id, %peer, token = token.as_deref().unwrap_or("-"), connected = self.manager.len(), "client joined");
        let (out_tx, out_rx) = mpsc::channel(1);
        let manager = self.manager.clone();
        tokio::spawn(async move {
            let end = drive_stream(request.into_inner(), ins_rx, out_tx, revoked).await;
            manager.unregister(id);
            info!(client = id, %peer, reason = %end, connected = manager.len(), "client left");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
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
    mut inbound: Streaming<pb::ClientMessage>,
    mut instructions: mpsc::Receiver<Instruction>,
    outbound: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    revoked: Option<BoxFuture<'static, ()>>,
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
        if outbound.send(Ok(instruction.message)).await.is_err() {
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
                ins = instructions.recv() => match ins {
                    // A fire-and-forget instruction (shutdown's ReconnectIns)
                    // goes out now: the client reads it after its reply.
                    Some(Instruction { message, kind: "reconnect_ins", reply: None, .. }) => {
                        reconnect_sent |= outbound.send(Ok(message)).await.is_ok();
                    }
                    Some(other) => {
                        if let Some(r) = other.reply {
                            let _ = r.send(Err(ExchangeError::Protocol("another exchange is in progress".into())));
                        }
                    }
                    None => {}
                },
                () = &mut deadline, if timeout.is_some() => {
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
