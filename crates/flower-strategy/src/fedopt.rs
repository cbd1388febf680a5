//! [`FedOpt`] and its server optimizers: FedAdagrad, FedAdam, FedYogi
//! (Reddi et al., "Adaptive Federated Optimization").

use flower_core::Parameters;

use crate::aggregate::Composed;
use crate::bookkeeping::{Bookkeeping, Policy};
use crate::fedavg::{FedAvgOptions, MeanRule, MeanStep};
use crate::fedavgm::same_layout;
use crate::layers::{self, decode_all, opt_layers_from_json, opt_layers_to_json, Data, Layer};
use crate::mean::MeanMode;
use crate::StrategyError;

/// Which server optimizer [`FedOpt`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedOptKind {
    /// Flower's `FedOpt` base class: no optimizer, behaves like in-place FedAvg.
    Base,
    /// `FedAdagrad`: `v += Δ²`, `w += η·m/(√v + τ)` (β1 = β2 = 0).
    Adagrad,
    /// `FedAdam`: Adam with Flower's bias factor `η·√(1−β2^(t+1))/(1−β1^(t+1))`
    /// (an f64 scalar: the model becomes f64).
    Adam,
    /// `FedYogi`: `v −= (1−β2)·Δ²·sign(v − Δ²)`.
    Yogi,
}

impl FedOptKind {
    /// Flower's class name.
    pub fn class_name(self) -> &'static str {
        match self {
            FedOptKind::Base => "FedOpt",
            FedOptKind::Adagrad => "FedAdagrad",
            FedOptKind::Adam => "FedAdam",
            FedOptKind::Yogi => "FedYogi",
        }
    }
}

/// Hyper-parameters of the FedOpt family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedOptOptions {
    /// Server learning rate η.
    pub eta: f64,
    /// Client learning rate η_l (stored, never used or sent, as in Flower).
    pub eta_l: f64,
    /// First-moment decay β1 (fixed at 0 for Adagrad).
    pub beta_1: f64,
    /// Second-moment decay β2 (fixed at 0 for Adagrad).
    pub beta_2: f64,
    /// Adaptivity τ.
    pub tau: f64,
}

impl FedOptOptions {
    /// Flower's defaults for `kind`: FedOpt `η=0.1, η_l=0.1, β1=0, β2=0,
    /// τ=1e-9`; FedAdagrad `η=0.1, η_l=0.1, τ=1e-9`; FedAdam `η=0.1,
    /// η_l=0.1, β1=0.9, β2=0.99, τ=1e-9`; FedYogi `η=0.01, η_l=0.0316,
    /// β1=0.9, β2=0.99, τ=1e-3`.
    pub fn defaults(kind: FedOptKind) -> Self {
        match kind {
            FedOptKind::Base | FedOptKind::Adagrad => FedOptOptions {
                eta: 1e-1,
                eta_l: 1e-1,
                beta_1: 0.0,
                beta_2: 0.0,
                tau: 1e-9,
            },
            FedOptKind::Adam => FedOptOptions {
                eta: 1e-1,
                eta_l: 1e-1,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-9,
            },
            FedOptKind::Yogi => FedOptOptions {
                eta: 1e-2,
                eta_l: 0.0316,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-3,
            },
        }
    }
}

/// Flower's `FedOpt` family (`FedOpt`, `FedAdagrad`, `FedAdam`, `FedYogi`).
///
/// Each round: `avg` = in-place FedAvg of the results (nothing happens to the
/// state when that is `None`), `Δ = avg − w`, `m = β1·m + (1−β1)·Δ`, the
/// optimizer's `v`, then the step from the strategy's own weights `w` (not
/// the parameters passed to `configure_fit`), which is returned.
///
/// Flower requires `initial_parameters`; here, without them, `w` is taken
/// from the first global model handed to [`Strategy::begin_fit`](crate::Strategy::begin_fit).
pub type FedOpt = Composed<MeanStep<FedOptRule>>;

/// [`FedOpt`]'s rule: the in-place mean, then the server optimizer's step.
#[derive(Debug)]
pub struct FedOptRule {
    kind: FedOptKind,
    hp: FedOptOptions,
    current_weights: Option<Vec<Layer>>,
    m_t: Option<Vec<Layer>>,
    v_t: Option<Vec<Layer>>,
}

impl FedOpt {
    /// Builds a FedOpt-family strategy. For [`FedOptKind::Adagrad`], β1 and
    /// β2 are forced to 0 as in Flower.
    pub fn new(
        kind: FedOptKind,
        options: FedAvgOptions,
        mut hp: FedOptOptions,
    ) -> Result<Self, StrategyError> {
        if kind == FedOptKind::Adagrad {
            hp.beta_1 = 0.0;
            hp.beta_2 = 0.0;
        }
        let current_weights = match &options.initial_parameters {
            Some(p) => Some(
                decode_all(p)
                    .map_err(|e| StrategyError::Config(format!("initial_parameters: {e}")))?,
            ),
            None => None,
        };
        let rule = FedOptRule {
            kind,
            hp,
            current_weights,
            m_t: None,
            v_t: None,
        };
        MeanStep::compose(options, Policy::default(), rule)
    }

    /// The optimizer.
    pub fn kind(&self) -> FedOptKind {
        self.step.rule().kind
    }

    /// The hyper-parameters.
    pub fn hyper_parameters(&self) -> FedOptOptions {
        self.step.rule().hp
    }
}

impl FedOptRule {
    fn step(&mut self, server_round: u64, avg: Vec<Layer>) -> Result<Vec<Layer>, StrategyError> {
        let Some(w) = &self.current_weights else {
            return Err(StrategyError::Missing(
                "FedOpt has no current weights".into(),
            ));
        };
        same_layout(w, &avg)?;
        let hp = self.hp;
        let delta: Vec<Data> = avg
            .iter()
            .zip(w)
            .map(|(a, w)| layers::sub(&a.data, &w.data))
            .collect();
        let zeros = || -> Vec<Data> { delta.iter().map(Data::zeros_like).collect() };
        let m_prev: Vec<Data> = match &self.m_t {
            Some(m) if same_sizes(m, &delta) => m.iter().map(|l| l.data.clone()).collect(),
            Some(_) => {
                return Err(StrategyError::Mismatch(
                    "m_t does not match the model".into(),
                ))
            }
            None => zeros(),
        };
        let v_prev: Vec<Data> = match &self.v_t {
            Some(v) if same_sizes(v, &delta) => v.iter().map(|l| l.data.clone()).collect(),
            Some(_) => {
                return Err(StrategyError::Mismatch(
                    "v_t does not match the model".into(),
                ))
            }
            None => zeros(),
        };
        // m = β1·m + (1−β1)·Δ  (Python floats: weak scalars)
        let m: Vec<Data> = m_prev
            .iter()
            .zip(&delta)
            .map(|(m, d)| {
                layers::add(
                    &layers::scale_weak(m, hp.beta_1),
                    &layers::scale_weak(d, 1.0 - hp.beta_1),
                )
            })
            .collect();
        let v: Vec<Data> = v_prev
            .iter()
            .zip(&delta)
            .map(|(v, d)| {
                let d2 = layers::mul(d, d);
                match self.kind {
                    FedOptKind::Adagrad | FedOptKind::Base => layers::add(v, &d2),
                    FedOptKind::Adam => layers::add(
                        &layers::scale_weak(v, hp.beta_2),
                        &layers::scale_weak(&d2, 1.0 - hp.beta_2),
                    ),
                    FedOptKind::Yogi => {
                        let s = layers::sign(&layers::sub(v, &d2));
                        layers::sub(
                            v,
                            &layers::mul(&layers::scale_weak(&d2, 1.0 - hp.beta_2), &s),
                        )
                    }
                }
            })
            .collect();
        let new: Vec<Layer> = w
            .iter()
            .zip(m.iter().zip(&v))
            .map(|(w, (m, v))| {
                let denom = layers::add_weak(&layers::sqrt(v), hp.tau);
                let num = match self.kind {
                    FedOptKind::Adam => {
                        let t = server_round as f64 + 1.0;
                        let eta_norm =
                            hp.eta * (1.0 - hp.beta_2.powf(t)).sqrt() / (1.0 - hp.beta_1.powf(t));
                        layers::scale_strong(m, eta_norm)
                    }
                    _ => layers::scale_weak(m, hp.eta),
                };
                w.with_data(layers::add(&w.data, &layers::div(&num, &denom)))
            })
            .collect();
        self.m_t = Some(w.iter().zip(m).map(|(l, d)| l.with_data(d)).collect());
        self.v_t = Some(w.iter().zip(v).map(|(l, d)| l.with_data(d)).collect());
        self.current_weights = Some(new.clone());
        Ok(new)
    }
}

fn same_sizes(a: &[Layer], b: &[Data]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.len() == b.len())
}

impl MeanRule for FedOptRule {
    fn name(&self) -> &str {
        self.kind.class_name()
    }

    fn mode(&self, _book: &Bookkeeping) -> MeanMode {
        MeanMode::InPlace
    }

    fn begin(&mut self, global: &Parameters) -> Result<(), StrategyError> {
        if self.current_weights.is_none() && self.kind != FedOptKind::Base {
            self.current_weights = Some(decode_all(global)?);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        _book: &mut Bookkeeping,
        server_round: u64,
        avg: Vec<Layer>,
    ) -> Result<Vec<Layer>, StrategyError> {
        match self.kind {
            FedOptKind::Base => Ok(avg),
            _ => self.step(server_round, avg),
        }
    }

    fn state(&self, _book: &Bookkeeping) -> serde_json::Value {
        serde_json::json!({
            "current_weights": opt_layers_to_json(&self.current_weights),
            "m_t": opt_layers_to_json(&self.m_t),
            "v_t": opt_layers_to_json(&self.v_t),
        })
    }

    fn restore_state(
        &mut self,
        _book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        if state.is_null() {
            return Ok(());
        }
        if let Some(w) = opt_layers_from_json(state.get("current_weights"))? {
            self.current_weights = Some(w);
        }
        self.m_t = opt_layers_from_json(state.get("m_t"))?;
        self.v_t = opt_layers_from_json(state.get("v_t"))?;
        Ok(())
    }
}
