//! Binding the listener and serving the transport (plaintext or TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Server;
use tracing::info;

use super::transport::FlowerTransport;
use crate::listener::{server_tls_config, HardenedListener, ListenerOptions, Protocol};
use crate::ServerError;

/// PEM files for the server's TLS (Flower's `--ssl-*` flags).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate: the trust root of client certificates when they are
    /// required ([`ServeOptions::require_client_certificate`]), else unused.
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

/// Default of [`ServeOptions::upload_idle_timeout`].
pub(crate) const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// A client's reply in progress that receives less than 64 KiB for this
    /// long is cut and counts as a failure (default 30 s): a stalled upload
    /// must not hold its upload permit, or the round, hostage.
    pub upload_idle_timeout: Duration,
    /// Connection-level limits (connection cap, handshake timeout, TCP keepalive).
    pub listener: ListenerOptions,
    /// Require a client certificate signed by the CA file (mutual TLS;
    /// default off, as in Flower). Only meaningful with `tls`.
    pub require_client_certificate: bool,
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
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            listener: ListenerOptions::default(),
            require_client_certificate: false,
        }
    }
}

/// HTTP/2 limits of the grpc-bidi port, set explicitly rather than left to
/// tonic's and hyper's defaults (tonic 0.14 passes `None` for the local
/// error reset cap, which removes h2's defence against reset floods).
mod h2_limits {
    /// Streams a peer may have open on one connection (Flower's server: 1000;
    /// grpc-go's default is unlimited; one `Join` per client is all we need).
    pub(super) const MAX_CONCURRENT_STREAMS: u32 = 1000;
    /// Streams the server may reset for peer errors before it sends GOAWAY
    /// (h2's default; CVE-2025-8671, "MadeYouReset").
    pub(super) const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
    /// Streams reset by the peer before we accepted them (h2's default;
    /// CVE-2023-44487, "Rapid Reset").
    pub(super) const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
    /// Request header list size (hyper's default, 16 KiB; grpc-go allows
    /// 16 MiB). Our headers are a path, a token and a few gRPC fields.
    pub(super) const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;
    /// Keepalive ping timeout (grpc-go's default: 20 s).
    pub(super) const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
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
    // Frame sizes and flow-control windows stay at hyper's defaults (16 KiB
    // frames, 1 MiB windows), which the upload gate relies on.
    let builder = Server::builder()
        .http2_keepalive_interval(Some(options.keepalive))
        .http2_keepalive_timeout(Some(h2_limits::KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(h2_limits::MAX_CONCURRENT_STREAMS))
        .http2_max_local_error_reset_streams(Some(h2_limits::MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(h2_limits::MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_header_list_size(h2_limits::MAX_HEADER_LIST_SIZE)
        .tcp_nodelay(true);
    // TLS is done by our listener (handshake timeout, optional client
    // certificates): rustls, TLS 1.2+ and ALPN `h2`, which Python clients require.
    let tls = match &options.tls {
        Some(files) => Some(server_tls_config(
            files,
            &[b"h2"],
            options.require_client_certificate,
        )?),
        None => None,
    };
    let listener = HardenedListener::bind(
        options.address,
        options.listener.clone(),
        tls,
        Protocol::Http2,
    )
    .await?;
    let local = listener.local_addr();
    let incoming = listener.incoming();
    let service = transport
        .max_message_size(options.max_message_size)
        .upload_idle_timeout(options.upload_idle_timeout);
    let mut builder = builder.layer(layer);
    let router = builder.add_service(service);
    info!(
        address = %local,
        tls = options.tls.is_some(),
        mtls = options.tls.is_some() && options.require_client_certificate,
        max_connections = options.listener.max_connections,
        "listening on {local}"
    );
    let fut = async move {
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| ServerError::Transport(e.into()))
    };
    Ok((local, fut))
}
