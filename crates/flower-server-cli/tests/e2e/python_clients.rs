//! End to end: stock Python Flower 1.42 clients against the `flower-server`
//! binary over TLS, compared with the stock Python server.

use std::time::Duration;

use crate::common::*;

#[test]
fn three_python_clients_complete_three_rounds_like_the_python_server() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    let out = dir.path().join("rust");

    let mut args = server_args(&certs, &out, &init, 3, 3);
    args.extend(["--strategy-option".into(), "evaluate_metrics=all".into()]);
    let mut server = Server::start(&args, dir.path());
    let mut clients = python_clients(&py, &server, &certs.ca(), 3, dir.path());
    let status = server.wait(Duration::from_secs(120));
    assert!(status.success(), "server failed:\n{}", server.log_text());
    for (i, c) in clients.iter_mut().enumerate() {
        let st = c
            .wait_timeout(Duration::from_secs(30))
            .expect("client exits");
        assert!(
            st.success(),
            "client {i} failed: {}",
            std::fs::read_to_string(dir.path().join(format!("c{i}.log"))).unwrap()
        );
    }
    let history = history(&out);
    assert_eq!(history["rounds"].as_array().unwrap().len(), 3);
    let ours = model(&out);

    // The same clients against the stock Python server.
    let port = flower_testkit::free_port();
    let result = dir.path().join("python.json");
    let cert_dir = certs.ca().parent().unwrap().to_path_buf();
    let mut reference = ChildGuard(
        std::process::Command::new(&py)
            .arg(scripts().join("flower_reference_server.py"))
            .args([
                "--port",
                &port.to_string(),
                "--rounds",
                "3",
                "--min-clients",
                "3",
            ])
            .arg("--out")
            .arg(&result)
            .arg("--cert-dir")
            .arg(&cert_dir)
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("ref.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        flower_testkit::wait_for_port(port, Duration::from_secs(60)),
        "reference server did not listen"
    );
    let address = format!("127.0.0.1:{port}");
    let mut ref_clients: Vec<_> = (0..3)
        .map(|i| {
            python_client(
                &py,
                &address,
                Some(&certs.ca()),
                i,
                &[],
                &dir.path().join(format!("r{i}.log")),
            )
        })
        .collect();
    let st = reference
        .wait_timeout(Duration::from_secs(120))
        .expect("reference server exits");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("ref.log")).unwrap()
    );
    for c in &mut ref_clients {
        c.wait_timeout(Duration::from_secs(30));
    }
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    let want: Vec<Vec<f64>> = reference["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(flatten_json)
        .collect();
    assert_close(&ours, &want, 1e-6);

    let our_losses = history["losses_distributed"].as_array().unwrap();
    let ref_losses = reference["losses_distributed"].as_array().unwrap();
    assert_eq!(our_losses.len(), ref_losses.len());
    for (a, b) in our_losses.iter().zip(ref_losses) {
        assert_eq!(a[0], b[0]);
        let (a, b) = (a[1].as_f64().unwrap(), b[1].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * b.abs(), "loss {a} vs {b}");
    }
}

fn flatten_json(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten_json).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}
