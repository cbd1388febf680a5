"""The deterministic arithmetic shared by the ClientApp and the ServerApp.

README.md states the same rules; tests compute expected results from them.
"""

import numpy as np
from flwr.app import Context


def initial_arrays(extra_elements: int = 0) -> dict[str, np.ndarray]:
    """The model the ServerApp starts from: two named arrays, plus a float32
    array `big` of `extra_elements` zeros when that is positive (to test
    models larger than one 5 MiB object chunk)."""
    arrays = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),  # [[0,1,2],[3,4,5]]
        "b": np.array([0.5, -0.5], dtype=np.float64),
    }
    if extra_elements > 0:
        arrays["big"] = np.zeros(extra_elements, dtype=np.float32)
    return arrays


def node_factor(context: Context) -> float:
    """`--node-config factor=<number>`, default 1.0."""
    return float(context.node_config.get("factor", 1.0))


def node_examples(context: Context) -> int:
    """`--node-config examples=<int>`, default 10 (the FedAvg weight)."""
    return int(context.node_config.get("examples", 10))


def delta(context: Context) -> float:
    """What one training step adds to every element of every array:
    local-epochs * factor * scale."""
    run_config = context.run_config
    return (
        float(run_config["local-epochs"])
        * node_factor(context)
        * float(run_config["scale"])
    )


def train_update(array: np.ndarray, step: float) -> np.ndarray:
    """`array + step`, keeping the array's dtype."""
    return (array + step).astype(array.dtype)


def mean_of_all(arrays: list[np.ndarray]) -> float:
    """Mean over every element of every array (float64)."""
    flat = [a.astype(np.float64).ravel() for a in arrays]
    return float(np.concatenate(flat).mean()) if flat else 0.0
