//! The operators' view of a real run with stock Python clients: `/metrics`
//! scraped while rounds run (parsed as Prometheus text, counters moving),
//! `/healthz` and `/readyz`, progress lines, and the plot written by
//! `--plot` (a PNG of the expected size), then again by `flower-server plot`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;

const TOKEN: &str = "ops-test-token-0123456789";

/// A plain HTTP/1.0 GET: status and body; `None` when nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `/metrics` parsed with a Prometheus text parser: value by
/// `name{label=value,...}` (labels sorted; histograms by their count).
pub(crate) fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let (status, text) = get(port, "/metrics")?;
    assert_eq!(status, 200);
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    Some(out)
}

pub(crate) fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from /metrics: {m:?}"))
}

/// Scrapes until `done` holds (bounded); the scrape that satisfied it.
fn scrape_until(
    port: u16,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some(m) = scrape(port) {
            if done(&m) {
                return m;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("/metrics never showed {what}");
}

#[test]
fn metrics_health_progress_and_plot_of_a_python_run() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    let out = dir.path().join("out");
    let metrics_port = flower_testkit::free_port();

    let mut args = server_args(&certs, &out, &init, 3, 2);
    args.extend(
        [
            "--token",
            TOKEN,
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
            "--plot",
            "--progress",
            "lines",
            "--strategy-option",
            "evaluate_metrics=all",
        ]
        .map(String::from),
    );
    let mut server = Server::start(&args, dir.path());
    assert_eq!(get(metrics_port, "/healthz").unwrap().0, 200);
    assert_eq!(get(metrics_port, "/readyz").unwrap().0, 200);

    // A refused client first, then two that each sleep through one fit
    // (round 1 and round 2): windows in which to scrape a running round.
    let ca = certs.ca();
    let addr = server.address();
    let refused_log = dir.path().join("refused.log");
    let mut refused = python_client(
        &py,
        &addr,
        Some(&ca),
        0,
        &["--token", "wrong-token-0123456789"],
        &refused_log,
    );
    assert!(!refused
        .wait_timeout(Duration::from_secs(30))
        .expect("refused client exits")
        .success());
    let mut clients: Vec<_> = (0..2)
        .map(|i| {
            let round = (i + 1).to_string();
            python_client(
                &py,
                &addr,
                Some(&ca),
                i,
                &[
                    "--token",
                    TOKEN,
                    "--mode",
                    "sleep-fit",
                    "--mode-round",
                    &round,
                    "--sleep",
                    "2",
                ],
                &dir.path().join(format!("c{i}.log")),
            )
        })
        .collect();

    let round1 = scrape_until(metrics_port, "round 1's fit", |m| {
        m.get("flower_round{}") == Some(&1.0)
            && m.get("flower_round_phase{phase=fit}") == Some(&1.0)
    });
    let round2 = scrape_until(metrics_port, "round 2's fit", |m| {
        m.get("flower_round{}") == Some(&2.0)
            && m.get("flower_round_phase{phase=fit}") == Some(&1.0)
    });
    for m in [&round1, &round2] {
        assert_eq!(
            value(m, "flower_clients_connected{transport=grpc-bidi}"),
            2.0
        );
        assert_eq!(value(m, "flower_rounds_planned{}"), 3.0);
        assert_eq!(value(m, "flower_auth_tokens{source=static}"), 1.0);
        assert!(value(m, "flower_auth_refusals_total{reason=unknown}") >= 1.0);
        assert!(value(m, "process_resident_memory_bytes{}") > 0.0);
        assert!(value(m, "process_open_fds{}") > 0.0);
    }
    // Counters moved between round 1's fit and round 2's.
    let moved = |key: &str| value(&round2, key) > value(&round1, key);
    assert!(
        round1
            .get("flower_results_total{phase=fit}")
            .copied()
            .unwrap_or(0.0)
            < 2.0
    );
    assert_eq!(value(&round2, "flower_results_total{phase=fit}"), 2.0);
    assert_eq!(value(&round2, "flower_results_total{phase=evaluate}"), 2.0);
    assert_eq!(value(&round2, "flower_round_duration_seconds{}"), 1.0);
    for key in [
        "flower_bytes_received_total{transport=grpc-bidi}",
        "flower_bytes_sent_total{transport=grpc-bidi}",
        "process_cpu_seconds_total{}",
    ] {
        assert!(
            moved(key),
            "{key} did not grow: {} -> {}",
            value(&round1, key),
            value(&round2, key)
        );
    }

    let status = server.wait(Duration::from_secs(120));
    assert!(status.success(), "server failed:\n{}", server.log_text());
    assert_clients_succeed(&mut clients);
    assert!(
        get(metrics_port, "/healthz").is_none(),
        "endpoint still up after exit"
    );

    // Progress: one line per phase.
    let log = server.log_text();
    for line in [
        "round 1/3 fit: 2 sampled, 2 results, 0 failures",
        "round 3/3 evaluate: 2 sampled, 2 results, 0 failures, loss ",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    assert!(!log.contains(TOKEN), "token logged");

    // The plot: announced on stdout, a PNG of the size its panels need.
    let stdout = std::fs::read_to_string(&server.out).unwrap();
    let png_path = out.join("history.png");
    assert!(
        stdout.contains(&format!("plot: {}", png_path.display())),
        "{stdout}"
    );
    let history = history(&out);
    let metric_names: std::collections::BTreeSet<&String> = [
        "metrics_distributed_fit",
        "metrics_distributed",
        "metrics_centralized",
    ]
    .iter()
    .flat_map(|k| history[*k].as_object().unwrap().keys())
    .collect();
    // loss + clients per round + one per metric (all numeric here).
    let panels = 2 + metric_names.len();
    let png = std::fs::read(&png_path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), flower_plot::image_size(panels), "{panels} panels");
    assert!(std::fs::read_to_string(out.join("history.svg"))
        .unwrap()
        .contains("loss"));

    // `flower-server plot DIR` renders the same files again.
    std::fs::remove_file(&png_path).unwrap();
    let plot = std::process::Command::new(env!("CARGO_BIN_EXE_flower-server"))
        .arg("plot")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        plot.status.success(),
        "{}",
        String::from_utf8_lossy(&plot.stderr)
    );
    assert!(std::fs::read(&png_path).unwrap().len() > 1000);
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_flower-server"))
        .arg("plot")
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("history.json"));
}
