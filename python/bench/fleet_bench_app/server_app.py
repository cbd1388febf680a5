"""ServerApp of `flower-bench fleet`: the stock message-API FedAvg over the Grid.

The strategy is `flwr.serverapp.strategy.FedAvg` unchanged; the subclass only timestamps the
phases and prints one line per phase (`bench-serverapp round=N fit_s=X`, then
`... evaluate_s=X`), which the harness reads. The fit phase runs from `configure_train` to the
end of `aggregate_train` (sampling, sending, waiting for the replies, aggregating); evaluate
likewise. Lines go to stdout (the run's log) and, when run config `bench-log` names a file, are
appended there too. The initial model is the `.npz` at run config `initial-npz` (arrays in file order).
"""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


_LOG = {"path": ""}


def _say(text: str) -> None:
    """Print a marker line; also append it to run config `bench-log` when set.

    The harness reads the file rather than `flwr run --stream`, because streaming makes the
    SuperLink poll its log store every second, which would add to the CPU being measured.
    """
    line = f"bench-serverapp {text}"
    print(line, flush=True)
    if _LOG["path"]:
        with open(_LOG["path"], "a", encoding="utf-8") as f:
            f.write(line + "\n")


class TimedFedAvg(FedAvg):
    """FedAvg that reports how long each phase of each round took."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._t0 = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.monotonic()
        _say(f"round={server_round} fit_start")
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        result = super().aggregate_train(server_round, replies)
        _say(f"round={server_round} fit_s={time.monotonic() - self._t0:.6f}")
        return result

    def configure_evaluate(self, server_round, arrays, config, grid):
        self._t0 = time.monotonic()
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        result = super().aggregate_evaluate(server_round, replies)
        _say(f"round={server_round} evaluate_s={time.monotonic() - self._t0:.6f}")
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of FedAvg on `min-nodes` nodes."""
    _LOG["path"] = str(context.run_config["bench-log"])
    min_nodes = int(context.run_config["min-nodes"])
    _say("start")
    with np.load(str(context.run_config["initial-npz"]), allow_pickle=False) as npz:
        start = ArrayRecord({name: Array(npz[name]) for name in npz.files})
    _say(f"ready arrays={len(start)}")
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=start,
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    _say("done")
