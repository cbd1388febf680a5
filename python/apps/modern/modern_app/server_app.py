"""ServerApp: the stock message-API FedAvg over the Grid (see README.md)."""

import os

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
    # Not a run-config key, so the app's config (and tests listing it) stay
    # as they are; the SuperLink passes its environment to the ServerApp.
    extra = int(os.environ.get("FLOWER_RS_EXTRA_ELEMENTS", "0"))
    start = ArrayRecord({name: Array(a) for name, a in initial_arrays(extra).items()})
    result = strategy.start(
        grid=grid,
        initial_arrays=start,
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(context.run_config["lr"])}),
    )
    for name, array in result.arrays.items():
        values = array.numpy()
        if name == "big":
            # Too long to print: its size, min and max tell the result.
            print(f"final big: {[float(values.size), float(values.min()), float(values.max())]}")
        else:
            print(f"final {name}: {values.tolist()}")
