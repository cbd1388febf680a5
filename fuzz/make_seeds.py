"""Writes the seed inputs of every fuzz target (README.md, "Corpora").

Run with the project's venv (numpy, flwr 1.42):
    .venv/bin/python fuzz/make_seeds.py fuzz/corpus-seeds
then minimise into fuzz/corpus/<target>/ with `cargo fuzz cmin`. Seeds are
what real peers send: numpy's own .npy/.npz files, flwr's protobuf messages
and Fleet objects, XGBoost-shaped JSON, bearer headers.
"""

import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto import message_pb2, transport_pb2
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus-seeds")
GOLDEN = Path(os.environ.get("FLOWER_GOLDEN", "/work/shared/golden"))
OBJECT_SEPARATOR = b"\n--obj--\n"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def npy_bytes(a, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, a, allow_pickle=False)
    else:
        np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
    return buf.getvalue()


ARRAYS = {
    "f32_2x3": np.arange(6, dtype="<f4").reshape(2, 3),
    "f64_be": np.array([1.5, -2.0, np.nan], dtype=">f8"),
    "f16": np.array([0.5, 65504], dtype="<f2"),
    "i8": np.array([-1, 2], dtype="i1"),
    "i16_be": np.array([1, -2], dtype=">i2"),
    "i32_0d": np.array(7, dtype="<i4"),
    "i64_fortran": np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3)),
    "u8": np.array([0, 255], dtype="u1"),
    "u16": np.array([1], dtype="<u2"),
    "u32_3d": np.zeros((1, 2, 1), dtype="<u4"),
    "u64": np.array([2**64 - 1], dtype="<u8"),
    "bool": np.array([True, False]),
    "empty": np.zeros((0, 3), dtype="<f4"),
}


def npy_seeds():
    for name, a in ARRAYS.items():
        put("npy", name, npy_bytes(a))
    put("npy", "v2", npy_bytes(ARRAYS["f32_2x3"], (2, 0)))
    put("npy", "v3", npy_bytes(ARRAYS["u8"], (3, 0)))


def npz_seeds():
    for i, (name, arrays) in enumerate(
        [
            ("savez", {"arr_0": ARRAYS["f32_2x3"], "arr_1": ARRAYS["i32_0d"]}),
            ("named", {"w": ARRAYS["f64_be"], "b": ARRAYS["bool"]}),
        ]
    ):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        put("npz", name, buf.getvalue())
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        put("npz", name + "_compressed", buf.getvalue())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("dir/", b"")
        z.writestr("x.npy", npy_bytes(ARRAYS["u16"]))
    put("npz", "with_dir", buf.getvalue())


def parameters(*names):
    return transport_pb2.Parameters(
        tensors=[npy_bytes(ARRAYS[n]) for n in names], tensor_type="numpy.ndarray"
    )


def client_message_seeds():
    ok = transport_pb2.Status(code=0, message="Success")
    metrics = {
        "acc": transport_pb2.Scalar(double=0.5),
        "n": transport_pb2.Scalar(sint64=-3),
        "big": transport_pb2.Scalar(uint64=2**63 + 1),
        "ok": transport_pb2.Scalar(bool=True),
        "s": transport_pb2.Scalar(string="x"),
        "b": transport_pb2.Scalar(bytes=b"\x00\x01"),
    }
    CM = transport_pb2.ClientMessage
    msgs = {
        "fit": CM(fit_res=CM.FitRes(status=ok, parameters=parameters("f32_2x3", "i64_fortran"), num_examples=10, metrics=metrics)),
        "fit_failed": CM(fit_res=CM.FitRes(status=transport_pb2.Status(code=3, message="no"))),
        "evaluate": CM(evaluate_res=CM.EvaluateRes(status=ok, loss=0.25, num_examples=3, metrics=metrics)),
        "get_parameters": CM(get_parameters_res=CM.GetParametersRes(status=ok, parameters=parameters("u8", "bool"))),
        "get_properties": CM(get_properties_res=CM.GetPropertiesRes(status=ok, properties=metrics)),
        "disconnect": CM(disconnect_res=CM.DisconnectRes(reason=1)),
    }
    for name, m in msgs.items():
        put("client_message", name, m.SerializeToString())


def auth_seeds():
    seeds = {
        "valid": b"/flwr.proto.FlowerService/Join\n\x00Bearer fuzz-token-1",
        "valid_x": b"/flwr.proto.FlowerService/Join\n\x01bearer T0k3n/with+odd=chars!",
        "two_values": b"/flwr.proto.Fleet/PullMessages\n\x00Bearer wrong\n\x01BEARER fuzz-token-1",
        "wrong_scheme": b"/flwr.proto.FlowerService/Join\n\x00Basic fuzz-token-1",
        "bypass": b"/flwr.proto.Fleet/CreateNodeUnauthenticated\n\x03whatever",
        "missing": b"https://host:9092/flwr.proto.FlowerService/Join?q=1",
        "spaces": b"/a/b\n\x00Bearer  fuzz-token-1\n\x00Bearer fuzz-token-1 ",
    }
    for name, data in seeds.items():
        put("auth_header", name, data)


def xgb_seeds():
    cases = json.loads((GOLDEN / "strategies" / "fedxgb_bagging.json").read_text())
    n = 0
    for rnd in cases["rounds"]:
        tensors = [
            t.encode()
            for r in rnd.get("fit_results", [])
            for t in r["parameters"]["tensors_utf8"]
        ]
        if tensors:
            put("fedxgb_json", f"golden_round{rnd['server_round']}", b"\x00".join(tensors))
            n += 1
    model = {
        "learner": {
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": {"num_trees": "2", "num_parallel_tree": "1"},
                    "iteration_indptr": [0, 1, 2.0],
                    "tree_info": [0, 0],
                    "trees": [{"id": 0, "w": [1e300, -0.0]}, {"id": 1, "s": "\u00e9\\\""}],
                },
                "name": "gbtree",
            },
            "attributes": {},
        },
        "version": [2, 1, 0],
    }
    text = json.dumps(model).encode()
    put("fedxgb_json", "two_models", text + b"\x00" + text)
    put("fedxgb_json", "nan_inf", b'{"a": NaN, "b": -Infinity, "c": [1e5, 12345678901234567890123]}\x00' + text)


def placeholder_form(objects):
    """Objects (id -> content), children first, ids replaced by @XX."""
    heads = {}
    for oid, content in objects.items():
        head = content.split(b"\x00", 1)[0].split(b" ")
        kids = head[1].split(b",") if len(head) > 1 and head[1] else []
        heads[oid] = [k.decode() for k in kids]
    order, seen = [], set()

    def visit(oid):
        if oid in seen or oid not in objects:
            return
        seen.add(oid)
        for k in heads[oid]:
            visit(k)
        order.append(oid)

    # The root (a Message) last.
    roots = [o for o in objects if objects[o].startswith(b"Message ")]
    for o in list(objects) + roots:
        if o not in roots:
            visit(o)
    for r in roots:
        visit(r)
    if len(order) > 256:
        return None
    index = {oid: i for i, oid in enumerate(order)}
    parts = []
    for oid in order:
        c = objects[oid]
        c = re.sub(
            rb"[0-9a-f]{64}",
            lambda m: b"@%02x" % index[m.group().decode()] if m.group().decode() in index else m.group(),
            c,
        )
        parts.append(c)
    return OBJECT_SEPARATOR.join(parts)


def flwr_messages():
    arrays = ArrayRecord({"w": Array(ARRAYS["f32_2x3"]), "b": Array(ARRAYS["bool"])})
    content = RecordDict(
        {
            "arrays": arrays,
            "config": ConfigRecord({"lr": 0.1, "epochs": 2, "name": "x", "flags": [True, False], "raw": b"\x00"}),
            "metrics": MetricRecord({"acc": 0.9, "n": 5, "hist": [1.0, 2.0]}),
        }
    )

    def meta(message_type, src_task_id=None):
        return Metadata(
            run_id=42, message_id="", src_node_id=1, dst_node_id=7, reply_to_message_id="",
            group_id="1", created_at=1700000000.5, ttl=3600.0, message_type=message_type,
            src_task_id=src_task_id,
        )

    return {
        "train": Message(content=content, metadata=meta("train")),
        "evaluate_empty": Message(content=RecordDict(), metadata=meta("evaluate", 3)),
    }


def fleet_seeds():
    for f in sorted((GOLDEN / "fleet").glob("*.json")):
        for v in json.loads(f.read_text()):
            objs = {o["id"]: bytes.fromhex(o["content_hex"]) for o in v["objects"]}
            data = placeholder_form(objs)
            if data is not None:
                put("fleet_objects", f"golden_{v['name']}_{v['chunk_size']}", data)
    for name, m in flwr_messages().items():
        objs = {oid: o.deflate() for oid, o in get_all_nested_objects(m).items()}
        put("fleet_objects", f"flwr_{name}", placeholder_form(objs))
        put("fleet_proto", f"message_{name}", serde.message_to_proto(m).SerializeToString())
        if m.has_content():
            put("fleet_proto", f"recorddict_{name}", serde.recorddict_to_proto(m.content).SerializeToString())
    put("fleet_proto", "array", serde.array_to_proto(Array(ARRAYS["i64_fortran"])).SerializeToString())
    leaf = message_pb2.ObjectTree(object_id="ab" * 32)
    tree = message_pb2.ObjectTree(object_id="cd" * 32, children=[leaf, message_pb2.ObjectTree(object_id="ef" * 32, children=[leaf])])
    put("fleet_proto", "object_tree", tree.SerializeToString())


if __name__ == "__main__":
    npy_seeds()
    npz_seeds()
    client_message_seeds()
    auth_seeds()
    xgb_seeds()
    fleet_seeds()
    for d in sorted(OUT.iterdir()):
        print(d.name, len(list(d.iterdir())))
