//! Prometheus metrics and the run's event stream.
//!
//! A [`Metrics`] handle is cheap to clone; one is shared by the
//! [`ClientManager`](crate::ClientManager) (transports reach it there: client
//! joins, bytes in and out), the round driver (as a [`RunObserver`]) and
//! whatever else registers scrape-time values ([`Metrics::gauge_fn`],
//! [`Metrics::counter_fn`]: token sets, the Fleet API's object store).
//! Counters are atomics, so an unscraped handle costs next to nothing.
//! [`serve`] exposes `/metrics` (Prometheus text format 0.0.4, encoded by
//! `prometheus-client`), `/healthz` and `/readyz`.

mod body;
mod events;
mod http;
mod process;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use body::CountingBody;
pub use events::{LogProgress, Phase, RunEvent, RunObserver};
pub use http::{serve, MetricsEndpoint};

/// Label set `transport="..."`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// Label set `phase="..."`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// Label set `phase="...", reason="..."`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    phase: &'static str,
    reason: &'static str,
}

/// The phases reported by `flower_round_phase` (one of them is 1).
const PHASES: [Phase; 5] = [
    Phase::Waiting,
    Phase::Initializing,
    Phase::Fit,
    Phase::Evaluate,
    Phase::Done,
];

/// One sample of a scrape-time metric: labels and value.
pub type Sample = (Vec<(&'static str, String)>, f64);

type SampleFn = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// Metrics whose values are read when scraped.
struct FnMetric {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: SampleFn,
}

#[derive(Default)]
struct FnCollector {
    metrics: Mutex<Vec<FnMetric>>,
}

impl std::fmt::Debug for FnCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnCollector").finish_non_exhaustive()
    }
}

impl Collector for FnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for metric in metrics.iter() {
            let samples = (metric.samples)();
            let mut family =
                encoder.encode_descriptor(metric.name, metric.help, None, metric.kind)?;
            for (labels, value) in &samples {
                let mut sample = family.encode_family(labels)?;
                match metric.kind {
                    // Counters never go down: a negative reading is a bug
                    // upstream, clamp rather than emit an invalid counter.
                    MetricType::Counter => sample
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, f64, f64>(
                            &value.max(0.0),
                            None,
                        )?,
                    _ => sample.encode_gauge(value)?,
                }
            }
        }
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    collector: Arc<FnCollector>,
    ready: AtomicBool,
    clients: Family<TransportLabel, Gauge>,
    joins: Family<TransportLabel, Counter>,
    bytes_received: Family<TransportLabel, Counter>,
    bytes_sent: Family<TransportLabel, Counter>,
    round: Gauge,
    rounds_planned: Gauge,
    phase: Family<PhaseLabel, Gauge>,
    round_seconds: Histogram,
    phase_seconds: Family<PhaseLabel, Histogram>,
    results: Family<PhaseLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    last_results: Family<PhaseLabel, Gauge>,
    last_failures: Family<PhaseLabel, Gauge>,
    last_loss: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The server's metrics: a Prometheus registry with the families below,
/// plus the readiness flag of `/readyz`. Cloning shares them.
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `flower_clients_connected` | gauge | `transport` |
/// | `flower_clients_joined_total` | counter | `transport` |
/// | `flower_bytes_received_total`, `flower_bytes_sent_total` | counter | `transport` |
/// | `flower_round`, `flower_rounds_planned` | gauge | |
/// | `flower_round_phase` | gauge (1 for the current phase) | `phase` |
/// | `flower_round_duration_seconds` | histogram | |
/// | `flower_phase_duration_seconds` | histogram | `phase` |
/// | `flower_results_total` | counter | `phase` |
/// | `flower_failures_total` | counter | `phase`, `reason` |
/// | `flower_last_round_results`, `flower_last_round_failures` | gauge | `phase` |
/// | `flower_last_round_loss` | gauge | |
/// | `flower_upload_gate_*` | gauge | (from the client manager) |
/// | `process_*` | gauge/counter | RSS, CPU, open fds, threads, start time |
///
/// and whatever is added with [`gauge_fn`](Self::gauge_fn) /
/// [`counter_fn`](Self::counter_fn) (auth, Fleet API).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered and zeroed.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let clients = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "flower_clients_connected",
            "Clients (grpc-bidi streams, Fleet API SuperNodes) connected now",
            clients.clone(),
        );
        let joins = Family::<TransportLabel, Counter>::default();
        registry.register(
            "flower_clients_joined",
            "Clients that joined since start",
            joins.clone(),
        );
        let bytes_received = Family::<TransportLabel, Counter>::default();
        registry.register(
            "flower_bytes_received",
            "Request body bytes received from clients",
            bytes_received.clone(),
        );
        let bytes_sent = Family::<TransportLabel, Counter>::default();
        registry.register(
            "flower_bytes_sent",
            "Response body bytes sent to clients",
            bytes_sent.clone(),
        );
        let round = Gauge::default();
        registry.register(
            "flower_round",
            "Current (or last started) round",
            round.clone(),
        );
        let rounds_planned = Gauge::default();
        registry.register(
            "flower_rounds_planned",
            "Rounds the run was started with",
            rounds_planned.clone(),
        );
        let phase = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "flower_round_phase",
            "1 for the phase the run is in, 0 for the others",
            phase.clone(),
        );
        let buckets = || exponential_buckets(0.05, 2.0, 16);
        let round_seconds = Histogram::new(buckets());
        registry.register(
            "flower_round_duration_seconds",
            "Wall time of a round (fit + evaluate, without waiting for clients)",
            round_seconds.clone(),
        );
        let phase_seconds =
            Family::<PhaseLabel, Histogram>::new_with_constructor(fn_buckets as fn() -> Histogram);
        registry.register(
            "flower_phase_duration_seconds",
            "Wall time of a fit or evaluate phase",
            phase_seconds.clone(),
        );
        let results = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "flower_results",
            "Client results aggregated",
            results.clone(),
        );
        let failures = Family::<FailureLabel, Counter>::default();
        registry.register(
            "flower_failures",
            "Client failures, by reason",
            failures.clone(),
        );
        let last_results = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "flower_last_round_results",
            "Results aggregated in the last completed phase",
            last_results.clone(),
        );
        let last_failures = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "flower_last_round_failures",
            "Failures in the last completed phase",
            last_failures.clone(),
        );
        let last_loss = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "flower_last_round_loss",
            "Aggregated evaluate loss of the last round that had one",
            last_loss.clone(),
        );
        let collector = Arc::new(FnCollector::default());
        registry.register_collector(Box::new(collector.clone()));
        registry.register_collector(Box::new(process::ProcessCollector));
        for p in PHASES {
            phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(0);
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                collector,
                ready: AtomicBool::new(false),
                clients,
                joins,
                bytes_received,
                bytes_sent,
                round,
                rounds_planned,
                phase,
                round_seconds,
                phase_seconds,
                results,
                failures,
                last_results,
                last_failures,
                last_loss,
            }),
        }
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would come from a
        // collector, and a partial page is still better than none.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Marks the server ready (`/readyz` answers 200) or not.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Adds a gauge whose samples are read by `samples` at every scrape.
    /// `name` must be unique in the registry.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        samples: impl Fn() -> Vec<Sample> + Send + Sync + 'static,
    ) {
        self.add_fn(name, help, MetricType::Gauge, Box::new(samples));
    }

    /// Adds a counter (give `name` without `_total`: the encoder appends
    /// it) whose samples are read by `samples` at every scrape.
    pub fn counter_fn(
        &self,
        name: &'static str,
        help: &'static str,
        samples: impl Fn() -> Vec<Sample> + Send + Sync + 'static,
    ) {
        self.add_fn(name, help, MetricType::Counter, Box::new(samples));
    }

    fn add_fn(&self, name: &'static str, help: &'static str, kind: MetricType, samples: SampleFn) {
        let mut metrics = self
            .inner
            .collector
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A second registration (a rebuilt server on the same handle)
        // replaces the first: two families of one name would be invalid.
        metrics.retain(|m| m.name != name);
        metrics.push(FnMetric {
            name,
            help,
            kind,
            samples,
        });
    }

    /// A client of `transport` joined.
    pub fn client_joined(&self, transport: &'static str) {
        let label = TransportLabel { transport };
        self.inner.clients.get_or_create(&label).inc();
        self.inner.joins.get_or_create(&label).inc();
    }

    /// A client of `transport` left.
    pub fn client_left(&self, transport: &'static str) {
        self.inner
            .clients
            .get_or_create(&TransportLabel { transport })
            .dec();
    }

    /// The counter of bytes received through `transport`.
    pub fn bytes_received(&self, transport: &'static str) -> Counter {
        self.inner
            .bytes_received
            .get_or_create(&TransportLabel { transport })
            .clone()
    }

    /// The counter of bytes sent through `transport`.
    pub fn bytes_sent(&self, transport: &'static str) -> Counter {
        self.inner
            .bytes_sent
            .get_or_create(&TransportLabel { transport })
            .clone()
    }

    fn set_phase(&self, current: Phase) {
        for p in PHASES {
            self.inner
                .phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(i64::from(p == current));
        }
    }
}

fn fn_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RunObserver for Metrics {
    fn on_event(&self, event: &RunEvent<'_>) {
        let m = &self.inner;
        match *event {
            RunEvent::RunStarted { num_rounds, .. } => {
                m.rounds_planned.set(gauge_i64(num_rounds));
                self.set_phase(Phase::Initializing);
            }
            RunEvent::Waiting { .. } => self.set_phase(Phase::Waiting),
            RunEvent::PhaseStarted { round, phase, .. } => {
                m.round.set(gauge_i64(round));
                self.set_phase(phase);
            }
            RunEvent::PhaseEnded {
                phase,
                results,
                failures,
                elapsed,
                ..
            } => {
                let label = PhaseLabel {
                    phase: phase.as_str(),
                };
                m.phase_seconds
                    .get_or_create(&label)
                    .observe(elapsed.as_secs_f64());
                m.results.get_or_create(&label).inc_by(results as u64);
                m.last_results.get_or_create(&label).set(results as i64);
                m.last_failures
                    .get_or_create(&label)
                    .set(failures.len() as i64);
                for reason in failures {
                    m.failures
                        .get_or_create(&FailureLabel {
                            phase: phase.as_str(),
                            reason,
                        })
                        .inc();
                }
            }
            RunEvent::RoundEnded { elapsed, loss, .. } => {
                m.round_seconds.observe(elapsed.as_secs_f64());
                if let Some(loss) = loss {
                    m.last_loss.set(loss);
                }
            }
            RunEvent::RunEnded { .. } => self.set_phase(Phase::Done),
        }
    }
}
