//! Binding the listener and serving the transport (plaintext or TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

use crate::transport::FlowerTransport;
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

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (port 0 picks a free port).
    pub address: SocketAddr,
    /// TLS files; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// Max gRPC message size, both ways (Flower: 2,147,483,647).
    pub max_message_size: usize,
    /// HTTP/2 keepalive ping interval (Flower's server: 210 s).
    pub keepalive: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            max_message_size: flower_proto::GRPC_MAX_MESSAGE_LENGTH,
            keepalive: Duration::from_secs(210),
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::Tls(format!("reading {}: {e}", path.display())))
}

/// Binds `options.address`, logs `listening on <addr>`, and returns the bound
/// address plus a future that serves until `stop` completes.
pub async fn serve<L>(
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
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let listener = TcpListener::bind(options.address)
        .await
        .map_err(|e| ServerError::Transport(format!("binding {}: {e}", options.address)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::Transport(e.to_string()))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = transport.max_message_size(options.max_message_size);
    let router = builder.layer(layer).add_service(service);
    info!(address = %local, tls = options.tls.is_some(), "listening on {local}");
    let fut = async move {
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| ServerError::Transport(e.to_string()))
    };
    Ok((local, fut))
}
