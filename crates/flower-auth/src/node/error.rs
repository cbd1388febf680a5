//! The error type of SuperNode authentication.

use std::path::PathBuf;

use super::key::NodeKeyCurve;
use crate::error::AuthError;

/// Boxed cause of a key parse failure (a `der`, `spki`, `ssh-key` or
/// `elliptic-curve` error: structure only, never key bytes).
pub type KeyParseCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while authenticating a SuperNode or loading
/// the authorized node keys.
///
/// `Display` never shows key material: a key is named by its fingerprint,
/// a malformed one by what is wrong with it. Every request-level variant
/// maps to HTTP 401 `Invalid SuperNode authentication` (gRPC
/// `UNAUTHENTICATED`), as flwr does; the variants exist for the logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeAuthError {
    /// A required header (or gRPC metadata entry) is absent.
    #[error("missing `{header}` header")]
    MissingHeader {
        /// Header name.
        header: &'static str,
    },

    /// A header is present but not visible ASCII text.
    #[error("`{header}` header is not ASCII text")]
    InvalidHeader {
        /// Header name.
        header: &'static str,
    },

    /// A header that must be standard base64 (with padding) is not.
    #[error("`{header}` header is not valid base64")]
    InvalidBase64 {
        /// Header name.
        header: &'static str,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },

    /// The bytes are not a well-formed public key.
    #[error("invalid node public key: {reason}")]
    InvalidKey {
        /// What is wrong (a fixed phrase).
        reason: &'static str,
        /// The parser's error, when there is one.
        #[source]
        source: Option<KeyParseCause>,
    },

    /// A well-formed key of an algorithm or curve flwr does not accept.
    #[error("unsupported node public key: {what}")]
    UnsupportedKey {
        /// Algorithm or curve (name or OID), never the key.
        what: String,
    },

    /// `flwr-timestamp` is not an ISO 8601 / RFC 3339 date-time with a UTC
    /// offset (Python's `datetime.now(UTC).isoformat()`).
    #[error("`flwr-timestamp` is not an RFC 3339 date-time with a UTC offset")]
    InvalidTimestamp {
        /// The parser's error.
        #[source]
        source: time::error::Parse,
    },

    /// The signed timestamp is too old or too far in the future: flwr
    /// accepts `-5 s < now - timestamp < 305 s`.
    #[error(
        "`flwr-timestamp` is outside the accepted window: it is {age_ms} ms old \
         (accepted: more than -5000 ms and less than 305000 ms)"
    )]
    TimestampOutsideWindow {
        /// `now - timestamp` in milliseconds (negative: in the future).
        age_ms: i64,
    },

    /// The signature is not a DER ECDSA signature for the key's curve.
    #[error("signature is not a DER-encoded ECDSA signature for {curve}")]
    MalformedSignature {
        /// The key's curve.
        curve: NodeKeyCurve,
        /// The decoder's error.
        #[source]
        source: ecdsa::Error,
    },

    /// The signature is well formed but does not verify with the key.
    #[error("signature does not verify with node key {fingerprint}")]
    BadSignature {
        /// Fingerprint of the key presented.
        fingerprint: String,
    },

    /// An entry of an authorized-keys list is not a usable public key.
    #[error("{origin}: entry at line {line}: {source}")]
    AuthorizedKeysEntry {
        /// Where the list comes from (file path or Vault description).
        origin: String,
        /// 1-based line of the entry (its first line for a PEM block);
        /// for Vault, the 1-based index of the value.
        line: usize,
        /// Why the entry was refused.
        #[source]
        source: Box<NodeAuthError>,
    },

    /// The authorized-keys file could not be read.
    #[error("cannot read authorized-keys file {path}: {source}")]
    AuthorizedKeysFile {
        /// Path of the file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A source produced no key at all (an empty or all-comment file, an
    /// empty Vault path). Treated as an error, like an empty token source:
    /// a truncated file must not disconnect every node.
    #[error("no authorized node keys found in {source_description}")]
    NoKeys {
        /// Description of the source.
        source_description: String,
    },

    /// The shared token machinery failed (Vault login or read, ...).
    #[error("node key source: {0}")]
    Source(#[source] AuthError),

    /// The node-key configuration is inconsistent or incomplete.
    #[error("invalid node authentication configuration: {0}")]
    Config(String),

    /// Installing the `SIGUSR1` handler failed.
    #[error("cannot install SIGUSR1 handler: {0}")]
    Signal(#[source] std::io::Error),
}

impl NodeAuthError {
    /// Why a signed request was refused, as a metrics label: `missing` (a
    /// header absent), `malformed` (a header, key, timestamp or signature
    /// that does not parse), `stale` (the timestamp is outside the window),
    /// `bad_signature` (it does not verify), `other` (not a request-level
    /// error).
    #[must_use]
    pub fn refusal_reason(&self) -> &'static str {
        match self {
            Self::MissingHeader { .. } => "missing",
            Self::InvalidHeader { .. }
            | Self::InvalidBase64 { .. }
            | Self::InvalidKey { .. }
            | Self::UnsupportedKey { .. }
            | Self::InvalidTimestamp { .. }
            | Self::MalformedSignature { .. } => "malformed",
            Self::TimestampOutsideWindow { .. } => "stale",
            Self::BadSignature { .. } => "bad_signature",
            _ => "other",
        }
    }

    pub(crate) fn invalid_key(
        reason: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::InvalidKey {
            reason,
            source: Some(Box::new(source)),
        }
    }
}

impl From<AuthError> for NodeAuthError {
    fn from(err: AuthError) -> Self {
        Self::Source(err)
    }
}
