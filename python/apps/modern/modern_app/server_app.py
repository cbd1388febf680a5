"""ServerApp: the stock message-API FedAvg over the Grid (see README.md)."""

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from modern_app.task import initial_arrays

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of FedAvg on every connected node."""
    min_nodes = int(context.run_config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    start = ArrayRecord({name: Array(a) for name, a in initial_arrays().items()})
    result = strategy.start(
        grid=grid,
        initial_arrays=start,
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(context.run_config["lr"])}),
    )
    for name, array in result.arrays.items():
        print(f"final {name}: {array.numpy().tolist()}")
