//! XGBoost strategies: [`FedXgbBagging`] (tree bagging over XGBoost JSON
//! models) and [`FedXgbCyclic`] (one client at a time).

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use flower_core::{FitRes, Metrics, Parameters};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{current_round, Bookkeeping, Evaluator, Policy, RoundState, Summary};
use crate::callbacks::XgbEvaluateFn;
use crate::fedavg::FedAvgOptions;
use crate::pyjson::Json;
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

const MODEL_PATH: [&str; 3] = ["learner", "gradient_booster", "model"];

fn bad(what: &str) -> StrategyError {
    StrategyError::Malformed(format!("XGBoost model: {what}"))
}

fn model_of(j: &Json) -> Option<&Json> {
    MODEL_PATH.iter().try_fold(j, |j, k| j.get(k))
}

fn model_of_mut(j: &mut Json) -> Option<&mut Json> {
    MODEL_PATH.iter().try_fold(j, |j, k| j.get_mut(k))
}

/// Python's `int(x)` of a JSON value (a number or a numeric string).
fn py_int(j: &Json) -> Option<i128> {
    match j {
        Json::Int(v) => Some(*v),
        Json::Float(v) if v.is_finite() => Some(v.trunc() as i128),
        Json::Bool(b) => Some(i128::from(*b)),
        Json::Str(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// `(num_trees, num_parallel_tree)` of a model.
fn tree_nums(j: &Json) -> Result<(i128, i128), StrategyError> {
    let param = model_of(j)
        .and_then(|m| m.get("gbtree_model_param"))
        .ok_or_else(|| bad("no gbtree_model_param"))?;
    let get = |k: &str| {
        param
            .get(k)
            .and_then(py_int)
            .ok_or_else(|| bad(&format!("bad {k}")))
    };
    Ok((get("num_trees")?, get("num_parallel_tree")?))
}

/// Flower's bagging `aggregate(prev, curr)`: the first model is taken
/// verbatim, later ones have their first `num_parallel_tree` trees appended.
pub(crate) fn bagging_aggregate(
    prev: Option<&Bytes>,
    curr: &Bytes,
) -> Result<Bytes, StrategyError> {
    let Some(prev) = prev.filter(|p| !p.is_empty()) else {
        return Ok(curr.clone());
    };
    let mut prev_json = Json::parse(prev).map_err(|e| bad(&e))?;
    let curr_json = Json::parse(curr).map_err(|e| bad(&e))?;
    let (tree_num_prev, _) = tree_nums(&prev_json)?;
    let (_, paral) = tree_nums(&curr_json)?;
    let new_total = tree_num_prev
        .checked_add(paral)
        .ok_or_else(|| bad("tree count overflows"))?;
    let trees_curr = match model_of(&curr_json).and_then(|m| m.get("trees")) {
        Some(Json::Array(t)) => t.clone(),
        _ => return Err(bad("no trees")),
    };
    let take = usize::try_from(paral.max(0)).map_err(|_| bad("num_parallel_tree too large"))?;
    if take > trees_curr.len() {
        return Err(bad(&format!(
            "num_parallel_tree is {paral} but the model has {} trees",
            trees_curr.len()
        )));
    }
    let model = model_of_mut(&mut prev_json).ok_or_else(|| bad("no model"))?;
    if let Some(param) = model.get_mut("gbtree_model_param") {
        param.set("num_trees", Json::Str(new_total.to_string()));
    }
    match model.get_mut("iteration_indptr") {
        Some(Json::Array(ptr)) => {
            let last = ptr.last().ok_or_else(|| bad("empty iteration_indptr"))?;
            let next = match last {
                Json::Int(v) => Json::Int(
                    v.checked_add(paral)
                        .ok_or_else(|| bad("iteration_indptr overflows"))?,
                ),
                Json::Float(v) => Json::Float(v + paral as f64),
                _ => return Err(bad("iteration_indptr holds a non-number")),
            };
            ptr.push(next);
        }
        _ => return Err(bad("no iteration_indptr")),
    }
    let mut appended = Vec::with_capacity(take);
    for (count, tree) in trees_curr.into_iter().take(take).enumerate() {
        let mut tree = tree;
        let id = tree_num_prev + count as i128;
        if !tree.set("id", Json::Int(id)) {
            return Err(bad("a tree is not an object"));
        }
        appended.push(tree);
    }
    match model.get_mut("trees") {
        Some(Json::Array(trees)) => trees.extend(appended),
        _ => return Err(bad("no trees in the global model")),
    }
    match model.get_mut("tree_info") {
        Some(Json::Array(info)) => info.extend((0..take).map(|_| Json::Int(0))),
        _ => return Err(bad("no tree_info")),
    }
    Ok(Bytes::from(prev_json.dumps()))
}

fn xgb_parameters(model: Bytes) -> Parameters {
    Parameters {
        tensors: vec![model],
        tensor_type: String::new(),
    }
}

fn model_state(model: &Option<Bytes>) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({ "global_model": model.as_ref().map(|m| b64.encode(m)) })
}

/// Restores what [`model_state`] wrote (a null state restores nothing).
fn model_restore(
    model: &mut Option<Bytes>,
    state: &serde_json::Value,
) -> Result<(), StrategyError> {
    if state.is_null() {
        return Ok(());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    *model = match state.get("global_model") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Bytes::from(
            b64.decode(s)
                .map_err(|e| StrategyError::State(e.to_string()))?,
        )),
        Some(_) => {
            return Err(StrategyError::State(
                "global_model must be base64 or null".into(),
            ))
        }
    };
    Ok(())
}

/// The per-round part of both XGBoost strategies.
#[derive(Debug)]
struct XgbRound {
    server_round: u64,
    pending: Option<Bytes>,
    count: usize,
}

impl XgbRound {
    fn new(server_round: u64, pending: Option<Bytes>) -> Self {
        XgbRound {
            server_round,
            pending,
            count: 0,
        }
    }
}

impl RoundState for XgbRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.count
    }
}

/// What `aggregate_fit` returns: the global model, metrics `{}`.
fn model_output(model: &Option<Bytes>) -> (Option<Parameters>, Metrics) {
    (model.clone().map(xgb_parameters), Metrics::new())
}

/// The XGBoost global model (only its size is shown by `Debug`).
struct GlobalModel(Option<Bytes>);

impl fmt::Debug for GlobalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} bytes", self.0.as_ref().map(Bytes::len))
    }
}

/// Flower's `FedXgbBagging`: keeps a global XGBoost JSON model and appends
/// every client's new trees to it (each tensor of each result, in order).
/// Fit metrics are always `{}`; evaluation loss is always 0.
///
/// Output bytes are Python `json.dumps` of the merged model (default
/// separators, key order kept), as Flower writes them.
pub type FedXgbBagging = Composed<FedXgbBaggingStep>;

/// [`FedXgbBagging`]'s aggregation step.
#[derive(Debug)]
pub struct FedXgbBaggingStep {
    global_model: GlobalModel,
    round: Option<XgbRound>,
}

impl FedXgbBagging {
    /// Builds FedXgbBagging (`evaluate_function` receives the raw model).
    pub fn new(
        options: FedAvgOptions,
        evaluate_function: Option<XgbEvaluateFn>,
    ) -> Result<Self, StrategyError> {
        let policy = Policy {
            evaluator: Evaluator::Model(evaluate_function),
            summary: Summary::ZeroLoss,
            ..Policy::default()
        };
        Ok(Composed {
            book: Bookkeeping::new(options, policy)?,
            step: FedXgbBaggingStep {
                global_model: GlobalModel(None),
                round: None,
            },
        })
    }
}

impl Aggregate for FedXgbBaggingStep {
    fn name(&self) -> &str {
        "FedXgbBagging"
    }

    fn begin(
        &mut self,
        _book: &Bookkeeping,
        server_round: u64,
        _global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = Some(XgbRound::new(server_round, self.global_model.0.clone()));
        Ok(())
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        let round = current_round(&mut self.round, server_round)?;
        let mut model = round.pending.clone();
        for tensor in &result.parameters.tensors {
            model = Some(bagging_aggregate(model.as_ref(), tensor)?);
        }
        round.pending = model;
        round.count += 1;
        Ok(())
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = book.take_gated(&mut self.round, server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        self.global_model.0 = round.pending;
        Ok(model_output(&self.global_model.0))
    }

    fn state(&self, _book: &Bookkeeping) -> serde_json::Value {
        model_state(&self.global_model.0)
    }

    fn restore_state(
        &mut self,
        _book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        model_restore(&mut self.global_model.0, &state)
    }
}

/// Flower's `FedXgbCyclic`: each round trains on one client,
/// `sampled[(t−1) mod len(sampled)]` of a FedAvg-style sample (evaluation
/// likewise); the new model is the last tensor of the last result. Fit
/// metrics are always `{}`; evaluation loss is always 0.
pub type FedXgbCyclic = Composed<FedXgbCyclicStep>;

/// [`FedXgbCyclic`]'s aggregation step.
#[derive(Debug)]
pub struct FedXgbCyclicStep {
    global_model: GlobalModel,
    round: Option<XgbRound>,
}

impl FedXgbCyclic {
    /// Builds FedXgbCyclic.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        let policy = Policy {
            cyclic: true,
            summary: Summary::ZeroLoss,
            ..Policy::default()
        };
        Ok(Composed {
            book: Bookkeeping::new(options, policy)?,
            step: FedXgbCyclicStep {
                global_model: GlobalModel(None),
                round: None,
            },
        })
    }
}

impl Aggregate for FedXgbCyclicStep {
    fn name(&self) -> &str {
        "FedXgbCyclic"
    }

    fn begin(
        &mut self,
        _book: &Bookkeeping,
        server_round: u64,
        _global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = Some(XgbRound::new(server_round, None));
        Ok(())
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        let round = current_round(&mut self.round, server_round)?;
        if let Some(last) = result.parameters.tensors.last() {
            round.pending = Some(last.clone());
        }
        round.count += 1;
        Ok(())
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = book.take_gated(&mut self.round, server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        if round.pending.is_some() {
            self.global_model.0 = round.pending;
        }
        Ok(model_output(&self.global_model.0))
    }

    fn state(&self, _book: &Bookkeeping) -> serde_json::Value {
        model_state(&self.global_model.0)
    }

    fn restore_state(
        &mut self,
        _book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        model_restore(&mut self.global_model.0, &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(num_trees: &str, paral: &str, trees: &str, indptr: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"learner": {{"gradient_booster": {{"model": {{"gbtree_model_param": {{"num_trees": "{num_trees}", "num_parallel_tree": "{paral}"}}, "iteration_indptr": {indptr}, "tree_info": [0], "trees": {trees}}}}}}}}}"#
        ))
    }

    #[test]
    fn first_model_is_verbatim_then_trees_append() {
        let a = model("1", "1", r#"[{"id": 0, "w": 1.5}]"#, "[0, 1]");
        let b = model("1", "1", r#"[{"id": 0, "w": 2.5}]"#, "[0, 1]");
        let first = bagging_aggregate(None, &a).unwrap();
        assert_eq!(first, a);
        let merged = bagging_aggregate(Some(&first), &b).unwrap();
        let s = std::str::from_utf8(&merged).unwrap();
        assert!(s.contains(r#""num_trees": "2""#), "{s}");
        assert!(s.contains(r#""iteration_indptr": [0, 1, 2]"#), "{s}");
        assert!(s.contains(r#"{"id": 1, "w": 2.5}"#), "{s}");
        assert!(s.contains(r#""tree_info": [0, 0]"#), "{s}");
        assert!(bagging_aggregate(Some(&first), &Bytes::from_static(b"not json")).is_err());
        let too_many = model("1", "3", r#"[{"id": 0}]"#, "[0, 1]");
        assert!(bagging_aggregate(Some(&first), &too_many).is_err());
    }
}
