//! The same FABs and `--run-config` arguments through this crate and
//! through flwr's `get_fab_config`, `get_metadata_from_config`,
//! `flatten_dict`, `parse_config_args`, `fuse_dicts` and
//! `user_config_to_proto`: the results must be identical.

use std::path::Path;

use flower_core::Scalar;
use flower_fab::{ConfigValue, Fab, FabError, UserConfig};
use serde_json::{json, Value};

use crate::{arg, built, python_json};

/// Prints, as JSON, what flwr makes of a FAB (`argv[1]`) and of each
/// override case (`argv[2]`, a JSON list of argument lists).
const FLWR_SCRIPT: &str = r#"
import hashlib, json, sys
import click
from flwr.common.config import (
    flatten_dict, fuse_dicts, get_fab_config, get_metadata_from_config, parse_config_args,
)
from flwr.common.serde import user_config_to_proto

def typed(d):
    return [[k, type(v).__name__, v] for k, v in d.items()]

fab = open(sys.argv[1], "rb").read()
conf = get_fab_config(fab)
fab_id, version = get_metadata_from_config(conf)
defaults = flatten_dict(conf["tool"]["flwr"]["app"].get("config"))
out = {
    "hash": hashlib.sha256(fab).hexdigest(),
    "fab_id": fab_id,
    "version": version,
    "components": conf["tool"]["flwr"]["app"]["components"],
    "defaults": typed(defaults),
    "cases": [],
}
for args in json.loads(sys.argv[2]):
    try:
        overrides = parse_config_args(args)
    except click.ClickException:
        out["cases"].append({"error": "syntax"})
        continue
    except ValueError:
        out["cases"].append({"error": "value"})
        continue
    try:
        fused = fuse_dicts(defaults, overrides)
    except ValueError as e:
        out["cases"].append({"error": "unknown-key", "msg": str(e)})
        continue
    proto = {k: v.WhichOneof("scalar") for k, v in user_config_to_proto(overrides).items()}
    out["cases"].append({
        "overrides": typed(overrides),
        "fused": typed(fused),
        "proto": sorted(proto.items()),
    })
print(json.dumps(out))
"#;

fn typed(config: &UserConfig) -> Value {
    Value::Array(
        config
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    ConfigValue::Bool(b) => json!(b),
                    ConfigValue::Int(i) => json!(i),
                    ConfigValue::Float(f) => json!(f),
                    ConfigValue::Str(s) => json!(s),
                };
                json!([k, v.type_name(), value])
            })
            .collect(),
    )
}

fn proto_kind(scalar: &Scalar) -> &'static str {
    match scalar {
        Scalar::Bool(_) => "bool",
        Scalar::Bytes(_) => "bytes",
        Scalar::Double(_) => "double",
        Scalar::Sint64(_) => "sint64",
        Scalar::Uint64(_) => "uint64",
        Scalar::String(_) => "string",
    }
}

/// This crate's answer for one case, in the script's shape (the
/// unknown-key message is checked separately).
fn ours(fab: &Fab, args: &[String]) -> Value {
    let overrides = match UserConfig::parse_args(args) {
        Ok(o) => o,
        Err(FabError::OverrideSyntax { .. }) => return json!({"error": "syntax"}),
        Err(FabError::InvalidConfigValue { .. } | FabError::TomlFileWithPairs { .. }) => {
            return json!({"error": "value"})
        }
        Err(e) => panic!("unexpected error for {args:?}: {e}"),
    };
    match fab.default_config().fuse(&overrides) {
        Ok(fused) => {
            let proto: Vec<Value> = overrides
                .to_scalars()
                .iter()
                .map(|(k, s)| json!([k, proto_kind(s)]))
                .collect();
            json!({"overrides": typed(&overrides), "fused": typed(&fused), "proto": proto})
        }
        Err(FabError::UnknownConfigKey { key, .. }) => json!({"error": "unknown-key", "key": key}),
        Err(e) => panic!("unexpected fuse error for {args:?}: {e}"),
    }
}

/// Override cases: good ones, unknown keys, bad syntax, bad types, and
/// flwr's quirks (shallow update across arguments, ignored junk).
fn cases(toml_file: &Path) -> Vec<Vec<String>> {
    let file = toml_file.to_string_lossy().into_owned();
    let raw: Vec<Vec<&str>> = vec![
        vec![],
        vec!["lr=0.01 local-epochs=3"],
        vec!["label=\"x y\" verbose=true", "scale=2.5"],
        vec!["optimizer.momentum=0.5"],
        vec!["optimizer={momentum=0.1}"],
        vec!["local-epochs=\"three\""],
        vec!["label='single quoted'"],
        vec!["lr=1e-3 num-server-rounds=+7"],
        vec!["garbage without pairs"],
        vec!["lr = 0.5"],
        vec!["epochs=3"],
        vec!["lr=0.1 nope.deep=1"],
        vec!["optimizer.momentum=0.5", "optimizer.other=1"],
        vec!["lr=abc"],
        vec!["lr=1.2.3"],
        vec!["lr=1 lr=2"],
        vec!["label=\"unclosed"],
        vec!["lr=[1,2]"],
        vec!["when=1979-05-27"],
        vec!["lr=0.5", "extra.toml"],
        vec![&file],
    ];
    raw.into_iter()
        .map(|c| c.into_iter().map(str::to_owned).collect())
        .collect()
}

fn compare(fab_path: &Path, expected_name: &str, expected_label: &str) {
    let fab = Fab::from_file(fab_path).expect("flwr build output parses");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let toml_file = dir.path().join("overrides.toml");
    std::fs::write(&toml_file, "lr = 0.5\n[optimizer]\nmomentum = 0.2\n").expect("write");
    let cases = cases(&toml_file);
    let cases_json = serde_json::to_string(&cases).expect("json");
    let Some(py) = python_json(FLWR_SCRIPT, &[arg(fab_path), &cases_json]) else {
        return;
    };

    // Metadata.
    let bytes = std::fs::read(fab_path).expect("read FAB");
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(fab.hash_str(), sha);
    assert_eq!(py["hash"], json!(fab.hash_str()));
    assert_eq!(py["fab_id"], json!(fab.fab_id()));
    assert_eq!(fab.fab_id(), format!("flower-rs/{expected_name}"));
    assert_eq!(py["version"], json!(fab.fab_version()));
    assert_eq!(fab.fab_version(), "1.0.0");
    assert_eq!(
        fab_path.file_name().and_then(|n| n.to_str()),
        Some(fab.file_name().as_str())
    );
    let components = fab.components();
    assert_eq!(py["components"]["serverapp"], json!(components.serverapp));
    assert_eq!(py["components"]["clientapp"], json!(components.clientapp));
    assert!(!components.is_agentapp_bundle());

    // Defaults: same keys, order, types and values.
    assert_eq!(py["defaults"], typed(fab.default_config()));
    assert_eq!(
        fab.default_config().get("label"),
        Some(&ConfigValue::Str(expected_label.into()))
    );
    assert_eq!(
        fab.default_config().get("optimizer.momentum"),
        Some(&ConfigValue::Float(0.9))
    );

    // Every override case.
    let py_cases = py["cases"].as_array().expect("cases");
    assert_eq!(py_cases.len(), cases.len());
    for (args, theirs) in cases.iter().zip(py_cases) {
        let mine = ours(&fab, args);
        if theirs["error"] == "unknown-key" {
            let key = mine["key"]
                .as_str()
                .unwrap_or_else(|| panic!("{args:?}: {mine}"));
            let msg = theirs["msg"].as_str().expect("msg");
            assert!(
                msg.contains(&format!("'{key}'")),
                "{args:?}: flwr {msg}, ours {key}"
            );
        } else {
            assert_eq!(&mine, theirs, "case {args:?}");
        }
    }
}

#[test]
fn modern_fab_matches_flwr() {
    let Some(built) = built() else { return };
    compare(&built.modern, "modern-app", "modern");
}

#[test]
fn legacy_fab_matches_flwr() {
    let Some(built) = built() else { return };
    compare(&built.legacy, "legacy-app", "legacy");
}

/// The unknown-key error names the key and lists the known ones, and the
/// overrides become `Run.override_config` scalars.
#[test]
fn run_config_for_a_real_fab() {
    let Some(built) = built() else { return };
    let fab = Fab::from_file(&built.modern).expect("parses");
    let run = flower_fab::RunConfig::from_args(&fab, &["lr=0.01 local-epochs=3"]).expect("ok");
    assert_eq!(run.get("lr"), Some(&ConfigValue::Float(0.01)));
    assert_eq!(run.get("scale"), Some(&ConfigValue::Float(1.0)));
    assert_eq!(run.overrides().len(), 2);
    let scalars = run.override_scalars();
    assert_eq!(scalars["local-epochs"], Scalar::Sint64(3));
    assert_eq!(scalars.len(), 2);

    let err = flower_fab::RunConfig::from_args(&fab, &["epochs=3"]).expect_err("unknown");
    let msg = err.to_string();
    assert_eq!(
        msg,
        "unknown run config key `epochs`; the app defines: num-server-rounds, min-nodes, \
         local-epochs, lr, scale, label, verbose, optimizer.momentum"
    );
}
