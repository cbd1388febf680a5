"""Legacy ServerApp: the stock `flwr.server.strategy.FedAvg` (see README.md)."""

from flwr.common import Context, Metrics, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from legacy_app.task import initial_arrays


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of every numeric metric."""
    total = sum(n for n, _ in metrics)
    keys = metrics[0][1].keys() if metrics else []
    return {k: sum(n * float(m[k]) for n, m in metrics) / total for k in keys}


def server_fn(context: Context) -> ServerAppComponents:
    """FedAvg over every connected node for `num-server-rounds` rounds."""
    min_nodes = int(context.run_config["min-nodes"])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=min_nodes,
        min_evaluate_clients=min_nodes,
        min_available_clients=min_nodes,
        initial_parameters=ndarrays_to_parameters(initial_arrays()),
        fit_metrics_aggregation_fn=weighted_average,
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


app = ServerApp(server_fn=server_fn)
