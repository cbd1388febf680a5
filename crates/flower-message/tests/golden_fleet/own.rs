//! Replays this crate's vectors, made with flwr's own classes by
//! `tests/make_vectors.py`.

use std::path::Path;

use bytes::Bytes;
use flower_message::{
    inflate, ConfigValue, Limits, MetricValue, ObjectTree, Payload, PyValue, Record, NUMPY_STYPE,
};
use serde_json::Value;

use crate::common::{
    check_deflate, check_inflate, config_value, hex, inline_objects, message, metric_value,
    own_dir, read_json, str_of, tree,
};

#[test]
fn own_vectors_deflate_and_inflate_byte_for_byte() {
    let cases = read_json(&own_dir().join("flwr_cases.json"));
    let cases = cases.as_array().expect("cases");
    let mut names = Vec::new();
    let mut arrays_reencoded = 0;
    for case in cases {
        let name = str_of(case, "name");
        let expected_tree = tree(&case["tree"]);
        // Rust builds the message from its description: flwr's exact bytes.
        let mut built = message(&case["message"]);
        let deflated = check_deflate(name, case, &built, &expected_tree);
        // Inline objects alone rebuild the same tree when all are inline.
        let inline = inline_objects(case);
        if inline.len() == deflated.objects.len() {
            let rebuilt = ObjectTree::from_objects(&deflated.root, &inline, &Limits::default());
            assert_eq!(rebuilt.ok().as_ref(), Some(&expected_tree), "{name}");
        }
        // Inflating flwr's objects (ours are proven identical by id) gives
        // back the message, with its id.
        let inflated = check_inflate(name, &expected_tree, &deflated.objects);
        built.metadata.message_id = deflated.root.to_string();
        assert!(same(&inflated, &built), "{name}: inflated message differs");

        // Arrays: npy data decodes, and C-order little-endian arrays
        // re-encode byte-identically from the decoded values.
        if let Payload::Content(content) = &inflated.payload {
            for record in content.values() {
                let Record::Array(arrays) = record else {
                    continue;
                };
                for (key, a) in arrays.iter() {
                    if a.stype != NUMPY_STYPE || a.data.is_empty() {
                        assert!(a.to_ndarray().is_err(), "{name}/{key}");
                        continue;
                    }
                    let view = a.npy_view().unwrap_or_else(|e| panic!("{name}/{key}: {e}"));
                    let nd = view
                        .to_ndarray()
                        .unwrap_or_else(|e| panic!("{name}/{key}: {e}"));
                    if !view.fortran_order && !view.big_endian {
                        let again = flower_message::Array::from_ndarray(&nd);
                        assert_eq!(&again, a, "{name}/{key}: npy re-encoding");
                        arrays_reencoded += 1;
                    }
                }
            }
        }
        names.push(name.to_owned());
    }
    for want in [
        "every_dtype",
        "config_and_metric_values",
        "nested_records",
        "error_with_reason",
        "metadata_edges",
        "large_arrays_5mib_chunks",
        "chunk7_repeats",
    ] {
        assert!(names.iter().any(|n| n == want), "case {want} missing");
    }
    // 12 dtypes + random + nan/inf + 0-d + 2 empty + 2 large + 3 small-chunk.
    assert!(
        arrays_reencoded >= 20,
        "{arrays_reencoded} arrays re-encoded"
    );
}

#[test]
fn large_arrays_are_chunked_and_reassembled_like_flwr() {
    let cases = read_json(&own_dir().join("flwr_cases.json"));
    let case = cases
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "large_arrays_5mib_chunks"))
        .expect("large case");
    let built = message(&case["message"]);
    let deflated = flower_message::deflate(&built);
    // Message -> RecordDict -> ArrayRecord -> 2 Arrays with 2 and 3 chunks.
    let array_nodes = &deflated.tree.children[0].children[0].children;
    let chunk_counts: Vec<usize> = array_nodes.iter().map(|a| a.children.len()).collect();
    assert_eq!(chunk_counts, [2, 3]);
    assert_eq!(deflated.tree.node_count(), 1 + 1 + 1 + 2 + 2 + 3);
    let message = inflate(&deflated.tree, &deflated, &Limits::default());
    assert_eq!(message.map(|m| m.payload).ok(), Some(built.payload));
}

fn py_value(v: &Value) -> PyValue {
    let (kind, x) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("{kind: value}");
    match kind.as_str() {
        "none" => PyValue::None,
        "bool" => PyValue::Bool(x.as_bool().expect("bool")),
        "int" => PyValue::Int(x.as_str().and_then(|s| s.parse().ok()).expect("int text")),
        "float" => PyValue::Float(f64::from_be_bytes(
            hex(x.as_str().expect("bits")).try_into().expect("8 bytes"),
        )),
        "str" => PyValue::Str(x.as_str().expect("str").to_owned()),
        "bytes" => PyValue::Bytes(Bytes::from(hex(x.as_str().expect("hex")))),
        "list" => PyValue::List(x.as_array().expect("list").iter().map(py_value).collect()),
        other => panic!("unknown Python value kind {other}"),
    }
}

/// NaN-aware equality of typed values (bitwise for doubles).
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn python_value_typing_matches_flwr() {
    let cases = read_json(&own_dir().join("python_values.json"));
    let cases = cases.as_array().expect("cases");
    let (mut accepted, mut refused) = (0, 0);
    for case in cases {
        let input = py_value(&case["input"]);
        let config = ConfigValue::from_python(&input);
        match case["config"].get("ok") {
            Some(v) => {
                let want = config_value(v);
                assert!(
                    config.as_ref().is_ok_and(|c| same(c, &want)),
                    "config {input:?}: {config:?}, flwr: {want:?}"
                );
                accepted += 1;
            }
            None => {
                assert!(
                    matches!(config, Err(flower_message::Error::InvalidValue(_))),
                    "config {input:?}: {config:?}, flwr refuses it"
                );
                refused += 1;
            }
        }
        let metric = MetricValue::from_python(&input);
        match case["metric"].get("ok") {
            Some(v) => {
                let want = metric_value(v);
                assert!(
                    metric.as_ref().is_ok_and(|m| same(m, &want)),
                    "metric {input:?}: {metric:?}, flwr: {want:?}"
                );
            }
            None => assert!(
                matches!(metric, Err(flower_message::Error::InvalidValue(_))),
                "metric {input:?}: {metric:?}, flwr refuses it"
            ),
        }
    }
    assert!(
        accepted >= 15 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn committed_vectors_equal_a_fresh_run_of_make_vectors() {
    let Some(python) = flower_testkit::python() else {
        return;
    };
    let out = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make_vectors.py");
    let status = std::process::Command::new(python)
        .arg(&script)
        .arg(out.path())
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .status()
        .expect("python runs");
    assert!(status.success(), "make_vectors.py failed");
    for file in ["flwr_cases.json", "python_values.json"] {
        let fresh = std::fs::read(out.path().join(file)).expect("fresh vectors");
        let committed = std::fs::read(own_dir().join(file)).expect("committed vectors");
        assert!(
            fresh == committed,
            "{file} differs from a fresh run: rerun {} and commit",
            script.display()
        );
    }
}
