//! flower-strategy: FedXgbBagging's reader of XGBoost JSON models.

use bytes::Bytes;
use flower_core::{FitRes, Parameters, Status};
use flower_strategy::{ClientId, FedAvgOptions, FedXgbBagging, Strategy, StrategyError};

/// Most models one input is cut into.
const MAX_MODELS: usize = 8;

/// One round of FedXgbBagging over client models: every tensor goes through
/// the strategy's JSON reader and tree merge (the first is taken verbatim,
/// as Flower does). `Ok(None)` when no result was accepted.
fn round(
    strategy: &mut FedXgbBagging,
    server_round: u64,
    models: &[Bytes],
) -> Result<Option<Parameters>, StrategyError> {
    strategy.begin_fit(server_round, &Parameters::default())?;
    let result = FitRes {
        status: Status::success(),
        parameters: Parameters {
            tensors: models.to_vec(),
            tensor_type: String::new(),
        },
        num_examples: 1,
        metrics: Default::default(),
    };
    strategy.accumulate_fit(server_round, ClientId::new(1), result)?;
    Ok(strategy.aggregate_fit(server_round, &[])?.0)
}

/// Input: up to eight XGBoost JSON models separated by NUL bytes (which JSON
/// text cannot hold), all from one client. Round 1 merges them; round 2
/// merges a valid model into round 1's output. Oracle: the strategy's own
/// output (Python `json.dumps` form) is always readable by its own reader,
/// so round 2 never fails on JSON syntax.
pub fn fedxgb_json(data: &[u8]) {
    let models: Vec<Bytes> = data
        .split(|&b| b == 0)
        .take(MAX_MODELS)
        .map(Bytes::copy_from_slice)
        .collect();
    let mut strategy =
        FedXgbBagging::new(FedAvgOptions::default(), None).expect("default options are valid");
    let Ok(Some(global)) = round(&mut strategy, 1, &models) else {
        return;
    };
    assert_eq!(global.tensors.len(), 1, "FedXgbBagging returns one model");
    // A global model equal to an input may have been taken verbatim (never
    // parsed); any other is the strategy's own `dumps` output.
    let own_output = !models.contains(&global.tensors[0]);
    // Round 2 parses round 1's output as the global model and merges a
    // valid model into it.
    let valid = Bytes::from_static(VALID_MODEL.as_bytes());
    if let Err(e) = round(&mut strategy, 2, &[valid]) {
        let text = e.to_string();
        assert!(
            !(own_output && text.contains(" at byte ")),
            "FedXgbBagging cannot read its own output: {text}"
        );
    }
}

/// A minimal model of the shape FedXgbBagging reads.
const VALID_MODEL: &str = r#"{"learner": {"gradient_booster": {"model": {"gbtree_model_param": {"num_trees": "1", "num_parallel_tree": "1"}, "iteration_indptr": [0, 1], "tree_info": [0], "trees": [{"id": 0}]}}}}"#;
