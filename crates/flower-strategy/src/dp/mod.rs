//! Differential-privacy wrappers around another strategy: Flower's
//! central-DP wrappers with server-side or client-side, fixed or adaptive
//! clipping ([`central`]), and the deprecated DPFedAvgFixed /
//! DPFedAvgAdaptive ([`dpfedavg`]).
//!
//! A wrapper is an aggregation step around the wrapped strategy's step; it
//! takes over the wrapped strategy's bookkeeping unchanged (sampling,
//! configs, `initialize_parameters`, `evaluate`, `configure_evaluate`,
//! `aggregate_evaluate`). All of them return `(None, {})` for a round with
//! any fit failure (whatever the inner strategy's `accept_failures`).
//! Gaussian noise comes from a seedable ChaCha20 stream (Flower uses NumPy's
//! global RNG, so noisy results are never reproducible across
//! implementations; with a zero noise multiplier the noise is exactly zero,
//! as in Flower).

mod central;
mod dpfedavg;
pub(crate) mod noise;

use flower_core::{FitRes, Metrics, Parameters, Scalar};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{check_round, current_round, take_round, Bookkeeping, RoundState};
use crate::layers::{
    check_views, decode_all, encode_all, parse_layout, parse_views, views_to_layers, DtypeRule,
    Layer, LayerSpec,
};
use crate::rng::NoiseRng;
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

pub use central::{
    AdaptiveClippingOptions, CentralDp, DpClientSideAdaptiveClipping, DpClientSideFixedClipping,
    DpServerSideAdaptiveClipping, DpServerSideFixedClipping, FixedClippingOptions,
};
pub use dpfedavg::{
    DpFedAvg, DpFedAvgAdaptive, DpFedAvgAdaptiveOptions, DpFedAvgFixed, DpFedAvgFixedOptions,
};

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

/// Python truthiness of a metric value.
fn truthy(s: &Scalar) -> bool {
    match s {
        Scalar::Bool(b) => *b,
        Scalar::Double(v) => *v != 0.0,
        Scalar::Sint64(v) => *v != 0,
        Scalar::Uint64(v) => *v != 0,
        Scalar::String(v) => !v.is_empty(),
        Scalar::Bytes(v) => !v.is_empty(),
    }
}

fn norm_bit(result: &FitRes, key: &str) -> Result<bool, StrategyError> {
    result
        .metrics
        .get(key)
        .map(truthy)
        .ok_or_else(|| StrategyError::MissingMetric(key.to_owned()))
}

fn validate_common(noise_multiplier: f64, num_sampled_clients: usize) -> Result<(), StrategyError> {
    if !non_negative(noise_multiplier) {
        return Err(config_err(
            "The noise multiplier should be a non-negative value.",
        ));
    }
    if num_sampled_clients == 0 {
        return Err(config_err(
            "The number of sampled clients should be a positive value.",
        ));
    }
    Ok(())
}

fn warn_count(results: usize, num_sampled_clients: usize) {
    if results != num_sampled_clients {
        tracing::warn!(
            results,
            num_sampled_clients,
            "the number of results differs from num_sampled_clients, which the noise is calibrated for"
        );
    }
}

/// Per-round bookkeeping of a wrapper.
#[derive(Debug)]
struct WrapRound {
    server_round: u64,
    results: usize,
    /// Results that were clipped (server side) or reported a set norm bit.
    bits: usize,
    /// Server-side clipping: the round's global model and its layout.
    global: Option<(Vec<Layer>, Vec<LayerSpec>)>,
}

impl RoundState for WrapRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.results
    }
}

/// Clips one result against the round's global model (server-side
/// wrappers) and returns the result with clipped parameters.
fn server_clip(
    round: &mut WrapRound,
    mut result: FitRes,
    clipping_norm: f64,
) -> Result<FitRes, StrategyError> {
    let Some((global, layout)) = &round.global else {
        return Err(StrategyError::Invariant(
            "server-side clipping without the round's global model",
        ));
    };
    let views = parse_views(&result.parameters)?;
    check_views(layout, &views, DtypeRule::FloatWidthOrInt, None)?;
    let x = views_to_layers(&views)?;
    let (clipped, was_clipped) = noise::clip_model(&x, global, clipping_norm)?;
    result.parameters = encode_all(&clipped);
    if was_clipped {
        round.bits += 1;
    }
    Ok(result)
}

/// What every wrapper holds: the wrapped step, the number of sampled
/// clients the noise is calibrated for, the noise stream and the round's
/// bookkeeping; with the steps of the round protocol they all share.
#[derive(Debug)]
struct Wrap {
    inner: Box<dyn Aggregate>,
    num_sampled_clients: usize,
    rng: NoiseRng,
    round: Option<WrapRound>,
}

impl Wrap {
    /// Takes `inner` apart: its bookkeeping becomes the wrapper's.
    fn new<A: Aggregate + 'static>(
        inner: Composed<A>,
        num_sampled_clients: usize,
        seed: Option<u64>,
    ) -> (Bookkeeping, Self) {
        let wrap = Wrap {
            inner: Box::new(inner.step),
            num_sampled_clients,
            rng: NoiseRng::new(seed),
            round: None,
        };
        (inner.book, wrap)
    }

    /// `begin`: a new round (keeping the global model when the server
    /// clips), then the inner step's.
    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
        server_side: bool,
    ) -> Result<(), StrategyError> {
        self.round = None;
        let mut round = WrapRound {
            server_round,
            results: 0,
            bits: 0,
            global: None,
        };
        if server_side {
            round.global = Some((decode_all(global)?, parse_layout(global)?));
        }
        self.round = Some(round);
        self.inner.begin(book, server_round, global)
    }

    /// Errors unless `server_round` is the round in progress.
    fn check(&self, server_round: u64) -> Result<(), StrategyError> {
        check_round(self.round.as_ref().map(|r| r.server_round), server_round)
    }

    /// Server-side clipping: clips the result to `clipping_norm` and hands
    /// it over; it counts (and counts as clipped) only if the inner step
    /// takes it.
    fn accumulate_clipped(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
        clipping_norm: f64,
    ) -> Result<(), StrategyError> {
        let round = current_round(&mut self.round, server_round)?;
        let bits_before = round.bits;
        let clipped = server_clip(round, result, clipping_norm)?;
        if let Err(e) = self.inner.accumulate(server_round, client, clipped) {
            round.bits = bits_before;
            return Err(e);
        }
        round.results += 1;
        Ok(())
    }

    /// Hands the result over, then counts it (and its norm bit).
    fn accumulate_counted(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
        bit: bool,
    ) -> Result<(), StrategyError> {
        self.inner.accumulate(server_round, client, result)?;
        if let Some(r) = &mut self.round {
            r.results += 1;
            r.bits += usize::from(bit);
        }
        Ok(())
    }

    /// The round to aggregate: `None` (return `(None, {})`) for another
    /// round or when any client failed.
    fn take(&mut self, server_round: u64, failures: &[ClientFailure]) -> Option<WrapRound> {
        take_round(&mut self.round, server_round).filter(|_| failures.is_empty())
    }

    /// `noise_multiplier · clipping_norm / n_s`.
    fn noise_std(&self, noise_multiplier: f64, clipping_norm: f64) -> f64 {
        noise_multiplier * clipping_norm / self.num_sampled_clients as f64
    }

    /// The inner step's aggregate with `N(0, std²)` added.
    fn noised(
        &mut self,
        (params, metrics): (Option<Parameters>, Metrics),
        std: f64,
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let params = params
            .map(|p| noise::add_noise(p, std, &mut self.rng))
            .transpose()?;
        Ok((params, metrics))
    }

    /// `{"inner", <norm key>?, "rng"}`.
    fn state(&self, book: &Bookkeeping, norm: Option<(&str, f64)>) -> serde_json::Value {
        let mut state = serde_json::Map::new();
        state.insert("inner".into(), self.inner.state(book));
        if let Some((key, c)) = norm {
            state.insert(key.into(), c.into());
        }
        state.insert("rng".into(), self.rng.state());
        serde_json::Value::Object(state)
    }

    /// Restores what [`Wrap::state`] wrote (a null state restores nothing).
    fn restore(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
        norm: Option<(&str, &mut f64)>,
    ) -> Result<(), StrategyError> {
        if state.is_null() {
            return Ok(());
        }
        if let Some((key, c)) = norm {
            if let Some(v) = state.get(key) {
                *c = v
                    .as_f64()
                    .ok_or_else(|| StrategyError::State(format!("{key} must be a number")))?;
            }
        }
        if let Some(r) = state.get("rng") {
            self.rng.restore(r)?;
        }
        self.inner.restore_state(
            book,
            state
                .get("inner")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        )
    }
}
