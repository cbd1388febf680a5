//! [`FedAvgM`]: FedAvg with server-side learning rate and momentum.

use std::fmt;

use flower_core::{FitRes, Metrics, Parameters};

use crate::common::{forward_to_base, Base};
use crate::fedavg::{mean_accumulate, mean_begin, FedAvgOptions};
use crate::layers::{
    self, decode_all, encode_all, opt_layers_from_json, opt_layers_to_json, Layer,
};
use crate::mean::{MeanMode, MeanRound};
use crate::strategy::{ClientFailure, ClientId, Strategy};
use crate::StrategyError;

/// Flower's `FedAvgM`.
///
/// The plain weighted mean (`aggregate`, not in-place) of the results; when
/// `server_learning_rate != 1` or `server_momentum != 0`, a server SGD step
/// from the *stored* weights `w` (the initial parameters, then each returned
/// model): `g = w − avg`, `m = μ·m + g` (`m = g` in round 1), `w ← w − lr·m`,
/// all in the array dtype. Unlike FedAvg, [`Strategy::initialize_parameters`]
/// keeps handing out the stored weights.
pub struct FedAvgM {
    base: Base,
    server_learning_rate: f64,
    server_momentum: f64,
    momentum: Option<Vec<Layer>>,
    round: Option<MeanRound>,
}

impl fmt::Debug for FedAvgM {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedAvgM")
            .field("server_learning_rate", &self.server_learning_rate)
            .field("server_momentum", &self.server_momentum)
            .field("options", &self.base.opts)
            .finish_non_exhaustive()
    }
}

impl FedAvgM {
    /// Builds FedAvgM (Flower's defaults: `server_learning_rate = 1.0`,
    /// `server_momentum = 0.0`). `options.inplace` is ignored (Flower's
    /// FedAvgM always uses the plain mean).
    pub fn new(
        options: FedAvgOptions,
        server_learning_rate: f64,
        server_momentum: f64,
    ) -> Result<Self, StrategyError> {
        Ok(FedAvgM {
            base: Base::new(options)?,
            server_learning_rate,
            server_momentum,
            momentum: None,
            round: None,
        })
    }

    /// True when the server optimizer runs (`lr != 1` or `momentum != 0`).
    pub fn server_opt(&self) -> bool {
        self.server_momentum != 0.0 || self.server_learning_rate != 1.0
    }

    fn server_step(
        &mut self,
        server_round: u64,
        avg: Vec<Layer>,
    ) -> Result<Vec<Layer>, StrategyError> {
        let Some(initial) = &self.base.opts.initial_parameters else {
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
        self.base.opts.initial_parameters = Some(encode_all(&new));
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

impl Strategy for FedAvgM {
    fn name(&self) -> &str {
        "FedAvgM"
    }

    forward_to_base!(base =>
        min_available_clients,
        evaluate,
        configure_fit,
        configure_evaluate,
        aggregate_evaluate,
    );

    fn initialize_parameters(&mut self) -> Option<Parameters> {
        self.base.opts.initial_parameters.clone()
    }

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        mean_begin(&mut self.round, server_round, global, MeanMode::Plain)
    }

    fn accumulate_fit(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        mean_accumulate(&mut self.round, server_round, result)
    }

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self
            .base
            .take_gated(&mut self.round, server_round, failures)
        else {
            return Ok((None, Metrics::new()));
        };
        let mut result = round.mean.finish_layers()?;
        if self.server_opt() {
            result = self.server_step(server_round, result)?;
        }
        Ok((
            Some(encode_all(&result)),
            self.base.fit_metrics(&round.metrics),
        ))
    }

    fn state(&self) -> serde_json::Value {
        let weights = match &self.base.opts.initial_parameters {
            Some(p) => decode_all(p).ok(),
            None => None,
        };
        serde_json::json!({
            "weights": opt_layers_to_json(&weights),
            "momentum_vector": opt_layers_to_json(&self.momentum),
        })
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), StrategyError> {
        if state.is_null() {
            return Ok(());
        }
        if let Some(w) = opt_layers_from_json(state.get("weights"))? {
            self.base.opts.initial_parameters = Some(encode_all(&w));
        }
        self.momentum = opt_layers_from_json(state.get("momentum_vector"))?;
        Ok(())
    }
}
