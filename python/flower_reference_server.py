"""Stock Python Flower 1.42 server (FedAvg) for comparisons with flower-rs.

Usage: python flower_reference_server.py --port P --rounds R --min-clients N
           --out result.json [--cert-dir DIR (ca.pem, server.pem, server.key)]
           [--token T]  (guards the server with a bearer interceptor)

Writes the final parameters and the history as JSON. The initial parameters
are the test client's `initial_parameters()` so no GetParameters is needed.
"""

import argparse
import hmac
import json
import os
import sys

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import flwr  # noqa: E402
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flower_test_client import initial_parameters  # noqa: E402


class BearerInterceptor(grpc.ServerInterceptor):
    """Refuses calls without `Bearer <token>` at once, with a handler of the same arity."""

    def __init__(self, token):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        value = None
        for k, v in details.invocation_metadata or ():
            if k in ("authorization", "x-authorization"):
                value = v
                break
        if value is not None and hmac.compare_digest(value.encode(), self.expected):
            return continuation(details)
        handler = continuation(details)

        def abort(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid token")

        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort)
        return grpc.unary_unary_rpc_method_handler(abort)


def install_interceptor(token):
    import flwr.compat.server.app as app
    from flwr.server.superlink.fleet.grpc_bidi import grpc_server as gs
    from flwr.supercore import grpc as sgrpc

    original_generic = sgrpc.generic_create_grpc_server

    def generic_with_auth(*args, **kwargs):
        kwargs["interceptors"] = [BearerInterceptor(token)]
        return original_generic(*args, **kwargs)

    # start_grpc_server looks the factory up as a module global.
    gs.generic_create_grpc_server = generic_with_auth
    app.start_grpc_server = gs.start_grpc_server


def weighted_accuracy(metrics):
    total = sum(n for n, _ in metrics)
    return {"accuracy": sum(n * m["accuracy"] for n, m in metrics) / total} if total else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-clients", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cert-dir")
    ap.add_argument("--token")
    ap.add_argument("--round-timeout", type=float)
    args = ap.parse_args()
    if args.token:
        install_interceptor(args.token)
    strategy = flwr.server.strategy.FedAvg(
        min_fit_clients=args.min_clients,
        min_evaluate_clients=args.min_clients,
        min_available_clients=args.min_clients,
        initial_parameters=ndarrays_to_parameters(initial_parameters()),
        evaluate_metrics_aggregation_fn=weighted_accuracy,
    )
    certificates = None
    if args.cert_dir:
        certificates = tuple(
            open(os.path.join(args.cert_dir, n), "rb").read() for n in ("ca.pem", "server.pem", "server.key")
        )
    history = flwr.server.start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=flwr.server.ServerConfig(num_rounds=args.rounds, round_timeout=args.round_timeout),
        strategy=strategy,
        certificates=certificates,
    )
    # FedAvg keeps the latest global model on the server object only; recompute
    # nothing: read it from the strategy's last aggregate via the history hook below.
    result = {
        "losses_distributed": history.losses_distributed,
        "metrics_distributed": {k: v for k, v in history.metrics_distributed.items()},
        "parameters": [p.tolist() for p in LAST["parameters"]] if LAST.get("parameters") is not None else None,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


LAST = {}
_orig_aggregate_fit = flwr.server.strategy.FedAvg.aggregate_fit


def _recording_aggregate_fit(self, server_round, results, failures):
    params, metrics = _orig_aggregate_fit(self, server_round, results, failures)
    if params is not None:
        LAST["parameters"] = parameters_to_ndarrays(params)
    return params, metrics


flwr.server.strategy.FedAvg.aggregate_fit = _recording_aggregate_fit


def _timed(name, method):
    import time

    def wrapper(self, server_round, *args, **kwargs):
        t = time.perf_counter()
        try:
            return method(self, server_round, *args, **kwargs)
        finally:
            print(f"reference-server round={server_round} {name}_s={time.perf_counter() - t:.3f}", flush=True)

    return wrapper


# Per-phase wall times, for load comparisons.
_server_cls = flwr.server.server.Server
_server_cls.fit_round = _timed("fit", _server_cls.fit_round)
_server_cls.evaluate_round = _timed("evaluate", _server_cls.evaluate_round)

if __name__ == "__main__":
    main()
