//! Replays every golden case produced by Python Flower 1.42
//! (`<workspace>/../shared/golden/strategies`, or `$FLWR_GOLDEN_DIR`)
//! through the strategies built by name, and reports every failing case at
//! once.
//!
//! Checks (as the golden README suggests): shapes, dtypes, counts, configs
//! and errors exactly; arrays per element `|got − exp| ≤ 1e-6 + 1e-5·|exp|`;
//! metrics and config floats to a relative 1e-12. Evaluation losses travel
//! as f32 (`EvaluateRes.loss` is 32-bit on the wire), so the strategy's loss
//! is checked to a relative 1e-6 and [`weighted_loss_avg`] on the exact f64
//! losses to 1e-12. Cases listed in `flower_strategy::deviations` must
//! produce their documented error instead of Flower's output.
//!
//! Run: `cargo test -p flower-strategy --test golden`
//! (`FLWR_GOLDEN_EXACT=1` additionally demands bit-equal arrays, to see
//! which cases are bit-exact).

#[path = "shared/golden_data.rs"]
mod golden_data;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flower_core::npy::{decode_npy, encode_npy};
use flower_core::{
    EvaluateRes, FitRes, Metrics, NdArray, Parameters, Scalar, Status, NUMPY_TENSOR_TYPE,
};
use flower_strategy::deviations::{expected_for, Expected};
use flower_strategy::{
    build_strategy, weighted_loss_avg, Callbacks, ClientFailure, ClientId, CommonOptions, Strategy,
};
use golden_data::{golden_dir, read_json, spec_for, FakeSampler};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// How tensors are written in a case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoding {
    Npy,
    RawF32,
    Utf8Json,
}

fn value_f64(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn shape_of(a: &Value) -> Vec<usize> {
    a["shape"]
        .as_array()
        .map(|s| s.iter().map(|d| d.as_u64().unwrap_or(0) as usize).collect())
        .unwrap_or_default()
}

fn data_of(a: &Value) -> Vec<f64> {
    a["data"]
        .as_array()
        .map(|d| d.iter().map(value_f64).collect())
        .unwrap_or_default()
}

fn array_from_json(a: &Value) -> NdArray {
    let shape = shape_of(a);
    let data = data_of(a);
    let dim = IxDyn(&shape);
    match a["dtype"].as_str() {
        Some("float32") => NdArray::F32(
            ArrayD::from_shape_vec(dim, data.iter().map(|&x| x as f32).collect()).unwrap(),
        ),
        Some("float64") => NdArray::F64(ArrayD::from_shape_vec(dim, data).unwrap()),
        Some("int64") => NdArray::I64(
            ArrayD::from_shape_vec(
                dim,
                a["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect(),
            )
            .unwrap(),
        ),
        other => panic!("unsupported dtype {other:?}"),
    }
}

/// Parameters as a client (or the harness) would put them on the wire.
fn parameters_from_json(v: &Value, enc: Encoding) -> Parameters {
    match enc {
        Encoding::Utf8Json => Parameters {
            tensors: v["tensors_utf8"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| Bytes::from(t.as_str().unwrap().as_bytes().to_vec()))
                .collect(),
            tensor_type: v["tensor_type"].as_str().unwrap_or("").to_owned(),
        },
        Encoding::RawF32 => Parameters {
            tensors: v
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    Bytes::from(
                        data_of(a)
                            .iter()
                            .flat_map(|&x| (x as f32).to_le_bytes())
                            .collect::<Vec<u8>>(),
                    )
                })
                .collect(),
            tensor_type: "numpy.nda".into(),
        },
        Encoding::Npy => Parameters {
            tensors: v
                .as_array()
                .unwrap()
                .iter()
                .map(|a| Bytes::from(encode_npy(&array_from_json(a))))
                .collect(),
            tensor_type: NUMPY_TENSOR_TYPE.into(),
        },
    }
}

/// `FLWR_GOLDEN_EXACT=1` demands bit-equal arrays (a diagnostic: the
/// README expects it for the plain mean, FedMedian and Krum only).
fn exact_mode() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| std::env::var("FLWR_GOLDEN_EXACT").is_ok_and(|v| v == "1"))
}

fn close(got: f64, exp: f64) -> bool {
    if exact_mode() {
        return (got.is_nan() && exp.is_nan())
            || got.to_bits() == exp.to_bits()
            || (got == 0.0 && exp == 0.0);
    }
    (got.is_nan() && exp.is_nan()) || got == exp || (got - exp).abs() <= 1e-6 + 1e-5 * exp.abs()
}

/// Compares result parameters with the expected JSON.
fn compare_parameters(
    what: &str,
    got: &Parameters,
    exp: &Value,
    enc: Encoding,
    errors: &mut Vec<String>,
) {
    match enc {
        Encoding::Utf8Json => {
            let exp_tensors = exp["tensors_utf8"].as_array().cloned().unwrap_or_default();
            if got.tensors.len() != exp_tensors.len() {
                errors.push(format!(
                    "{what}: {} tensors, expected {}",
                    got.tensors.len(),
                    exp_tensors.len()
                ));
                return;
            }
            if got.tensor_type != exp["tensor_type"].as_str().unwrap_or("") {
                errors.push(format!("{what}: tensor_type {:?}", got.tensor_type));
            }
            for (i, (g, e)) in got.tensors.iter().zip(&exp_tensors).enumerate() {
                let e = e.as_str().unwrap_or("");
                let gj: Result<Value, _> = serde_json::from_slice(g);
                let ej: Value = serde_json::from_str(e).unwrap_or(Value::Null);
                match gj {
                    Ok(gj) if gj == ej => {
                        if g.as_ref() != e.as_bytes() {
                            errors.push(format!(
                                "{what} tensor {i}: same JSON, but not json.dumps' bytes"
                            ));
                        }
                    }
                    Ok(_) => errors.push(format!("{what} tensor {i}: JSON differs")),
                    Err(err) => errors.push(format!("{what} tensor {i}: not JSON: {err}")),
                }
            }
        }
        Encoding::RawF32 => {
            let exp = exp.as_array().cloned().unwrap_or_default();
            if got.tensors.len() != exp.len() {
                errors.push(format!(
                    "{what}: {} tensors, expected {}",
                    got.tensors.len(),
                    exp.len()
                ));
                return;
            }
            for (i, (g, e)) in got.tensors.iter().zip(&exp).enumerate() {
                let values: Vec<f32> = g
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let ev: Vec<f64> = data_of(e).iter().map(|&x| f64::from(x as f32)).collect();
                if values.len() != ev.len() || g.len() % 4 != 0 {
                    errors.push(format!(
                        "{what} tensor {i}: {} bytes, expected {} floats",
                        g.len(),
                        ev.len()
                    ));
                    continue;
                }
                if let Some((j, (a, b))) = values
                    .iter()
                    .zip(&ev)
                    .enumerate()
                    .find(|(_, (a, b))| !close(f64::from(**a), **b))
                {
                    errors.push(format!("{what} tensor {i}[{j}]: got {a}, expected {b}"));
                }
            }
        }
        Encoding::Npy => {
            let exp = exp.as_array().cloned().unwrap_or_default();
            if got.tensors.len() != exp.len() {
                errors.push(format!(
                    "{what}: {} tensors, expected {}",
                    got.tensors.len(),
                    exp.len()
                ));
                return;
            }
            for (i, (g, e)) in got.tensors.iter().zip(&exp).enumerate() {
                let arr = match decode_npy(g) {
                    Ok(a) => a,
                    Err(err) => {
                        errors.push(format!("{what} tensor {i}: undecodable: {err}"));
                        continue;
                    }
                };
                let dtype = arr.dtype().numpy_name();
                if Some(dtype) != e["dtype"].as_str() {
                    errors.push(format!(
                        "{what} tensor {i}: dtype {dtype}, expected {}",
                        e["dtype"]
                    ));
                    continue;
                }
                if arr.shape() != shape_of(e).as_slice() {
                    errors.push(format!(
                        "{what} tensor {i}: shape {:?}, expected {:?}",
                        arr.shape(),
                        shape_of(e)
                    ));
                    continue;
                }
                let values: Vec<f64> = match &arr {
                    // Compare f32 results at f32 precision (the JSON holds the f32 value).
                    NdArray::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
                    NdArray::F64(a) => a.iter().copied().collect(),
                    NdArray::I64(a) => {
                        let ev: Vec<i64> = e["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_i64().unwrap_or(i64::MIN))
                            .collect();
                        let gv: Vec<i64> = a.iter().copied().collect();
                        if gv != ev {
                            errors.push(format!("{what} tensor {i}: {gv:?}, expected {ev:?}"));
                        }
                        continue;
                    }
                    other => {
                        errors.push(format!(
                            "{what} tensor {i}: unexpected dtype {:?}",
                            other.dtype()
                        ));
                        continue;
                    }
                };
                let mut ev = data_of(e);
                if matches!(arr, NdArray::F32(_)) {
                    ev.iter_mut().for_each(|x| *x = f64::from(*x as f32));
                }
                let bad: Vec<String> = values
                    .iter()
                    .zip(&ev)
                    .enumerate()
                    .filter(|(_, (a, b))| !close(**a, **b))
                    .take(3)
                    .map(|(j, (a, b))| format!("[{j}] {a} vs {b}"))
                    .collect();
                if !bad.is_empty() {
                    errors.push(format!("{what} tensor {i}: {}", bad.join(", ")));
                }
            }
        }
    }
}

/// `metrics_weighted_v1` of the golden harness.
fn metrics_weighted_v1(results: &[(i64, Metrics)]) -> Metrics {
    let mut out = Metrics::new();
    out.insert("num_results".into(), Scalar::Sint64(results.len() as i64));
    out.insert(
        "total_examples".into(),
        Scalar::Sint64(results.iter().map(|(n, _)| *n).sum()),
    );
    let mut keys: Vec<&String> = Vec::new();
    for (_, m) in results {
        for k in m.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for k in keys {
        let mut num = 0.0f64;
        let mut den: i64 = 0;
        for (n, m) in results {
            let term = match m.get(k) {
                Some(Scalar::Double(v)) => *n as f64 * v,
                Some(Scalar::Sint64(v)) => (n * v) as f64,
                _ => continue,
            };
            num += term;
            den += n;
        }
        if den != 0 {
            out.insert(format!("wavg_{k}"), Scalar::Double(num / den as f64));
        }
    }
    out
}

fn config_callback(name: &str) -> flower_strategy::ConfigFn {
    match name {
        "fit_config_v1" => Box::new(|r| {
            Metrics::from([
                ("server_round".to_owned(), Scalar::Sint64(r as i64)),
                (
                    "local_epochs".to_owned(),
                    Scalar::Sint64(1 + (r % 2) as i64),
                ),
                ("lr".to_owned(), Scalar::Double(0.01)),
            ])
        }),
        "eval_config_v1" => Box::new(|r| {
            Metrics::from([
                ("server_round".to_owned(), Scalar::Sint64(r as i64)),
                ("val_steps".to_owned(), Scalar::Sint64(5)),
            ])
        }),
        "fit_config_with_mu" => Box::new(|r| {
            Metrics::from([
                ("server_round".to_owned(), Scalar::Sint64(r as i64)),
                ("proximal_mu".to_owned(), Scalar::Double(999.0)),
            ])
        }),
        other => panic!("unknown config callback {other}"),
    }
}

fn callbacks(names: &Value, losses: &Arc<Vec<Option<f64>>>) -> Callbacks {
    let mut cb = Callbacks::default();
    let Some(obj) = names.as_object() else {
        return cb;
    };
    for (param, name) in obj {
        let name = name.as_str().unwrap_or("");
        match param.as_str() {
            "fit_metrics_aggregation_fn" => {
                cb.fit_metrics_aggregation_fn = Some(Box::new(metrics_weighted_v1))
            }
            "evaluate_metrics_aggregation_fn" => {
                cb.evaluate_metrics_aggregation_fn = Some(Box::new(metrics_weighted_v1))
            }
            "on_fit_config_fn" => cb.on_fit_config_fn = Some(config_callback(name)),
            "on_evaluate_config_fn" => cb.on_evaluate_config_fn = Some(config_callback(name)),
            "evaluate_fn" => {
                assert_eq!(name, "loss_table");
                let losses = Arc::clone(losses);
                cb.evaluate_fn = Some(Box::new(move |r, _arrays, _config| {
                    let loss = losses
                        .get((r as usize).wrapping_sub(1))
                        .copied()
                        .flatten()?;
                    Some((loss, Metrics::new()))
                }));
            }
            other => panic!("unknown callback parameter {other}"),
        }
    }
    cb
}

fn fit_res(v: &Value, enc: Encoding) -> FitRes {
    FitRes {
        status: Status::success(),
        parameters: parameters_from_json(&v["parameters"], enc),
        num_examples: v["num_examples"].as_i64().unwrap(),
        metrics: metrics(&v["metrics"]),
    }
}

fn failures(v: &Value) -> Vec<ClientFailure> {
    v.as_array()
        .map(|f| {
            f.iter()
                .map(|_| ClientFailure {
                    client: None,
                    reason: "exception".into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs fit for one round; `Err` if any step failed.
fn run_fit(
    s: &mut dyn Strategy,
    r: u64,
    global: &Parameters,
    round: &Value,
    enc: Encoding,
) -> Result<(Option<Parameters>, Metrics), flower_strategy::StrategyError> {
    s.begin_fit(r, global)?;
    for (i, res) in round["fit_results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        s.accumulate_fit(r, ClientId::new(i as u64), fit_res(res, enc))?;
    }
    s.aggregate_fit(r, &failures(&round["fit_failures"]))
}

fn compare_config(what: &str, got: &[Metrics], exp: &Value, errors: &mut Vec<String>) {
    if exp["num_clients"].as_u64() != Some(got.len() as u64) {
        errors.push(format!(
            "{what}: {} clients, expected {}",
            got.len(),
            exp["num_clients"]
        ));
    }
    if !exp["config"].is_null() {
        for c in got {
            compare_map(&format!("{what} config"), c, &exp["config"], 1e-12, errors);
        }
    }
}

/// Replays one case; returns the list of mismatches.
fn run_case(path: &Path) -> Vec<String> {
    let case = read_json(path);
    let name = case["case"].as_str().unwrap_or("?").to_owned();
    let mut errors = Vec::new();
    let enc = match case["parameters_encoding"].as_str() {
        Some("raw_float32") => Encoding::RawF32,
        Some("utf8_json_bytes") => Encoding::Utf8Json,
        _ => Encoding::Npy,
    };
    let rounds = case["rounds"].as_array().cloned().unwrap_or_default();
    let losses: Arc<Vec<Option<f64>>> = Arc::new(
        rounds
            .iter()
            .map(|r| r["server_evaluate_loss"].as_f64())
            .collect(),
    );
    let strat = &case["strategy"];
    let class = strat["class"].as_str().unwrap_or("");
    let inner = &strat["inner"];
    let cb_names = if inner.is_null() {
        &strat["callbacks"]
    } else {
        &inner["callbacks"]
    };
    let spec = spec_for(class, &strat["kwargs"], Some(inner));
    let initial = if strat["uses_initial_parameters"].as_bool() == Some(true) {
        Some(parameters_from_json(&case["initial_parameters"], enc))
    } else {
        None
    };
    let common = CommonOptions {
        seed: Some(20251127),
        initial_parameters: initial,
        callbacks: callbacks(cb_names, &losses),
    };
    let mut s = match build_strategy(&spec, common) {
        Ok(s) => s,
        Err(e) => return vec![format!("build {spec:?}: {e}")],
    };
    let deviation = expected_for(&name);

    let init = s.initialize_parameters();
    match (&init, &case["initialize_parameters_returns"]) {
        (None, Value::Null) => {}
        (Some(p), exp) if !exp.is_null() => {
            compare_parameters("initialize_parameters", p, exp, enc, &mut errors)
        }
        (got, exp) => errors.push(format!(
            "initialize_parameters: got {:?}, expected {exp}",
            got.is_some()
        )),
    }

    let available = case["num_available_clients"].as_u64().unwrap_or(0) as usize;
    for round in &rounds {
        let r = round["server_round"].as_u64().unwrap_or(0);
        let global = parameters_from_json(&round["global_parameters"], enc);
        let cf = &round["configure_fit"];
        if !cf.is_null() {
            let mut sampler = FakeSampler { available };
            match s.configure_fit(r, &global, &mut sampler) {
                Ok(ins) => {
                    if !cf["raises"].is_null() {
                        errors.push(format!(
                            "round {r} configure_fit: expected {}",
                            cf["raises"]
                        ));
                        return errors;
                    }
                    let configs: Vec<Metrics> = ins.into_iter().map(|(_, i)| i.config).collect();
                    compare_config(
                        &format!("round {r} configure_fit"),
                        &configs,
                        cf,
                        &mut errors,
                    );
                }
                Err(e) => {
                    if cf["raises"].is_null() {
                        errors.push(format!("round {r} configure_fit failed: {e}"));
                    }
                    return errors;
                }
            }
        }
        let outcome = run_fit(s.as_mut(), r, &global, round, enc);
        if let Some((dev, Expected::FitError { round: dr, error })) = deviation {
            if dr == r {
                match outcome {
                    Err(e) if e.kind() == error => {
                        println!("{name}: round {r} deviation {}: {} ({e})", dev.id, e.kind())
                    }
                    Err(e) => errors.push(format!(
                        "round {r}: deviation {} expects {error}, got {} ({e})",
                        dev.id,
                        e.kind()
                    )),
                    Ok(_) => errors.push(format!(
                        "round {r}: deviation {} expects {error}, got a result",
                        dev.id
                    )),
                }
                return errors;
            }
        }
        let ef = &round["expected_fit"];
        let (params, fit_metrics) = match (outcome, ef["raises"].is_null()) {
            (Err(e), false) => {
                println!(
                    "{name}: round {r} fit raises {} in Flower, {} here ({e})",
                    ef["raises"]["type"],
                    e.kind()
                );
                return errors;
            }
            (Ok(_), false) => {
                errors.push(format!(
                    "round {r} fit: expected {}, got a result",
                    ef["raises"]
                ));
                return errors;
            }
            (Err(e), true) => {
                errors.push(format!("round {r} fit failed: {e}"));
                return errors;
            }
            (Ok(out), true) => out,
        };
        match (&params, &ef["parameters"]) {
            (None, Value::Null) => {}
            (Some(p), exp) if !exp.is_null() => {
                compare_parameters(&format!("round {r} fit"), p, exp, enc, &mut errors)
            }
            (got, exp) => errors.push(format!(
                "round {r} fit: got parameters {}, expected {}",
                got.is_some(),
                !exp.is_null()
            )),
        }
        if !ef["metrics"].is_null() {
            compare_map(
                &format!("round {r} fit metrics"),
                &fit_metrics,
                &ef["metrics"],
                1e-12,
                &mut errors,
            );
        }

        let ee = &round["expected_evaluate"];
        if ee.is_null() {
            continue;
        }
        let new_global = if ef["parameters"].is_null() {
            global.clone()
        } else {
            parameters_from_json(&ef["parameters"], enc)
        };
        let ce = &round["configure_evaluate"];
        if !ce.is_null() {
            let mut sampler = FakeSampler { available };
            match s.configure_evaluate(r, &new_global, &mut sampler) {
                Ok(ins) => {
                    let configs: Vec<Metrics> = ins.into_iter().map(|(_, i)| i.config).collect();
                    compare_config(
                        &format!("round {r} configure_evaluate"),
                        &configs,
                        ce,
                        &mut errors,
                    );
                }
                Err(e) => errors.push(format!("round {r} configure_evaluate failed: {e}")),
            }
        }
        let eval_json = round["evaluate_results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let results: Vec<(ClientId, EvaluateRes)> = eval_json
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    ClientId::new(i as u64),
                    EvaluateRes {
                        status: Status::success(),
                        loss: value_f64(&e["loss"]) as f32,
                        num_examples: e["num_examples"].as_i64().unwrap(),
                        metrics: metrics(&e["metrics"]),
                    },
                )
            })
            .collect();
        match (
            s.aggregate_evaluate(r, &results, &failures(&round["evaluate_failures"])),
            ee["raises"].is_null(),
        ) {
            (Err(_), false) => return errors,
            (Ok(_), false) => {
                errors.push(format!(
                    "round {r} evaluate: expected {}, got a result",
                    ee["raises"]
                ));
                return errors;
            }
            (Err(e), true) => errors.push(format!("round {r} evaluate failed: {e}")),
            (Ok((loss, m)), true) => {
                match (loss, ee["loss"].as_f64()) {
                    (None, None) => {}
                    (Some(l), Some(el)) => {
                        // The strategy saw f32 losses (the wire type).
                        if (l - el).abs() > 1e-6 * el.abs().max(1e-300) && l != el {
                            errors.push(format!("round {r} evaluate loss {l}, expected {el}"));
                        }
                        // Exact f64 inputs through the same formula (not for constant-0 losses).
                        if el != 0.0 && !eval_json.is_empty() {
                            let exact: Vec<(i64, f64)> = eval_json
                                .iter()
                                .map(|e| {
                                    (e["num_examples"].as_i64().unwrap(), value_f64(&e["loss"]))
                                })
                                .collect();
                            match weighted_loss_avg(&exact) {
                                Ok(x) if (x - el).abs() <= 1e-12 * el.abs() => {}
                                other => errors.push(format!(
                                    "round {r} weighted_loss_avg: {other:?}, expected {el}"
                                )),
                            }
                        }
                    }
                    (got, exp) => {
                        errors.push(format!("round {r} evaluate loss {got:?}, expected {exp:?}"))
                    }
                }
                if !ee["metrics"].is_null() {
                    compare_map(
                        &format!("round {r} evaluate metrics"),
                        &m,
                        &ee["metrics"],
                        1e-12,
                        &mut errors,
                    );
                }
            }
        }
    }
    if let Some((dev, _)) = deviation {
        errors.push(format!("deviation {} never triggered", dev.id));
    }
    errors
}

#[test]
fn golden_cases() {
    let dir = golden_dir();
    let index = read_json(&dir.join("index.json"));
    let cases = index["cases"].as_array().cloned().unwrap_or_default();
    assert!(
        !cases.is_empty(),
        "no cases in {}",
        dir.join("index.json").display()
    );
    let mut failing = Vec::new();
    for c in &cases {
        let file = c["file"].as_str().unwrap_or("");
        let errors = run_case(&dir.join(file));
        if !errors.is_empty() {
            failing.push(format!("{file}:\n    {}", errors.join("\n    ")));
        }
    }
    let passed = cases.len() - failing.len();
    println!("golden: {passed}/{} cases pass", cases.len());
    assert!(
        failing.is_empty(),
        "{} of {} golden cases fail:\n{}",
        failing.len(),
        cases.len(),
        failing.join("\n")
    );
}

#[test]
fn every_deviation_case_exists() {
    let dir = golden_dir();
    for d in flower_strategy::deviations::DEVIATIONS {
        for (case, _) in d.golden_cases {
            assert!(
                dir.join(format!("{case}.json")).exists(),
                "deviation {} names missing case {case}",
                d.id
            );
        }
    }
}

/// A JSON value as a Flower scalar (ints stay ints).
fn scalar(v: &Value) -> Scalar {
    match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::String(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Scalar::Sint64(i),
            None => Scalar::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => panic!("not a scalar: {other}"),
    }
}

fn metrics(v: &Value) -> Metrics {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
        .unwrap_or_default()
}

/// Compares a scalar map with its expected JSON (floats to relative `rel`).
fn compare_map(what: &str, got: &Metrics, expected: &Value, rel: f64, errors: &mut Vec<String>) {
    let Some(exp) = expected.as_object() else {
        errors.push(format!("{what}: expected is not an object: {expected}"));
        return;
    };
    let got_keys: Vec<&String> = got.keys().collect();
    let mut exp_keys: Vec<&String> = exp.keys().collect();
    exp_keys.sort();
    if got_keys != exp_keys {
        errors.push(format!("{what}: keys {got_keys:?}, expected {exp_keys:?}"));
        return;
    }
    for (k, e) in exp {
        let g = &got[k];
        let ok = match (g, e) {
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::String(a), Value::String(b)) => a == b,
            (Scalar::Sint64(a), Value::Number(b)) if b.is_i64() => Some(*a) == b.as_i64(),
            (Scalar::Uint64(a), Value::Number(b)) if b.is_u64() => Some(*a) == b.as_u64(),
            (Scalar::Double(a), Value::Number(b)) if b.is_f64() => {
                let b = b.as_f64().unwrap_or(f64::NAN);
                (a - b).abs() <= rel * b.abs() || (a.is_nan() && b.is_nan())
            }
            _ => false,
        };
        if !ok {
            errors.push(format!("{what}[{k}]: got {g:?}, expected {e}"));
        }
    }
}
