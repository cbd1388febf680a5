//! Flower's server, in Rust: rounds of federated learning over connected
//! clients, with authentication built in.
//!
//! Start with [`Server::builder`]: strategy, TLS, optional token
//! authentication, round settings and a run store, then
//! [`bind`](ServerBuilder::bind) and [`run`](Server::run). The pieces:
//!
//! * [`RoundDriver`]: Flower's round loop (fit, evaluate, history,
//!   checkpoints), transport-agnostic: it reaches clients through the
//!   [`ClientHandle`] trait and persists through a [`RunStore`].
//! * [`ClientManager`]: registry of connected clients, bounded waits, seeded
//!   sampling, the [`UploadGate`].
//! * [`msg_grid`]: Flower's message-API strategies over the connected
//!   nodes ([`ServerBuilder::msg_strategy`]), for transports that carry
//!   their messages ([`ClientHandle::exchange_content`]).
//! * [`listener`]: the hardened accept loop (connection cap, handshake and
//!   preface timeouts, keepalive, accept back-off) of both ports.
//! * [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`, and the
//!   [`RunObserver`] events (progress lines) of the round driver.
//! * [`grpc`]: the grpc-bidi transport (`flwr.proto.FlowerService/Join`),
//!   with [`StreamError`] mapping every refusal to one gRPC status.
//!
//! The `flower-server` binary (crate `flower-server-cli`) maps its flags
//! onto the builder.

mod builder;
mod client_manager;
mod driver;
mod error;
pub mod grpc;
mod history;
pub mod listener;
pub mod metrics;
mod model_file;
pub mod msg_grid;
mod node;
mod store;
mod transport;

pub use builder::{Server, ServerBuilder};
pub use client_manager::{ClientManager, FnClient, SnapshotSampler};
pub use driver::fold::AggregationOrder;
pub use driver::reply::ReplyFailure;
pub use driver::{DriverConfig, RoundDriver, RunOutcome};
pub use error::{error_chain, ModelFileError, ServerError};
pub use flower_strategy::ClientId;
pub use grpc::{FlowerTransport, ServeOptions, StreamError, TlsFiles, UploadGate, UploadTurn};
pub use history::{scalar_to_json, Checkpoint, History, RoundRecord};
pub use metrics::{Metrics, RunObserver};
pub use model_file::{
    npz_fingerprint, parameters_from_npz, parameters_to_npz, parameters_to_npz_named,
    read_npz_named, write_npz_named,
};
pub use msg_grid::{MsgSetup, ServerGrid};
pub use node::{ClientHandle, ContentReply, ExchangeError, OutgoingContent, OutgoingMessage};
pub use store::{write_atomic, write_atomic_with, DirectoryStore, RunStore, SavedRun};
pub use transport::{BoundTransport, Transport};
