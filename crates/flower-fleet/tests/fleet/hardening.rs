//! The Fleet port's connection limits (issue 15): the shared hardened
//! listener caps connections, and a peer that trickles its request headers
//! is cut by the header read timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flower_fleet::{FleetApi, FleetApp, FleetOptions};
use flower_server::listener::ListenerOptions;
use flower_server::{ClientManager, Transport};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(listener: ListenerOptions) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = FleetApp::new(
        Bytes::from_static(b"not really a zip"),
        "flwrlabs/app",
        "1.0.0",
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = Box::new(FleetApi::new(
        FleetOptions::new(app)
            .insecure()
            .address("127.0.0.1:0".parse().unwrap())
            .listener(listener),
    ));
    let bound = api
        .bind(ClientManager::default(), stop_rx.map(|_| ()).boxed())
        .await
        .expect("binds");
    tokio::spawn(bound.serve);
    (bound.local_addr, stop_tx)
}

/// True when the server closed `stream` within `within`; a response (bytes)
/// before the close does not count as open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_slow_headers_cut() {
    let (addr, _stop) = start(ListenerOptions {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    // Two slowloris peers: half a request line each, never finished.
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    a.write_all(b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    b.write_all(b"POST /v1/fleet/get").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third connection finds the cap reached.
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut c, Duration::from_millis(400)).await,
        "beyond the cap"
    );
    // The slow ones are cut by the header read timeout ...
    assert!(
        closed_within(&mut a, Duration::from_secs(5)).await,
        "slow headers cut"
    );
    assert!(
        closed_within(&mut b, Duration::from_secs(5)).await,
        "slow headers cut"
    );
    // ... which frees their slots: a real request is answered.
    let mut d = TcpStream::connect(addr).await.unwrap();
    d.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), d.read_to_end(&mut response))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}
