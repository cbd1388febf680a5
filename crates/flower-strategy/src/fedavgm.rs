//! [`FedAvgM`]: FedAvg with server-side learning rate and momentum.

use crate::aggregate::Composed;
use crate::bookkeeping::{Bookkeeping, Policy};
use crate::fedavg::{FedAvgOptions, MeanRule, MeanStep};
use crate::layers::{
    self, decode_all, encode_all, opt_layers_from_json, opt_layers_to_json, Layer,
};
use crate::mean::MeanMode;
use crate::StrategyError;

/// Flower's `FedAvgM`.
///
/// The plain weighted mean (`aggregate`, not in-place) of the results; when
/// `server_learning_rate != 1` or `server_momentum != 0`, a server SGD step
/// from the *stored* weights `w` (the initial parameters, then each returned
/// model): `g = w − avg`, `m = μ·m + g` (`m = g` in round 1), `w ← w − lr·m`,
/// all in the array dtype. Unlike FedAvg, [`Strategy::initialize_parameters`](crate::Strategy::initialize_parameters)
/// keeps handing out the stored weights.
pub type FedAvgM = Composed<MeanStep<FedAvgMRule>>;

/// FedAvgM's own arguments (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedAvgMOptions {
    /// Server-side learning rate (Flower's `server_learning_rate`, default 1.0).
    pub server_learning_rate: f64,
    /// Server-side momentum (Flower's `server_momentum`, default 0.0).
    pub server_momentum: f64,
}

impl Default for FedAvgMOptions {
    fn default() -> Self {
        FedAvgMOptions {
            server_learning_rate: 1.0,
            server_momentum: 0.0,
        }
    }
}

/// [`FedAvgM`]'s rule: the plain mean, then the server SGD step.
#[derive(Debug)]
pub struct FedAvgMRule {
    server_learning_rate: f64,
    server_momentum: f64,
    momentum: Option<Vec<Layer>>,
}

impl FedAvgM {
    /// Builds FedAvgM. `options.inplace` is ignored (Flower's FedAvgM always
    /// uses the plain mean).
    pub fn new(options: FedAvgOptions, server: FedAvgMOptions) -> Result<Self, StrategyError> {
        let policy = Policy {
            keep_initial: true,
            ..Policy::default()
        };
        let rule = FedAvgMRule {
            server_learning_rate: server.server_learning_rate,
            server_momentum: server.server_momentum,
            momentum: None,
        };
        MeanStep::compose(options, policy, rule)
    }

    /// True when the server optimizer runs (`lr != 1` or `momentum != 0`).
    pub fn server_opt(&self) -> bool {
        self.step.rule().server_opt()
    }
}

impl FedAvgMRule {
    fn server_opt(&self) -> bool {
        self.server_momentum != 0.0 || self.server_learning_rate != 1.0
    }

    fn server_step(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        avg: Vec<Layer>,
    ) -> Result<Vec<Layer>, StrategyError> {
        let Some(initial) = &book.opts.initial_parameters else {
            return Err(StrategyError::Missing(
                "FedAvgM with server-side optimization needs initial_parameters".into(),
            ));
        };
        let w = decode_all(initial)?;
        same_layout(&w, &avg)?;
        let mut g: Vec<layers::Data> = w
            .iter()
            .zip(&avg)
            .map(|(w, a)| layers::sub(&w.data, &a.data))
            .collect();
        if self.server_momentum > 0.0 {
            let m = if server_round > 1 {
                let Some(m) = &self.momentum else {
                    return Err(StrategyError::Missing(format!(
                        "FedAvgM momentum should have been created in round 1 (round {server_round})"
                    )));
                };
                if m.len() != g.len() || m.iter().zip(&g).any(|(m, g)| m.len() != g.len()) {
                    return Err(StrategyError::Mismatch(
                        "momentum does not match the model".into(),
                    ));
                }
                m.iter()
                    .zip(&g)
                    .map(|(m, g)| {
                        layers::add(&layers::scale_weak(&m.data, self.server_momentum), g)
                    })
                    .collect()
            } else {
                g
            };
            self.momentum = Some(
                w.iter()
                    .zip(&m)
                    .map(|(l, d)| l.with_data(d.clone()))
                    .collect(),
            );
            g = m;
        }
        let new: Vec<Layer> = w
            .iter()
            .zip(&g)
            .map(|(w, g)| {
                w.with_data(layers::sub(
                    &w.data,
                    &layers::scale_weak(g, self.server_learning_rate),
                ))
            })
            .collect();
        book.opts.initial_parameters = Some(encode_all(&new));
        Ok(new)
    }
}

/// Errors unless both lists have the same number of layers and element counts.
pub(crate) fn same_layout(a: &[Layer], b: &[Layer]) -> Result<(), StrategyError> {
    if a.len() != b.len() {
        return Err(StrategyError::Mismatch(format!(
            "the aggregate has {} layers, the server's weights {}",
            b.len(),
            a.len()
        )));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.shape != y.shape || x.len() != y.len() {
            return Err(StrategyError::Mismatch(format!(
                "layer {i}: the aggregate has shape {:?}, the server's weights {:?}",
                y.shape, x.shape
            )));
        }
    }
    Ok(())
}

impl MeanRule for FedAvgMRule {
    fn name(&self) -> &str {
        "FedAvgM"
    }

    fn mode(&self, _book: &Bookkeeping) -> MeanMode {
        MeanMode::Plain
    }

    fn finish(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        avg: Vec<Layer>,
    ) -> Result<Vec<Layer>, StrategyError> {
        if self.server_opt() {
            self.server_step(book, server_round, avg)
        } else {
            Ok(avg)
        }
    }

    fn state(&self, book: &Bookkeeping) -> serde_json::Value {
        let weights = match &book.opts.initial_parameters {
            Some(p) => decode_all(p).ok(),
            None => None,
        };
        serde_json::json!({
            "weights": opt_layers_to_json(&weights),
            "momentum_vector": opt_layers_to_json(&self.momentum),
        })
    }

    fn restore_state(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        if state.is_null() {
            return Ok(());
        }
        if let Some(w) = opt_layers_from_json(state.get("weights"))? {
            book.opts.initial_parameters = Some(encode_all(&w));
        }
        self.momentum = opt_layers_from_json(state.get("momentum_vector"))?;
        Ok(())
    }
}
