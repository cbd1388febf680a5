//! Protobuf over HTTP/1.1 to the SuperLink's Fleet API (flwr ≥ 1.40): one
//! `POST /v1/fleet/<kebab-rpc>` per call with a raw protobuf body, every
//! request signed by the node key, over plain TCP (`--insecure`) or
//! rustls. Connections are kept alive and reused, one request at a time
//! each, as httpx does; concurrent calls open more.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flower_auth::node::NodeSigner;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::ClientError as FleetError;

/// Largest response body accepted: an object (5 MiB chunk, or a larger
/// record) or a FAB (10 MB), with room to spare.
const MAX_RESPONSE_BYTES: usize = 160 << 20;

/// How the node reaches the SuperLink.
#[derive(Debug, Clone)]
pub(crate) enum Security {
    /// Plain HTTP.
    Insecure,
    /// HTTPS trusting these roots.
    Tls(Arc<rustls::ClientConfig>),
}

/// Builds the rustls config: the CA certificates of `pem` or, without one,
/// the system's roots.
pub(crate) fn tls_config(pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, FleetError> {
    let mut roots = rustls::RootCertStore::empty();
    match pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| FleetError::InvalidOptions(format!("root certificates: {e}")))?;
            if certs.is_empty() {
                return Err(FleetError::InvalidOptions(
                    "root certificates: no certificate".into(),
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(FleetError::Rustls)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(FleetError::InvalidOptions(
                    "no system root certificates found (use --root-certificates)".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(FleetError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why one HTTP call failed, before the retry rules classify it.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Connecting, TLS, sending or reading failed, or the call timed out:
    /// retried like httpx's `TransportError`.
    Transport(String),
    /// The SuperLink answered with a non-200 status.
    Status {
        /// The status code.
        status: StatusCode,
        /// The (JSON) error body, shortened.
        body: String,
    },
    /// A 200 whose body is not the expected protobuf.
    Decode(prost::DecodeError),
    /// The TLS handshake failed: not retried, as flwr gives up on
    /// certificate errors.
    Tls(String),
}

/// The HTTP client of one node.
#[derive(Debug)]
pub(crate) struct Transport {
    host: String,
    port: u16,
    authority: String,
    security: Security,
    server_name: Option<ServerName<'static>>,
    signer: NodeSigner,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Transport {
    /// A client for `superlink` (`host:port`, IPv6 in brackets, no scheme).
    pub(crate) fn new(
        superlink: &str,
        security: Security,
        signer: NodeSigner,
    ) -> Result<Self, FleetError> {
        let (host, port) = split_host_port(superlink).ok_or_else(|| {
            FleetError::InvalidOptions(format!(
                "bad SuperLink address `{superlink}` (expected host:port)"
            ))
        })?;
        let server_name = match &security {
            Security::Insecure => None,
            Security::Tls(_) => Some(ServerName::try_from(host.clone()).map_err(|e| {
                FleetError::InvalidOptions(format!("bad TLS server name `{host}`: {e}"))
            })?),
        };
        Ok(Transport {
            authority: superlink.to_owned(),
            host,
            port,
            security,
            server_name,
            signer,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The node's signer.
    pub(crate) fn signer(&self) -> &NodeSigner {
        &self.signer
    }

    /// One RPC: `POST /v1/fleet/<rpc>` with `request`, decoding a `Resp`
    /// from a 200 answer, within `timeout`.
    pub(crate) async fn call<Req, Resp>(
        &self,
        rpc: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = Bytes::from(request.encode_to_vec());
        let (status, bytes) = tokio::time::timeout(timeout, self.exchange(rpc, body))
            .await
            .map_err(|_| CallError::Transport(format!("{rpc}: no answer within {timeout:?}")))??;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(CallError::Status { status, body: text });
        }
        Resp::decode(bytes).map_err(CallError::Decode)
    }

    async fn exchange(&self, rpc: &str, body: Bytes) -> Result<(StatusCode, Bytes), CallError> {
        let mut sender = self.sender().await?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/fleet/{rpc}"))
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/protobuf")
            .header(header::ACCEPT, "application/protobuf");
        for (name, value) in &self.signer.headers(SystemTime::now()) {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(format!("{rpc}: cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Transport(format!("{rpc}: {e}")))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Transport(format!("{rpc}: reading the answer: {e}")))?
            .to_bytes();
        // Only a connection whose exchange completed goes back to the pool.
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        Ok((status, bytes))
    }

    /// An idle kept-alive connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, CallError> {
        loop {
            let candidate = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match candidate {
                Some(mut sender) => {
                    if sender.is_closed() {
                        continue;
                    }
                    if futures::future::poll_fn(|cx| sender.poll_ready(cx))
                        .await
                        .is_ok()
                    {
                        return Ok(sender);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, CallError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| CallError::Transport(format!("connect {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        debug!(superlink = %self.authority, "new Fleet API connection");
        match (&self.security, &self.server_name) {
            (Security::Tls(config), Some(name)) => {
                let tls = TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| CallError::Tls(e.to_string()))?;
                handshake(tls).await
            }
            _ => handshake(tcp).await,
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, CallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CallError::Transport(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!("Fleet API connection closed: {e}");
        }
    });
    Ok(sender)
}

/// `host:port` or `[v6]:port`.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || address.contains("://") {
        return None;
    }
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn addresses_parse_like_flwr() {
        assert_eq!(
            split_host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:8000"), Some(("::1".into(), 8000)));
        assert_eq!(
            split_host_port("localhost:1"),
            Some(("localhost".into(), 1))
        );
        assert_eq!(split_host_port("http://h:1"), None);
        assert_eq!(split_host_port("h"), None);
        assert_eq!(split_host_port(":1"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }
}
