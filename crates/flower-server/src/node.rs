//! One instruction out, one reply back: the [`ClientHandle`] trait through
//! which the round driver talks to a connected client, whatever carries it
//! (a grpc-bidi stream today, a Fleet API SuperNode next, or an in-process
//! function in tests).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flower_core::{ClientMessage, ServerMessage};
use flower_strategy::msg::{MessageType, RecordDict, ReplyError};
use futures::future::BoxFuture;
use futures::FutureExt;
use prost::Message;

/// An instruction, encoded at most once however many clients receive it.
///
/// Every sampled client usually gets the same `FitIns` (a 40 MB model for
/// 10M parameters): the encoded bytes are shared by all their streams
/// instead of being encoded and buffered once per client.
#[derive(Debug)]
pub struct OutgoingMessage {
    message: ServerMessage,
    round: Option<u64>,
    encoded: OnceLock<Bytes>,
}

impl OutgoingMessage {
    /// Wraps an instruction.
    pub fn new(message: ServerMessage) -> Arc<Self> {
        Arc::new(OutgoingMessage {
            message,
            round: None,
            encoded: OnceLock::new(),
        })
    }

    /// Wraps an instruction of server round `round` (transports that carry
    /// the round explicitly, like the Fleet API's `server-round`, read it
    /// with [`OutgoingMessage::round`]).
    pub fn for_round(message: ServerMessage, round: u64) -> Arc<Self> {
        Arc::new(OutgoingMessage {
            message,
            round: Some(round),
            encoded: OnceLock::new(),
        })
    }

    /// The server round this instruction belongs to, when known (0 for the
    /// initial `get_parameters`).
    pub fn round(&self) -> Option<u64> {
        self.round
    }

    /// The instruction.
    pub fn message(&self) -> &ServerMessage {
        &self.message
    }

    /// The protobuf encoding of the instruction (computed on first use).
    pub fn encoded(&self) -> Bytes {
        self.encoded
            .get_or_init(|| {
                flower_proto::ServerMessage::from(self.message.clone())
                    .encode_to_vec()
                    .into()
            })
            .clone()
    }
}

/// A message-API instruction (a `train` or `evaluate` message of a
/// [`MsgStrategy`](flower_strategy::msg::MsgStrategy)): the content every
/// node it is sent to shares, so a transport can encode it once.
#[derive(Debug)]
pub struct OutgoingContent {
    message_type: MessageType,
    round: u64,
    content: Arc<RecordDict>,
}

impl OutgoingContent {
    /// Wraps the content of a message of server round `round`.
    pub fn new(message_type: MessageType, round: u64, content: Arc<RecordDict>) -> Arc<Self> {
        Arc::new(OutgoingContent {
            message_type,
            round,
            content,
        })
    }

    /// `train` or `evaluate`.
    pub fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The server round (flwr's `group_id`).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The content, exactly as the strategy built it.
    pub fn content(&self) -> &Arc<RecordDict> {
        &self.content
    }
}

/// A node's answer to an [`OutgoingContent`]: its reply content, or the
/// error message it replied with (a failed ClientApp).
pub type ContentReply = Result<RecordDict, ReplyError>;

/// Why an exchange with a client produced no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The client's stream closed (cancelled, reset, ended) before it replied.
    #[error("client stream closed: {0}")]
    Closed(String),
    /// No reply within the per-reply timeout; the client's stream was cancelled.
    #[error("no reply within {0:?} (round timeout); stream cancelled")]
    Timeout(Duration),
    /// The client sent something that is not a valid reply.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The client's transport cannot carry this kind of instruction (a
    /// grpc-bidi client given a message-API instruction).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// A connected client, as the round driver sees it.
pub trait ClientHandle: Send + Sync + 'static {
    /// Sends one instruction and waits for the client's one reply.
    /// `timeout` bounds the wait for the reply (Flower's `round_timeout`);
    /// on expiry only this client's stream is cancelled.
    fn exchange(
        &self,
        message: Arc<OutgoingMessage>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>>;

    /// Sends an instruction without waiting for a reply (the final
    /// `ReconnectIns`: Python clients close before their `DisconnectRes` is sent).
    fn send_only(&self, message: Arc<OutgoingMessage>);

    /// Peer description for logs.
    fn peer(&self) -> String;

    /// Sends one message-API instruction and waits for the node's reply,
    /// as [`exchange`](Self::exchange) does (`timeout` bounds the wait and
    /// cancels only this exchange). Transports that carry only legacy
    /// instructions keep this default, which refuses with
    /// [`ExchangeError::Unsupported`].
    fn exchange_content(
        &self,
        message: Arc<OutgoingContent>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ContentReply, ExchangeError>> {
        let _ = (message, timeout);
        let peer = self.peer();
        async move {
            Err(ExchangeError::Unsupported(format!(
                "{peer} carries only legacy instructions, not message-API messages"
            )))
        }
        .boxed()
    }

    /// The transport that carries this client, for metrics labels
    /// (`"grpc-bidi"`, `"fleet-api"`; `"in-process"` by default).
    fn transport(&self) -> &'static str {
        "in-process"
    }
}
