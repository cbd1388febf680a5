//! A byte-counting TCP relay on loopback between the clients and a server.
//!
//! The clients dial the relay; each accepted connection gets its own
//! upstream connection to the server, and bytes are copied both ways and
//! counted. What is counted is what crosses the server's socket: TLS
//! records (HTTP/2 frames inside), not model bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Size of one copy buffer (per direction and connection).
const BUFFER: usize = 256 * 1024;

/// Byte counters of a [`Relay`], shared with its copy tasks.
#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    /// Bytes from the clients to the server.
    pub(crate) to_server: AtomicU64,
    /// Bytes from the server to the clients.
    pub(crate) to_clients: AtomicU64,
    /// Connections accepted.
    pub(crate) connections: AtomicU64,
}

impl RelayCounters {
    /// `(to_server, to_clients)` now.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.to_server.load(Ordering::Relaxed),
            self.to_clients.load(Ordering::Relaxed),
        )
    }
}

/// A running relay; dropping it (or [`Relay::stop`]) closes the listener
/// and every relayed connection.
#[derive(Debug)]
pub(crate) struct Relay {
    /// Where the clients connect.
    pub(crate) address: SocketAddr,
    /// The counters.
    pub(crate) counters: Arc<RelayCounters>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` forwarding to `upstream`, on the
    /// current Tokio runtime.
    pub(crate) async fn start(upstream: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let counters = Arc::new(RelayCounters::default());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, upstream, counters.clone(), stop_rx));
        Ok(Relay {
            address,
            counters,
            stop,
        })
    }

    /// Closes the listener and all relayed connections.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<RelayCounters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((downstream, _)) = accepted else {
            continue;
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = downstream.set_nodelay(true);
            let (dr, dw) = downstream.into_split();
            let (ur, uw) = up.into_split();
            let pumps = async {
                tokio::join!(
                    pump(dr, uw, &counters.to_server),
                    pump(ur, dw, &counters.to_clients)
                )
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = pumps => {}
            }
        });
    }
}

/// Copies `from` to `to` until EOF or an error, counting bytes; then
/// half-closes `to`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_and_counts_both_ways() {
        let server = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong!!!").await.unwrap();
        });
        let relay = Relay::start(upstream).await.unwrap();
        let mut c = TcpStream::connect(relay.address).await.unwrap();
        c.write_all(b"ping!").await.unwrap();
        let mut got = [0u8; 7];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!!!");
        assert_eq!(relay.counters.bytes(), (5, 7));
    }
}
