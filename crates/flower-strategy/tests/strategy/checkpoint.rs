//! `state()` / `restore_state()`: a strategy restored from a checkpoint
//! after round 1 continues exactly like one that was never interrupted
//! (server momentum, optimizer moments, adaptive clip norms, the noise RNG,
//! the XGBoost global model).

use bytes::Bytes;
use flower_core::npy::encode_npy;
use flower_core::{FitRes, Metrics, NdArray, Parameters, Scalar, Status, NUMPY_TENSOR_TYPE};
use flower_strategy::{build_strategy, ClientId, CommonOptions, Strategy, StrategySpec};
use ndarray::{ArrayD, IxDyn};

fn params(values: &[f32]) -> Parameters {
    let a = NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap());
    Parameters {
        tensors: vec![Bytes::from(encode_npy(&a))],
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    }
}

fn results(round: u64) -> Vec<FitRes> {
    (0..3)
        .map(|k| {
            let base = round as f32 + k as f32 * 0.25;
            FitRes {
                status: Status::success(),
                parameters: params(&[base, -base, 0.5 * base, 2.0]),
                num_examples: 10 + k,
                metrics: Metrics::from([
                    ("norm_bit".to_owned(), Scalar::Bool(k == 0)),
                    ("dpfedavg_norm_bit".to_owned(), Scalar::Bool(k != 0)),
                ]),
            }
        })
        .collect()
}

fn xgb_model(trees: usize) -> Parameters {
    let tree_list: Vec<String> = (0..trees)
        .map(|i| format!("{{\"id\": {i}, \"w\": {i}.5}}"))
        .collect();
    let json = format!(
        "{{\"learner\": {{\"gradient_booster\": {{\"model\": {{\"gbtree_model_param\": {{\"num_trees\": \"{trees}\", \"num_parallel_tree\": \"1\"}}, \"iteration_indptr\": [0, 1], \"tree_info\": [0], \"trees\": [{}]}}}}}}}}",
        tree_list.join(", ")
    );
    Parameters {
        tensors: vec![Bytes::from(json)],
        tensor_type: String::new(),
    }
}

fn run_round(
    s: &mut dyn Strategy,
    round: u64,
    global: &Parameters,
    xgb: bool,
) -> Option<Parameters> {
    s.begin_fit(round, global).unwrap();
    for (i, mut r) in results(round).into_iter().enumerate() {
        if xgb {
            r.parameters = xgb_model(1);
        }
        s.accumulate_fit(round, ClientId::new(i as u64), r).unwrap();
    }
    s.aggregate_fit(round, &[]).unwrap().0
}

#[test]
fn restored_strategies_continue_identically() {
    let initial = params(&[0.0, 0.0, 0.0, 2.0]);
    let cases = [
        (
            StrategySpec::new("fedavgm")
                .option("server_momentum", 0.9)
                .option("server_learning_rate", 0.5),
            false,
        ),
        (StrategySpec::new("fedadam"), false),
        (StrategySpec::new("fedyogi"), false),
        (StrategySpec::new("fedadagrad"), false),
        (
            StrategySpec::new("dp-server-adaptive")
                .option("noise_multiplier", 0.1)
                .option("num_sampled_clients", 100)
                .option("initial_clipping_norm", 0.5),
            false,
        ),
        (
            StrategySpec::new("dp-client-adaptive")
                .option("noise_multiplier", 0.1)
                .option("num_sampled_clients", 100)
                .option("strategy", serde_json::json!({"name": "fedadam"})),
            false,
        ),
        (
            StrategySpec::new("dpfedavg-adaptive").option("num_sampled_clients", 100),
            false,
        ),
        (StrategySpec::new("fedxgb-bagging"), true),
    ];
    for (spec, xgb) in cases {
        let build = || {
            build_strategy(
                &spec,
                CommonOptions {
                    seed: Some(42),
                    initial_parameters: Some(initial.clone()),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let mut a = build();
        let global = if xgb {
            Parameters::default()
        } else {
            initial.clone()
        };
        let g1 = run_round(a.as_mut(), 1, &global, xgb).unwrap();
        let checkpoint = serde_json::to_string(&a.state()).unwrap();
        let g2 = run_round(a.as_mut(), 2, &g1, xgb).unwrap();

        let mut b = build();
        b.restore_state(serde_json::from_str(&checkpoint).unwrap())
            .unwrap();
        let g2b = run_round(b.as_mut(), 2, &g1, xgb).unwrap();
        assert_eq!(g2, g2b, "{} diverges after restore", spec.name);
        assert_ne!(a.state(), serde_json::Value::Null, "{}", spec.name);
    }
}
