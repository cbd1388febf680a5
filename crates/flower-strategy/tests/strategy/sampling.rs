//! Client sampling (fractions, minimum clients) against Flower's
//! `sampling_table.json`, for every strategy in the table plus the rest of
//! the catalog with the same arithmetic.
//!
//! Flower's client manager *blocks* until `min_available_clients` are
//! connected ("blocks" in the table); here the server waits for
//! [`Strategy::min_available_clients`] before configuring, so a "blocks" row
//! checks that the strategy asks for more clients than are available.

use crate::golden_data::{golden_dir, read_json, spec_for, FakeSampler};
use flower_core::Parameters;
use flower_strategy::{build_strategy, CommonOptions, Strategy, StrategySpec};
use serde_json::Value;

fn check_row(s: &mut dyn Strategy, row: &Value, errors: &mut Vec<String>) {
    let available = row["num_available"].as_u64().unwrap_or(0) as usize;
    let label = format!("{} {} available={available}", row["class"], row["kwargs"]);
    let params = Parameters::default();
    for (key, what) in [
        ("configure_fit_num_clients", "fit"),
        ("configure_evaluate_num_clients", "evaluate"),
    ] {
        let expected = &row[key];
        let mut sampler = FakeSampler { available };
        let got = if what == "fit" {
            s.configure_fit(1, &params, &mut sampler).map(|v| v.len())
        } else {
            s.configure_evaluate(1, &params, &mut sampler)
                .map(|v| v.len())
        };
        match (expected.as_str(), expected.as_u64(), got) {
            (Some("blocks"), _, _) => {
                if s.min_available_clients() <= available {
                    errors.push(format!(
                        "{label}: Flower blocks for {what}, but min_available_clients = {}",
                        s.min_available_clients()
                    ));
                }
            }
            (_, Some(n), Ok(got)) if got as u64 == n => {}
            (_, _, got) => errors.push(format!(
                "{label}: {what} picked {got:?}, expected {expected}"
            )),
        }
    }
}

#[test]
fn sampling_table() {
    let table = read_json(&golden_dir().join("sampling_table.json"));
    let rows = table["rows"].as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty());
    let mut errors = Vec::new();
    for row in &rows {
        let class = row["class"].as_str().unwrap_or("");
        let spec = spec_for(class, &row["kwargs"], None);
        let mut s = build_strategy(&spec, CommonOptions::default())
            .unwrap_or_else(|e| panic!("{class}: {e}"));
        check_row(s.as_mut(), row, &mut errors);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Strategies not in the table sample like the FedAvg rows with the same
/// kwargs (they all inherit Flower's `num_fit_clients`).
#[test]
fn whole_catalog_samples_like_fedavg() {
    let table = read_json(&golden_dir().join("sampling_table.json"));
    let rows: Vec<Value> = table["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["class"] == "FedAvg")
        .collect();
    let catalog: Vec<(&str, Value)> = vec![
        ("fedavgm", serde_json::json!({})),
        ("fedprox", serde_json::json!({"proximal_mu": 0.1})),
        ("fedopt", serde_json::json!({})),
        ("fedadagrad", serde_json::json!({})),
        ("fedadam", serde_json::json!({})),
        ("fedyogi", serde_json::json!({})),
        ("fedmedian", serde_json::json!({})),
        ("fedtrimmedavg", serde_json::json!({})),
        ("krum", serde_json::json!({})),
        ("bulyan", serde_json::json!({"to_keep": 0})),
        ("fedavg-android", serde_json::json!({})),
        ("fedxgb-bagging", serde_json::json!({})),
    ];
    let mut errors = Vec::new();
    for (name, extra) in &catalog {
        for row in &rows {
            let mut spec = StrategySpec::new(*name);
            for (k, v) in row["kwargs"]
                .as_object()
                .into_iter()
                .flatten()
                .chain(extra.as_object().into_iter().flatten())
            {
                spec.options.insert(k.clone(), v.clone());
            }
            let mut s = build_strategy(&spec, CommonOptions::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut row = row.clone();
            row["class"] = Value::String((*name).to_owned());
            check_row(s.as_mut(), &row, &mut errors);
        }
    }
    // DP wrappers delegate sampling to their inner strategy.
    for row in &rows {
        let inner = serde_json::json!({ "name": "fedavg", "options": row["kwargs"] });
        let spec = StrategySpec::new("dp-client-fixed")
            .option("noise_multiplier", 0.0)
            .option("clipping_norm", 1.0)
            .option("num_sampled_clients", 2)
            .option("strategy", inner);
        let mut s = build_strategy(&spec, CommonOptions::default()).unwrap();
        check_row(s.as_mut(), row, &mut errors);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
