"""ClientApp of `flower-bench fleet`: no training, so the servers are what is measured.

train: every received array + (1 + node config `index`, default 0), same name and dtype;
`num-examples` from the run config. Distinct indexes make the nodes' replies differ, so no
server can skip uploads by deduplicating identical objects.
evaluate: a cheap loss (the first element of every array, summed), same `num-examples`.
"""

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _examples(context: Context) -> int:
    return int(context.run_config["examples"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Reply with every received array plus (1 + this node's index)."""
    arrays = msg.content["arrays"]
    step = 1 + int(context.node_config.get("index", 0))
    updated = ArrayRecord(
        {
            name: Array(array.numpy() + array.numpy().dtype.type(step))
            for name, array in arrays.items()
        }
    )
    metrics = MetricRecord({"num-examples": _examples(context)})
    return Message(content=RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Reply with a loss that costs nothing to compute."""
    arrays = msg.content["arrays"]
    loss = float(sum(float(a.numpy().ravel()[0]) for a in arrays.values() if a.numpy().size))
    metrics = MetricRecord({"num-examples": _examples(context), "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
