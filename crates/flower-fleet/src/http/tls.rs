//! rustls for the Fleet port, from the same PEM files as the grpc-bidi
//! port ([`TlsFiles`]): HTTP/1.1 only, as the SuperNode's `httpx` speaks.

use std::path::Path;
use std::sync::Arc;

use flower_server::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::FleetError;

fn read(path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The acceptor for `files` (certificate chain and private key; the CA file
/// is not needed: client certificates are not requested).
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, FleetError> {
    let certs = read(&files.certfile)?;
    let key = read(&files.keyfile)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<_, _>>()
        .map_err(|e| FleetError::Tls(format!("{}: {e}", files.certfile.display())))?;
    if certs.is_empty() {
        return Err(FleetError::Tls(format!(
            "{}: no certificate",
            files.certfile.display()
        )));
    }
    // The error names the file only: a key parse error must not echo key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
        FleetError::Tls(format!(
            "{}: no usable private key",
            files.keyfile.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(FleetError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(FleetError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
