//! [`QFedAvg`]: q-Fair Federated Learning (Li et al., q-FFL).

use flower_core::{FitRes, Metrics, Parameters};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{current_round, Bookkeeping, Policy, RoundState};
use crate::fedavg::FedAvgOptions;
use crate::layers::{
    self, check_views, decode_all, encode_all, pairwise_sum, parse_layout, parse_views,
    views_to_layers, Data, DtypeRule, Layer, LayerSpec,
};
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

/// Flower's `QFedAvg` (defaults `q_param = 0.2`, `qffl_learning_rate = 0.1`,
/// and min clients 1 — see [`FedAvgOptions::with_min_clients`]).
///
/// With `w` the global model of the round and `L` the **server's** loss
/// `evaluate_fn(t, w)` (clients' losses are not used): for each client
/// `g_k = (w − x_k)/lr`, `Δ_k = (L+1e-10)^q·g_k`,
/// `h_k = q·(L+1e-10)^(q−1)·‖g_k‖² + (L+1e-10)^q/lr`; the new model is
/// `w − Σ Δ_k / Σ h_k`, in f64. `Σ Δ_k` is accumulated as results arrive.
///
/// Without `evaluate_fn` (or when it returns `None`), a round with results
/// fails with [`StrategyError::Missing`] (Flower: NameError).
pub type QFedAvg = Composed<QFedAvgStep>;

/// QFedAvg's own arguments (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QFedAvgOptions {
    /// Fairness parameter q (Flower's `q_param`, default 0.2).
    pub q_param: f64,
    /// q-FFL learning rate (Flower's `qffl_learning_rate`, default 0.1).
    pub qffl_learning_rate: f64,
}

impl Default for QFedAvgOptions {
    fn default() -> Self {
        QFedAvgOptions {
            q_param: 0.2,
            qffl_learning_rate: 0.1,
        }
    }
}

/// [`QFedAvg`]'s aggregation step.
#[derive(Debug)]
pub struct QFedAvgStep {
    q_param: f64,
    learning_rate: f64,
    round: Option<QRound>,
}

#[derive(Debug)]
struct QRound {
    server_round: u64,
    layout: Vec<LayerSpec>,
    w_pre: Vec<Layer>,
    loss: Option<f64>,
    first: Option<Vec<flower_core::DType>>,
    sum_delta: Option<Vec<Vec<f64>>>,
    hs: Vec<f64>,
    metrics: Vec<(i64, Metrics)>,
}

impl RoundState for QRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.metrics.len()
    }
}

impl QFedAvg {
    /// Builds QFedAvg.
    pub fn new(options: FedAvgOptions, q: QFedAvgOptions) -> Result<Self, StrategyError> {
        Ok(Composed {
            book: Bookkeeping::new(options, Policy::default())?,
            step: QFedAvgStep {
                q_param: q.q_param,
                learning_rate: q.qffl_learning_rate,
                round: None,
            },
        })
    }
}

impl Aggregate for QFedAvgStep {
    fn name(&self) -> &str {
        "QFedAvg"
    }

    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = None;
        let layout = parse_layout(global)?;
        let w_pre = decode_all(global)?;
        let loss = book.evaluate(server_round, global)?.map(|(l, _)| l);
        self.round = Some(QRound {
            server_round,
            layout,
            w_pre,
            loss,
            first: None,
            sum_delta: None,
            hs: Vec::new(),
            metrics: Vec::new(),
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
        let views = parse_views(&result.parameters)?;
        check_views(
            &round.layout,
            &views,
            DtypeRule::FloatWidthOrInt,
            round.first.as_deref(),
        )?;
        let x = views_to_layers(&views)?;
        if let Some(loss) = round.loss {
            let inv_lr = 1.0 / self.learning_rate;
            let grads: Vec<Data> = round
                .w_pre
                .iter()
                .zip(&x)
                .map(|(w, x)| layers::scale_weak(&layers::sub(&w.data, &x.data), inv_lr))
                .collect();
            // np.append flattens everything into one vector (f32 unless a layer is f64).
            let flat = if grads.iter().all(|g| !g.is_f64()) {
                Data::F32(
                    grads
                        .iter()
                        .flat_map(|g| match g {
                            Data::F32(v) => v.clone(),
                            Data::F64(_) => Vec::new(),
                        })
                        .collect(),
                )
            } else {
                Data::F64(grads.iter().flat_map(Data::to_f64).collect())
            };
            let norm = layers::sum_of_squares(&flat);
            let base = loss + 1e-10;
            let qp = base.powf(self.q_param);
            let h = self.q_param * base.powf(self.q_param - 1.0) * norm + inv_lr * qp;
            let deltas: Vec<Vec<f64>> = grads
                .iter()
                .map(|g| match layers::scale_strong(g, qp) {
                    Data::F64(v) => v,
                    Data::F32(v) => v.into_iter().map(f64::from).collect(),
                })
                .collect();
            match &mut round.sum_delta {
                None => round.sum_delta = Some(deltas),
                Some(sum) => {
                    for (s, d) in sum.iter_mut().zip(&deltas) {
                        s.iter_mut().zip(d).for_each(|(s, d)| *s += d);
                    }
                }
            }
            round.hs.push(h);
        }
        if round.first.is_none() {
            round.first = Some(views.iter().map(|v| v.dtype).collect());
        }
        round.metrics.push((result.num_examples, result.metrics));
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
        if round.loss.is_none() {
            return Err(StrategyError::Missing(
                "QFedAvg needs a server-side evaluate_fn returning a loss for the pre-round weights".into(),
            ));
        }
        let h_total = pairwise_sum(&round.hs);
        let sum_delta = round.sum_delta.unwrap_or_default();
        let new: Vec<Layer> = round
            .w_pre
            .iter()
            .zip(&sum_delta)
            .map(|(w, d)| {
                let updates = Data::F64(d.iter().map(|d| d / h_total).collect());
                Layer {
                    shape: w.shape.clone(),
                    data: layers::sub(&w.data, &updates),
                    half: false,
                }
            })
            .collect();
        Ok((Some(encode_all(&new)), book.fit_metrics(&round.metrics)))
    }
}
