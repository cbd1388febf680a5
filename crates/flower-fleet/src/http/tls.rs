//! rustls for the Fleet port, from the same PEM files as the grpc-bidi
//! port ([`TlsFiles`]): HTTP/1.1 only, as the SuperNode's `httpx` speaks.

use std::sync::Arc;

use flower_server::listener::server_tls_config;
use flower_server::TlsFiles;

use crate::FleetError;

/// The server configuration for `files` (certificate chain and private key;
/// the CA file is not needed: client certificates are not requested).
pub(crate) fn config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, FleetError> {
    server_tls_config(files, &[b"http/1.1"], false)
        .map_err(|e| FleetError::Tls(flower_server::error_chain(&e)))
}
