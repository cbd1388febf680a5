//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `flower-auth`.
///
/// No variant ever carries a token value: where a token must be identified,
/// its [`Fingerprint`](crate::Fingerprint) is used instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A token source produced no token at all (an empty list, an empty file,
    /// an empty Vault path). At start-up an empty set would refuse every
    /// client, so it is treated as a configuration error; on a reload it
    /// revokes every token (fail closed).
    #[error("no tokens found in {source_description}")]
    NoTokens {
        /// Description of the source (never a token).
        source_description: String,
    },

    /// A token cannot be sent or compared as a `Bearer` credential (empty, or
    /// containing whitespace or characters not allowed in an HTTP header).
    #[error("invalid token ({reason})")]
    InvalidToken {
        /// Why the token was refused.
        reason: String,
    },

    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        /// Path of the file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The authentication configuration is inconsistent or incomplete.
    #[error("invalid authentication configuration: {0}")]
    Config(String),

    /// A Vault request failed.
    #[error("Vault {operation} at {addr} failed: {detail}")]
    Vault {
        /// What was attempted (`login`, `list`, `read`, `renew`, ...).
        operation: String,
        /// Vault address.
        addr: String,
        /// Flattened description of the error and its causes.
        detail: String,
    },

    /// The OIDC access token could not be decoded to read its `sub` claim.
    #[error("invalid OIDC access token: {0}")]
    InvalidOidcToken(String),

    /// Call credentials were about to be sent over a plaintext connection.
    #[error(
        "refusing to send a bearer token over a plaintext (non-TLS) connection; \
         configure TLS or explicitly allow insecure authentication"
    )]
    InsecureTransport,

    /// The header name chosen for the credentials is not a valid gRPC
    /// metadata key.
    #[error("invalid metadata key {0:?} for credentials")]
    InvalidHeaderName(String),

    /// Installing the `SIGUSR1` handler failed.
    #[error("cannot install SIGUSR1 handler: {0}")]
    Signal(#[source] std::io::Error),

    /// The reload machinery has been shut down.
    #[error("the token reloader has been shut down")]
    ReloaderStopped,
}
