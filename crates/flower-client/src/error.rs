//! The one error type of this crate.

use std::time::Duration;

/// Why [`start_client`](crate::start_client) ended without a clean shutdown.
///
/// Errors raised by user code inside `fit` / `evaluate` are *not* here: they
/// are reported to the server as a non-OK status and the client stays
/// connected (see [`NumPyClient`](crate::NumPyClient)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The [`ClientOptions`](crate::ClientOptions) cannot be used (bad
    /// address, unreadable certificate file, invalid header, ...).
    #[error("invalid client options: {0}")]
    InvalidOptions(String),

    /// A bearer token is configured but the connection is plaintext, and
    /// [`allow_insecure_auth`](crate::ClientOptions::allow_insecure_auth) was
    /// not given. Nothing was sent.
    #[error(
        "refusing to send a bearer token over a plaintext connection \
         (use TLS, or call allow_insecure_auth() for tests)"
    )]
    InsecureCredentials,

    /// The TLS handshake failed (unknown CA, name mismatch, no ALPN `h2`,
    /// ...). Not retried: the same handshake would fail again.
    #[error("TLS handshake with {address} failed: {message}")]
    Tls {
        /// The server URI that was dialled.
        address: String,
        /// The underlying error chain, flattened.
        message: String,
    },

    /// The server rejected the client's credentials (`UNAUTHENTICATED` or
    /// `PERMISSION_DENIED`). Never retried.
    #[error("authentication failed ({code:?}): {message}")]
    Auth {
        /// `Unauthenticated` or `PermissionDenied`.
        code: tonic::Code,
        /// The server's status message (e.g. `Invalid bearer token`).
        message: String,
    },

    /// Connecting (or reconnecting after the server went away) kept failing
    /// until [`max_retries`](crate::ClientOptions::max_retries) or
    /// [`max_wait_time`](crate::ClientOptions::max_wait_time) ran out.
    #[error("giving up after {attempts} failed attempt(s) in {elapsed:.1?}: {last_error}")]
    RetriesExhausted {
        /// Consecutive failed attempts, the first one included.
        attempts: u32,
        /// Time from the first failure of the streak to giving up.
        elapsed: Duration,
        /// The last failure, flattened.
        last_error: String,
    },

    /// The server ended the `Join` call with a gRPC status that is neither
    /// transient (`UNAVAILABLE`, a broken connection) nor an auth failure,
    /// e.g. `DEADLINE_EXCEEDED` from the server's `round_timeout`.
    #[error("gRPC error {:?}: {}", .0.code(), .0.message())]
    Rpc(Box<tonic::Status>),

    /// The server sent something that is not a valid `ServerMessage`.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// User code panicked while handling an instruction; the client is gone,
    /// so the run ends.
    #[error("client code panicked while handling {kind}: {message}")]
    ClientPanicked {
        /// The instruction being handled (`fit_ins`, ...).
        kind: flower_core::InstructionKind,
        /// The panic payload, when it was a string.
        message: String,
    },

    /// The blocking wrapper could not build its Tokio runtime, or was called
    /// from inside one.
    #[error("runtime error: {0}")]
    Runtime(String),

    /// The SuperNode's private key cannot be used (unreadable, not an
    /// OpenSSH ECDSA key, passphrase-protected).
    #[error("SuperNode key: {0}")]
    NodeKey(#[source] flower_auth::node::NodeAuthError),

    /// A TLS client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),

    /// The SuperLink refused the node's authentication (HTTP 401): the key
    /// is not registered (`--enable-supernode-auth`), or the node id is not
    /// bound to it. Never retried, as flwr's SuperNode stops.
    #[error("the SuperLink refused this node's authentication on {rpc} (HTTP 401): {body}")]
    NodeUnauthorized {
        /// The Fleet RPC.
        rpc: &'static str,
        /// The SuperLink's error body.
        body: String,
    },

    /// The SuperLink answered a Fleet call with a status that is neither
    /// 200, 401, 403 nor retryable (502/503/504). flwr's SuperNode stops
    /// on these, and so does this one.
    #[error("Fleet API {rpc} failed with HTTP {status}: {body}")]
    FleetStatus {
        /// The Fleet RPC.
        rpc: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The SuperLink's (JSON) error body.
        body: String,
    },

    /// A Fleet answer was not the expected protobuf message.
    #[error("Fleet API {rpc}: undecodable answer: {source}")]
    FleetDecode {
        /// The Fleet RPC.
        rpc: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },

    /// The SuperLink does not recognize this node (ActivateNode unknown
    /// key, or a heartbeat answered `success = false`) and rejoining failed.
    #[error("the SuperLink does not recognize this node: {0}")]
    NodeUnknown(String),
}

impl From<flower_auth::AuthError> for ClientError {
    /// Credentials that cannot be built: [`AuthError::InsecureTransport`]
    /// becomes [`ClientError::InsecureCredentials`], anything else (empty or
    /// malformed token, unreadable token file, bad header name)
    /// [`ClientError::InvalidOptions`].
    ///
    /// [`AuthError::InsecureTransport`]: flower_auth::AuthError::InsecureTransport
    fn from(e: flower_auth::AuthError) -> Self {
        match e {
            flower_auth::AuthError::InsecureTransport => ClientError::InsecureCredentials,
            other => ClientError::InvalidOptions(format!("bearer credentials: {other}")),
        }
    }
}

impl ClientError {
    /// True for [`ClientError::Auth`] and [`ClientError::InsecureCredentials`].
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Auth { .. } | ClientError::InsecureCredentials
        )
    }
}
