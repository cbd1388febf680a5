//! Binding the listener and serving the transport (plaintext or TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

use super::transport::FlowerTransport;
use crate::ServerError;

/// PEM files for the server's TLS (Flower's `--ssl-*` flags).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (accepted for compatibility; client certificates are not required).
    pub ca_certfile: PathBuf,
    /// Server certificate chain.
    pub certfile: PathBuf,
    /// Server private key.
    pub keyfile: PathBuf,
}

impl TlsFiles {
    /// The three PEM files.
    pub fn new(
        ca_certfile: impl Into<PathBuf>,
        certfile: impl Into<PathBuf>,
        keyfile: impl Into<PathBuf>,
    ) -> Self {
        TlsFiles {
            ca_certfile: ca_certfile.into(),
            certfile: certfile.into(),
            keyfile: keyfile.into(),
        }
    }
}

/// Listener settings of the grpc-bidi port. The `Default` values are the
/// only copy of these defaults (the binary's flags and help read them).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (default `0.0.0.0:8080`, Flower's; port 0 picks a free port).
    pub address: SocketAddr,
    /// TLS files; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// Max gRPC message size, both ways (Flower: 2,147,483,647).
    pub max_message_size: usize,
    /// HTTP/2 keepalive ping interval (Flower's server: 210 s).
    pub keepalive: Duration,
    /// Refuse clients beyond this many simultaneous streams (default: no limit).
    pub max_clients: Option<usize>,
    /// Receive at most this many large (>= 1 MiB) client messages at once,
    /// admitted in fold order (default 2; `None`: no limit). Bounds receive
    /// memory to about this many model sizes.
    pub max_concurrent_uploads: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            max_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            keepalive: Duration::from_secs(210),
            max_clients: None,
            max_concurrent_uploads: Some(2),
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(ServerError::io("reading", path))
}

/// Binds `options.address`, logs `listening on <addr>`, and returns the bound
/// address plus a future that serves until `stop` completes.
pub(crate) async fn serve<L>(
    options: &ServeOptions,
    transport: FlowerTransport,
    layer: L,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServerError>>), ServerError>
where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
{
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(options.keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(None)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        let cert = read(&tls.certfile)?;
        let key = read(&tls.keyfile)?;
        // rustls with tonic's acceptor: TLS 1.2+ and ALPN `h2`, which Python
        // clients require.
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| ServerError::Tls(e.into()))?;
    }
    let bind_error = |source| ServerError::Bind {
        address: options.address,
        source,
    };
    let listener = TcpListener::bind(options.address)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = transport.max_message_size(options.max_message_size);
    let router = builder.layer(layer).add_service(service);
    info!(address = %local, tls = options.tls.is_some(), "listening on {local}");
    let fut = async move {
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| ServerError::Transport(e.into()))
    };
    Ok((local, fut))
}
