//! The server's error type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the server library.
///
/// Wrapped errors are kept as [`std::error::Error::source`]s; the `Display`
/// of each variant says what was being done, not why (print the chain for
/// the whole story, as the `flower-server` binary does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Invalid configuration (a human-readable explanation).
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done (`"writing"`, `"reading"`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (history, checkpoint) could not be read or written.
    #[error("{action} {}", path.display())]
    Json {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A model file (`.npz`) could not be read or written.
    #[error("model file {}", path.display())]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ModelFileError,
    },
    /// TLS set-up failed.
    #[error("tls set-up")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The listening socket could not be bound.
    #[error("binding {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport failed while serving.
    #[error("transport")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Authentication could not be set up (tokens not loaded, ...).
    #[error("authentication")]
    Auth(#[from] flower_auth::AuthError),
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
    /// The client asked for the initial parameters did not provide them.
    #[error("initial parameters from client {client}")]
    InitialParameters {
        /// The client asked.
        client: flower_strategy::ClientId,
        /// Why its reply was unusable.
        #[source]
        source: crate::ReplyFailure,
    },
    /// The strategy failed.
    #[error("strategy")]
    Strategy(#[from] flower_strategy::StrategyError),
    /// The run was interrupted (SIGINT/SIGTERM, or the caller's shutdown future).
    #[error("interrupted")]
    Interrupted,
}

/// Why a model file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// The zip container.
    #[error("zip archive")]
    Zip(#[from] zip::result::ZipError),
    /// Reading or writing bytes.
    #[error("i/o")]
    Io(#[from] std::io::Error),
    /// An entry is not a valid `.npy` file.
    #[error("entry {entry}")]
    Npy {
        /// The archive entry.
        entry: String,
        /// The cause.
        #[source]
        source: flower_core::CodecError,
    },
}

impl ServerError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ServerError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn json(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(serde_json::Error) -> Self {
        let path = path.into();
        move |source| ServerError::Json {
            action,
            path,
            source,
        }
    }
}

/// `error: cause: cause ...` on one line, for logs and the command line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
