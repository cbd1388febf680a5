//! The metrics endpoint: `/readyz` follows the server's life, `/metrics`
//! parses as Prometheus text and its counters follow a run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flower_core::{ClientMessage, FitRes, ServerMessage, Status};
use flower_server::{metrics, DriverConfig, ExchangeError, FnClient, Metrics, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::fedavg;

/// A plain HTTP/1.0 GET: status code and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// `/metrics`, parsed: value by metric name and sorted labels.
pub(crate) async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    assert!(!parsed.samples.is_empty());
    let mut out = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let key = format!("{}{{{}}}", sample.metric, labels.join(","));
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_with_the_listener_and_counters_follow_a_run() {
    let metrics = Metrics::new();
    let endpoint = metrics::serve("127.0.0.1:0".parse().unwrap(), metrics.clone())
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503, "ready before bind");
    assert_eq!(get(addr, "/nope").await.0, 404);

    let server = Server::builder()
        .address("127.0.0.1:0".parse().unwrap())
        .insecure()
        .metrics(metrics.clone())
        .boxed_strategy(fedavg(2))
        .driver(DriverConfig {
            num_rounds: 2,
            shutdown_grace: Duration::from_millis(10),
            ..DriverConfig::default()
        })
        .bind()
        .await
        .unwrap();
    assert_eq!(get(addr, "/readyz").await.0, 200, "listening");

    // One client echoes fits and fails evaluations; one fails everything.
    let echo = FnClient::new(|message| match message {
        ServerMessage::Fit(ins) => Ok(ClientMessage::Fit(FitRes {
            status: Status::success(),
            parameters: ins.parameters,
            num_examples: 1,
            metrics: Default::default(),
        })),
        _ => Err(ExchangeError::Protocol("no evaluate here".into())),
    });
    let broken = FnClient::new(|_| Err(ExchangeError::Closed("gone".into())));
    server.clients().register(Arc::new(echo)).unwrap();
    server.clients().register(Arc::new(broken)).unwrap();
    let before = scrape(addr).await;
    assert_eq!(
        before["flower_clients_connected{transport=in-process}"],
        2.0
    );
    assert_eq!(before["flower_round_phase{phase=initializing}"], 0.0);

    let outcome = server.run(std::future::pending()).await.unwrap();
    assert_eq!(outcome.completed_rounds, 2);
    assert_eq!(get(addr, "/readyz").await.0, 503, "run over");

    let after = scrape(addr).await;
    let v = |k: &str| *after.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(v("flower_rounds_planned{}"), 2.0);
    assert_eq!(v("flower_round{}"), 2.0);
    assert_eq!(v("flower_round_phase{phase=done}"), 1.0);
    assert_eq!(v("flower_results_total{phase=fit}"), 2.0);
    assert_eq!(v("flower_failures_total{phase=fit,reason=closed}"), 2.0);
    assert_eq!(
        v("flower_failures_total{phase=evaluate,reason=protocol}"),
        2.0
    );
    assert_eq!(v("flower_last_round_failures{phase=evaluate}"), 2.0);
    assert_eq!(v("flower_clients_joined_total{transport=in-process}"), 2.0);
    // Histograms: the +Inf bucket counts every round.
    assert_eq!(v("flower_round_duration_seconds{}"), 2.0);
    assert!(v("process_resident_memory_bytes{}") > 0.0);
    assert!(v("process_open_fds{}") > 0.0);
    assert_eq!(v("flower_upload_gate{state=pending}"), 0.0);
    endpoint.stop().await;
}
