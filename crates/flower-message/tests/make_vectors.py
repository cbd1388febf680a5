"""Writes flower-message's own object-codec vectors with flwr 1.42's classes.

Run with the pinned venv from the workspace root:

    .venv/bin/python crates/flower-message/tests/make_vectors.py [OUT_DIR]

OUT_DIR defaults to crates/flower-message/tests/vectors. Output is
deterministic (fixed metadata, no clocks), so the golden_fleet test can
regenerate it and compare.

Each case holds: the chunk size, a description of the message (for Rust to
build it independently), the root id, flwr's ObjectTree, and every object in
flwr's order (`get_all_nested_objects`: post-order, unique) with its content
in hex, or only its length for objects over 64 KiB (the id, a SHA-256 of the
content, still pins every byte). `python_values.json` records how flwr types
Python values into ConfigRecord/MetricRecord values, or that it refuses them.
"""

import io
import json
import math
import os
import struct
import sys

import numpy as np

import flwr.app.message.array as array_module
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.app.metadata import Metadata
from flwr.app.message.message import make_message
from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord
from flwr.proto.recorddict_pb2 import MetricRecord as ProtoMetricRecord
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
)

DEFAULT_CHUNK = 5 * 1024 * 1024
INLINE_LIMIT = 64 * 1024


def bits(x):
    """A double as the hex of its IEEE-754 bits (exact for NaN, inf, -0.0)."""
    return struct.pack(">d", x).hex()


def describe_value(v):
    """One ConfigRecordValue/MetricRecordValue protobuf as {kind: value}."""
    kind = v.WhichOneof("value")
    val = getattr(v, kind)
    if kind == "double":
        return {kind: bits(val)}
    if kind == "double_list":
        return {kind: [bits(x) for x in val.vals]}
    if kind == "bytes":
        return {kind: val.hex()}
    if kind == "bytes_list":
        return {kind: [b.hex() for b in val.vals]}
    if kind.endswith("_list"):
        return {kind: list(val.vals)}
    return {kind: val}


def describe_array(arr, name_hint):
    d = {"dtype": arr.dtype, "shape": list(arr.shape), "stype": arr.stype}
    if len(arr.data) > INLINE_LIMIT:
        d["recipe"] = name_hint
        d["len"] = len(arr.data)
    else:
        d["data_hex"] = bytes(arr.data).hex()
    return d


def describe_record(rec, recipes):
    if isinstance(rec, ArrayRecord):
        return {
            "array_record": [
                [k, describe_array(a, recipes.get(k))] for k, a in rec.items()
            ]
        }
    if isinstance(rec, ConfigRecord):
        body = ProtoConfigRecord.FromString(rec.deflate().split(b"\x00", 1)[1])
        return {"config_record": [[i.key, describe_value(i.value)] for i in body.items]}
    body = ProtoMetricRecord.FromString(rec.deflate().split(b"\x00", 1)[1])
    return {"metric_record": [[i.key, describe_value(i.value)] for i in body.items]}


def describe_message(msg, recipes):
    m = msg.metadata
    meta = {
        "run_id": m.run_id,
        "src_node_id": m.src_node_id,
        "dst_node_id": m.dst_node_id,
        "reply_to_message_id": m.reply_to_message_id,
        "group_id": m.group_id,
        "ttl": bits(m.ttl),
        "message_type": m.message_type,
        "created_at": bits(m.created_at),
        "src_task_id": m.src_task_id,
        "dst_task_id": m.dst_task_id,
    }
    if msg.has_error():
        return {
            "metadata": meta,
            "error": {"code": msg.error.code, "reason": msg.error.reason or ""},
        }
    return {
        "metadata": meta,
        "content": [
            [k, describe_record(r, recipes)] for k, r in msg.content.items()
        ],
    }


def tree_json(tree):
    return {"id": tree.object_id, "children": [tree_json(c) for c in tree.children]}


def case(name, msg, chunk_size=DEFAULT_CHUNK, recipes=None):
    array_module.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE = chunk_size
    try:
        description = describe_message(msg, recipes or {})
        objects = get_all_nested_objects(msg)
        out_objects = []
        for oid, obj in objects.items():
            content = obj.deflate()
            entry = {"id": oid}
            if len(content) > INLINE_LIMIT:
                entry["len"] = len(content)
            else:
                entry["content_hex"] = content.hex()
            out_objects.append(entry)
        return {
            "name": name,
            "chunk_size": chunk_size,
            "message": description,
            "root": msg.object_id,
            "tree": tree_json(get_object_tree(msg)),
            "objects": out_objects,
        }
    finally:
        array_module.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE = DEFAULT_CHUNK


def metadata(**kw):
    base = dict(
        run_id=42,
        message_id="",
        src_node_id=1,
        dst_node_id=1234567890123,
        reply_to_message_id="",
        group_id="3",
        created_at=1764600000.123456,
        ttl=43200.0,
        message_type="train",
    )
    base.update(kw)
    return Metadata(**base)


def recipe_array(recipe, dtype, shape):
    """Large arrays are rebuilt from a recipe on the Rust side."""
    n = int(np.prod(shape))
    if recipe == "arange":
        return np.arange(n, dtype=dtype).reshape(shape)
    if recipe == "zeros":
        return np.zeros(shape, dtype=dtype)
    raise ValueError(recipe)


def npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def build_cases():
    cases = []

    # Every dtype flower-core supports, 0-d, empty and odd shapes, a Fortran
    # array, a big-endian array and a non-numpy stype.
    arrays = ArrayRecord()
    rng = np.random.default_rng(7)
    for dt in ["float16", "float32", "float64", "int8", "int16", "int32", "int64",
               "uint8", "uint16", "uint32", "uint64"]:
        info = np.finfo(dt) if dt.startswith("float") else np.iinfo(dt)
        arrays[dt] = Array(np.array([info.min, info.max, 0, 1], dtype=dt).reshape(2, 2))
    arrays["bool"] = Array(np.array([True, False, True]))
    arrays["float32 random 3x4x5"] = Array(rng.standard_normal((3, 4, 5)).astype(np.float32))
    arrays["float64 nan inf -0"] = Array(np.array([np.nan, np.inf, -np.inf, -0.0]))
    arrays["0-d"] = Array(np.array(3.5, dtype=np.float64))
    arrays["empty (0,)"] = Array(np.zeros((0,), dtype=np.float32))
    arrays["empty (2, 0, 3)"] = Array(np.zeros((2, 0, 3), dtype=np.int64))
    arrays["fortran"] = Array(np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)))
    arrays["big-endian"] = Array(np.arange(3, dtype=">f4"))
    arrays["raw stype"] = Array(dtype="float32", shape=(2,), stype="torch.raw", data=b"\x00\x00\x80?\x00\x00\x00@")
    arrays["no data"] = Array(dtype="float32", shape=(0,), stype="numpy.ndarray", data=b"")
    cases.append(case("every_dtype", make_message(metadata(), RecordDict({"arrays": arrays}))))

    # Every config value type Python accepts, as Python types it.
    config = ConfigRecord({
        "float": 0.1, "negative zero": -0.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf,
        "int": 7, "negative int": -2**63, "int64 max": 2**63 - 1, "uint64": 2**63, "uint64 max": 2**64 - 1,
        "true": True, "false": False, "str": "héllo \"wörld\" \\ \n 😀", "empty str": "",
        "bytes": b"\x00\x01\xff", "empty bytes": b"",
        "float list": [0.5, -1.25, math.nan], "int list": [1, -2, 3], "uint list": [1, 2**64 - 1],
        "bool list": [True, False], "str list": ["a", "é", ""], "bytes list": [b"\x00", b""],
        "empty list": [], "int then bool": [1, True], "": "empty key",
    })
    metrics = MetricRecord({
        "accuracy": 0.9, "loss": 1e-300, "count": 60000, "negative": -5, "uint64": 2**64 - 1,
        "zero": 0.0, "int zero": 0, "float list": [0.1, 0.2], "int list": [1, 2], "uint list": [2**63],
        "empty list": [], "int then bool": [3, False],
    })
    cases.append(case("config_and_metric_values",
                      make_message(metadata(message_type="evaluate"),
                                   RecordDict({"config": config, "metrics": metrics}))))

    # Nested records: JSON escaping of names, records and arrays shared under
    # several names (deduplicated children), empty records of each kind.
    shared = Array(np.arange(4, dtype=np.float32))
    inner = ArrayRecord({"w": shared, "w again": shared, "b": Array(np.ones(2, dtype=np.float32))})
    shared_cfg = ConfigRecord({"lr": 0.01})
    content = RecordDict({
        "model \"quoted\" / back\\slash": inner,
        "model copy": inner,
        "ünïcödé 😀 \u0001\u007f\t": shared_cfg,
        "cfg copy": shared_cfg,
        "empty arrays": ArrayRecord(),
        "empty config": ConfigRecord(),
        "empty metrics": MetricRecord(),
    })
    cases.append(case("nested_records", make_message(
        metadata(reply_to_message_id="a" * 64, src_task_id=0, dst_task_id=2**64 - 1), content)))

    # Errors instead of content.
    cases.append(case("error_with_reason", make_message(
        metadata(message_type="query", group_id=""),
        error=Error(code=5, reason="node unavailable: ünïcödé"))))
    cases.append(case("error_no_reason", make_message(metadata(), error=Error(code=0))))
    cases.append(case("error_negative_code", make_message(metadata(), error=Error(code=-2**63))))

    # Metadata edges: -0.0 and huge values, every id at its maximum.
    cases.append(case("metadata_edges", make_message(
        Metadata(run_id=2**64 - 1, message_id="", src_node_id=2**64 - 1, dst_node_id=0,
                 reply_to_message_id="", group_id="g" * 300, created_at=-0.0, ttl=-0.0,
                 message_type="system.x", src_task_id=0, dst_task_id=None),
        RecordDict())))

    # Large arrays over flwr's 5 MiB chunk size: 6 MiB of float32 (2 chunks)
    # and 16 MiB of zeros after the 128-byte .npy header (chunks [0, 1, 1, 2]).
    big = recipe_array("arange", "float32", (6 * 1024 * 1024 // 4,))
    zeros = recipe_array("zeros", "uint8", (16, 1024 * 1024))
    cases.append(case(
        "large_arrays_5mib_chunks",
        make_message(metadata(), RecordDict({"weights": ArrayRecord({"big": Array(big), "zeros": Array(zeros)})})),
        recipes={"big": "arange", "zeros": "zeros"},
    ))

    # Small chunks: repeated chunks within and across arrays, a last short chunk.
    pattern = np.tile(np.arange(7, dtype=np.uint8), 9)
    arrays = ArrayRecord({
        "pattern": Array(pattern),
        "pattern f64": Array(np.tile(np.array([1.0, 2.0]), 20)),
        "tiny": Array(np.array([1], dtype=np.int8)),
    })
    cases.append(case("chunk7_repeats", make_message(metadata(), RecordDict({"a": arrays})), chunk_size=7))
    return cases


def python_value(v):
    if v is None:
        return {"none": None}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": bits(v)}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list):
        return {"list": [python_value(x) for x in v]}
    raise TypeError(v)


def typing_cases():
    values = [
        None, True, False, 0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1,
        0.0, -0.0, 1.5, math.inf, "", "s", b"", b"\x00",
        [], [True], [1], [1.5], ["a"], [b"a"], [1, True], [True, 1], [1, 1.5], [1.5, 1],
        [1, 2**63], [-1, 2**63], [2**64], [-2**63 - 1], ["a", b"a"], [[1]], [None], [False, False],
    ]
    out = []
    for v in values:
        entry = {"input": python_value(v)}
        for name, cls, proto in [("config", ConfigRecord, ProtoConfigRecord),
                                 ("metric", MetricRecord, ProtoMetricRecord)]:
            try:
                rec = cls({"k": v})
                body = proto.FromString(rec.deflate().split(b"\x00", 1)[1])
                entry[name] = {"ok": describe_value(body.items[0].value)}
            except (TypeError, ValueError) as err:
                entry[name] = {"error": type(err).__name__}
        out.append(entry)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "vectors")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "flwr_cases.json"), "w", encoding="utf-8") as f:
        json.dump(build_cases(), f, indent=1, ensure_ascii=True)
        f.write("\n")
    with open(os.path.join(out_dir, "python_values.json"), "w", encoding="utf-8") as f:
        json.dump(typing_cases(), f, indent=1, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    main()
