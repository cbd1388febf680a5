//! Flower's Fleet API for stock SuperNodes: a `flower-server`
//! [`Transport`](flower_server::Transport) that serves `flower-supernode`
//! 1.40+ (protobuf over HTTP/1.1, content-addressed objects, signed
//! requests, FABs).
//!
//! * [`FleetApi`] with [`FleetOptions`] (address, TLS or insecure, the
//!   [`FleetApp`] FAB, [`MessageFormat`], array keys, node auth, limits):
//!   `Server::builder().transport(FleetApi::new(options))`.
//! * [`FleetApi::serve_runs`]: the same service without a round driver;
//!   runs and instructions come through the returned [`FleetLink`] (the
//!   Control and Runtime APIs of `flower-superlink`).
//! * [`FleetOptions::grpc_address`]: the same handlers over gRPC
//!   (`flwr.proto.Fleet`, tonic, `-bin` auth metadata) for SuperNodes of
//!   flwr 1.13 to 1.39; those before 1.23 (`CreateNode`, `Ping`, inline
//!   `TaskIns`/`RecordSet` messages) in their own wire forms, on the same
//!   link state.
//! * [`state`]: the link state (nodes and heartbeats, the runs, per-node
//!   instruction queues, push sessions, the reference-counted object store,
//!   which spills pushed contents past a memory limit to temporary files),
//!   driven with injected time and no network.
//! * [`FleetNode`]: each active SuperNode as a
//!   [`ClientHandle`](flower_server::ClientHandle) of the round driver; the
//!   driver's `FitIns`/`EvaluateIns` become `train`/`evaluate` messages
//!   ([`ContentOptions`] says which records); a message-API strategy's
//!   messages (`ClientHandle::exchange_content`) travel record for record,
//!   and its replies come back whole (error replies included).
//!
//! What a SuperNode sees follows flwr 1.42's SuperLink
//! (`superlink/servicer/fleet/fleet_handlers.py`,
//! `server/superlink/linkstate/in_memory_linkstate.py`), except that on the
//! Fleet paths only the statuses a SuperNode survives are used (200, 401,
//! 403, 503; see the `http` module), that a restarted SuperNode with a
//! known key is taken back at once, and that node ids are derived from the
//! node's public key ([`state::node_id_for_key`]), so after a restart of
//! this server a SuperNode that keeps its id is re-admitted on its next
//! signed request instead of being refused with 401 (flwr keeps random ids
//! in its database; this server keeps no node database).
#![forbid(unsafe_code)]

mod api;
mod convert;
mod error;
mod grpc;
mod http;
mod node;
mod outgoing;
pub mod state;

pub use api::{FleetApi, FleetApp, FleetLink, FleetOptions, FleetServer};
pub use convert::{ContentOptions, MessageFormat};
pub use error::FleetError;
pub use node::FleetNode;
pub use state::SpillConfig;

/// The rustls server configuration for the PEM certificate and key in
/// `files`, as the Fleet API uses it (for services that share its TLS
/// set-up).
pub fn tls_config(
    files: &flower_server::TlsFiles,
) -> Result<std::sync::Arc<rustls::ServerConfig>, FleetError> {
    http::tls::config(files)
}
