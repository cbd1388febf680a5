//! Hostile or malformed client results never panic: every strategy of the
//! catalog either refuses them (an error from `accumulate_fit`, which the
//! server counts as a client failure) or aggregates them.

use bytes::Bytes;
use flower_core::npy::encode_npy;
use flower_core::{
    EvaluateRes, FitRes, Metrics, NdArray, Parameters, Scalar, Status, NUMPY_TENSOR_TYPE,
};
use flower_strategy::{build_strategy, ClientId, CommonOptions, StrategyError, StrategySpec};
use ndarray::{ArrayD, IxDyn};

fn f32_params(shapes: &[&[usize]], value: f32) -> Parameters {
    Parameters {
        tensors: shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                Bytes::from(encode_npy(&NdArray::F32(
                    ArrayD::from_shape_vec(IxDyn(s), vec![value; n]).unwrap(),
                )))
            })
            .collect(),
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    }
}

fn fit(parameters: Parameters, num_examples: i64) -> FitRes {
    let metrics = Metrics::from([
        ("norm_bit".to_owned(), Scalar::Bool(true)),
        ("dpfedavg_norm_bit".to_owned(), Scalar::Bool(false)),
    ]);
    FitRes {
        status: Status::success(),
        parameters,
        num_examples,
        metrics,
    }
}

fn specs() -> Vec<StrategySpec> {
    let mut out: Vec<StrategySpec> = flower_strategy::strategy_names()
        .into_iter()
        .map(|name| {
            let s = StrategySpec::new(name);
            match name {
                "fedprox" => s.option("proximal_mu", 0.1),
                "bulyan" => s.option("to_keep", 0),
                "dp-server-fixed" | "dp-client-fixed" => s
                    .option("noise_multiplier", 0.5)
                    .option("clipping_norm", 1.0)
                    .option("num_sampled_clients", 3),
                "dp-server-adaptive" | "dp-client-adaptive" => s
                    .option("noise_multiplier", 0.1)
                    .option("num_sampled_clients", 10),
                "dpfedavg-fixed" => s.option("num_sampled_clients", 3).option("clip_norm", 1.0),
                "dpfedavg-adaptive" => s.option("num_sampled_clients", 100),
                _ => s,
            }
        })
        .collect();
    out.push(StrategySpec::new("fedavg").option("inplace", false));
    out.push(StrategySpec::new("krum").option("num_clients_to_keep", 2));
    out
}

fn hostile_results() -> Vec<FitRes> {
    let junk = Parameters {
        tensors: vec![Bytes::from_static(b"\x93NUMPY\x01\x00junk")],
        tensor_type: String::new(),
    };
    let truncated = {
        let mut p = f32_params(&[&[2, 2], &[3]], 1.0);
        p.tensors[0] = p.tensors[0].slice(..p.tensors[0].len() - 3);
        p
    };
    let huge_claim = Parameters {
        tensors: vec![Bytes::from(flower_core::npy::npy_header(
            flower_core::DType::F32,
            &[1 << 40, 1 << 20],
        ))],
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    };
    vec![
        fit(junk, 1),
        fit(truncated, 1),
        fit(huge_claim, 1),
        fit(Parameters::default(), 1),
        fit(f32_params(&[&[2, 2]], 1.0), 1),
        fit(f32_params(&[&[2, 2], &[1]], 1.0), 1),
        fit(f32_params(&[&[4], &[3]], 1.0), 1),
        fit(f32_params(&[&[2, 2], &[3], &[1]], 1.0), 1),
        fit(f32_params(&[&[2, 2], &[3]], f32::NAN), 1),
        fit(f32_params(&[&[2, 2], &[3]], f32::INFINITY), 5),
        fit(f32_params(&[&[2, 2], &[3]], 2.0), -3),
        fit(f32_params(&[&[2, 2], &[3]], 2.0), i64::MAX),
        fit(f32_params(&[&[2, 2], &[3]], 3.0), 0),
        fit(f32_params(&[&[2, 2], &[3]], 1.0), 2),
    ]
}

#[test]
fn no_strategy_panics_on_hostile_results() {
    let global = f32_params(&[&[2, 2], &[3]], 0.5);
    for spec in specs() {
        let mut s = build_strategy(
            &spec,
            CommonOptions {
                seed: Some(3),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        for round in 1..=2u64 {
            // Any outcome is fine; panicking is not.
            if s.begin_fit(round, &global).is_err() {
                continue;
            }
            let mut accepted = 0;
            for (i, r) in hostile_results().into_iter().enumerate() {
                if s.accumulate_fit(round, ClientId::new(i as u64), r).is_ok() {
                    accepted += 1;
                }
            }
            let _ = s.aggregate_fit(round, &[]);
            let eval = vec![
                (
                    ClientId::new(0),
                    EvaluateRes {
                        status: Status::success(),
                        loss: f32::NAN,
                        num_examples: 0,
                        metrics: Metrics::new(),
                    },
                ),
                (
                    ClientId::new(1),
                    EvaluateRes {
                        status: Status::success(),
                        loss: 1.0,
                        num_examples: -1,
                        metrics: Metrics::new(),
                    },
                ),
            ];
            let _ = s.aggregate_evaluate(round, &eval, &[]);
            let _ = s.evaluate(round, &global);
            let state = s.state();
            s.restore_state(state)
                .unwrap_or_else(|e| panic!("{}: restore: {e}", spec.name));
            assert!(accepted <= 14, "{}", spec.name);
        }
        // Garbage state is an error, not a panic.
        let _ = s.restore_state(serde_json::json!({"current_weights": [{"dtype": "float32", "shape": [3], "data": "AAAA"}], "rng": {"seed": "zz"}}));
    }
}

#[test]
fn wrong_shapes_are_refused_as_mismatch() {
    let global = f32_params(&[&[2, 2], &[3]], 0.5);
    let mut s = build_strategy(&StrategySpec::new("fedavg"), CommonOptions::default()).unwrap();
    s.begin_fit(1, &global).unwrap();
    for shapes in [
        &[&[2usize, 2][..]][..],
        &[&[2, 2], &[1]],
        &[&[4], &[3]],
        &[&[2, 2], &[3], &[1]],
    ] {
        let e = s
            .accumulate_fit(1, ClientId::new(0), fit(f32_params(shapes, 1.0), 1))
            .unwrap_err();
        assert!(matches!(e, StrategyError::Mismatch(_)), "{shapes:?}: {e}");
    }
    s.accumulate_fit(
        1,
        ClientId::new(1),
        fit(f32_params(&[&[2, 2], &[3]], 1.0), 3),
    )
    .unwrap();
    let (p, _) = s.aggregate_fit(1, &[]).unwrap();
    assert!(p.is_some());
}

#[test]
fn results_for_another_round_are_refused() {
    let global = f32_params(&[&[3]], 0.5);
    let mut s = build_strategy(&StrategySpec::new("fedavg"), CommonOptions::default()).unwrap();
    s.begin_fit(2, &global).unwrap();
    let e = s
        .accumulate_fit(1, ClientId::new(0), fit(f32_params(&[&[3]], 1.0), 1))
        .unwrap_err();
    assert!(
        matches!(
            e,
            StrategyError::WrongRound {
                got: 1,
                in_progress: Some(2)
            }
        ),
        "{e}"
    );
    assert_eq!(s.aggregate_fit(1, &[]).unwrap().0, None);
}
