//! Helpers shared by the integration tests: the stock Python Flower server
//! (as a child process), a scripted Rust `FlowerService` over real gRPC on
//! loopback, and a deterministic `NumPyClient`.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flower_client::{BoxError, NumPyClient};
use flower_core::{ClientMessage, Config, Metrics, NdArray, Scalar, ServerMessage};
use flower_proto as pb;
use flower_proto::flower_service_server::{FlowerService, FlowerServiceServer};
use flower_testkit::ChildGuard;
use futures::future::BoxFuture;
use ndarray::{ArrayD, IxDyn};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Upper bound of any single wait in these tests.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs a `tracing` subscriber once (`RUST_LOG=flower_client=debug` to see the driver).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "flower_client=info".into()),
        )
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------
// A deterministic NumPyClient
// ---------------------------------------------------------------------------

/// Adds `increment` to every float array on each fit; evaluates to
/// `mean(first array) + loss_offset`.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub id: i64,
    pub increment: f64,
    pub examples: u64,
    pub loss_offset: f64,
    /// Fit rounds (1-based) in which `fit` returns an error.
    pub fail_fit_in: Vec<usize>,
    pub fits: usize,
    pub evaluates: usize,
    pub last_evaluated: Vec<NdArray>,
}

impl Trainer {
    pub fn new(id: i64, increment: f64, examples: u64, loss_offset: f64) -> Self {
        Self {
            id,
            increment,
            examples,
            loss_offset,
            fail_fit_in: Vec::new(),
            fits: 0,
            evaluates: 0,
            last_evaluated: Vec::new(),
        }
    }
}

/// The model the trainers start from: `zeros((2, 3), float32)` and `arange(4.0)`.
pub fn initial_model() -> Vec<NdArray> {
    vec![
        NdArray::F32(ArrayD::zeros(IxDyn(&[2, 3]))),
        NdArray::F64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0, 1.0, 2.0, 3.0]).unwrap()),
    ]
}

fn mean(a: &NdArray) -> f64 {
    match a {
        NdArray::F32(a) => a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64,
        NdArray::F64(a) => a.iter().sum::<f64>() / a.len() as f64,
        _ => f64::NAN,
    }
}

impl NumPyClient for Trainer {
    fn get_parameters(&mut self, _config: &Config) -> Result<Vec<NdArray>, BoxError> {
        Ok(initial_model())
    }

    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        self.fits += 1;
        if self.fail_fit_in.contains(&self.fits) {
            return Err(format!("simulated failure in fit #{}", self.fits).into());
        }
        let inc = self.increment;
        let updated = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(a) => NdArray::F32(a.mapv(|v| v + inc as f32)),
                NdArray::F64(a) => NdArray::F64(a.mapv(|v| v + inc)),
                other => other,
            })
            .collect();
        let mut metrics = Metrics::new();
        metrics.insert("client".into(), Scalar::Sint64(self.id));
        Ok((updated, self.examples, metrics))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        self.evaluates += 1;
        let loss = parameters.first().map(mean).ok_or("no parameters")? + self.loss_offset;
        self.last_evaluated = parameters;
        let mut metrics = Metrics::new();
        metrics.insert("client".into(), Scalar::Sint64(self.id));
        Ok((loss, self.examples, metrics))
    }
}

// ---------------------------------------------------------------------------
// The stock Python Flower server
// ---------------------------------------------------------------------------

/// `flwr.server.start_server` (flwr 1.42, via `flwr.compat`) with FedAvg,
/// optionally TLS and a bearer-token interceptor patched in the way
/// protocol.md describes. Prints `RESULT <json>` with the history and the
/// final global model when the run ends.
pub const PYTHON_SERVER: &str = r#"
import hmac, json, sys
import grpc
import flwr
import flwr.compat.server.app as app
from flwr.common import parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.strategy import FedAvg

cfg = json.loads(sys.argv[1])
certificates = None
if cfg.get("ca"):
    certificates = tuple(open(cfg[k], "rb").read() for k in ("ca", "cert", "key"))

token = cfg.get("token")
if token is not None:
    from flwr.proto.transport_pb2_grpc import add_FlowerServiceServicer_to_server
    from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
        FlowerServiceServicer,
    )
    from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH, generic_create_grpc_server

    expected = ("Bearer " + token).encode()

    class BearerTokenServerInterceptor(grpc.ServerInterceptor):
        """Rejects calls without `Bearer <token>` in authorization / x-authorization."""

        def intercept_service(self, continuation, details):
            value = None
            for key, val in details.invocation_metadata or ():
                if key in ("authorization", "x-authorization"):
                    value = val
                    break
            handler = continuation(details)
            if handler is None:
                return None
            if value is not None:
                raw = value if isinstance(value, bytes) else value.encode()
                if hmac.compare_digest(raw, expected):
                    return handler
            reason = "Missing bearer token" if value is None else "Invalid bearer token"

            def abort(_request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

            # Same arity as the real handler: for Join (stream-stream) a
            # unary handler would wait for a first request that never comes.
            kw = dict(
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            if handler.request_streaming and handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(abort, **kw)
            if handler.request_streaming:
                return grpc.stream_unary_rpc_method_handler(abort, **kw)
            if handler.response_streaming:
                return grpc.unary_stream_rpc_method_handler(abort, **kw)
            return grpc.unary_unary_rpc_method_handler(abort, **kw)

    def start_grpc_server(
        client_manager,
        server_address,
        max_concurrent_workers=1000,
        max_message_length=GRPC_MAX_MESSAGE_LENGTH,
        keepalive_time_ms=210000,
        certificates=None,
    ):
        """A copy of the stock start_grpc_server that passes interceptors."""
        servicer = FlowerServiceServicer(client_manager)
        server = generic_create_grpc_server(
            servicer_and_add_fn=(servicer, add_FlowerServiceServicer_to_server),
            server_address=server_address,
            max_concurrent_workers=max_concurrent_workers,
            max_message_length=max_message_length,
            keepalive_time_ms=keepalive_time_ms,
            certificates=certificates,
            interceptors=[BearerTokenServerInterceptor()],
        )
        server.start()
        return server

    app.start_grpc_server = start_grpc_server

result = {"fit_failures": [], "fit_results": []}


class Recording(FedAvg):
    def aggregate_fit(self, server_round, results, failures):
        result["fit_failures"].append(len(failures))
        result["fit_results"].append(len(results))
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None:
            result["parameters"] = [
                {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}
                for a in parameters_to_ndarrays(params)
            ]
        return params, metrics


n = cfg["min_clients"]
strategy = Recording(
    min_fit_clients=n,
    min_evaluate_clients=n,
    min_available_clients=n,
    evaluate_metrics_aggregation_fn=lambda ms: {"examples": sum(k for k, _ in ms)},
)
hist = flwr.server.start_server(
    server_address="127.0.0.1:%d" % cfg["port"],
    config=ServerConfig(num_rounds=cfg["rounds"]),
    strategy=strategy,
    certificates=certificates,
)
result["losses_distributed"] = hist.losses_distributed
result["metrics_distributed"] = hist.metrics_distributed
print("RESULT " + json.dumps(result), flush=True)
"#;

/// Settings of one stock server run.
#[derive(Debug, Clone)]
pub struct PythonServerConfig {
    pub port: u16,
    pub rounds: u32,
    pub min_clients: u32,
    /// `(ca, cert, key)` PEM paths for TLS.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub token: Option<String>,
}

/// A running stock Python server; killed when dropped.
#[derive(Debug)]
pub struct PythonServer {
    guard: ChildGuard,
    log: tempfile::NamedTempFile,
    pub port: u16,
}

impl PythonServer {
    /// Starts the server (does not wait for it to listen).
    pub fn spawn(python: &Path, cfg: &PythonServerConfig) -> Self {
        let mut json = serde_json::json!({
            "port": cfg.port,
            "rounds": cfg.rounds,
            "min_clients": cfg.min_clients,
        });
        if let Some((ca, cert, key)) = &cfg.tls {
            json["ca"] = ca.display().to_string().into();
            json["cert"] = cert.display().to_string().into();
            json["key"] = key.display().to_string().into();
        }
        if let Some(token) = &cfg.token {
            json["token"] = token.clone().into();
        }
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(python)
            .arg("-c")
            .arg(PYTHON_SERVER)
            .arg(json.to_string())
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file handle"))
            .spawn()
            .expect("start the Python server");
        Self {
            guard: ChildGuard(child),
            log,
            port: cfg.port,
        }
    }

    /// Starts the server and waits (bounded) until it listens.
    pub async fn start(python: &Path, cfg: &PythonServerConfig) -> Self {
        let server = Self::spawn(python, cfg);
        let port = cfg.port;
        let up =
            tokio::task::spawn_blocking(move || flower_testkit::wait_for_port(port, STEP_TIMEOUT))
                .await
                .unwrap();
        assert!(
            up,
            "Python server did not listen on {port}:\n{}",
            server.log()
        );
        server
    }

    /// The server's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Kills the server now.
    pub fn kill(&mut self) {
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
    }

    /// Waits (bounded) for the run to end and returns its `RESULT` JSON.
    pub async fn finish(mut self) -> serde_json::Value {
        let (status, mut guard) = tokio::task::spawn_blocking(move || {
            let status = self.guard.wait_timeout(STEP_TIMEOUT);
            (status, self)
        })
        .await
        .unwrap();
        let log = guard.log();
        let status = status.unwrap_or_else(|| panic!("Python server did not finish:\n{log}"));
        assert!(status.success(), "Python server failed ({status}):\n{log}");
        let mut out = String::new();
        use std::io::Read;
        guard
            .guard
            .0
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .unwrap();
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT line; stdout:\n{out}\nlog:\n{log}"));
        serde_json::from_str(line).expect("RESULT is JSON")
    }
}

// ---------------------------------------------------------------------------
// A scripted FlowerService in Rust (real gRPC over loopback)
// ---------------------------------------------------------------------------

/// One `Join` as the test server sees it.
#[derive(Debug)]
pub struct Session {
    /// 0 for the first `Join`, 1 for the second, ...
    pub index: usize,
    pub metadata: MetadataMap,
    tx: Option<mpsc::Sender<Result<pb::ServerMessage, Status>>>,
    rx: Streaming<pb::ClientMessage>,
}

impl Session {
    /// Sends an instruction and waits (bounded) for the reply.
    pub async fn ask(&mut self, message: ServerMessage) -> ClientMessage {
        self.send(message).await;
        self.reply().await.expect("client replied")
    }

    /// Sends an instruction and waits (bounded) for a reply, if any comes.
    pub async fn ask_optional(&mut self, message: ServerMessage) -> Option<ClientMessage> {
        self.send(message).await;
        self.reply().await
    }

    /// Sends an instruction.
    pub async fn send(&mut self, message: ServerMessage) {
        self.tx
            .as_ref()
            .expect("stream open")
            .send(Ok(message.into()))
            .await
            .expect("response stream open");
    }

    /// The next client message, or `None` when the client ended or cancelled.
    pub async fn reply(&mut self) -> Option<ClientMessage> {
        match tokio::time::timeout(STEP_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(m))) => Some(ClientMessage::try_from(m).expect("valid ClientMessage")),
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no client message within {STEP_TIMEOUT:?}"),
        }
    }

    /// Ends the response stream with an error status.
    pub async fn fail(mut self, status: Status) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(status)).await;
        }
    }

    /// Ends the response stream normally (OK trailers).
    pub fn close(mut self) {
        self.tx = None;
    }
}

/// What the test server does with each `Join`.
pub type Script = Arc<dyn Fn(Session) -> BoxFuture<'static, ()> + Send + Sync>;

struct Service {
    script: Script,
    joins: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl FlowerService for Service {
    type JoinStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let index = self.joins.fetch_add(1, Ordering::SeqCst);
        let metadata = request.metadata().clone();
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            index,
            metadata,
            tx: Some(tx),
            rx: request.into_inner(),
        };
        tokio::spawn((self.script)(session));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A `FlowerService` on 127.0.0.1 that runs `script` for every `Join`.
#[derive(Debug)]
pub struct ScriptedServer {
    pub addr: SocketAddr,
    joins: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    /// Binds an ephemeral port and serves (plaintext HTTP/2).
    pub async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    /// Binds `port` and serves.
    pub async fn start_on(port: u16, script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, script)
    }

    fn serve(listener: tokio::net::TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let joins = Arc::new(AtomicUsize::new(0));
        let service = FlowerServiceServer::new(Service {
            script,
            joins: joins.clone(),
        })
        .max_decoding_message_size(flower_proto::GRPC_MAX_MESSAGE_LENGTH)
        .max_encoding_message_size(flower_proto::GRPC_MAX_MESSAGE_LENGTH);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await
                .expect("test server runs");
        });
        Self {
            addr,
            joins,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// `Join` calls received so far.
    pub fn joins(&self) -> usize {
        self.joins.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// A script from an async closure.
pub fn script<F, Fut>(f: F) -> Script
where
    F: Fn(Session) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move |s| Box::pin(f(s)))
}

/// Shared, inspectable state for a test.
pub type Shared<T> = Arc<Mutex<T>>;
