//! The four message-API DP wrappers: server- or client-side clipping, with
//! a fixed or an adaptive clipping norm, around any [`MsgStrategy`]. The
//! clipping and norm update are the legacy catalog's; Gaussian noise comes
//! from an OS-seeded ChaCha20 stream instead of NumPy's global generator
//! ([`crate::deviations`], `msg-dp-noise-source`).

use super::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MetricRecord, MetricValue, Record,
    Reply,
};
use super::{Grid, MsgStrategy};
use crate::dp::noise::{adaptive_noise_params, clip_model, NormUpdate};
use crate::layers::{Data, Layer};
use crate::rng::NoiseRng;
use crate::{AdaptiveClippingOptions, FixedClippingOptions, StrategyError};

/// How the wrapper picks its clipping norm.
#[derive(Debug, Clone, Copy)]
enum Norm {
    Fixed,
    Adaptive(NormUpdate),
}

/// Flower's `DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`
/// around a message-API strategy.
#[derive(Debug)]
pub struct DpWrapper {
    inner: Box<dyn MsgStrategy>,
    server_side: bool,
    norm: Norm,
    clipping_norm: f64,
    noise_multiplier: f64,
    num_sampled_clients: usize,
    current: Option<Vec<Layer>>,
    rng: NoiseRng,
}

/// `x > 0` (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// `x >= 0` (false for NaN).
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

fn config_err(m: &str) -> StrategyError {
    StrategyError::Config(m.to_owned())
}

fn validate_common(noise_multiplier: f64, num_sampled_clients: usize) -> Result<(), StrategyError> {
    if !non_negative(noise_multiplier) {
        return Err(config_err("the noise multiplier should be non-negative"));
    }
    if num_sampled_clients == 0 {
        return Err(config_err(
            "the number of sampled clients should be positive",
        ));
    }
    Ok(())
}

impl DpWrapper {
    /// Fixed clipping (`server_side`: the server clips each reply; else the
    /// nodes do, given `"clipping_norm"` in the train config).
    pub fn fixed(
        inner: Box<dyn MsgStrategy>,
        server_side: bool,
        o: FixedClippingOptions,
    ) -> Result<Self, StrategyError> {
        validate_common(o.noise_multiplier, o.num_sampled_clients)?;
        if !positive(o.clipping_norm) {
            return Err(config_err("the clipping norm should be positive"));
        }
        Ok(DpWrapper {
            inner,
            server_side,
            norm: Norm::Fixed,
            clipping_norm: o.clipping_norm,
            noise_multiplier: o.noise_multiplier,
            num_sampled_clients: o.num_sampled_clients,
            current: None,
            rng: NoiseRng::new(None),
        })
    }

    /// Adaptive clipping: the norm follows the fraction of clipped updates
    /// toward `target_clipped_quantile`.
    pub fn adaptive(
        inner: Box<dyn MsgStrategy>,
        server_side: bool,
        o: AdaptiveClippingOptions,
    ) -> Result<Self, StrategyError> {
        validate_common(o.noise_multiplier, o.num_sampled_clients)?;
        if !positive(o.initial_clipping_norm) {
            return Err(config_err("the initial clipping norm should be positive"));
        }
        if !(0.0..=1.0).contains(&o.target_clipped_quantile) {
            return Err(config_err("the target clipped quantile must be in [0, 1]"));
        }
        if !positive(o.clip_norm_lr) {
            return Err(config_err("the learning rate must be positive"));
        }
        if o.clipped_count_stddev.is_some_and(|s| !non_negative(s)) {
            return Err(config_err("clipped_count_stddev must be non-negative"));
        }
        let (count_stddev, noise_multiplier) = adaptive_noise_params(
            o.noise_multiplier,
            o.num_sampled_clients,
            o.clipped_count_stddev,
        )?;
        Ok(DpWrapper {
            inner,
            server_side,
            norm: Norm::Adaptive(NormUpdate {
                count_stddev,
                lr: o.clip_norm_lr,
                target: o.target_clipped_quantile,
            }),
            clipping_norm: o.initial_clipping_norm,
            noise_multiplier,
            num_sampled_clients: o.num_sampled_clients,
            current: None,
            rng: NoiseRng::new(None),
        })
    }

    /// The current clipping norm.
    pub fn clipping_norm(&self) -> f64 {
        self.clipping_norm
    }

    /// Gaussian noise of std `z·C/n_s` on every element. A zero std still
    /// adds 0.0 (turning -0.0 into +0.0, as Flower does).
    fn add_noise(&mut self, arrays: ArrayRecord) -> Result<ArrayRecord, StrategyError> {
        let std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients as f64;
        arrays
            .iter()
            .map(|(k, a)| {
                let mut layer = a.layer()?;
                match &mut layer.data {
                    Data::F32(v) => v
                        .iter_mut()
                        .for_each(|x| *x = (f64::from(*x) + self.rng.normal(0.0, std)) as f32),
                    Data::F64(v) => v.iter_mut().for_each(|x| *x += self.rng.normal(0.0, std)),
                }
                Ok((k.to_owned(), Array::of_layer(&layer)))
            })
            .collect()
    }

    fn update_norm(&mut self, clipped: usize, total: usize) -> Result<(), StrategyError> {
        if let Norm::Adaptive(u) = self.norm {
            if total == 0 {
                // Flower divides by zero here.
                return Err(StrategyError::ZeroExamples);
            }
            self.clipping_norm = u.apply(self.clipping_norm, clipped, total, &mut self.rng);
        }
        Ok(())
    }

    /// Server side: replaces every reply's arrays by `current + clip(reply − current)`;
    /// returns how many were clipped.
    fn clip_replies(&self, replies: &mut [Reply]) -> Result<usize, StrategyError> {
        let current = self
            .current
            .as_ref()
            .ok_or_else(|| StrategyError::Aggregation("configure_train was not called".into()))?;
        let mut clipped = 0;
        for reply in replies.iter_mut() {
            let Ok(content) = reply.content.as_mut() else {
                continue;
            };
            let keys: Vec<String> = content.array_records().map(|(k, _)| k.to_owned()).collect();
            for key in keys {
                let Some(Record::Arrays(record)) = content.get(&key) else {
                    continue;
                };
                let names: Vec<String> = record.keys().map(str::to_owned).collect();
                let layers = record
                    .iter()
                    .map(|(_, a)| a.layer())
                    .collect::<Result<Vec<_>, _>>()?;
                if layers.len() != current.len()
                    || layers.iter().zip(current).any(|(a, b)| a.len() != b.len())
                {
                    return Err(StrategyError::Shape("reply and global model differ".into()));
                }
                let (out, was_clipped) = clip_model(&layers, current, self.clipping_norm)?;
                clipped += usize::from(was_clipped);
                let rec: ArrayRecord = names
                    .into_iter()
                    .zip(out.iter().map(Array::of_layer))
                    .collect();
                content.insert(key, Record::Arrays(rec));
            }
        }
        Ok(clipped)
    }
}

impl MsgStrategy for DpWrapper {
    fn name(&self) -> &str {
        match (self.server_side, self.norm) {
            (true, Norm::Fixed) => "DifferentialPrivacyServerSideFixedClipping",
            (true, Norm::Adaptive(_)) => "DifferentialPrivacyServerSideAdaptiveClipping",
            (false, Norm::Fixed) => "DifferentialPrivacyClientSideFixedClipping",
            (false, Norm::Adaptive(_)) => "DifferentialPrivacyClientSideAdaptiveClipping",
        }
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        if self.server_side {
            self.current = Some(
                arrays
                    .iter()
                    .map(|(_, a)| a.layer())
                    .collect::<Result<_, _>>()?,
            );
        } else {
            config.insert("clipping_norm", ConfigValue::Float(self.clipping_norm));
        }
        self.inner
            .configure_train(server_round, arrays, config, grid)
    }

    fn aggregate_train(
        &mut self,
        server_round: u64,
        mut replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        // Any error reply voids the round (Flower's `validate_replies`).
        if replies.iter().any(|r| r.content.is_err()) {
            return Ok((None, None));
        }
        if replies.len() != self.num_sampled_clients {
            tracing::warn!(
                replies = replies.len(),
                num_sampled_clients = self.num_sampled_clients,
                "reply count differs from num_sampled_clients"
            );
        }
        let adaptive = matches!(self.norm, Norm::Adaptive(_));
        if self.server_side {
            let clipped = self.clip_replies(&mut replies)?;
            if adaptive {
                self.update_norm(clipped, replies.len())?;
            }
        } else if adaptive {
            let missing = replies.iter().any(|r| {
                r.content
                    .as_ref()
                    .is_ok_and(|c| c.metric_records().any(|(_, m)| !m.contains_key("norm_bit")))
            });
            if missing {
                return Err(StrategyError::Aggregation(
                    "a reply lacks \"norm_bit\"".into(),
                ));
            }
        }
        let total = replies.len();
        let clipped_bits = replies
            .iter()
            .filter(|r| {
                r.content.as_ref().is_ok_and(|c| {
                    c.metric_records()
                        .find_map(|(_, m)| m.get("norm_bit"))
                        .is_some_and(|b| match b {
                            MetricValue::Int(i) => *i != 0,
                            MetricValue::Float(f) => *f != 0.0,
                            MetricValue::IntList(v) => !v.is_empty(),
                            MetricValue::FloatList(v) => !v.is_empty(),
                        })
                })
            })
            .count();
        let (arrays, metrics) = self.inner.aggregate_train(server_round, replies)?;
        if !self.server_side && adaptive {
            self.update_norm(clipped_bits, total)?;
        }
        // Flower tests `if aggregated_arrays:`: an empty record gets no noise.
        let arrays = match arrays {
            Some(a) if !a.is_empty() => Some(self.add_noise(a)?),
            other => other,
        };
        Ok((arrays, metrics))
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.inner
            .configure_evaluate(server_round, arrays, config, grid)
    }

    fn aggregate_evaluate(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError> {
        self.inner.aggregate_evaluate(server_round, replies)
    }
}
