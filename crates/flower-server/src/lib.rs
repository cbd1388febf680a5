//! Flower's grpc-bidi server, in Rust.
//!
//! * [`FlowerTransport`] — the tonic service for `flwr.proto.FlowerService/Join`:
//!   one registered client per open stream, strict lock-step exchanges.
//! * [`ClientManager`] — registry of connected clients, bounded waits, seeded sampling.
//! * [`RoundDriver`] — Flower's round loop (fit, evaluate, history,
//!   checkpoints), testable without sockets through [`ClientHandle`].
//! * [`serve`] — binds the listener (TLS via rustls, ALPN `h2`) and serves.
//!
//! The `flower-server` binary wires these to a CLI.

mod client_manager;
mod driver;
mod exchange;
mod history;
mod inbound;
mod model_file;
mod serve;
mod transport;

pub use client_manager::{ClientManager, FnClient, SnapshotSampler};
pub use driver::{AggregationOrder, DriverConfig, RoundDriver, RunOutcome};
pub use exchange::{ClientHandle, ExchangeError, OutgoingMessage};
pub use history::{scalar_to_json, write_atomic, Checkpoint, History, RoundRecord};
pub use inbound::UploadGate;
pub use model_file::{parameters_from_npz, parameters_to_npz};
pub use serve::{serve, ServeOptions, TlsFiles};
pub use transport::FlowerTransport;

use std::time::Duration;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// File system error.
    #[error("i/o: {0}")]
    Io(String),
    /// A model or checkpoint file could not be read.
    #[error("model file: {0}")]
    ModelFile(String),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// Too few clients connected within the bounded wait.
    #[error("only {connected} of {required} required clients connected after waiting {waited:?}")]
    TooFewClients {
        /// Clients needed.
        required: usize,
        /// Clients connected when the wait ended.
        connected: usize,
        /// How long the server waited.
        waited: Duration,
    },
    /// A client broke the protocol where the run cannot go on without it.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The strategy failed.
    #[error("strategy: {0}")]
    Strategy(#[from] flower_strategy::StrategyError),
    /// The run was interrupted (SIGINT/SIGTERM).
    #[error("interrupted")]
    Interrupted,
}
