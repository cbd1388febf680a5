//! Bearer-token authentication for flower-rs.
//!
//! What ai4flwr does for Python Flower, without its defects: tokens are never
//! logged (only 8-hex-char SHA-256 [`Fingerprint`]s), compared in constant
//! time, refused at once with `UNAUTHENTICATED` / `Invalid token` on every
//! kind of call (including a bidi `Join` whose client never sends first),
//! reloaded (on `SIGUSR1`, periodically, on demand) with the last good set
//! kept when a reload fails, and revoked tokens close their live streams.
//!
//! # Server
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use flower_auth::{token_store_from, AuthConfig};
//! let config = AuthConfig::builder().token_file(Some("tokens.txt")).build()?;
//! let (_store, manager) = token_store_from(&config).await?; // fatal on error
//! # let routes = tonic::service::Routes::default();
//! tonic::transport::Server::builder()
//!     .layer(manager.layer())
//!     .add_routes(routes)
//!     .serve("127.0.0.1:8080".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! In the `Join` handler, read the guard and wrap the response stream:
//!
//! ```ignore
//! let peer = flower_auth::AuthenticatedPeer::from_request(&request);
//! // ... build `outbound` (a Stream<Item = Result<ServerMessage, Status>>)
//! // and, where the handler drives the client, also select on
//! // `peer.revoked()` to deregister it.
//! let outbound = flower_auth::close_on_revocation(outbound, peer);
//! ```
//!
//! # Client
//!
//! [`BearerCredentials`] is a tonic interceptor; build it with
//! `.tls(true)` (or `.allow_insecure(true)` for plaintext test setups).
//!
//! # Pieces
//!
//! * [`TokenSet`] / [`TokenStore`]: hashed tokens, lock-free swappable set.
//! * [`AuthLayer`]: the server-side tower layer; [`AuthenticatedPeer`] the
//!   per-call guard; [`close_on_revocation`] the stream helper.
//! * [`TokenSource`]: [`StaticTokens`], [`FileTokens`], [`VaultTokens`].
//! * [`AuthManager`]: first load, reloads, revocation.
//! * [`AuthConfig`], [`AuthFlags`], [`VaultConfig`], [`token_store_from`]:
//!   configuration (the server CLI maps onto [`AuthFlags`]).
//! * [`log_limit`]: bounded, aggregated refusal logging (shared with the
//!   server's listeners).
//! * [`node`]: SuperNode (Fleet API) request signatures and the authorized
//!   node keys of `--enable-supernode-auth`.

#![forbid(unsafe_code)]

mod client;
mod config;
mod error;
mod layer;
pub mod log_limit;
mod manager;
pub mod node;
mod revocable;
mod secret;
mod source;
mod stats;
mod token_set;
pub mod vault;

pub use client::{
    ensure_secure_transport, is_tls_uri, BearerCredentials, BearerCredentialsBuilder,
    DEFAULT_CLIENT_HEADER,
};
pub use config::{
    token_store_from, AuthConfig, AuthConfigBuilder, AuthFlags, TokenSourceConfig,
    DEFAULT_MAX_TOKEN_STALENESS,
};
pub use error::AuthError;
pub use layer::{
    bypasses_auth, invalid_token_status, AuthLayer, AuthService, AUTH_HEADERS,
    INVALID_TOKEN_MESSAGE, UNAUTHENTICATED_SUFFIX,
};
pub use manager::{AuthManager, ReloadOptions, MIN_RECOMMENDED_TOKEN_BYTES};
pub use revocable::{close_on_revocation, RevocableStream};
pub use secret::{Fingerprint, SecretString};
pub use source::{FileTokens, StaticTokens, TokenSource};
pub use stats::{AuthStats, RefusalReason};
pub use token_set::{AuthenticatedPeer, SwapOutcome, TokenSet, TokenStore};
pub use vault::{VaultConfig, VaultConfigBuilder, VaultLogin, VaultTokens};

/// Result alias of this crate.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
