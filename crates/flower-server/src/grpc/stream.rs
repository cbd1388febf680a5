//! One task per `Join` stream: strict lock-step exchanges (one
//! `ServerMessage` out, then one `ClientMessage` back), the round timeout,
//! revocation of the stream's token, and the end of the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flower_core::{ClientMessage, InstructionKind};
use flower_proto as pb;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::debug;

use super::inbound::Inbound;
use super::StreamError;
use crate::node::{ExchangeError, OutgoingMessage};

/// What the round driver asks of one stream.
pub(super) struct Instruction {
    pub(super) message: Arc<OutgoingMessage>,
    pub(super) timeout: Option<Duration>,
    /// `None` for fire-and-forget instructions (the final ReconnectIns).
    pub(super) reply: Option<oneshot::Sender<Result<ClientMessage, ExchangeError>>>,
}

/// Why a stream task ended (for the log).
#[derive(Debug)]
pub(super) enum StreamEnd {
    Disconnected(String),
    AfterReconnect,
    ServerDropped,
    Timeout(Duration),
    Stalled(Duration),
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
            StreamEnd::Stalled(t) => {
                write!(f, "reply made no progress for {t:?}; stream cancelled")
            }
            StreamEnd::Unsolicited => f.write_str("unsolicited message; stream closed"),
            StreamEnd::Invalid => f.write_str("invalid reply; stream closed"),
            StreamEnd::Revoked => f.write_str("token revoked; stream closed"),
        }
    }
}

fn describe(result: &Result<Option<pb::ClientMessage>, StreamError>) -> String {
    match result {
        Ok(Some(_)) => "message".into(),
        Ok(None) => "end of stream".into(),
        Err(e) => {
            let status = Status::from(e);
            format!("{:?}: {}", status.code(), status.message())
        }
    }
}

/// The state of one stream.
pub(super) struct StreamTask {
    inbound: Inbound,
    instructions: mpsc::Receiver<Instruction>,
    outbound: mpsc::Sender<Result<Bytes, Status>>,
    revoked: BoxFuture<'static, ()>,
    max_message_size: usize,
    /// A reply in progress that has not progressed for this long is cut.
    upload_idle_timeout: Duration,
    reconnect_sent: bool,
}

impl StreamTask {
    pub(super) fn new(
        inbound: Inbound,
        instructions: mpsc::Receiver<Instruction>,
        outbound: mpsc::Sender<Result<Bytes, Status>>,
        revoked: Option<BoxFuture<'static, ()>>,
        max_message_size: usize,
        upload_idle_timeout: Duration,
    ) -> Self {
        StreamTask {
            inbound,
            instructions,
            outbound,
            revoked: revoked.unwrap_or_else(|| futures::future::pending().boxed()),
            max_message_size,
            upload_idle_timeout,
            reconnect_sent: false,
        }
    }

    /// Runs exchanges until the stream ends, and says why it ended.
    pub(super) async fn run(mut self) -> StreamEnd {
        loop {
            let instruction = match self.idle().await {
                Ok(instruction) => instruction,
                Err(end) => return end,
            };
            let kind = instruction.message.message().kind();
            if instruction.reply.is_some() {
                // Before sending: the reply may start as soon as it is out.
                self.inbound.begin_reply();
            }
            if let Err((end, error)) = self.send(&instruction.message, kind).await {
                if let Some(reply) = instruction.reply {
                    let _ = reply.send(Err(error));
                }
                return end;
            }
            if let Some(reply) = instruction.reply {
                let awaited = self.await_reply(kind, instruction.timeout, reply).await;
                self.inbound.end_reply();
                if let Err(end) = awaited {
                    return end;
                }
            }
        }
    }

    /// Ends the stream with `error` as its gRPC status.
    async fn close(&mut self, error: StreamError) {
        let _ = self.outbound.send(Err(Status::from(&error))).await;
    }

    /// Waits for the next instruction, noticing at once if the client goes
    /// away, speaks out of turn or loses its token.
    async fn idle(&mut self) -> Result<Instruction, StreamEnd> {
        loop {
            tokio::select! {
                ins = self.instructions.recv() => return ins.ok_or(StreamEnd::ServerDropped),
                msg = self.inbound.message() => {
                    if self.reconnect_sent {
                        // A late DisconnectRes, or the stream ending: both normal now.
                        if matches!(msg, Ok(Some(_))) { continue; }
                        return Err(StreamEnd::AfterReconnect);
                    }
                    if matches!(msg, Ok(Some(_)) | Err(StreamError::Unsolicited)) {
                        self.close(StreamError::Unsolicited).await;
                        return Err(StreamEnd::Unsolicited);
                    }
                    return Err(StreamEnd::Disconnected(describe(&msg)));
                }
                _ = self.outbound.closed() => {
                    return Err(if self.reconnect_sent {
                        StreamEnd::AfterReconnect
                    } else {
                        StreamEnd::Disconnected("cancelled".into())
                    });
                }
                _ = &mut self.revoked => {
                    self.close(StreamError::Revoked).await;
                    return Err(StreamEnd::Revoked);
                }
            }
        }
    }

    /// Sends one instruction's shared encoding; on failure, why the stream
    /// ends and what the waiting exchange is told.
    async fn send(
        &mut self,
        message: &OutgoingMessage,
        kind: InstructionKind,
    ) -> Result<(), (StreamEnd, ExchangeError)> {
        debug!(%kind, "sending instruction");
        let encoded = message.encoded();
        if encoded.len() > self.max_message_size {
            let error = StreamError::InstructionTooLarge {
                kind,
                len: encoded.len(),
                max: self.max_message_size,
            };
            let why = error.to_string();
            self.close(error).await;
            return Err((
                StreamEnd::Disconnected(why.clone()),
                ExchangeError::Protocol(why),
            ));
        }
        if self.outbound.send(Ok(encoded)).await.is_err() {
            return Err((
                StreamEnd::Disconnected("cancelled".into()),
                ExchangeError::Closed("cancelled".into()),
            ));
        }
        if kind == InstructionKind::Reconnect {
            self.reconnect_sent = true;
        }
        Ok(())
    }

    /// Waits for the reply to an instruction of `kind`. `timeout` is a hard
    /// deadline for the whole reply, extended only by the time the reply
    /// waits at the upload gate; a reply in progress must also keep
    /// progressing (see [`Inbound::stalled_since`]).
    async fn await_reply(
        &mut self,
        kind: InstructionKind,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<ClientMessage, ExchangeError>>,
    ) -> Result<(), StreamEnd> {
        let start = Instant::now();
        let far = start + Duration::from_secs(86_400 * 365);
        let deadline = tokio::time::sleep_until(timeout.map_or(far, |t| start + t));
        tokio::pin!(deadline);
        let idle = self.upload_idle_timeout;
        let stall_check = tokio::time::sleep_until(start + idle);
        tokio::pin!(stall_check);
        loop {
            tokio::select! {
                msg = self.inbound.message() => {
                    let message = match msg {
                        Ok(Some(message)) => message,
                        other => {
                            let why = describe(&other);
                            let _ = reply.send(Err(ExchangeError::Closed(why.clone())));
                            return Err(if self.reconnect_sent {
                                StreamEnd::AfterReconnect
                            } else {
                                StreamEnd::Disconnected(why)
                            });
                        }
                    };
                    return match check_reply(kind, message) {
                        Ok(typed) => {
                            let _ = reply.send(Ok(typed));
                            Ok(())
                        }
                        Err(e) => {
                            // A desynchronized peer cannot be trusted with the
                            // next exchange: end its stream.
                            self.close(StreamError::InvalidReply(e.to_string())).await;
                            let _ = reply.send(Err(e));
                            Err(StreamEnd::Invalid)
                        }
                    };
                }
                () = &mut deadline, if timeout.is_some() => {
                    let t = timeout.unwrap_or_default();
                    let now = Instant::now();
                    // Time at the upload gate is not the client's fault.
                    let extended = start + t + self.inbound.gate_time(now);
                    if extended > now {
                        deadline.as_mut().reset(extended);
                        continue;
                    }
                    self.close(StreamError::Timeout(t)).await;
                    let _ = reply.send(Err(ExchangeError::Timeout(t)));
                    return Err(StreamEnd::Timeout(t));
                }
                () = &mut stall_check => {
                    let now = Instant::now();
                    match self.inbound.stalled_since() {
                        Some(since) if since + idle <= now => {
                            self.close(StreamError::UploadStalled(idle)).await;
                            let _ = reply.send(Err(ExchangeError::Timeout(idle)));
                            return Err(StreamEnd::Stalled(idle));
                        }
                        Some(since) => stall_check.as_mut().reset(since + idle),
                        None => stall_check.as_mut().reset(now + idle),
                    }
                }
                _ = &mut self.revoked => {
                    self.close(StreamError::Revoked).await;
                    let _ = reply.send(Err(ExchangeError::Closed("token revoked".into())));
                    return Err(StreamEnd::Revoked);
                }
            }
        }
    }
}

/// A decoded reply of the kind that answers `kind`, or why it is not one.
fn check_reply(
    kind: InstructionKind,
    message: pb::ClientMessage,
) -> Result<ClientMessage, ExchangeError> {
    let typed =
        ClientMessage::try_from(message).map_err(|e| ExchangeError::Protocol(e.to_string()))?;
    if typed.kind() == kind.reply() {
        Ok(typed)
    } else {
        Err(ExchangeError::Protocol(format!(
            "answered {kind} with {}",
            typed.kind()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_core::{ClientMessage, DisconnectRes, Reason};
    use tokio_stream::StreamExt as _;

    #[test]
    fn a_reply_must_answer_its_instruction() {
        let disconnect: pb::ClientMessage = ClientMessage::Disconnect(DisconnectRes {
            reason: Reason::Reconnect,
        })
        .into();
        assert!(check_reply(InstructionKind::Reconnect, disconnect.clone()).is_ok());
        let e = check_reply(InstructionKind::Fit, disconnect).unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol violation: answered fit_ins with disconnect_res"
        );
        let empty = pb::ClientMessage::default();
        assert!(matches!(
            check_reply(InstructionKind::Evaluate, empty),
            Err(ExchangeError::Protocol(_))
        ));
    }

    /// A body fed by the test through a channel.
    fn channel_body() -> (
        mpsc::UnboundedSender<Vec<u8>>,
        impl http_body::Body<Data = Bytes, Error = Status> + Send + 'static,
    ) {
        use http_body_util::BodyExt;
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        (tx, http_body_util::StreamBody::new(frames).boxed())
    }

    fn fit_res_wire(n: usize) -> Vec<u8> {
        let message: pb::ClientMessage = ClientMessage::Fit(flower_core::FitRes {
            status: flower_core::Status::success(),
            parameters: flower_core::Parameters {
                tensors: vec![Bytes::from(vec![1u8; n])],
                tensor_type: "numpy.ndarray".into(),
            },
            num_examples: 1,
            metrics: Default::default(),
        })
        .into();
        let payload = prost::Message::encode_to_vec(&message);
        let mut wire = vec![0u8];
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
        wire
    }

    #[tokio::test]
    async fn time_at_the_upload_gate_does_not_count_against_the_round_timeout() {
        use crate::grpc::inbound::UploadGate;
        let gate = UploadGate::new(Some(1));
        let big = fit_res_wire(2 << 20);
        // Another reply holds the only permit for 800 ms.
        let (holder_tx, holder_body) = channel_body();
        let mut holder = Inbound::new(holder_body, gate.clone(), usize::MAX);
        holder.begin_reply();
        holder_tx.send(big[..100_000].to_vec()).unwrap();
        let holder_task = tokio::spawn(async move { holder.message().await.map(|m| m.is_some()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let release = {
            let rest = big[100_000..].to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                holder_tx.send(rest).unwrap();
                holder_tx
            })
        };

        // This stream's reply arrives whole at once but waits at the gate
        // longer than its 300 ms round timeout.
        let (tx, body) = channel_body();
        let inbound = Inbound::new(body, gate.clone(), usize::MAX);
        let (ins_tx, ins_rx) = mpsc::channel(2);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let task = StreamTask::new(
            inbound,
            ins_rx,
            out_tx,
            None,
            usize::MAX,
            Duration::from_secs(30),
        );
        let task = tokio::spawn(task.run());
        let (reply_tx, reply_rx) = oneshot::channel();
        let fit = flower_core::ServerMessage::Fit(flower_core::FitIns {
            parameters: flower_core::Parameters {
                tensors: vec![],
                tensor_type: "numpy.ndarray".into(),
            },
            config: Default::default(),
        });
        ins_tx
            .send(Instruction {
                message: OutgoingMessage::new(fit),
                timeout: Some(Duration::from_millis(300)),
                reply: Some(reply_tx),
            })
            .await
            .unwrap();
        assert!(
            out_rx.recv().await.unwrap().is_ok(),
            "the instruction went out"
        );
        tx.send(big.clone()).unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), reply_rx)
            .await
            .expect("bounded")
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        assert!(holder_task.await.unwrap().unwrap());
        drop((release.await, ins_tx, tx));
        let _ = task.await;
    }
}
