//! One instruction out, one reply back: the [`ClientHandle`] abstraction the
//! round driver talks to, whatever carries it (a gRPC stream, or an
//! in-process function in tests).

use std::time::Duration;

use flower_core::{ClientMessage, ServerMessage};
use futures::future::BoxFuture;

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
}

/// A connected client, as the round driver sees it.
pub trait ClientHandle: Send + Sync + 'static {
    /// Sends one instruction and waits for the client's one reply.
    /// `timeout` bounds the wait for the reply (Flower's `round_timeout`);
    /// on expiry only this client's stream is cancelled.
    fn exchange(
        &self,
        message: ServerMessage,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>>;

    /// Sends an instruction without waiting for a reply (the final
    /// `ReconnectIns`: Python clients close before their `DisconnectRes` is sent).
    fn send_only(&self, message: ServerMessage);

    /// Peer description for logs.
    fn peer(&self) -> String;
}
