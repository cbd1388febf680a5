//! SuperNode authentication for the Fleet API (flwr 1.42).
//!
//! Every Fleet request of a `flower-supernode` is signed with its ECDSA node
//! key: the SuperNode sends its public key, the current time and an ECDSA
//! (SHA-256) signature of that time. [`verify_node_request`] checks them as
//! flwr's SuperLink does and returns the [`NodePublicKey`]; the Fleet
//! service then checks that the key matches the request (the
//! `public_key` of RegisterNode / ActivateNode, or the node id bound to
//! it). Any failure is HTTP 401 `Invalid SuperNode authentication`.
//!
//! With `--enable-supernode-auth`, only pre-registered keys may connect:
//! [`NodeKeyManager`] loads them from an authorized-keys file and/or
//! Vault/OpenBao (same login options as bearer tokens), reloads them on
//! `SIGUSR1` or an interval, and reports removed keys so that their nodes
//! can be deactivated.
//!
//! ```no_run
//! # async fn run(headers: http::HeaderMap) -> Result<(), flower_auth::node::NodeAuthError> {
//! use flower_auth::node::{verify_node_request, NodeKeyManager, NodeKeysConfig};
//! let manager = NodeKeyManager::start(
//!     &NodeKeysConfig::new().authorized_keys_file(Some("/etc/flower/authorized_keys")),
//! )
//! .await?;
//! let authorized = manager.keys();
//! let key = verify_node_request(&headers, std::time::SystemTime::now())?;
//! if !authorized.contains(&key) {
//!     // 401
//! }
//! let mut removals = authorized.subscribe_removals();
//! // In the Fleet service: `removals.recv().await` -> deactivate those nodes.
//! # let _ = removals.try_recv();
//! # Ok(()) }
//! ```
//!
//! Nothing here logs a key: logs and errors name keys by their OpenSSH
//! SHA-256 fingerprint ([`NodePublicKey::fingerprint`]).

mod authorized;
mod error;
mod key;
mod manager;
mod signer;
mod verify;

use std::time::Duration;

pub use authorized::{
    parse_authorized_keys, AuthorizedKeysFile, AuthorizedNodeKeys, KeySetChange, NodeKeyRevocation,
    NodeKeySet,
};
pub use error::{KeyParseCause, NodeAuthError};
pub use key::{NodeKeyCurve, NodePublicKey, NodeSigningKey};
pub use manager::{
    node_keys_vault_config, NodeKeyManager, NodeKeysConfig, DEFAULT_VAULT_NODE_KEYS_PATH,
};
pub use signer::NodeSigner;
pub use verify::{
    verify_grpc_node_metadata, verify_node_request, verify_node_signature_raw,
    verify_signed_timestamp,
};

/// HTTP header with the base64 of the node's PEM public key (flwr ≥ 1.40).
pub const PUBLIC_KEY_HEADER: &str = "flwr-public-key";
/// HTTP header with the base64 of the DER signature (flwr ≥ 1.40).
pub const SIGNATURE_HEADER: &str = "flwr-signature";
/// Header / metadata with the signed timestamp (both transports).
pub const TIMESTAMP_HEADER: &str = "flwr-timestamp";
/// gRPC binary metadata with the raw PEM public key (flwr ≤ 1.39).
pub const GRPC_PUBLIC_KEY_HEADER: &str = "flwr-public-key-bin";
/// gRPC binary metadata with the raw DER signature (flwr ≤ 1.39).
pub const GRPC_SIGNATURE_HEADER: &str = "flwr-signature-bin";

/// How far in the future a timestamp may be (flwr's
/// `SYSTEM_TIME_TOLERANCE`): `now - timestamp` must exceed `-5 s`.
pub const MAX_TIMESTAMP_SKEW: Duration = Duration::from_secs(5);
/// How old a timestamp may be (flwr's `TIMESTAMP_TOLERANCE +
/// SYSTEM_TIME_TOLERANCE`): `now - timestamp` must stay under `305 s`.
pub const MAX_TIMESTAMP_AGE: Duration = Duration::from_secs(305);

/// The body of flwr's 401 answer to any node authentication failure.
pub const INVALID_NODE_AUTH_MESSAGE: &str = "Invalid SuperNode authentication";
