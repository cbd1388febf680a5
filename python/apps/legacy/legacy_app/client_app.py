"""Legacy ClientApp: a NumPyClient with deterministic fit/evaluate (see README.md)."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from legacy_app.task import delta, initial_arrays, mean_of_all, node_examples, node_factor


class DeltaClient(NumPyClient):
    """Adds a fixed delta on fit; reports the mean of all elements on evaluate."""

    def __init__(self, step: float, examples: int, factor: float) -> None:
        self.step = step
        self.examples = examples
        self.factor = factor

    def get_parameters(self, config):
        """The initial model (only used if the server asks a client for it)."""
        return initial_arrays()

    def fit(self, parameters, config):
        """Return every array plus `step`, the weight and the step as a metric."""
        updated = [(p + self.step).astype(p.dtype) for p in parameters]
        return updated, self.examples, {"delta": self.step}

    def evaluate(self, parameters, config):
        """Loss = mean of all received elements."""
        loss = mean_of_all(parameters)
        return loss, self.examples, {"loss": loss, "factor": self.factor}


def client_fn(context: Context):
    """Build the client from the node and run config."""
    return DeltaClient(
        delta(context), node_examples(context), node_factor(context)
    ).to_client()


app = ClientApp(client_fn=client_fn)
