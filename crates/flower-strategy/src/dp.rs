//! Differential-privacy wrappers around another strategy: Flower's
//! central-DP wrappers with server-side or client-side, fixed or adaptive
//! clipping, and the deprecated DPFedAvgFixed / DPFedAvgAdaptive.
//!
//! All of them return `(None, {})` for a round with any fit failure (whatever
//! the inner strategy's `accept_failures`), and delegate
//! `initialize_parameters`, `evaluate`, `configure_evaluate` and
//! `aggregate_evaluate` to the wrapped strategy. Gaussian noise comes from a
//! seedable ChaCha20 stream (Flower uses NumPy's global RNG, so noisy
//! results are never reproducible across implementations; with a zero noise
//! multiplier the noise is exactly zero, as in Flower).

use std::fmt;

use flower_core::{FitIns, FitRes, Metrics, Parameters, Scalar};

use crate::common::{
    add_fit_config, check_round, current_round, forward_to_inner, take_round, RoundState,
};
use crate::layers::{
    self, check_views, decode_all, encode_all, l2_norm, parse_layout, parse_views, view_to_layer,
    Data, DtypeRule, Layer, LayerSpec,
};
use crate::rng::NoiseRng;
use crate::strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
use crate::StrategyError;

/// Config key carrying the clipping norm to clients (Flower's `KEY_CLIPPING_NORM`).
const KEY_CLIPPING_NORM: &str = "clipping_norm";
/// Metric with which clients report "my update was clipped" (`KEY_NORM_BIT`).
const KEY_NORM_BIT: &str = "norm_bit";

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

/// Flower's `get_norm`: per-layer L2 norms (f32 for f32 layers), squared
/// and summed (in f32 when every layer is f32), square root, as f64.
fn update_norm(update: &[Data]) -> f64 {
    if update.iter().all(|d| !d.is_f64()) {
        let mut sum = 0.0f32;
        for d in update {
            let n = l2_norm(d) as f32;
            sum += n * n;
        }
        f64::from(sum.sqrt())
    } else {
        let mut sum = 0.0f64;
        for d in update {
            let n = l2_norm(d);
            sum += n * n;
        }
        sum.sqrt()
    }
}

/// Clips `x − g` to L2 norm `clipping_norm` and returns `(g + u, clipped)`.
/// A zero-norm update is [`StrategyError::ZeroNorm`] (Flower:
/// ZeroDivisionError).
fn clip_model(
    x: &[Layer],
    g: &[Layer],
    clipping_norm: f64,
) -> Result<(Vec<Layer>, bool), StrategyError> {
    let update: Vec<Data> = x
        .iter()
        .zip(g)
        .map(|(x, g)| layers::sub(&x.data, &g.data))
        .collect();
    let norm = update_norm(&update);
    if norm == 0.0 {
        return Err(StrategyError::ZeroNorm);
    }
    let ratio = clipping_norm / norm;
    // Python's min(1, ratio): 1 unless ratio < 1 (a NaN ratio keeps 1).
    let clipped = ratio < 1.0;
    let out = x
        .iter()
        .zip(g)
        .zip(update)
        .map(|((x, g), u)| {
            let u = if clipped {
                layers::scale_weak(&u, ratio)
            } else {
                u
            };
            x.with_data(layers::add(&g.data, &u))
        })
        .collect();
    Ok((out, clipped))
}

/// Adds `N(0, σ²)` to every element (cast to the layer's dtype). σ = 0
/// leaves the parameters untouched.
fn add_noise(
    params: Parameters,
    std: f64,
    rng: &mut NoiseRng,
) -> Result<Parameters, StrategyError> {
    if std == 0.0 {
        return Ok(params);
    }
    let mut layers = decode_all(&params)?;
    for layer in &mut layers {
        match &mut layer.data {
            Data::F32(v) => v.iter_mut().for_each(|x| *x += rng.normal(0.0, std) as f32),
            Data::F64(v) => v.iter_mut().for_each(|x| *x += rng.normal(0.0, std)),
        }
    }
    Ok(encode_all(&layers))
}

/// `C ← C·exp(−lr·((b + N(0, σ_b²))/R − γ))`.
fn update_clip_norm(
    c: f64,
    bits: usize,
    results: usize,
    stddev: f64,
    lr: f64,
    target: f64,
    rng: &mut NoiseRng,
) -> f64 {
    let noised = rng.normal(bits as f64, stddev);
    c * (-lr * (noised / results as f64 - target)).exp()
}

/// Flower's `compute_adaptive_noise_params`: `(clipped_count_stddev,
/// effective noise multiplier)`.
fn adaptive_noise_params(
    z: f64,
    num_sampled_clients: usize,
    stddev: Option<f64>,
) -> Result<(f64, f64), StrategyError> {
    if z > 0.0 {
        let sb = stddev.unwrap_or(num_sampled_clients as f64 / 20.0);
        if z >= 2.0 * sb {
            return Err(StrategyError::Config(format!(
                "clipped_count_stddev ({sb}) is too low for the noise multiplier ({z}): it must exceed \
                 noise_multiplier / 2 (by default it is num_sampled_clients / 20)"
            )));
        }
        let zd = (z.powi(-2) - (2.0 * sb).powi(-2)).powf(-0.5);
        if zd / z >= 2.0 {
            tracing::warn!(
                factor = zd / z,
                "adaptive clipping adds a lot of noise; consider increasing clipped_count_stddev"
            );
        }
        Ok((sb, zd))
    } else {
        Ok((stddev.unwrap_or(0.0), 0.0))
    }
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
struct WrapRound {
    server_round: u64,
    results: usize,
    /// Results that were clipped (server side) or reported a set norm bit.
    bits: usize,
    /// Server-side clipping: the round's global model and its layout.
    global: Option<(Vec<Layer>, Vec<LayerSpec>)>,
}

impl WrapRound {
    fn new(server_round: u64) -> Self {
        WrapRound {
            server_round,
            results: 0,
            bits: 0,
            global: None,
        }
    }
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
        return Err(StrategyError::Other(
            "no global model for this round".into(),
        ));
    };
    let views = parse_views(&result.parameters)?;
    check_views(layout, &views, DtypeRule::FloatWidthOrInt, None)?;
    let x: Vec<Layer> = views.iter().map(view_to_layer).collect::<Result<_, _>>()?;
    let (clipped, was_clipped) = clip_model(&x, global, clipping_norm)?;
    result.parameters = encode_all(&clipped);
    if was_clipped {
        round.bits += 1;
    }
    Ok(result)
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

fn norm_bit(result: &FitRes, key: &str) -> Result<bool, StrategyError> {
    result
        .metrics
        .get(key)
        .map(truthy)
        .ok_or_else(|| StrategyError::MissingMetric(key.to_owned()))
}

/// What every wrapper holds: the wrapped strategy, the number of sampled
/// clients the noise is calibrated for, the noise stream and the round's
/// bookkeeping; with the steps of the round protocol they all share.
struct Wrap {
    inner: Box<dyn Strategy>,
    num_sampled_clients: usize,
    rng: NoiseRng,
    round: Option<WrapRound>,
}

impl Wrap {
    fn new(inner: Box<dyn Strategy>, num_sampled_clients: usize, seed: Option<u64>) -> Self {
        Wrap {
            inner,
            num_sampled_clients,
            rng: NoiseRng::new(seed),
            round: None,
        }
    }

    /// `begin_fit`: a new round (keeping the global model when the server
    /// clips), then the inner strategy's.
    fn begin(
        &mut self,
        server_round: u64,
        global: &Parameters,
        server_side: bool,
    ) -> Result<(), StrategyError> {
        self.round = None;
        let mut round = WrapRound::new(server_round);
        if server_side {
            round.global = Some((decode_all(global)?, parse_layout(global)?));
        }
        self.round = Some(round);
        self.inner.begin_fit(server_round, global)
    }

    /// Errors unless `server_round` is the round in progress.
    fn check(&self, server_round: u64) -> Result<(), StrategyError> {
        check_round(self.round.as_ref().map(|r| r.server_round), server_round)
    }

    /// Server-side clipping: clips the result to `clipping_norm` and hands
    /// it over; it counts (and counts as clipped) only if the inner strategy
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
        if let Err(e) = self.inner.accumulate_fit(server_round, client, clipped) {
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
        self.inner.accumulate_fit(server_round, client, result)?;
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

    /// The inner strategy's aggregate with `N(0, std²)` added.
    fn noised(
        &mut self,
        (params, metrics): (Option<Parameters>, Metrics),
        std: f64,
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let params = params
            .map(|p| add_noise(p, std, &mut self.rng))
            .transpose()?;
        Ok((params, metrics))
    }

    /// `{"inner", <norm key>?, "rng"}`.
    fn state(&self, norm: Option<(&str, f64)>) -> serde_json::Value {
        let mut state = serde_json::Map::new();
        state.insert("inner".into(), self.inner.state());
        if let Some((key, c)) = norm {
            state.insert(key.into(), c.into());
        }
        state.insert("rng".into(), self.rng.state());
        serde_json::Value::Object(state)
    }

    /// Restores what [`Wrap::state`] wrote (a null state restores nothing).
    fn restore(
        &mut self,
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
            state
                .get("inner")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        )
    }
}

// ---- Adaptive clipping options ------------------------------------------------

/// Options of the adaptive-clipping wrappers (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClippingOptions {
    /// Initial clipping norm C0 (default 0.1).
    pub initial_clipping_norm: f64,
    /// Target fraction γ of clipped updates (default 0.5).
    pub target_clipped_quantile: f64,
    /// Learning rate η_C of the norm update (default 0.2).
    pub clip_norm_lr: f64,
    /// Stddev σ_b of the clipped-count noise (default: `n_s/20` when the
    /// noise multiplier is positive, else 0).
    pub clipped_count_stddev: Option<f64>,
}

impl Default for AdaptiveClippingOptions {
    fn default() -> Self {
        AdaptiveClippingOptions {
            initial_clipping_norm: 0.1,
            target_clipped_quantile: 0.5,
            clip_norm_lr: 0.2,
            clipped_count_stddev: None,
        }
    }
}

/// The adaptive state shared by both adaptive wrappers.
#[derive(Debug)]
struct Adaptive {
    clipping_norm: f64,
    target: f64,
    lr: f64,
    count_stddev: f64,
    noise_multiplier: f64,
}

impl Adaptive {
    fn new(
        noise_multiplier: f64,
        num_sampled_clients: usize,
        o: AdaptiveClippingOptions,
    ) -> Result<Self, StrategyError> {
        validate_common(noise_multiplier, num_sampled_clients)?;
        if !positive(o.initial_clipping_norm) {
            return Err(config_err(
                "The initial clipping norm should be a positive value.",
            ));
        }
        if !(0.0..=1.0).contains(&o.target_clipped_quantile) {
            return Err(config_err(
                "The target clipped quantile must be between 0 and 1 (inclusive).",
            ));
        }
        if !positive(o.clip_norm_lr) {
            return Err(config_err("The learning rate must be positive."));
        }
        if let Some(s) = o.clipped_count_stddev {
            if !non_negative(s) {
                return Err(config_err(
                    "The `clipped_count_stddev` must be non-negative.",
                ));
            }
        }
        let (count_stddev, noise_multiplier) = adaptive_noise_params(
            noise_multiplier,
            num_sampled_clients,
            o.clipped_count_stddev,
        )?;
        Ok(Adaptive {
            clipping_norm: o.initial_clipping_norm,
            target: o.target_clipped_quantile,
            lr: o.clip_norm_lr,
            count_stddev,
            noise_multiplier,
        })
    }

    fn update(&mut self, bits: usize, results: usize, rng: &mut NoiseRng) {
        if results == 0 {
            // Flower divides by zero here; with no results there is nothing to adapt to.
            return;
        }
        self.clipping_norm = update_clip_norm(
            self.clipping_norm,
            bits,
            results,
            self.count_stddev,
            self.lr,
            self.target,
            rng,
        );
    }
}

// ---- Central DP: server- or client-side, fixed or adaptive clipping ---------------

/// How a central-DP wrapper chooses its clipping norm.
enum Clip {
    Fixed {
        noise_multiplier: f64,
        clipping_norm: f64,
    },
    Adaptive(Adaptive),
}

impl Clip {
    /// The current clipping norm.
    fn norm(&self) -> f64 {
        match self {
            Clip::Fixed { clipping_norm, .. } => *clipping_norm,
            Clip::Adaptive(a) => a.clipping_norm,
        }
    }

    /// The (effective) noise multiplier.
    fn noise_multiplier(&self) -> f64 {
        match self {
            Clip::Fixed {
                noise_multiplier, ..
            } => *noise_multiplier,
            Clip::Adaptive(a) => a.noise_multiplier,
        }
    }
}

/// The four `DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`
/// wrappers, which differ only in who clips (`server_side`) and how the
/// norm is chosen (`clip`).
struct Central {
    w: Wrap,
    server_side: bool,
    clip: Clip,
}

impl Central {
    fn fixed(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        clipping_norm: f64,
        num_sampled_clients: usize,
        seed: Option<u64>,
        server_side: bool,
    ) -> Result<Self, StrategyError> {
        validate_common(noise_multiplier, num_sampled_clients)?;
        if !positive(clipping_norm) {
            return Err(config_err(if server_side {
                "The clipping norm should be a positive value."
            } else {
                "The clipping threshold should be a positive value."
            }));
        }
        Ok(Central {
            w: Wrap::new(inner, num_sampled_clients, seed),
            server_side,
            clip: Clip::Fixed {
                noise_multiplier,
                clipping_norm,
            },
        })
    }

    fn adaptive(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        num_sampled_clients: usize,
        options: AdaptiveClippingOptions,
        seed: Option<u64>,
        server_side: bool,
    ) -> Result<Self, StrategyError> {
        Ok(Central {
            w: Wrap::new(inner, num_sampled_clients, seed),
            server_side,
            clip: Clip::Adaptive(Adaptive::new(
                noise_multiplier,
                num_sampled_clients,
                options,
            )?),
        })
    }

    /// Adapts the clipping norm to the round's clipped count (adaptive only).
    fn adapt(&mut self, round: &WrapRound) {
        if let Clip::Adaptive(a) = &mut self.clip {
            a.update(round.bits, round.results, &mut self.w.rng);
        }
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct(name);
        d.field("inner", &self.w.inner.name());
        match &self.clip {
            Clip::Fixed {
                noise_multiplier,
                clipping_norm,
            } => d
                .field("noise_multiplier", noise_multiplier)
                .field("clipping_norm", clipping_norm)
                .field("num_sampled_clients", &self.w.num_sampled_clients),
            Clip::Adaptive(a) => d
                .field("num_sampled_clients", &self.w.num_sampled_clients)
                .field("adaptive", a),
        };
        d.finish_non_exhaustive()
    }
}

impl Strategy for Central {
    fn name(&self) -> &str {
        match (self.server_side, &self.clip) {
            (true, Clip::Fixed { .. }) => "DifferentialPrivacyServerSideFixedClipping",
            (true, Clip::Adaptive(_)) => "DifferentialPrivacyServerSideAdaptiveClipping",
            (false, Clip::Fixed { .. }) => "DifferentialPrivacyClientSideFixedClipping",
            (false, Clip::Adaptive(_)) => "DifferentialPrivacyClientSideAdaptiveClipping",
        }
    }

    forward_to_inner!(w.inner =>
        initialize_parameters,
        min_available_clients,
        evaluate,
        configure_evaluate,
        aggregate_evaluate,
    );

    /// Client-side clipping tells clients the norm (`"clipping_norm": C`).
    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        let mut ins = self
            .w
            .inner
            .configure_fit(server_round, parameters, clients)?;
        if !self.server_side {
            add_fit_config(
                &mut ins,
                &[(KEY_CLIPPING_NORM, Scalar::Double(self.clip.norm()))],
            );
        }
        Ok(ins)
    }

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        self.w.begin(server_round, global, self.server_side)
    }

    /// Server side: clip with the current norm. Client side: count the
    /// clients' `norm_bit` (adaptive; a result without it is refused).
    fn accumulate_fit(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        if self.server_side {
            let c = self.clip.norm();
            return self.w.accumulate_clipped(server_round, client, result, c);
        }
        self.w.check(server_round)?;
        let bit = match self.clip {
            Clip::Adaptive(_) => norm_bit(&result, KEY_NORM_BIT)?,
            Clip::Fixed { .. } => false,
        };
        self.w.accumulate_counted(server_round, client, result, bit)
    }

    /// The inner aggregate plus noise `N(0, (z·C/n_s)²)`; an adaptive norm
    /// is updated before the noise (on the server side before the inner
    /// aggregation, on the client side after it, as in Flower).
    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.w.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        warn_count(round.results, self.w.num_sampled_clients);
        if self.server_side {
            self.adapt(&round);
        }
        let out = self.w.inner.aggregate_fit(server_round, failures)?;
        if !self.server_side {
            self.adapt(&round);
        }
        let std = self
            .w
            .noise_std(self.clip.noise_multiplier(), self.clip.norm());
        self.w.noised(out, std)
    }

    fn state(&self) -> serde_json::Value {
        match &self.clip {
            Clip::Fixed { .. } => self.w.state(None),
            Clip::Adaptive(a) => self.w.state(Some(("clipping_norm", a.clipping_norm))),
        }
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), StrategyError> {
        match &mut self.clip {
            Clip::Fixed { .. } => self.w.restore(state, None),
            // The adaptive wrappers hand even a null state on to the inner strategy.
            Clip::Adaptive(_) if state.is_null() => self.w.inner.restore_state(state),
            Clip::Adaptive(a) => self
                .w
                .restore(state, Some(("clipping_norm", &mut a.clipping_norm))),
        }
    }
}

/// Declares a public central-DP wrapper type over [`Central`]: its `Debug`
/// (under the type's name) and a [`Strategy`] impl forwarding everything.
macro_rules! central_wrapper {
    ($(#[$doc:meta])* $t:ident) => {
        $(#[$doc])*
        pub struct $t(Central);

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.debug(stringify!($t), f)
            }
        }

        impl Strategy for $t {
            forward_to_inner!(0 => all);
        }
    };
}

central_wrapper! {
    /// Flower's `DifferentialPrivacyServerSideFixedClipping`: every update
    /// `x − g` is clipped to `clipping_norm` on the server, the inner strategy
    /// aggregates, and `N(0, (z·C/n_s)²)` noise is added to its result.
    DpServerSideFixedClipping
}

impl DpServerSideFixedClipping {
    /// Wraps `inner`. `seed` seeds the noise (`None`: from the OS).
    pub fn new(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        clipping_norm: f64,
        num_sampled_clients: usize,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        Central::fixed(
            inner,
            noise_multiplier,
            clipping_norm,
            num_sampled_clients,
            seed,
            true,
        )
        .map(Self)
    }
}

central_wrapper! {
    /// Flower's `DifferentialPrivacyServerSideAdaptiveClipping`: clips every
    /// update with the current norm C, counts the clipped ones (b), updates
    /// `C ← C·exp(−η_C·((b + N(0,σ_b²))/R − γ))`, lets the inner strategy
    /// aggregate, then adds `N(0, (z_Δ·C/n_s)²)` with the new C.
    DpServerSideAdaptiveClipping
}

impl DpServerSideAdaptiveClipping {
    /// Wraps `inner`. `seed` seeds the noise (`None`: from the OS).
    pub fn new(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        num_sampled_clients: usize,
        options: AdaptiveClippingOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        Central::adaptive(
            inner,
            noise_multiplier,
            num_sampled_clients,
            options,
            seed,
            true,
        )
        .map(Self)
    }

    /// The current clipping norm.
    pub fn clipping_norm(&self) -> f64 {
        self.0.clip.norm()
    }
}

central_wrapper! {
    /// Flower's `DifferentialPrivacyClientSideFixedClipping`: clients clip (the
    /// fit config gains `"clipping_norm": C`), the inner strategy aggregates,
    /// and `N(0, (z·C/n_s)²)` noise is added.
    DpClientSideFixedClipping
}

impl DpClientSideFixedClipping {
    /// Wraps `inner`. `seed` seeds the noise (`None`: from the OS).
    pub fn new(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        clipping_norm: f64,
        num_sampled_clients: usize,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        Central::fixed(
            inner,
            noise_multiplier,
            clipping_norm,
            num_sampled_clients,
            seed,
            false,
        )
        .map(Self)
    }
}

central_wrapper! {
    /// Flower's `DifferentialPrivacyClientSideAdaptiveClipping`: the fit config
    /// gains `"clipping_norm": C`; clients clip and report `norm_bit` ("was
    /// clipped"); after the inner aggregation C is updated from the count of set
    /// bits, then noise `N(0, (z_Δ·C/n_s)²)` is added with the new C. A result
    /// without `norm_bit` is refused with [`StrategyError::MissingMetric`].
    DpClientSideAdaptiveClipping
}

impl DpClientSideAdaptiveClipping {
    /// Wraps `inner`. `seed` seeds the noise (`None`: from the OS).
    pub fn new(
        inner: Box<dyn Strategy>,
        noise_multiplier: f64,
        num_sampled_clients: usize,
        options: AdaptiveClippingOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        Central::adaptive(
            inner,
            noise_multiplier,
            num_sampled_clients,
            options,
            seed,
            false,
        )
        .map(Self)
    }

    /// The current clipping norm.
    pub fn clipping_norm(&self) -> f64 {
        self.0.clip.norm()
    }
}

// ---- DPFedAvgFixed / DPFedAvgAdaptive (deprecated in Flower) ------------------------

/// Flower's deprecated `DPFedAvgFixed`: the fit config gains
/// `dpfedavg_clip_norm` (and `dpfedavg_noise_stddev` when
/// `server_side_noising` is false); every result gets `num_examples := 1`
/// and f64 noise `N(0, (z·C/√n_s)²)` (even when `server_side_noising` is
/// false, as in Flower), which makes the arrays f64; then the inner strategy
/// aggregates (an unweighted mean with FedAvg).
pub struct DpFedAvgFixed {
    w: Wrap,
    clip_norm: f64,
    noise_multiplier: f64,
    server_side_noising: bool,
    /// `Some` for DPFedAvgAdaptive.
    adaptive: Option<FedAvgAdaptiveState>,
}

#[derive(Debug)]
struct FedAvgAdaptiveState {
    clip_norm_lr: f64,
    target_quantile: f64,
    clip_count_stddev: f64,
}

impl fmt::Debug for DpFedAvgFixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if self.adaptive.is_some() {
            "DpFedAvgAdaptive"
        } else {
            "DpFedAvgFixed"
        })
        .field("inner", &self.w.inner.name())
        .field("num_sampled_clients", &self.w.num_sampled_clients)
        .field("clip_norm", &self.clip_norm)
        .field("noise_multiplier", &self.noise_multiplier)
        .field("server_side_noising", &self.server_side_noising)
        .field("adaptive", &self.adaptive)
        .finish_non_exhaustive()
    }
}

impl DpFedAvgFixed {
    /// Wraps `inner` (Flower's defaults: `noise_multiplier = 1`,
    /// `server_side_noising = true`). `seed` seeds the noise.
    pub fn new(
        inner: Box<dyn Strategy>,
        num_sampled_clients: usize,
        clip_norm: f64,
        noise_multiplier: f64,
        server_side_noising: bool,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        if !positive(clip_norm) {
            return Err(config_err(
                "The clipping threshold should be a positive value.",
            ));
        }
        validate_common(noise_multiplier, num_sampled_clients)?;
        Ok(DpFedAvgFixed {
            w: Wrap::new(inner, num_sampled_clients, seed),
            clip_norm,
            noise_multiplier,
            server_side_noising,
            adaptive: None,
        })
    }

    fn client_noise_stddev(&self) -> f64 {
        self.noise_multiplier * self.clip_norm / (self.w.num_sampled_clients as f64).sqrt()
    }

    /// The current clipping norm.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }
}

/// Options of [`DpFedAvgAdaptive`] (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpFedAvgAdaptiveOptions {
    /// Initial clipping norm (default 0.1).
    pub init_clip_norm: f64,
    /// Noise multiplier z (default 1.0).
    pub noise_multiplier: f64,
    /// Whether the server adds the noise (default true).
    pub server_side_noising: bool,
    /// Learning rate of the norm update (default 0.2).
    pub clip_norm_lr: f64,
    /// Target quantile of unclipped updates (default 0.5).
    pub clip_norm_target_quantile: f64,
    /// Stddev of the count noise (default: `n_s/20` when z > 0, else 0).
    pub clip_count_stddev: Option<f64>,
}

impl Default for DpFedAvgAdaptiveOptions {
    fn default() -> Self {
        DpFedAvgAdaptiveOptions {
            init_clip_norm: 0.1,
            noise_multiplier: 1.0,
            server_side_noising: true,
            clip_norm_lr: 0.2,
            clip_norm_target_quantile: 0.5,
            clip_count_stddev: None,
        }
    }
}

/// Flower's deprecated `DPFedAvgAdaptive`: [`DpFedAvgFixed`] whose clip norm
/// adapts after each aggregation from the clients' `dpfedavg_norm_bit`
/// (set when the update was **not** clipped):
/// `C ← C·exp(−lr·((b + N(0,σ_b²))/R − γ))`; the config also carries
/// `dpfedavg_adaptive_clip_enabled: true`. A result without the bit is
/// refused with [`StrategyError::MissingMetric`].
///
/// With `z > 0`, Flower computes `z ← (z⁻² − (2σ_b)⁻²)^(−1/2)` unguarded,
/// which is complex for `z ≥ 2σ_b`; that is a [`StrategyError::Config`] here.
#[derive(Debug)]
pub struct DpFedAvgAdaptive(DpFedAvgFixed);

impl DpFedAvgAdaptive {
    /// Wraps `inner`. `seed` seeds the noise (`None`: from the OS).
    pub fn new(
        inner: Box<dyn Strategy>,
        num_sampled_clients: usize,
        options: DpFedAvgAdaptiveOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        DpFedAvgFixed::new_adaptive(inner, num_sampled_clients, options, seed).map(DpFedAvgAdaptive)
    }

    /// The current clipping norm.
    pub fn clip_norm(&self) -> f64 {
        self.0.clip_norm
    }
}

impl Strategy for DpFedAvgAdaptive {
    forward_to_inner!(0 => all);
}

impl DpFedAvgFixed {
    fn new_adaptive(
        inner: Box<dyn Strategy>,
        num_sampled_clients: usize,
        options: DpFedAvgAdaptiveOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        let mut s = DpFedAvgFixed::new(
            inner,
            num_sampled_clients,
            options.init_clip_norm,
            options.noise_multiplier,
            options.server_side_noising,
            seed,
        )?;
        let z = options.noise_multiplier;
        let stddev = match options.clip_count_stddev {
            Some(s) if !non_negative(s) => {
                return Err(config_err("clip_count_stddev must be non-negative"))
            }
            Some(s) => s,
            None if z > 0.0 => num_sampled_clients as f64 / 20.0,
            None => 0.0,
        };
        if z != 0.0 {
            if !positive(2.0 * stddev - z) {
                return Err(StrategyError::Config(format!(
                    "noise_multiplier {z} needs clip_count_stddev > {}: Flower's (z^-2 - (2*clip_count_stddev)^-2)^-0.5 \
                     is complex (or divides by zero) otherwise (clip_count_stddev is {stddev})",
                    z / 2.0
                )));
            }
            s.noise_multiplier = (z.powi(-2) - (2.0 * stddev).powi(-2)).powf(-0.5);
        }
        s.adaptive = Some(FedAvgAdaptiveState {
            clip_norm_lr: options.clip_norm_lr,
            target_quantile: options.clip_norm_target_quantile,
            clip_count_stddev: stddev,
        });
        Ok(s)
    }
}

impl Strategy for DpFedAvgFixed {
    fn name(&self) -> &str {
        if self.adaptive.is_some() {
            "DPFedAvgAdaptive"
        } else {
            "DPFedAvgFixed"
        }
    }

    forward_to_inner!(w.inner =>
        initialize_parameters,
        min_available_clients,
        evaluate,
        configure_evaluate,
        aggregate_evaluate,
    );

    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        let mut ins = self
            .w
            .inner
            .configure_fit(server_round, parameters, clients)?;
        let mut entries = vec![("dpfedavg_clip_norm", Scalar::Double(self.clip_norm))];
        if !self.server_side_noising {
            entries.push((
                "dpfedavg_noise_stddev",
                Scalar::Double(self.client_noise_stddev()),
            ));
        }
        if self.adaptive.is_some() {
            entries.push(("dpfedavg_adaptive_clip_enabled", Scalar::Bool(true)));
        }
        add_fit_config(&mut ins, &entries);
        Ok(ins)
    }

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        self.w.begin(server_round, global, false)
    }

    fn accumulate_fit(
        &mut self,
        server_round: u64,
        client: ClientId,
        mut result: FitRes,
    ) -> Result<(), StrategyError> {
        self.w.check(server_round)?;
        let bit = match self.adaptive {
            Some(_) => norm_bit(&result, "dpfedavg_norm_bit")?,
            None => false,
        };
        let std = self.client_noise_stddev();
        let mut layers = decode_all(&result.parameters)?;
        for layer in &mut layers {
            // layer + np.random.normal(...): always float64.
            let mut v = layer.data.to_f64();
            v.iter_mut().for_each(|x| *x += self.w.rng.normal(0.0, std));
            layer.data = Data::F64(v);
            layer.half = false;
        }
        result.parameters = encode_all(&layers);
        result.num_examples = 1;
        self.w.accumulate_counted(server_round, client, result, bit)
    }

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.w.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let out = self.w.inner.aggregate_fit(server_round, failures)?;
        if let Some(a) = &self.adaptive {
            if round.results > 0 {
                self.clip_norm = update_clip_norm(
                    self.clip_norm,
                    round.bits,
                    round.results,
                    a.clip_count_stddev,
                    a.clip_norm_lr,
                    a.target_quantile,
                    &mut self.w.rng,
                );
            }
        }
        Ok(out)
    }

    fn state(&self) -> serde_json::Value {
        self.w.state(Some(("clip_norm", self.clip_norm)))
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), StrategyError> {
        self.w
            .restore(state, Some(("clip_norm", &mut self.clip_norm)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_the_update() {
        let g = vec![Layer {
            shape: vec![2],
            data: Data::F32(vec![1.0, 1.0]),
            half: false,
        }];
        let x = vec![Layer {
            shape: vec![2],
            data: Data::F32(vec![4.0, 5.0]),
            half: false,
        }];
        let (c, clipped) = clip_model(&x, &g, 2.5).unwrap();
        assert!(clipped);
        assert_eq!(c[0].data, Data::F32(vec![2.5, 3.0]));
        let (c, clipped) = clip_model(&x, &g, 10.0).unwrap();
        assert!(!clipped);
        assert_eq!(c[0].data, x[0].data);
        assert_eq!(
            clip_model(&g, &g, 1.0).unwrap_err(),
            StrategyError::ZeroNorm
        );
    }

    #[test]
    fn noise_has_the_requested_stddev_and_is_seeded() {
        let zeros = encode_all(&[Layer {
            shape: vec![20_000],
            data: Data::F32(vec![0.0; 20_000]),
            half: false,
        }]);
        let noisy = |seed| {
            let mut rng = NoiseRng::new(Some(seed));
            let p = add_noise(zeros.clone(), 0.5, &mut rng).unwrap();
            decode_all(&p).unwrap().remove(0).data.to_f64()
        };
        let a = noisy(9);
        assert_eq!(a, noisy(9));
        assert_ne!(a, noisy(10));
        let n = a.len() as f64;
        let mean = a.iter().sum::<f64>() / n;
        let std = (a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        assert!(
            mean.abs() < 0.02 && (std - 0.5).abs() < 0.02,
            "mean {mean}, std {std}"
        );
        // σ = 0 leaves the parameters untouched.
        let mut rng = NoiseRng::new(Some(1));
        assert_eq!(add_noise(zeros.clone(), 0.0, &mut rng).unwrap(), zeros);
    }

    #[test]
    fn dpfedavg_adaptive_rejects_complex_noise_multiplier() {
        let inner = || -> Box<dyn Strategy> {
            Box::new(crate::FedAvg::new(crate::FedAvgOptions::default()).unwrap())
        };
        // n_s = 10 → σ_b = 0.5 → z = 1 ≥ 2σ_b: complex in Flower.
        let o = DpFedAvgAdaptiveOptions::default();
        assert!(matches!(
            DpFedAvgAdaptive::new(inner(), 10, o, None),
            Err(StrategyError::Config(_))
        ));
        let o = DpFedAvgAdaptiveOptions {
            clip_count_stddev: Some(0.0),
            ..o
        };
        assert!(matches!(
            DpFedAvgAdaptive::new(inner(), 100, o, None),
            Err(StrategyError::Config(_))
        ));
        assert!(
            DpFedAvgAdaptive::new(inner(), 100, DpFedAvgAdaptiveOptions::default(), None).is_ok()
        );
    }

    #[test]
    fn adaptive_noise_parameters() {
        assert_eq!(adaptive_noise_params(0.0, 10, None).unwrap(), (0.0, 0.0));
        assert!(adaptive_noise_params(1.0, 10, None).is_err());
        let (sb, z) = adaptive_noise_params(1.0, 100, None).unwrap();
        assert_eq!(sb, 5.0);
        assert!((z - (1.0f64 - 0.01).powf(-0.5)).abs() < 1e-15);
    }
}
