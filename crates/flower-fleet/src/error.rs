//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong setting up the Fleet API or translating
/// between the round driver's legacy messages and Flower messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A TLS file could not be read.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("tls set-up: {0}")]
    Tls(String),
    /// rustls refused the certificate/key pair.
    #[error("tls set-up")]
    Rustls(#[source] rustls::Error),
    /// The Fleet API's address could not be bound.
    #[error("binding the fleet api to {address}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The options are inconsistent (a human-readable explanation).
    #[error("fleet api configuration: {0}")]
    Config(String),
    /// The instruction has no message-API form in the chosen format.
    #[error("{0}")]
    Unsupported(String),
    /// A reply does not have the records the instruction asks for.
    #[error("reply to a {kind} message: {reason}")]
    BadReply {
        /// The instruction's message type.
        kind: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// A reply's objects do not form a valid message.
    #[error("reply objects")]
    Codec(#[source] flower_message::Error),
}
