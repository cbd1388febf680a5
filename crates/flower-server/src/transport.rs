//! The [`Transport`] trait: a way for clients to reach the server. The
//! builder binds every transport it is given over the same
//! [`ClientManager`], so one federation can mix clients of several
//! transports (grpc-bidi streams, Fleet API SuperNodes) and the round
//! driver never knows which carries whom.

use std::net::SocketAddr;

use futures::future::BoxFuture;

use crate::{ClientManager, ServerError};

/// A bound transport: where it listens and the future that serves it.
pub struct BoundTransport {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Serves until the stop future given to [`Transport::bind`] completes.
    pub serve: BoxFuture<'static, Result<(), ServerError>>,
}

impl std::fmt::Debug for BoundTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundTransport")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A listener that registers the clients it accepts in a [`ClientManager`],
/// as [`ClientHandle`](crate::ClientHandle)s.
pub trait Transport: Send + 'static {
    /// Name for logs (`"grpc-bidi"`, `"fleet-api"`).
    fn name(&self) -> &'static str;

    /// Binds the listener; clients can connect once this returns. Serving
    /// stops when `stop` completes.
    fn bind(
        self: Box<Self>,
        clients: ClientManager,
        stop: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<BoundTransport, ServerError>>;
}
