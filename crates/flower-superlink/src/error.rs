//! The one error type of this crate.

use std::net::SocketAddr;

/// Everything that can go wrong starting or running the Control and
/// Runtime APIs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperLinkError {
    /// A non-loopback Control address without TLS and explicit consent.
    #[error(
        "refusing to serve the Control API on {0}: it has no account authentication, so anyone \
         who reaches it can start runs; use a loopback address, or TLS and --allow-remote-control"
    )]
    RemoteControl(SocketAddr),
    /// The address could not be bound.
    #[error("binding the control api to {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files could not be used.
    #[error("control api tls set-up")]
    Tls(#[source] flower_fleet::FleetError),
    /// The run store failed.
    #[error("run store: {context}")]
    Store {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
