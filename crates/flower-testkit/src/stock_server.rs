//! The stock Python Flower server (`flwr.server.start_server` of flwr 1.42,
//! via `flwr.compat`, with FedAvg) as a child process, optionally with TLS
//! and a bearer-token interceptor patched in the way protocol.md
//! describes. The run's history and final global model come back as JSON.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ChildGuard;

/// Upper bound of every wait here: the server starting to listen, and the
/// run ending.
pub const WAIT_BOUND: Duration = Duration::from_secs(30);

/// The server script: settings as JSON in `argv[1]`; prints
/// `RESULT <json>` with the history and the final global model when the run
/// ends.
const SCRIPT: &str = r#"
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
pub struct StockServerConfig {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// FL rounds.
    pub rounds: u32,
    /// Clients FedAvg waits for (fit, evaluate and available).
    pub min_clients: u32,
    /// `(ca, cert, key)` PEM paths for TLS; plaintext when `None`.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Bearer token the interceptor requires (in `authorization` or
    /// `x-authorization`); no interceptor when `None`. Refusals are
    /// `UNAUTHENTICATED` with "Missing bearer token" / "Invalid bearer token".
    pub token: Option<String>,
}

impl StockServerConfig {
    /// A plaintext server on `port` without token for `rounds` rounds of
    /// `min_clients` clients.
    pub fn new(port: u16, rounds: u32, min_clients: u32) -> Self {
        Self {
            port,
            rounds,
            min_clients,
            tls: None,
            token: None,
        }
    }
}

/// A running stock Python server; killed when dropped.
#[derive(Debug)]
pub struct StockServer {
    guard: ChildGuard,
    log: tempfile::NamedTempFile,
    port: u16,
}

impl StockServer {
    /// Starts the server without waiting for it to listen (for tests of
    /// clients that start first).
    pub fn spawn(python: &Path, cfg: &StockServerConfig) -> Self {
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
            .arg(SCRIPT)
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

    /// Starts the server and waits (bounded by [`WAIT_BOUND`], off the
    /// async runtime's threads) until it listens. Panics with the server's
    /// log when it does not.
    pub async fn start(python: &Path, cfg: &StockServerConfig) -> Self {
        let server = Self::spawn(python, cfg);
        let port = cfg.port;
        let up = tokio::task::spawn_blocking(move || crate::wait_for_port(port, WAIT_BOUND))
            .await
            .expect("wait_for_port does not panic");
        assert!(
            up,
            "Python server did not listen on {port}:\n{}",
            server.log()
        );
        server
    }

    /// The port it serves on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Kills the server now.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Waits (bounded by [`WAIT_BOUND`], off the async runtime's threads)
    /// for the run to end and returns its `RESULT` JSON: `fit_failures` and
    /// `fit_results` per round, `losses_distributed`,
    /// `metrics_distributed` and the final `parameters` (dtype, shape, flat
    /// values per array). Panics with the server's log when the run fails.
    pub async fn finish(mut self) -> serde_json::Value {
        let (status, mut server) = tokio::task::spawn_blocking(move || {
            let status = self.guard.wait_timeout(WAIT_BOUND);
            (status, self)
        })
        .await
        .expect("wait_timeout does not panic");
        let log = server.log();
        let status = status.unwrap_or_else(|| panic!("Python server did not finish:\n{log}"));
        assert!(status.success(), "Python server failed ({status}):\n{log}");
        let mut out = String::new();
        server
            .guard
            .0
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("read the server's stdout");
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT line; stdout:\n{out}\nlog:\n{log}"));
        serde_json::from_str(line).expect("RESULT is JSON")
    }
}
