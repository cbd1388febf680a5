//! The test apps do the arithmetic their READMEs document: each ClientApp,
//! installed from its FAB the way `flwr-clientapp` installs it and given the
//! run config flwr fuses from the FAB and the overrides, is called with one
//! train and one evaluate message.

use serde_json::{json, Value};

use crate::{arg, built, python_json};

/// `argv`: FAB path, package name, `"message"` or `"legacy"`. Node config
/// `factor=2.0 examples=30`; run config overrides `scale=1.5 local-epochs=2`.
const CALL_APP: &str = r#"
import importlib, json, sys, tempfile
from pathlib import Path
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.cli.install import install_from_fab
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters
from flwr.common.config import get_fused_config_from_fab
from flwr.compat.common.recorddict_compat import evaluateins_to_recorddict, fitins_to_recorddict
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

fab_path, package, api = sys.argv[1:4]
fab = open(fab_path, "rb").read()
run = Run.create_empty(1)
run.override_config = {"scale": 1.5, "local-epochs": 2}
run_config = get_fused_config_from_fab(fab, run)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
install = Path(tempfile.mkdtemp())
app_dir = install_from_fab(fab, install_dir=install, skip_prompt=True)
sys.path.insert(0, str(app_dir))
app = importlib.import_module(package + ".client_app").app
ctx = Context(run_id=1, node_id=7, node_config={"factor": 2.0, "examples": 30},
              state=RecordDict(), run_config=run_config)
start = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -0.5])]

def content(kind):
    if api == "message":
        arrays = ArrayRecord({"w": Array(start[0]), "b": Array(start[1])})
        return RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 3})})
    params = ndarrays_to_parameters(start)
    if kind == "train":
        return fitins_to_recorddict(FitIns(params, {}), True)
    return evaluateins_to_recorddict(EvaluateIns(params, {}), True)

out = {"run_config": run_config}
for kind in ("train", "evaluate"):
    reply = app(Message(content=content(kind), dst_node_id=7, message_type=kind), ctx)
    assert not reply.has_error(), reply.error
    result = {}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            result[name] = {
                k: [a.dtype, a.numpy().dtype.name, a.numpy().tolist()] for k, a in record.items()
            }
        else:
            result[name] = dict(record)
    out[kind] = result
print(json.dumps(out))
"#;

/// README: `delta = local-epochs * factor * scale` = 2 * 2.0 * 1.5.
const DELTA: f64 = 6.0;
/// README: evaluate loss = mean of all 8 initial elements = 15 / 8.
const INITIAL_MEAN: f64 = 1.875;

fn expected_w() -> Value {
    json!([
        [0.0 + DELTA, 1.0 + DELTA, 2.0 + DELTA],
        [3.0 + DELTA, 4.0 + DELTA, 5.0 + DELTA]
    ])
}

fn expected_b() -> Value {
    json!([0.5 + DELTA, -0.5 + DELTA])
}

#[test]
fn modern_clientapp_does_the_documented_arithmetic() {
    let Some(built) = built() else { return };
    let Some(out) = python_json(CALL_APP, &[arg(&built.modern), "modern_app", "message"]) else {
        return;
    };
    assert_eq!(out["run_config"]["scale"], json!(1.5));
    let train = &out["train"];
    // [Array.dtype as sent, dtype of the decoded .npy, values]
    assert_eq!(
        train["arrays"]["w"],
        json!(["float32", "float32", expected_w()])
    );
    assert_eq!(
        train["arrays"]["b"],
        json!(["float64", "float64", expected_b()])
    );
    assert_eq!(
        train["metrics"],
        json!({"num-examples": 30, "delta": DELTA, "server-round": 3})
    );
    assert_eq!(
        out["evaluate"]["metrics"],
        json!({"num-examples": 30, "loss": INITIAL_MEAN, "factor": 2.0})
    );
}

#[test]
fn legacy_clientapp_does_the_documented_arithmetic() {
    let Some(built) = built() else { return };
    let Some(out) = python_json(CALL_APP, &[arg(&built.legacy), "legacy_app", "legacy"]) else {
        return;
    };
    let train = &out["train"];
    // flwr's compat layer sends legacy parameters with an empty
    // `Array.dtype` (and shape `()`): only the .npy bytes carry the dtype.
    assert_eq!(
        train["fitres.parameters"]["0"],
        json!(["", "float32", expected_w()])
    );
    assert_eq!(
        train["fitres.parameters"]["1"],
        json!(["", "float64", expected_b()])
    );
    assert_eq!(train["fitres.num_examples"], json!({"num_examples": 30}));
    assert_eq!(train["fitres.metrics"], json!({"delta": DELTA}));
    let evaluate = &out["evaluate"];
    assert_eq!(evaluate["evaluateres.loss"], json!({"loss": INITIAL_MEAN}));
    assert_eq!(
        evaluate["evaluateres.metrics"],
        json!({"loss": INITIAL_MEAN, "factor": 2.0})
    );
}
