//! [`FedAvgAndroid`]: FedAvg over raw float32 tensors (Flower's Android
//! clients send `ndarray.tobytes()`, without an `.npy` header).

use bytes::Bytes;
use flower_core::{FitRes, Metrics, Parameters};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{
    current_round, f32_len, Bookkeeping, Evaluator, Policy, RoundState, Summary,
};
use crate::fedavg::FedAvgOptions;
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

/// `tensor_type` FedAvgAndroid writes (Flower's literal `"numpy.nda"`).
const ANDROID_TENSOR_TYPE: &str = "numpy.nda";

/// Flower's `FedAvgAndroid`: each tensor is the raw little-endian float32
/// bytes of a 1-D array; aggregation is the plain weighted mean in f32
/// (bit-equal to Flower); fit and evaluate metrics are always `{}` (the
/// metrics callbacks of [`FedAvgOptions`] are not used, as in Flower);
/// `inplace` is ignored.
pub type FedAvgAndroid = Composed<FedAvgAndroidStep>;

/// [`FedAvgAndroid`]'s aggregation step.
#[derive(Debug, Default)]
pub struct FedAvgAndroidStep {
    round: Option<AndroidRound>,
}

#[derive(Debug)]
struct AndroidRound {
    server_round: u64,
    lengths: Vec<usize>,
    acc: Vec<Vec<f32>>,
    total: i128,
    count: usize,
}

impl RoundState for AndroidRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.count
    }
}

impl FedAvgAndroid {
    /// Builds FedAvgAndroid.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        let policy = Policy {
            evaluator: Evaluator::RawF32,
            summary: Summary::LossOnly,
            ..Policy::default()
        };
        Ok(Composed {
            book: Bookkeeping::new(options, policy)?,
            step: FedAvgAndroidStep::default(),
        })
    }
}

impl Aggregate for FedAvgAndroidStep {
    fn name(&self) -> &str {
        "FedAvgAndroid"
    }

    fn begin(
        &mut self,
        _book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = None;
        let lengths = global
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| f32_len(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let acc = lengths.iter().map(|&n| vec![0.0f32; n]).collect();
        self.round = Some(AndroidRound {
            server_round,
            lengths,
            acc,
            total: 0,
            count: 0,
        });
        Ok(())
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        let round = current_round(&mut self.round, server_round)?;
        let tensors = &result.parameters.tensors;
        if tensors.len() != round.lengths.len() {
            return Err(StrategyError::Mismatch(format!(
                "{} tensors, the global model has {}",
                tensors.len(),
                round.lengths.len()
            )));
        }
        for (i, (t, &n)) in tensors.iter().zip(&round.lengths).enumerate() {
            if f32_len(i, t)? != n {
                return Err(StrategyError::Mismatch(format!(
                    "tensor {i} has {} values, the global model has {n}",
                    t.len() / 4
                )));
            }
        }
        if result.num_examples < 0 {
            return Err(StrategyError::NegativeExamples(result.num_examples));
        }
        let w = result.num_examples as f32;
        let first = round.count == 0;
        for (acc, t) in round.acc.iter_mut().zip(tensors) {
            crate::mean::fold_f32_bytes(acc, t, w, first);
        }
        round.total += i128::from(result.num_examples);
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
        if round.total == 0 {
            return Err(StrategyError::ZeroExamples);
        }
        let n = round.total as f32;
        let tensors = round
            .acc
            .into_iter()
            .map(|a| {
                let mut out = Vec::with_capacity(a.len() * 4);
                for x in a {
                    out.extend_from_slice(&(x / n).to_le_bytes());
                }
                Bytes::from(out)
            })
            .collect();
        Ok((
            Some(Parameters {
                tensors,
                tensor_type: ANDROID_TENSOR_TYPE.to_owned(),
            }),
            Metrics::new(),
        ))
    }
}
