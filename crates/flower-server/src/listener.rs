//! The hardened accept loop shared by the grpc-bidi port and the Fleet port.
//!
//! What a hostile or broken peer can no longer do here:
//!
//! * hold more than `max_connections` connections: beyond it, a connection
//!   is closed as soon as it is accepted;
//! * stall a TLS handshake or, on the HTTP/2 port, the connection preface:
//!   both must complete within `handshake_timeout` (the HTTP/1 port leaves
//!   the request headers to hyper's header read timeout, see
//!   [`ListenerOptions::handshake_timeout`]);
//! * keep a dead peer's socket forever: TCP keepalive is on;
//! * make the loop spin when file descriptors run out: accept errors back
//!   off exponentially (5 ms up to 1 s, as Go's `net/http` does);
//! * fill the log: refusals are logged a few per interval and counted.
//!
//! Connections that pass are yielded by [`Incoming`], each holding its slot
//! until it is dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use flower_auth::log_limit::LogLimiter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

use crate::{ServerError, TlsFiles};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// File descriptors kept free of connections (listeners, checkpoint and
/// model files, the token file, Vault and log output).
const FD_RESERVE: u64 = 64;

/// Connection-level limits of a listener. The `Default` values are the only
/// copy of these defaults (the binary's flags and help read them).
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Most connections open at once (default 20,000: twice the 10,000
    /// clients of the scale benchmark; lowered at bind time to what the
    /// process's file-descriptor limit allows, less a reserve for files);
    /// connections beyond it are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time from accept to a completed TLS handshake and, on the HTTP/2
    /// port, the client's connection preface (default 10 s). On the HTTP/1
    /// port it is also the header read timeout of every request.
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time (default 60 s; `None`: off).
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
        }
    }
}

/// What the port speaks after TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 only (gRPC): the connection preface is read and checked
    /// within the handshake timeout.
    Http2,
    /// HTTP/1.1 (the Fleet API).
    Http1,
}

/// Raises the soft limit on open file descriptors to the hard limit and
/// logs both. Returns the soft limit now in force (`None` where there is no
/// such limit or it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) if now > before.0 => {
                info!(
                    before = before.0,
                    now,
                    hard = before.1,
                    "open file limit (soft) raised from {} to {now}",
                    before.0
                );
                Some(now)
            }
            Ok(now) => {
                info!(soft = now, hard = before.1, "open file limit: {now}");
                Some(now)
            }
            Err(e) => {
                warn!(soft = before.0, error = %e, "could not raise the open file limit");
                Some(before.0)
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection cap in force: `configured`, lowered to what the current
/// soft file-descriptor limit leaves after a reserve.
fn effective_max_connections(configured: usize) -> usize {
    #[cfg(unix)]
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let room = usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        if room < configured {
            // Expected with the default cap under a modest limit: info, not warn.
            info!(
                configured,
                room, "max connections lowered to {room}: the open file limit is {soft}"
            );
            return room;
        }
    }
    configured.max(1)
}

/// rustls server configuration from PEM files, with ring, TLS 1.2+ and the
/// given ALPN protocols. With `require_client_certificate`, clients must
/// present a certificate signed by the CA file (mutual TLS).
pub fn server_tls_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
    require_client_certificate: bool,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let read =
        |path: &std::path::PathBuf| std::fs::read(path).map_err(ServerError::io("reading", path));
    let tls_error = |m: String| ServerError::Tls(m.into());
    let chain = read(&files.certfile)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(format!("{}: {e}", files.certfile.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{}: no certificate",
            files.certfile.display()
        )));
    }
    // The error names the file only: a key parse error must not echo key bytes.
    let key = PrivateKeyDer::from_pem_slice(&read(&files.keyfile)?).map_err(|_| {
        tls_error(format!(
            "{}: no usable private key",
            files.keyfile.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.into()))?;
    let builder = if require_client_certificate {
        let ca = read(&files.ca_certfile)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert =
                cert.map_err(|e| tls_error(format!("{}: {e}", files.ca_certfile.display())))?;
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("{}: {e}", files.ca_certfile.display())))?;
        }
        if roots.is_empty() {
            return Err(tls_error(format!(
                "{}: no CA certificate",
                files.ca_certfile.display()
            )));
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServerError::Tls(e.into()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.into()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A bound listening socket with its limits, not yet accepting.
pub struct HardenedListener {
    tcp: TcpListener,
    local: SocketAddr,
    options: ListenerOptions,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
}

impl std::fmt::Debug for HardenedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HardenedListener")
            .field("local", &self.local)
            .field("options", &self.options)
            .field("tls", &self.tls.is_some())
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl HardenedListener {
    /// Binds `address`.
    pub async fn bind(
        address: SocketAddr,
        options: ListenerOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
        protocol: Protocol,
    ) -> Result<Self, ServerError> {
        let bind_error = |source| ServerError::Bind { address, source };
        let tcp = TcpListener::bind(address).await.map_err(bind_error)?;
        let local = tcp.local_addr().map_err(bind_error)?;
        Ok(HardenedListener {
            tcp,
            local,
            options,
            tls: tls.map(TlsAcceptor::from),
            protocol,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts accepting (on a task of the current runtime). The task ends
    /// when the returned stream is dropped, closing the listening socket.
    pub fn incoming(self) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        let max = effective_max_connections(self.options.max_connections);
        debug!(address = %self.local, max_connections = max, "accepting connections");
        tokio::spawn(accept_loop(self, Arc::new(Semaphore::new(max)), tx));
        Incoming { rx }
    }
}

/// Connections refused at the cap, logged a few per interval.
static CAP_REFUSALS: LogLimiter = LogLimiter::new(Duration::from_secs(10), 3);
/// Failed accepts (out of file descriptors, ...), logged a few per interval.
static ACCEPT_ERRORS: LogLimiter = LogLimiter::new(Duration::from_secs(10), 3);

/// Accept errors that concern one connection only (the peer gave up before
/// we accepted): no back-off needed.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn accept_loop(
    listener: HardenedListener,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Connection>,
) {
    let mut backoff = Duration::ZERO;
    let max = slots.available_permits();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => break,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Typically EMFILE: the socket stays readable, so retrying at
                // once would spin a core. Back off until a descriptor frees up.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if let Some(suppressed) = ACCEPT_ERRORS.admit() {
                    warn!(error = %e, retry_in = ?backoff, suppressed, "accept failed");
                }
                tokio::select! {
                    () = tx.closed() => break,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = CAP_REFUSALS.admit() {
                warn!(%peer, max_connections = max, suppressed, "connection refused: max connections reached");
            }
            // Dropped at once: the peer sees the connection closed.
            drop(stream);
            continue;
        };
        let tx = tx.clone();
        let tls = listener.tls.clone();
        let options = listener.options.clone();
        let protocol = listener.protocol;
        tokio::spawn(async move {
            let info = TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let setup = establish(stream, tls, protocol, &options);
            match tokio::time::timeout(options.handshake_timeout, setup).await {
                Ok(Ok((io, rewind))) => {
                    let _ = tx
                        .send(Connection {
                            io,
                            rewind,
                            info,
                            _slot: slot,
                        })
                        .await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "connection set-up failed"),
                Err(_) => debug!(%peer, "connection closed: handshake not completed in time"),
            }
        });
    }
    debug!(address = %listener.local, "listener closed");
}

/// TCP options, TLS handshake and (HTTP/2) the preface.
async fn establish(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
    options: &ListenerOptions,
) -> io::Result<(Io, Bytes)> {
    stream.set_nodelay(true)?;
    if let Some(idle) = options.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    }
    let mut io = match tls {
        None => Io::Plain(stream),
        Some(acceptor) => Io::Tls(Box::new(acceptor.accept(stream).await?)),
    };
    let rewind = if protocol == Protocol::Http2 {
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await?;
        if &preface != H2_PREFACE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP/2 connection preface",
            ));
        }
        Bytes::from_static(H2_PREFACE)
    } else {
        Bytes::new()
    };
    Ok((io, rewind))
}

/// Accepted connections that completed their set-up in time.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Connection>,
}

impl Incoming {
    /// The next connection; `None` once the accept loop has ended.
    pub async fn next(&mut self) -> Option<Connection> {
        self.rx.recv().await
    }
}

impl futures::Stream for Incoming {
    type Item = Result<Connection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One accepted connection (plaintext or TLS), holding its slot of the
/// connection cap until dropped. Bytes read during set-up (the HTTP/2
/// preface) are replayed first.
#[derive(Debug)]
pub struct Connection {
    io: Io,
    rewind: Bytes,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// The peer's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.info.remote_addr
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rewind.has_remaining() {
            let n = this.rewind.len().min(buf.remaining());
            buf.put_slice(&this.rewind[..n]);
            this.rewind.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn listener(options: ListenerOptions, protocol: Protocol) -> (SocketAddr, Incoming) {
        let l = HardenedListener::bind(([127, 0, 0, 1], 0).into(), options, None, protocol)
            .await
            .unwrap();
        (l.local_addr(), l.incoming())
    }

    /// True when the peer closed the connection within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let options = ListenerOptions {
            max_connections: 2,
            ..Default::default()
        };
        let (addr, mut incoming) = listener(options, Protocol::Http1).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap();
        let _second = incoming.next().await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut third, Duration::from_secs(5)).await);
        // A slot freed is a slot available again.
        drop(first);
        let _c = TcpStream::connect(addr).await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(again.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_stalled_preface_is_cut_and_a_good_one_replayed() {
        let options = ListenerOptions {
            handshake_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (addr, mut incoming) = listener(options, Protocol::Http2).await;
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"PRI * HTTP").await.unwrap();
        assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(H2_PREFACE).await.unwrap();
        good.write_all(b"rest").await.unwrap();
        let mut conn = incoming.next().await.unwrap();
        let mut seen = [0u8; 28];
        conn.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen[..24], H2_PREFACE);
        assert_eq!(&seen[24..], b"rest");
        let mut wrong = TcpStream::connect(addr).await.unwrap();
        wrong.write_all(&[b'G'; 24]).await.unwrap();
        assert!(closed_within(&mut wrong, Duration::from_secs(5)).await);
    }
}
