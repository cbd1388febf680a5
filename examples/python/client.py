"""A stock Python Flower client that joins a flower-rs federation.

It trains the same model on the same data as the Rust example client
(`examples/client.rs`): softmax regression, by full-batch gradient descent,
on one share of the iris data set. Rust and Python clients can therefore be
mixed in one federation. Needs only `flwr` (1.42) and `numpy`.

    # the data, written by the Rust example from the copy shipped in linfa-datasets
    cargo run --example client -- --dump-data iris.csv
    python examples/python/client.py --data iris.csv --token my-token \\
        --root-certificates certificates/out/ca.pem --partition-id 1 --num-partitions 2

The token (also read from FLOWER_TOKEN) is sent as `Bearer <token>` under
`authorization` (or --header-key) on the TLS channel, the way ai4flwr's
BearerTokenAuthPlugin does. Exit code 0 once the server ends the run.
"""

import argparse
import os
import sys

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import grpc  # noqa: E402  (installed with flwr)
import numpy as np  # noqa: E402
import flwr  # noqa: E402
from flwr.compat.client.grpc_client import connection as grpc_connection  # noqa: E402

NUM_CLASSES = 3
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_LOCAL_EPOCHS = 2


# --- data: the same split as examples/common/data.rs -------------------------

def load_partition(path, partition_id, num_partitions):
    """Rows p, p+n, ... of the data set; every fifth of them for testing;
    features standardized with the training rows' mean and std."""
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    x, y = data[:, :4], data[:, 4].astype(np.int64)
    x, y = x[partition_id::num_partitions], y[partition_id::num_partitions]
    test = np.arange(len(y)) % 5 == 4
    x_train, y_train, x_test, y_test = x[~test], y[~test], x[test], y[test]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


# --- model: the same maths as examples/common/model.rs -----------------------

def initial_parameters():
    return [np.zeros((4, NUM_CLASSES)), np.zeros(NUM_CLASSES)]


def probabilities(w, b, x):
    z = x @ w + b
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def score(w, b, x, y):
    p = probabilities(w, b, x)
    loss = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean()
    accuracy = (p.argmax(axis=1) == y).mean()
    return float(loss), float(accuracy)


def train(w, b, x, y, learning_rate, epochs):
    for _ in range(epochs):
        g = probabilities(w, b, x)
        g[np.arange(len(y)), y] -= 1.0
        g /= len(y)
        w = w - (x.T @ g) * learning_rate
        b = b - g.sum(axis=0) * learning_rate
    return w, b


class IrisClient(flwr.client.NumPyClient):
    def __init__(self, partition):
        self.x_train, self.y_train, self.x_test, self.y_test = partition

    def get_parameters(self, config):
        return initial_parameters()

    def fit(self, parameters, config):
        w, b = (np.asarray(p, dtype=np.float64) for p in parameters)
        learning_rate = float(config.get("learning_rate", DEFAULT_LEARNING_RATE))
        epochs = int(config.get("local_epochs", DEFAULT_LOCAL_EPOCHS))
        w, b = train(w, b, self.x_train, self.y_train, learning_rate, epochs)
        loss, accuracy = score(w, b, self.x_train, self.y_train)
        metrics = {"train_loss": loss, "train_accuracy": accuracy}
        return [w, b], len(self.y_train), metrics

    def evaluate(self, parameters, config):
        w, b = (np.asarray(p, dtype=np.float64) for p in parameters)
        loss, accuracy = score(w, b, self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": accuracy}


# --- the bearer token on the stock client's channel --------------------------

class BearerToken(grpc.AuthMetadataPlugin):
    """Call credentials: `Bearer <token>` under `key` on every call."""

    def __init__(self, key, token):
        self.key = key
        self.token = token

    def __call__(self, context, callback):
        callback(((self.key, f"Bearer {self.token}"),), None)


def send_token(token, key):
    """flwr's grpc-bidi client takes no call credentials, so wrap the function
    that creates its channel. gRPC only sends call credentials over TLS."""

    def create_channel(server_address, insecure, root_certificates=None,
                       max_message_length=None, **kwargs):
        if insecure:
            sys.exit("refusing to send a token over a plaintext channel")
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates),
            grpc.metadata_call_credentials(BearerToken(key, token)),
        )
        options = [
            ("grpc.max_send_message_length", max_message_length),
            ("grpc.max_receive_message_length", max_message_length),
        ]
        return grpc.secure_channel(server_address, credentials, options=options)

    grpc_connection.create_channel = create_channel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server-address", default="localhost:8080")
    ap.add_argument("--root-certificates", default="certificates/out/ca.pem")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--token", default=os.environ.get("FLOWER_TOKEN"))
    ap.add_argument("--header-key", default="authorization")
    ap.add_argument("--partition-id", type=int, default=0)
    ap.add_argument("--num-partitions", type=int, default=2)
    ap.add_argument("--data", required=True,
                    help="iris CSV (cargo run --example client -- --dump-data FILE)")
    args = ap.parse_args()

    if args.token:
        send_token(args.token, args.header_key)
    partition = load_partition(args.data, args.partition_id, args.num_partitions)
    root = None
    if not args.insecure:
        with open(args.root_certificates, "rb") as f:
            root = f.read()
    flwr.client.start_client(
        server_address=args.server_address,
        client=IrisClient(partition).to_client(),
        root_certificates=root,
        insecure=args.insecure,
    )
    print(f"client {args.partition_id} done", flush=True)


if __name__ == "__main__":
    main()
