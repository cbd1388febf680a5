//! The library entry point: what `Server::builder()` refuses, and a run
//! through a bound server.

use std::sync::Arc;
use std::time::Duration;

use flower_core::{ClientMessage, FitRes, ServerMessage, Status};
use flower_server::{DriverConfig, FnClient, Server, ServerError, TlsFiles};

use crate::driver::fedavg;

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn bind_refuses_a_missing_strategy_or_an_implicit_plaintext_listener() {
    let err = Server::builder()
        .insecure()
        .address(loopback())
        .bind()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Config(why) if why.contains("strategy")),
        "{err}"
    );

    let err = Server::builder()
        .address(loopback())
        .boxed_strategy(fedavg(1))
        .bind()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Config(why) if why.contains("without TLS")),
        "{err}"
    );

    let err = Server::builder()
        .address(loopback())
        .insecure()
        .tls(TlsFiles::new("ca.pem", "cert.pem", "key.pem"))
        .boxed_strategy(fedavg(1))
        .bind()
        .await
        .unwrap_err();
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}

#[tokio::test]
async fn tokens_over_plaintext_are_refused_unless_allowed() {
    let auth = || {
        flower_auth::AuthConfig::builder()
            .token("a-token-of-sixteen-plus")
            .build()
            .unwrap()
    };
    let err = Server::builder()
        .address(loopback())
        .insecure()
        .auth(auth())
        .boxed_strategy(fedavg(1))
        .bind()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Config(why) if why.contains("plaintext")),
        "{err}"
    );
    let server = Server::builder()
        .address(loopback())
        .insecure()
        .auth(auth())
        .allow_insecure_auth(true)
        .boxed_strategy(fedavg(1))
        .bind()
        .await
        .unwrap();
    assert!(server.auth().is_some());
}

#[tokio::test]
async fn missing_tls_files_are_an_io_error_naming_the_file() {
    let err = Server::builder()
        .address(loopback())
        .tls(TlsFiles::new(
            "/nonexistent/ca.pem",
            "/nonexistent/cert.pem",
            "/nonexistent/key.pem",
        ))
        .boxed_strategy(fedavg(1))
        .bind()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Io { path, .. } if path.ends_with("cert.pem")),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_server_runs_its_rounds_and_saves_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .address(loopback())
        .insecure()
        .boxed_strategy(fedavg(1))
        .driver(DriverConfig {
            num_rounds: 2,
            shutdown_grace: Duration::from_millis(10),
            ..DriverConfig::default()
        })
        .output_dir(dir.path())
        .bind()
        .await
        .unwrap();
    assert_ne!(server.local_addr().port(), 0);
    let echo = FnClient::new(|message| match message {
        ServerMessage::Fit(ins) => Ok(ClientMessage::Fit(FitRes {
            status: Status::success(),
            parameters: ins.parameters,
            num_examples: 1,
            metrics: Default::default(),
        })),
        other => Err(flower_server::ExchangeError::Protocol(format!(
            "unexpected {}",
            other.kind()
        ))),
    });
    server.clients().register(Arc::new(echo)).unwrap();
    let outcome = server.run(std::future::pending()).await.unwrap();
    assert_eq!(outcome.completed_rounds, 2);
    assert!(dir.path().join("checkpoint.json").exists());
}
