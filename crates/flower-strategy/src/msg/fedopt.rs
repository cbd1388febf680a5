//! The message-API strategies that post-process FedAvg's mean (FedProx,
//! FedAvgM, the FedOpt family) and QFedAvg.

use super::fedavg::{FedAvg, FedAvgOptions};
use super::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageType, MetricRecord, MetricValue,
    Reply,
};
use super::{Grid, MsgStrategy};
use crate::layers::{self, pairwise_sum, Data, Layer};
use crate::StrategyError;

/// Decodes every array of `record`, keeping the keys.
fn decode(record: &ArrayRecord) -> Result<Vec<(String, Layer)>, StrategyError> {
    record
        .iter()
        .map(|(k, a)| Ok((k.to_owned(), a.layer()?)))
        .collect()
}

fn encode(layers: Vec<(String, Layer)>) -> ArrayRecord {
    layers
        .into_iter()
        .map(|(k, l)| (k, Array::of_layer(&l)))
        .collect()
}

/// Delegates the FedAvg parts of [`MsgStrategy`] to the `base` field.
macro_rules! delegate_evaluate {
    () => {
        fn configure_evaluate(
            &mut self,
            server_round: u64,
            arrays: &ArrayRecord,
            config: &mut ConfigRecord,
            grid: &mut dyn Grid,
        ) -> Result<Vec<Message>, StrategyError> {
            self.base
                .configure(server_round, arrays, config, grid, MessageType::Evaluate)
        }

        fn aggregate_evaluate(
            &mut self,
            _server_round: u64,
            replies: Vec<Reply>,
        ) -> Result<Option<MetricRecord>, StrategyError> {
            self.base.aggregate_evaluate_records(&replies)
        }
    };
}

/// Flower's message-API `FedProx`: FedAvg that sends `"proximal-mu"`.
#[derive(Debug, Clone)]
pub struct FedProx {
    base: FedAvg,
    proximal_mu: f64,
}

impl FedProx {
    /// FedProx with `proximal_mu` (Flower's default: 0.0).
    pub fn new(opts: FedAvgOptions, proximal_mu: f64) -> Result<Self, StrategyError> {
        Ok(FedProx {
            base: FedAvg::new(opts)?,
            proximal_mu,
        })
    }
}

impl MsgStrategy for FedProx {
    fn streaming_key(&self) -> Option<&str> {
        self.base.mean_streaming_key()
    }

    fn name(&self) -> &str {
        "FedProx"
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        config.insert("proximal-mu", ConfigValue::Float(self.proximal_mu));
        self.base
            .configure(server_round, arrays, config, grid, MessageType::Train)
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        self.base.aggregate_train_records(&replies)
    }

    delegate_evaluate!();
}

/// Flower's message-API `FedAvgM` (server learning rate and momentum).
#[derive(Debug, Clone)]
pub struct FedAvgM {
    base: FedAvg,
    server_learning_rate: f64,
    server_momentum: f64,
    current: Option<Vec<Layer>>,
    momentum_vector: Option<Vec<Data>>,
}

impl FedAvgM {
    /// FedAvgM (Flower's defaults: `server_learning_rate = 1.0`,
    /// `server_momentum = 0.0`, which is plain FedAvg).
    pub fn new(
        opts: FedAvgOptions,
        server_learning_rate: f64,
        server_momentum: f64,
    ) -> Result<Self, StrategyError> {
        Ok(FedAvgM {
            base: FedAvg::new(opts)?,
            server_learning_rate,
            server_momentum,
            current: None,
            momentum_vector: None,
        })
    }

    fn server_opt(&self) -> bool {
        self.server_momentum != 0.0 || self.server_learning_rate != 1.0
    }
}

impl MsgStrategy for FedAvgM {
    fn streaming_key(&self) -> Option<&str> {
        self.base.mean_streaming_key()
    }

    fn name(&self) -> &str {
        "FedAvgM"
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        if self.current.is_none() {
            self.current = Some(decode(arrays)?.into_iter().map(|(_, l)| l).collect());
        }
        self.base
            .configure(server_round, arrays, config, grid, MessageType::Train)
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let (arrays, metrics) = self.base.aggregate_train_records(&replies)?;
        let arrays = match arrays {
            Some(a) if self.server_opt() => a,
            other => return Ok((other, metrics)),
        };
        let current = self.current.as_ref().ok_or_else(|| {
            StrategyError::Aggregation("configure_train was not called before aggregation".into())
        })?;
        let agg = decode(&arrays)?;
        if agg.len() != current.len() {
            return Err(StrategyError::Shape(format!(
                "{} aggregated arrays for {} current ones",
                agg.len(),
                current.len()
            )));
        }
        let mut pg: Vec<Data> = Vec::with_capacity(agg.len());
        for ((_, new), old) in agg.iter().zip(current) {
            if new.len() != old.len() {
                return Err(StrategyError::Shape(
                    "aggregate and current model differ".into(),
                ));
            }
            pg.push(layers::sub(&old.data, &new.data));
        }
        if self.server_momentum > 0.0 {
            let mv = match self.momentum_vector.take() {
                None => pg,
                Some(mv) => mv
                    .iter()
                    .zip(&pg)
                    .map(|(m, g)| layers::add(&layers::scale_weak(m, self.server_momentum), g))
                    .collect(),
            };
            self.momentum_vector = Some(mv.clone());
            pg = mv;
        }
        let updated: Vec<(String, Layer)> = agg
            .iter()
            .zip(current)
            .zip(&pg)
            .map(|(((k, _), old), g)| {
                let step = layers::scale_weak(g, self.server_learning_rate);
                (k.clone(), old.with_data(layers::sub(&old.data, &step)))
            })
            .collect();
        self.current = Some(updated.iter().map(|(_, l)| l.clone()).collect());
        Ok((Some(encode(updated)), metrics))
    }

    delegate_evaluate!();
}

/// Which server optimizer of the FedOpt family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedOptKind {
    /// `FedOpt` itself (not exported by Flower): FedAvg that keeps `current`.
    FedOpt,
    /// `FedAdagrad`.
    FedAdagrad,
    /// `FedAdam`.
    FedAdam,
    /// `FedYogi`.
    FedYogi,
}

/// The FedOpt family's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedOptOptions {
    /// Server learning rate.
    pub eta: f64,
    /// Client learning rate (informational, as in Flower).
    pub eta_l: f64,
    /// First-moment decay (FedAdagrad: 0).
    pub beta_1: f64,
    /// Second-moment decay (FedAdagrad: 0).
    pub beta_2: f64,
    /// Adaptivity (default 1e-3 for all).
    pub tau: f64,
}

impl FedOptOptions {
    /// Flower's defaults for `kind`.
    pub fn defaults(kind: FedOptKind) -> Self {
        match kind {
            FedOptKind::FedOpt | FedOptKind::FedAdagrad => FedOptOptions {
                eta: 1e-1,
                eta_l: 1e-1,
                beta_1: 0.0,
                beta_2: 0.0,
                tau: 1e-3,
            },
            FedOptKind::FedAdam => FedOptOptions {
                eta: 1e-1,
                eta_l: 1e-1,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-3,
            },
            FedOptKind::FedYogi => FedOptOptions {
                eta: 1e-2,
                eta_l: 0.0316,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-3,
            },
        }
    }
}

/// Per-key moment values (f64), `None` before the first aggregation.
pub type Moments = Option<Vec<(String, Vec<f64>)>>;

/// Flower's message-API `FedAdagrad`, `FedAdam`, `FedYogi` (and `FedOpt`).
#[derive(Debug, Clone)]
pub struct FedOpt {
    base: FedAvg,
    kind: FedOptKind,
    hp: FedOptOptions,
    current: Option<Vec<(String, Layer)>>,
    m_t: Option<Vec<(String, Data)>>,
    v_t: Option<Vec<(String, Data)>>,
}

impl FedOpt {
    /// A FedOpt-family strategy. FedAdagrad ignores `beta_1`/`beta_2` (0,
    /// as Flower's constructor forces).
    pub fn new(
        opts: FedAvgOptions,
        kind: FedOptKind,
        mut hp: FedOptOptions,
    ) -> Result<Self, StrategyError> {
        if kind == FedOptKind::FedAdagrad {
            hp.beta_1 = 0.0;
            hp.beta_2 = 0.0;
        }
        Ok(FedOpt {
            base: FedAvg::new(opts)?,
            kind,
            hp,
            current: None,
            m_t: None,
            v_t: None,
        })
    }

    /// `(m_t, v_t)` after the last aggregation, by key (f64 values).
    pub fn moments(&self) -> (Moments, Moments) {
        let f = |m: &Option<Vec<(String, Data)>>| {
            m.as_ref()
                .map(|v| v.iter().map(|(k, d)| (k.clone(), d.to_f64())).collect())
        };
        (f(&self.m_t), f(&self.v_t))
    }
}

fn aggregation(m: String) -> StrategyError {
    StrategyError::Aggregation(m)
}

impl MsgStrategy for FedOpt {
    fn streaming_key(&self) -> Option<&str> {
        self.base.mean_streaming_key()
    }

    fn name(&self) -> &str {
        match self.kind {
            FedOptKind::FedOpt => "FedOpt",
            FedOptKind::FedAdagrad => "FedAdagrad",
            FedOptKind::FedAdam => "FedAdam",
            FedOptKind::FedYogi => "FedYogi",
        }
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.current = Some(decode(arrays)?);
        self.base
            .configure(server_round, arrays, config, grid, MessageType::Train)
    }

    fn aggregate_train(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let (arrays, metrics) = self.base.aggregate_train_records(&replies)?;
        let arrays = match arrays {
            Some(a) if self.kind != FedOptKind::FedOpt => a,
            other => return Ok((other, metrics)),
        };
        let current = self.current.as_ref().ok_or_else(|| {
            aggregation("configure_train was not called before aggregation".into())
        })?;
        let agg = decode(&arrays)?;
        let mut ka: Vec<&str> = agg.iter().map(|(k, _)| k.as_str()).collect();
        let mut kc: Vec<&str> = current.iter().map(|(k, _)| k.as_str()).collect();
        ka.sort_unstable();
        kc.sort_unstable();
        if ka != kc {
            return Err(aggregation(
                "the aggregated arrays' keys differ from the current model's".into(),
            ));
        }
        let cur = |k: &str| current.iter().find(|(c, _)| c == k).map(|(_, l)| l);
        let mut delta: Vec<(String, Data)> = Vec::with_capacity(agg.len());
        for (k, x) in &agg {
            let c = cur(k).ok_or_else(|| aggregation(format!("no current array {k:?}")))?;
            if c.shape != x.shape {
                return Err(aggregation(format!(
                    "aggregated array {k:?} has shape {:?}, the current one {:?}",
                    x.shape, c.shape
                )));
            }
            delta.push((k.clone(), layers::sub(&x.data, &c.data)));
        }
        let d = |k: &str| delta.iter().find(|(c, _)| c == k).map(|(_, l)| l);
        let hp = self.hp;
        let m_prev = self.m_t.take().unwrap_or_else(|| {
            agg.iter()
                .map(|(k, x)| (k.clone(), x.data.zeros_like()))
                .collect()
        });
        let mut m_t = Vec::with_capacity(m_prev.len());
        for (k, m) in &m_prev {
            let dk = d(k).ok_or_else(|| aggregation(format!("no delta for {k:?}")))?;
            m_t.push((
                k.clone(),
                layers::add(
                    &layers::scale_weak(m, hp.beta_1),
                    &layers::scale_weak(dk, 1.0 - hp.beta_1),
                ),
            ));
        }
        let v_prev = self.v_t.take().unwrap_or_else(|| {
            agg.iter()
                .map(|(k, x)| (k.clone(), x.data.zeros_like()))
                .collect()
        });
        let mut v_t = Vec::with_capacity(v_prev.len());
        for (k, v) in &v_prev {
            let dk = d(k).ok_or_else(|| aggregation(format!("no delta for {k:?}")))?;
            let d2 = layers::mul(dk, dk);
            let next = match self.kind {
                FedOptKind::FedAdagrad | FedOptKind::FedOpt => layers::add(v, &d2),
                FedOptKind::FedAdam => layers::add(
                    &layers::scale_weak(v, hp.beta_2),
                    &layers::scale_weak(&d2, 1.0 - hp.beta_2),
                ),
                FedOptKind::FedYogi => {
                    let s = layers::sign(&layers::sub(v, &d2));
                    layers::sub(
                        v,
                        &layers::mul(&layers::scale_weak(&d2, 1.0 - hp.beta_2), &s),
                    )
                }
            };
            v_t.push((k.clone(), next));
        }
        let r = server_round as f64 + 1.0;
        let mut new = Vec::with_capacity(current.len());
        for (k, x) in current {
            let m = m_t.iter().find(|(c, _)| c == k).map(|(_, l)| l);
            let v = v_t.iter().find(|(c, _)| c == k).map(|(_, l)| l);
            let (Some(m), Some(v)) = (m, v) else {
                return Err(aggregation(format!("no moments for {k:?}")));
            };
            let denom = layers::add_weak(&layers::sqrt(v), hp.tau);
            let step = match self.kind {
                // eta_norm is a NumPy float64 scalar: the update is f64.
                FedOptKind::FedAdam => {
                    let eta_norm =
                        hp.eta * (1.0 - hp.beta_2.powf(r)).sqrt() / (1.0 - hp.beta_1.powf(r));
                    layers::div(&layers::scale_strong(m, eta_norm), &denom)
                }
                _ => layers::div(&layers::scale_weak(m, hp.eta), &denom),
            };
            new.push((k.clone(), x.with_data(layers::add(&x.data, &step))));
        }
        self.m_t = Some(m_t);
        self.v_t = Some(v_t);
        Ok((Some(encode(new)), metrics))
    }

    delegate_evaluate!();
}

/// QFedAvg's own options.
#[derive(Debug, Clone, PartialEq)]
pub struct QFedAvgOptions {
    /// The clients' learning rate (required; `L = 1/client_learning_rate`).
    pub client_learning_rate: f64,
    /// Fairness exponent (default 0.1).
    pub q: f64,
    /// The reply metric holding the client's train loss (default `"train_loss"`).
    pub train_loss_key: String,
}

impl QFedAvgOptions {
    /// Flower's defaults with the required `client_learning_rate`.
    pub fn new(client_learning_rate: f64) -> Self {
        QFedAvgOptions {
            client_learning_rate,
            q: 0.1,
            train_loss_key: "train_loss".into(),
        }
    }
}

/// Flower's message-API `QFedAvg` (q-FFL with each client's own loss).
#[derive(Debug, Clone)]
pub struct QFedAvg {
    base: FedAvg,
    qo: QFedAvgOptions,
    current: Option<Vec<(String, Layer)>>,
    last_h: Vec<f64>,
}

impl QFedAvg {
    /// QFedAvg with `qo`.
    pub fn new(opts: FedAvgOptions, qo: QFedAvgOptions) -> Result<Self, StrategyError> {
        Ok(QFedAvg {
            base: FedAvg::new(opts)?,
            qo,
            current: None,
            last_h: Vec::new(),
        })
    }

    /// The `h` of each valid reply of the last aggregation.
    pub fn last_h(&self) -> &[f64] {
        &self.last_h
    }
}

/// `np.sum(np.square(g))` per array, summed by Python's `sum` (which stays
/// f32 while the sums are f32 NumPy scalars).
fn grad_norm(grad: &[Data]) -> f64 {
    if grad.iter().all(|g| !g.is_f64()) {
        let mut acc = 0f32;
        for g in grad {
            if let Data::F32(v) = g {
                let sq: Vec<f32> = v.iter().map(|x| x * x).collect();
                acc += pairwise_sum(&sq);
            }
        }
        f64::from(acc)
    } else {
        grad.iter().map(layers::sum_of_squares).sum()
    }
}

impl MsgStrategy for QFedAvg {
    fn name(&self) -> &str {
        "QFedAvg"
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.current = Some(decode(arrays)?);
        self.base
            .configure(server_round, arrays, config, grid, MessageType::Train)
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let valid = self.base.valid(&replies, true)?;
        if valid.is_empty() {
            return Ok((None, None));
        }
        let l = 1.0 / self.qo.client_learning_rate;
        let q = self.qo.q;
        let global = self.current.as_ref().ok_or_else(|| {
            aggregation("configure_train was not called before aggregation".into())
        })?;
        let mut sum_delta: Option<Vec<Data>> = None;
        let mut sum_h = 0.0f64;
        self.last_h.clear();
        for record in &valid {
            let local = record
                .first_arrays()
                .ok_or_else(|| StrategyError::InconsistentReplies("no ArrayRecord".into()))?;
            let loss = match record
                .first_metrics()
                .and_then(|m| m.get(&self.qo.train_loss_key))
            {
                Some(MetricValue::Int(i)) => *i as f64,
                Some(MetricValue::Float(f)) => *f,
                _ => {
                    return Err(aggregation(format!(
                        "missing or invalid training loss {:?}",
                        self.qo.train_loss_key
                    )))
                }
            };
            let local = decode(local)?;
            if local.len() != global.len() {
                return Err(StrategyError::Shape(format!(
                    "{} arrays in a reply for {} in the global model",
                    local.len(),
                    global.len()
                )));
            }
            let lpq = (loss + 1e-10).powf(q);
            let mut grad = Vec::with_capacity(local.len());
            for ((_, gw), (_, lw)) in global.iter().zip(&local) {
                if gw.len() != lw.len() {
                    return Err(StrategyError::Shape(
                        "reply and global shapes differ".into(),
                    ));
                }
                // np.subtract(gw, lw, out=lw); lw *= L: in the reply's dtype.
                let diff = layers::sub(&gw.data, &lw.data);
                let diff = match (&lw.data, diff) {
                    (Data::F32(_), Data::F64(v)) => {
                        Data::F32(v.iter().map(|&x| x as f32).collect())
                    }
                    (_, d) => d,
                };
                grad.push(layers::scale_weak(&diff, l));
            }
            let norm = grad_norm(&grad);
            // g *= loss_pow_q (a NumPy f64 scalar), stored back in g's dtype.
            let delta: Vec<Data> = grad
                .iter()
                .map(|g| match g {
                    Data::F32(v) => {
                        Data::F32(v.iter().map(|&x| (f64::from(x) * lpq) as f32).collect())
                    }
                    Data::F64(v) => Data::F64(v.iter().map(|&x| x * lpq).collect()),
                })
                .collect();
            let h = q * (loss + 1e-10).powf(q - 1.0) * norm + l * lpq;
            self.last_h.push(h);
            sum_delta = Some(match sum_delta {
                None => delta,
                Some(s) => s
                    .iter()
                    .zip(&delta)
                    .map(|(a, b)| layers::add(a, b))
                    .collect(),
            });
            sum_h += h;
        }
        let sum_delta = sum_delta.unwrap_or_default();
        let new: Vec<(String, Layer)> = global
            .iter()
            .zip(&sum_delta)
            .map(|((k, gw), d)| {
                let step = match d {
                    Data::F32(v) => Data::F64(v.iter().map(|&x| f64::from(x) / sum_h).collect()),
                    Data::F64(v) => Data::F64(v.iter().map(|&x| x / sum_h).collect()),
                };
                (k.clone(), gw.with_data(layers::sub(&gw.data, &step)))
            })
            .collect();
        let metrics = self.base.train_metrics(&valid)?;
        Ok((Some(encode(new)), Some(metrics)))
    }

    delegate_evaluate!();
}
