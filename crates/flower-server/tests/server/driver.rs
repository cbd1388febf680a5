//! The round driver on its own: in-process clients, no sockets.

use std::sync::Arc;
use std::time::Duration;

use flower_core::{
    ndarrays_to_parameters, parameters_to_ndarrays, ClientMessage, EvaluateRes, FitRes, NdArray,
    ServerMessage, Status,
};
use flower_server::{
    ClientManager, DirectoryStore, DriverConfig, ExchangeError, FnClient, RoundDriver, ServerError,
};
use flower_strategy::{FedAvg, FedAvgOptions};
use ndarray::ArrayD;

fn initial() -> Vec<NdArray> {
    vec![NdArray::F32(
        ArrayD::from_shape_vec(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
    )]
}

/// Client `k` answers fit with `global + k` and weight `k`; evaluate with loss `k`.
fn client(
    k: f32,
) -> FnClient<impl Fn(ServerMessage) -> Result<ClientMessage, ExchangeError> + Send + Sync> {
    FnClient::new(move |msg| match msg {
        ServerMessage::Fit(ins) => {
            let arrays = parameters_to_ndarrays(&ins.parameters).unwrap();
            let out: Vec<NdArray> = arrays
                .into_iter()
                .map(|a| match a {
                    NdArray::F32(a) => NdArray::F32(a.mapv(|v| v + k)),
                    other => other,
                })
                .collect();
            Ok(ClientMessage::Fit(FitRes {
                status: Status::success(),
                parameters: ndarrays_to_parameters(&out),
                num_examples: k as i64,
                metrics: Default::default(),
            }))
        }
        ServerMessage::Evaluate(_) => Ok(ClientMessage::Evaluate(EvaluateRes {
            status: Status::success(),
            loss: k,
            num_examples: k as i64,
            metrics: Default::default(),
        })),
        ServerMessage::Reconnect(_) => Err(ExchangeError::Closed("bye".into())),
        other => Err(ExchangeError::Protocol(format!(
            "unexpected {}",
            other.kind()
        ))),
    })
}

pub(crate) fn fedavg(min: usize) -> Box<FedAvg> {
    Box::new(
        FedAvg::new(
            FedAvgOptions::with_min_clients(min)
                .initial_parameters(ndarrays_to_parameters(&initial())),
        )
        .unwrap(),
    )
}

fn no_shutdown() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_aggregate_weighted_by_examples() {
    let manager = ClientManager::default();
    for k in [1.0, 2.0, 3.0] {
        manager.register(Arc::new(client(k))).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = DriverConfig {
        num_rounds: 2,
        shutdown_grace: Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let mut driver = RoundDriver::new(manager, fedavg(3), config)
        .with_store(Arc::new(DirectoryStore::new(dir.path())));
    let outcome = driver.run(no_shutdown()).await.unwrap();
    // Each round adds Σk·k/Σk = 14/6 to every element.
    let got = parameters_to_ndarrays(&outcome.parameters).unwrap();
    let NdArray::F32(a) = &got[0] else { panic!() };
    let step = 14.0f64 / 6.0;
    for (v, base) in a.iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!((f64::from(*v) - (base + 2.0 * step)).abs() < 1e-5, "{v}");
    }
    assert_eq!(outcome.completed_rounds, 2);
    assert_eq!(outcome.history.rounds.len(), 2);
    // Σk·loss_k/Σk = 14/6 each round.
    assert!((outcome.history.losses_distributed[1].1 - step).abs() < 1e-9);
    for f in ["history.json", "model.npz", "checkpoint.json"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let saved = flower_core::npz::read_npz(&dir.path().join("model.npz")).unwrap();
    assert_eq!(saved[0].1, got[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_misbehaving_clients_are_failures() {
    let manager = ClientManager::default();
    manager.register(Arc::new(client(1.0))).unwrap();
    manager.register(Arc::new(client(2.0))).unwrap();
    // A client that vanishes, one that answers the wrong kind, one with a bad status.
    manager
        .register(Arc::new(FnClient::new(|_| {
            Err(ExchangeError::Closed("reset".into()))
        })))
        .unwrap();
    manager
        .register(Arc::new(FnClient::new(|_| {
            Ok(ClientMessage::Evaluate(EvaluateRes {
                status: Status::success(),
                loss: 0.0,
                num_examples: 1,
                metrics: Default::default(),
            }))
        })))
        .unwrap();
    let config = DriverConfig {
        num_rounds: 1,
        shutdown_grace: Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let mut driver = RoundDriver::new(manager, fedavg(2), config);
    let outcome = driver.run(no_shutdown()).await.unwrap();
    let record = &outcome.history.rounds[0];
    assert_eq!(record.fit_results, 2);
    assert_eq!(record.fit_failures, 2);
    let got = parameters_to_ndarrays(&outcome.parameters).unwrap();
    let NdArray::F32(a) = &got[0] else { panic!() };
    // (1·1 + 2·2)/3 added.
    assert!((f64::from(a[[0, 0]]) - (1.0 + 5.0 / 3.0)).abs() < 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_clients_ends_after_the_bounded_wait() {
    let manager = ClientManager::default();
    manager.register(Arc::new(client(1.0))).unwrap();
    let config = DriverConfig {
        num_rounds: 1,
        client_wait_timeout: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let mut driver = RoundDriver::new(manager, fedavg(2), config);
    let started = std::time::Instant::now();
    let err = driver.run(no_shutdown()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServerError::TooFewClients {
                required: 2,
                connected: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_fold_in_client_order_whatever_the_arrival_order() {
    // Clients answer after different delays; the model must be bit-identical
    // across runs with different delays.
    async fn run_with(delays: [u64; 4]) -> Vec<u8> {
        let manager = ClientManager::default();
        for (i, delay) in delays.into_iter().enumerate() {
            let inner = client(0.1 + i as f32 * 0.37);
            manager
                .register(Arc::new(Delayed { inner, delay }))
                .unwrap();
        }
        let config = DriverConfig {
            num_rounds: 2,
            shutdown_grace: Duration::from_millis(10),
            ..DriverConfig::default()
        };
        let mut driver = RoundDriver::new(manager, fedavg(4), config);
        let outcome = driver.run(no_shutdown()).await.unwrap();
        outcome.parameters.tensors[0].to_vec()
    }
    let a = run_with([0, 30, 60, 90]).await;
    let b = run_with([90, 60, 30, 0]).await;
    assert_eq!(a, b);
}

struct Delayed<C> {
    inner: C,
    delay: u64,
}

impl<C: flower_server::ClientHandle> flower_server::ClientHandle for Delayed<C> {
    fn exchange(
        &self,
        message: Arc<flower_server::OutgoingMessage>,
        timeout: Option<Duration>,
    ) -> futures::future::BoxFuture<'static, Result<ClientMessage, ExchangeError>> {
        let fut = self.inner.exchange(message, timeout);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            fut.await
        })
    }
    fn send_only(&self, message: Arc<flower_server::OutgoingMessage>) {
        self.inner.send_only(message)
    }
    fn peer(&self) -> String {
        self.inner.peer()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_order_aggregates_the_same_values() {
    let manager = ClientManager::default();
    for k in [1.0, 2.0, 3.0] {
        manager.register(Arc::new(client(k))).unwrap();
    }
    let config = DriverConfig {
        num_rounds: 1,
        shutdown_grace: Duration::from_millis(10),
        aggregation_order: flower_server::AggregationOrder::Arrival,
        ..DriverConfig::default()
    };
    let mut driver = RoundDriver::new(manager, fedavg(3), config);
    let outcome = driver.run(no_shutdown()).await.unwrap();
    let got = parameters_to_ndarrays(&outcome.parameters).unwrap();
    let NdArray::F32(a) = &got[0] else { panic!() };
    assert!((f64::from(a[[1, 1]]) - (4.0 + 14.0 / 6.0)).abs() < 1e-5);
    assert_eq!(outcome.history.rounds[0].fit_results, 3);
}

#[test]
fn the_run_future_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let mut driver = RoundDriver::new(ClientManager::default(), fedavg(1), DriverConfig::default());
    let future = driver.run(no_shutdown());
    assert_send(&future);
}

#[tokio::test(start_paused = true)]
async fn waits_run_on_tokio_time_so_a_paused_clock_skips_them() {
    // The default five-minute wait for clients elapses at once on a paused
    // clock: the driver takes its time from tokio, not from the OS.
    let manager = ClientManager::default();
    manager.register(Arc::new(client(1.0))).unwrap();
    let mut driver = RoundDriver::new(manager, fedavg(2), DriverConfig::default());
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    let err = driver.run(no_shutdown()).await.unwrap_err();
    assert!(matches!(err, ServerError::TooFewClients { .. }), "{err}");
    assert!(started.elapsed() >= DriverConfig::default().client_wait_timeout);
    assert!(wall.elapsed() < Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn shutdown_future_interrupts_the_run() {
    let manager = ClientManager::default();
    let mut driver = RoundDriver::new(manager, fedavg(2), DriverConfig::default());
    let err = driver
        .run(tokio::time::sleep(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, ServerError::Interrupted), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_loss_is_saved_and_the_run_resumes_from_it() {
    // A client whose evaluation loss is NaN: the run completes, and the
    // history and checkpoint it wrote read back on --resume.
    fn nan_client(
    ) -> FnClient<impl Fn(ServerMessage) -> Result<ClientMessage, ExchangeError> + Send + Sync>
    {
        FnClient::new(|msg| match msg {
            ServerMessage::Fit(ins) => Ok(ClientMessage::Fit(FitRes {
                status: Status::success(),
                parameters: ins.parameters,
                num_examples: 1,
                metrics: Default::default(),
            })),
            _ => Ok(ClientMessage::Evaluate(EvaluateRes {
                status: Status::success(),
                loss: f32::NAN,
                num_examples: 1,
                metrics: Default::default(),
            })),
        })
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |rounds: u64, resume: bool| {
        let manager = ClientManager::default();
        manager.register(Arc::new(nan_client())).unwrap();
        let config = DriverConfig {
            num_rounds: rounds,
            resume,
            shutdown_grace: Duration::from_millis(10),
            ..DriverConfig::default()
        };
        RoundDriver::new(manager, fedavg(1), config)
            .with_store(Arc::new(DirectoryStore::new(dir.path())))
    };
    let first = run(1, false).run(no_shutdown()).await.unwrap();
    assert!(first.history.losses_distributed[0].1.is_nan());
    let resumed = run(2, true).run(no_shutdown()).await.unwrap();
    assert_eq!(resumed.completed_rounds, 2);
    assert_eq!(resumed.history.losses_distributed.len(), 2);
    assert!(resumed
        .history
        .losses_distributed
        .iter()
        .all(|(_, l)| l.is_nan()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_evaluation_means_no_wait_for_clients_in_the_evaluate_phase() {
    // One of two clients leaves during fit. With fraction_evaluate = 0 the
    // strategy evaluates nobody, so (as in Flower) the evaluate phase must
    // not wait for min_available_clients: the round completes at once.
    let manager = ClientManager::default();
    manager.register(Arc::new(client(1.0))).unwrap();
    let leaving: Arc<std::sync::OnceLock<flower_server::ClientId>> = Arc::default();
    let (m, me) = (manager.clone(), leaving.clone());
    let id = manager
        .register(Arc::new(FnClient::new(move |_| {
            if let Some(id) = me.get() {
                m.unregister(*id);
            }
            Err(ExchangeError::Closed("left".into()))
        })))
        .unwrap();
    leaving.set(id).unwrap();
    let strategy = FedAvg::new(
        FedAvgOptions::with_min_clients(2)
            .fraction_evaluate(0.0)
            .initial_parameters(ndarrays_to_parameters(&initial())),
    )
    .unwrap();
    let config = DriverConfig {
        num_rounds: 1,
        rejoin_wait_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let started = std::time::Instant::now();
    let outcome = RoundDriver::new(manager, Box::new(strategy), config)
        .run(no_shutdown())
        .await
        .unwrap();
    assert_eq!(outcome.completed_rounds, 1);
    assert_eq!(outcome.history.rounds[0].fit_failures, 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for clients"
    );
}
