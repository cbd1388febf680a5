"""A deterministic stock-Flower NumPyClient for flower-rs interop tests.

Usage: python flower_test_client.py --address HOST:PORT [--ca CA.pem | --insecure]
           --partition I [--mode normal|crash-fit|sleep-fit|wrong-shape|fail-fit]
           [--mode-round R] [--sleep S] [--token T] [--header-key authorization]

Runs flwr 1.42's grpc-bidi client (`flwr.client.start_client`). With --token
the stock channel gets bearer call credentials: ai4flwr's
BearerTokenAuthPlugin for the key `authorization`, a local plugin for any
other key (the documented harness patch of `create_channel`).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import flwr  # noqa: E402
from flwr.compat.client.grpc_client import connection as grpc_connection  # noqa: E402


def initial_parameters():
    # FLOWER_TEST_PARAMS=N: a large model of N float32 values in 4 layers
    # (for load comparisons); otherwise a tiny two-layer model.
    n = int(os.environ.get("FLOWER_TEST_PARAMS", "0"))
    if n > 0:
        sizes = [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8]
        return [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in sizes]
    return [
        np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0,
        np.linspace(-1.0, 1.0, 5, dtype=np.float32),
    ]


class DeterministicClient(flwr.client.NumPyClient):
    def __init__(self, partition, mode, mode_round, sleep):
        self.partition = partition
        self.mode = mode
        self.mode_round = mode_round
        self.sleep = sleep
        self.fits = 0

    def get_parameters(self, config):
        return initial_parameters()

    def fit(self, parameters, config):
        self.fits += 1
        k = self.partition + 1
        if self.fits == self.mode_round:
            if self.mode == "crash-fit":
                os._exit(3)
            if self.mode == "sleep-fit":
                time.sleep(self.sleep)
            if self.mode == "wrong-shape":
                return [np.zeros((2, 2), dtype=np.float32)] + [p for p in parameters[1:]], 10, {}
        out = [
            (p * np.float32(0.9) + np.float32(0.01 * k) * np.sin(np.arange(p.size, dtype=np.float32) + k).reshape(p.shape)).astype(p.dtype)
            for p in parameters
        ]
        return out, 10 * k, {"partition": self.partition, "fit_norm": float(sum(float(np.sum(o * o)) for o in out))}

    def evaluate(self, parameters, config):
        k = self.partition + 1
        loss = float(sum(float(np.sum(p.astype(np.float64) ** 2)) for p in parameters)) / k
        return loss, 5 * k, {"accuracy": 1.0 / (1.0 + loss)}


class HeaderPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, key, token):
        self.key = key
        self.token = token

    def __call__(self, context, callback):
        callback(((self.key, f"Bearer {self.token}"),), None)


def install_credentials(token, key):
    original = grpc_connection.create_channel

    def create_channel(server_address, insecure, root_certificates=None, max_message_length=None, **kwargs):
        if insecure:
            return original(server_address, insecure, root_certificates, max_message_length, **kwargs)
        if key == "authorization":
            from ai4flwr.auth.bearer import BearerTokenAuthPlugin
            plugin = BearerTokenAuthPlugin(token)
        else:
            plugin = HeaderPlugin(key, token)
        options = [
            ("grpc.max_send_message_length", max_message_length),
            ("grpc.max_receive_message_length", max_message_length),
        ]
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates),
            grpc.metadata_call_credentials(plugin),
        )
        return grpc.secure_channel(server_address, creds, options=options)

    grpc_connection.create_channel = create_channel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--partition", type=int, default=0)
    ap.add_argument("--mode", default="normal")
    ap.add_argument("--mode-round", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--token")
    ap.add_argument("--header-key", default="authorization")
    args = ap.parse_args()
    if args.token:
        install_credentials(args.token, args.header_key)
    client = DeterministicClient(args.partition, args.mode, args.mode_round, args.sleep)
    root = open(args.ca, "rb").read() if args.ca else None
    flwr.client.start_client(
        server_address=args.address,
        client=client.to_client(),
        root_certificates=root,
        insecure=args.insecure,
    )
    print("client finished", flush=True)


if __name__ == "__main__":
    main()
