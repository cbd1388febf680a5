//! The grpc-bidi transport: Flower's `flwr.proto.FlowerService/Join`, one
//! registered client per open stream.
//!
//! * `transport`: [`FlowerTransport`], the tower service that accepts `Join` calls;
//! * `stream`: one task per stream, strict lock-step exchanges;
//! * `inbound`: our request decoder and the [`UploadGate`];
//! * `serve`: the listener (plaintext or TLS, [`ServeOptions`]);
//! * [`StreamError`]: every way a stream is refused or ended, mapped to a
//!   `tonic::Status` in one place.

pub(crate) mod inbound;
pub(crate) mod serve;
mod stream;
pub(crate) mod transport;

pub use inbound::{GateLoad, UploadGate, UploadTurn};
pub use serve::{ServeOptions, TlsFiles};
pub use transport::FlowerTransport;

use std::time::Duration;

use flower_core::InstructionKind;
use tonic::Status;

/// Why a `Join` stream was refused or ended by the server, or what broke in
/// a client's request stream. [`Status::from`] is the single place where
/// these become gRPC statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The call asked for a compression we do not speak.
    #[error("message compression {0:?} is not supported")]
    UnsupportedEncoding(String),
    /// A path other than `Join` was called.
    #[error("unknown method {0}")]
    UnknownMethod(String),
    /// `--max-clients` streams are open already.
    #[error("the server's configured client limit is reached")]
    ClientLimit,
    /// The client sent a message while no instruction was pending.
    #[error(
        "unsolicited ClientMessage: the client must answer exactly one message per ServerMessage"
    )]
    Unsolicited,
    /// The client's reply is not a valid answer to the pending instruction.
    #[error("{0}")]
    InvalidReply(String),
    /// An instruction is larger than the max message size.
    #[error("{kind} of {len} bytes exceeds the max message size {max}")]
    InstructionTooLarge {
        /// The instruction.
        kind: InstructionKind,
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No reply within the round timeout (Flower's wording).
    #[error("Timeout of {}sec was exceeded.", .0.as_secs_f64())]
    Timeout(Duration),
    /// A reply in progress made no progress (64 KiB) for this long.
    #[error("upload stalled: no progress for {}sec", .0.as_secs_f64())]
    UploadStalled(Duration),
    /// The token this stream authenticated with was revoked.
    #[error("{}", flower_auth::INVALID_TOKEN_MESSAGE)]
    Revoked,
    /// A client message has the compressed flag set.
    #[error("compressed messages are not supported")]
    CompressedMessage,
    /// A client message announces more bytes than the max message size.
    #[error("message of {len} bytes exceeds the max message size {max}")]
    MessageTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A client message is not a valid `ClientMessage`.
    #[error("undecodable ClientMessage: {0}")]
    Undecodable(#[source] prost::DecodeError),
    /// The request stream ended in the middle of a message.
    #[error("stream ended inside a message")]
    EndedInsideMessage,
    /// The HTTP/2 request body failed (reset, cancelled, ...).
    #[error("{}: {}", .0.code(), .0.message())]
    Body(Status),
}

impl From<&StreamError> for Status {
    fn from(error: &StreamError) -> Status {
        let message = error.to_string();
        match error {
            StreamError::UnsupportedEncoding(_)
            | StreamError::UnknownMethod(_)
            | StreamError::CompressedMessage => Status::unimplemented(message),
            StreamError::ClientLimit => Status::resource_exhausted(message),
            StreamError::Unsolicited => Status::failed_precondition(message),
            StreamError::InvalidReply(_) => Status::invalid_argument(message),
            StreamError::InstructionTooLarge { .. } | StreamError::MessageTooLarge { .. } => {
                Status::out_of_range(message)
            }
            StreamError::Timeout(_) | StreamError::UploadStalled(_) => {
                Status::deadline_exceeded(message)
            }
            StreamError::Revoked => Status::unauthenticated(message),
            StreamError::Undecodable(_) | StreamError::EndedInsideMessage => {
                Status::internal(message)
            }
            StreamError::Body(status) => status.clone(),
        }
    }
}

impl From<StreamError> for Status {
    fn from(error: StreamError) -> Status {
        Status::from(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_has_its_status_code_and_flower_wording() {
        let cases: Vec<(StreamError, Code, &str)> = vec![
            (
                StreamError::Timeout(Duration::from_secs(2)),
                Code::DeadlineExceeded,
                "Timeout of 2sec was exceeded.",
            ),
            (StreamError::Revoked, Code::Unauthenticated, "Invalid token"),
            (
                StreamError::ClientLimit,
                Code::ResourceExhausted,
                "the server's configured client limit is reached",
            ),
            (
                StreamError::MessageTooLarge { len: 9, max: 8 },
                Code::OutOfRange,
                "message of 9 bytes exceeds the max message size 8",
            ),
            (
                StreamError::InvalidReply("answered fit_ins with evaluate_res".into()),
                Code::InvalidArgument,
                "answered fit_ins with evaluate_res",
            ),
            (StreamError::Unsolicited, Code::FailedPrecondition, "unsolicited ClientMessage: the client must answer exactly one message per ServerMessage"),
            (StreamError::EndedInsideMessage, Code::Internal, "stream ended inside a message"),
        ];
        for (error, code, message) in cases {
            let status = Status::from(&error);
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), message, "{error:?}");
        }
    }
}
