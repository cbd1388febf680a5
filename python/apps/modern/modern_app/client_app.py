"""Message-API ClientApp: deterministic train/evaluate (see README.md)."""

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from modern_app.task import delta, mean_of_all, node_examples, node_factor, train_update

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Add `delta` to every received array; report the weight and the delta."""
    arrays = msg.content["arrays"]
    config = msg.content["config"]
    step = delta(context)
    updated = ArrayRecord(
        {name: Array(train_update(array.numpy(), step)) for name, array in arrays.items()}
    )
    metrics = MetricRecord(
        {
            "num-examples": node_examples(context),
            "delta": step,
            "server-round": int(config.get("server-round", 0)),
        }
    )
    return Message(
        content=RecordDict({"arrays": updated, "metrics": metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Report the mean of all received elements as the loss."""
    arrays = msg.content["arrays"]
    loss = mean_of_all([array.numpy() for array in arrays.values()])
    metrics = MetricRecord(
        {
            "num-examples": node_examples(context),
            "loss": loss,
            "factor": node_factor(context),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
