//! The benchmark model and the `clients` subcommand: many Rust clients in
//! one process, each a `start_client` task on one Tokio runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flower_client::{start_client, BoxError, ClientOptions, NumPyClient};
use flower_core::{Config, Metrics, NdArray, Scalar};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

/// Environment variable carrying the bearer token to the `clients` process
/// (kept off its command line).
pub(crate) const TOKEN_ENV: &str = "FLOWER_BENCH_TOKEN";

/// Prefix of the one summary line the `clients` process prints on stdout.
pub(crate) const SUMMARY_PREFIX: &str = "FLOWER_BENCH_CLIENTS ";

/// Examples each client reports for fit and evaluate (equal weights).
const NUM_EXAMPLES: u64 = 100;

/// Layer sizes of a `params`-parameter model: `P/2, P/4, P/8, rest`, as
/// `python/flower_test_client.py` builds it with `FLOWER_TEST_PARAMS=P`.
pub(crate) fn layer_sizes(params: usize) -> [usize; 4] {
    let (a, b, c) = (params / 2, params / 4, params / 8);
    [a, b, c, params - a - b - c]
}

/// `numpy.linspace(start, stop, n, dtype=float32)`: computed in `f64`, the
/// last element set to `stop`, then cast.
pub(crate) fn linspace_f32(start: f64, stop: f64, n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start as f32];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f32> = (0..n).map(|i| (i as f64 * step + start) as f32).collect();
    v[n - 1] = stop as f32;
    v
}

/// The benchmark model: 4 float32 layers, each `linspace(-1, 1, size)`
/// (bit-for-bit what the Python reference server starts from).
pub(crate) fn model(params: usize) -> Vec<NdArray> {
    layer_sizes(params)
        .iter()
        .map(|&n| {
            NdArray::F32(
                ArrayD::from_shape_vec(IxDyn(&[n]), linspace_f32(-1.0, 1.0, n))
                    .expect("1-D shape matches"),
            )
        })
        .collect()
}

/// Shared counters of a client process.
#[derive(Debug, Default)]
struct Stats {
    /// Milliseconds since process start of the first `fit` call (min/max
    /// over clients; `u64::MAX` / 0 when none).
    first_fit_min_ms: AtomicU64,
    first_fit_max_ms: AtomicU64,
}

/// A client that does no training: `fit` returns the received arrays
/// scaled by a factor close to 1 (different per client), `evaluate` a
/// cheap loss; both with a fixed example count.
#[derive(Debug)]
struct BenchClient {
    index: usize,
    params: usize,
    fits: u64,
    started: Instant,
    stats: Arc<Stats>,
}

impl NumPyClient for BenchClient {
    fn get_parameters(&mut self, _config: &Config) -> Result<Vec<NdArray>, BoxError> {
        Ok(model(self.params))
    }

    fn fit(
        &mut self,
        mut parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        if self.fits == 0 {
            let ms = self.started.elapsed().as_millis() as u64;
            self.stats.first_fit_min_ms.fetch_min(ms, Ordering::Relaxed);
            self.stats.first_fit_max_ms.fetch_max(ms, Ordering::Relaxed);
        }
        self.fits += 1;
        let factor = 1.0 + 1e-4 * ((self.index % 16) as f32 + 1.0);
        for p in &mut parameters {
            match p {
                NdArray::F32(a) => a.mapv_inplace(|x| x * factor),
                other => return Err(format!("expected float32, got {:?}", other.dtype()).into()),
            }
        }
        Ok((parameters, NUM_EXAMPLES, Metrics::new()))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        // Cheap: looks at one element per layer.
        let loss = parameters
            .iter()
            .filter_map(|p| match p {
                NdArray::F32(a) => a.iter().next().map(|x| f64::from(x.abs())),
                _ => None,
            })
            .sum::<f64>()
            + 0.01 * self.index as f64;
        // The reference server's metrics aggregation expects `accuracy`.
        let mut metrics = Metrics::new();
        metrics.insert("accuracy".into(), Scalar::Double(1.0 / (1.0 + loss)));
        Ok((loss, NUM_EXAMPLES, metrics))
    }
}

/// Settings of the `clients` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientsArgs {
    /// Server (or relay) address, HOST:PORT.
    #[arg(long)]
    pub(crate) address: String,
    /// Number of clients.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: usize,
    /// Model size in float32 parameters (only used if the server asks for
    /// parameters).
    #[arg(long, default_value_t = 1000)]
    pub(crate) params: usize,
    /// CA certificate (PEM) to trust; without it the connection is plaintext.
    #[arg(long)]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// Send the bearer token (from FLOWER_BENCH_TOKEN) over plaintext too.
    #[arg(long)]
    pub(crate) allow_insecure_auth: bool,
    /// Start at most this many clients per second (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub(crate) ramp_per_sec: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Connection retries per client (bounded; backoff 0.5 s doubling to 5 s).
    #[arg(long, default_value_t = 5)]
    pub(crate) max_retries: u32,
    /// TCP + TLS connect timeout per attempt, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) connect_timeout: f64,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub(crate) timeout_secs: f64,
}

/// What the `clients` process reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientsSummary {
    /// Clients started.
    pub(crate) clients: usize,
    /// Clients whose run ended with `Ok`.
    pub(crate) ok: usize,
    /// Clients whose run ended with an error (or never ended).
    pub(crate) failed: usize,
    /// True if the overall timeout cut the run short.
    pub(crate) timed_out: bool,
    /// `fit` replies sent, over all clients.
    pub(crate) fit: u64,
    /// `evaluate` replies sent.
    pub(crate) evaluate: u64,
    /// Connection retries, over all clients.
    pub(crate) retries: u64,
    /// Distinct error messages with their counts (at most 10 kinds).
    pub(crate) errors: BTreeMap<String, usize>,
    /// Seconds from process start to the last client's end.
    pub(crate) wall_s: f64,
    /// Milliseconds from process start to the first client's first `fit`.
    pub(crate) first_fit_min_ms: Option<u64>,
    /// Milliseconds from process start to the last client's first `fit`.
    pub(crate) first_fit_max_ms: Option<u64>,
}

/// Runs the `clients` subcommand; returns the process exit code.
pub(crate) fn run(args: ClientsArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let ca = args
        .ca
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let mut options = ClientOptions::new(args.address.clone())
        .max_retries(args.max_retries)
        .backoff(Duration::from_millis(500), Duration::from_secs(5))
        .max_wait_time(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs_f64(args.connect_timeout));
    options = match ca {
        Some(pem) => options.root_certificates_pem(pem),
        None => options.insecure(),
    };
    if let Some(t) = token {
        options = options.token(t);
        if args.allow_insecure_auth {
            options = options.allow_insecure_auth();
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    let stats = Arc::new(Stats {
        first_fit_min_ms: AtomicU64::new(u64::MAX),
        first_fit_max_ms: AtomicU64::new(0),
    });
    let mut summary = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let batch = if args.ramp_per_sec == 0 {
            args.count.max(1)
        } else {
            (args.ramp_per_sec as usize / 20).max(1)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout_secs);
        for index in 0..args.count {
            if index > 0 && index % batch == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let client = BenchClient {
                index,
                params: args.params,
                fits: 0,
                started,
                stats: stats.clone(),
            };
            let options = options.clone();
            tasks.spawn(async move { start_client(options, client.to_client()).await });
        }
        let mut summary = ClientsSummary {
            clients: args.count,
            ..ClientsSummary::default()
        };
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(Ok(run)))) => {
                    summary.ok += 1;
                    summary.fit += run.fit;
                    summary.evaluate += run.evaluate;
                    summary.retries += run.retries;
                }
                Ok(Some(Ok(Err(e)))) => {
                    summary.failed += 1;
                    note_error(&mut summary.errors, e.to_string());
                }
                Ok(Some(Err(e))) => {
                    summary.failed += 1;
                    note_error(&mut summary.errors, format!("client task: {e}"));
                }
                Err(_) => {
                    summary.timed_out = true;
                    let left = tasks.len();
                    summary.failed += left;
                    note_error(&mut summary.errors, "still running at the timeout".into());
                    tasks.abort_all();
                    break;
                }
            }
        }
        summary
    });
    // Do not wait for blocking-pool work the aborted tasks left behind.
    runtime.shutdown_timeout(Duration::from_secs(2));
    summary.wall_s = started.elapsed().as_secs_f64();
    let min = stats.first_fit_min_ms.load(Ordering::Relaxed);
    summary.first_fit_min_ms = (min != u64::MAX).then_some(min);
    let max = stats.first_fit_max_ms.load(Ordering::Relaxed);
    summary.first_fit_max_ms = (min != u64::MAX).then_some(max);
    println!("{SUMMARY_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(if summary.failed == 0 { 0 } else { 1 })
}

/// Counts an error message; keeps at most 10 distinct ones (the rest under
/// "other"). Messages are cut at 300 characters.
fn note_error(errors: &mut BTreeMap<String, usize>, message: String) {
    let message: String = message.chars().take(300).collect();
    if errors.contains_key(&message) || errors.len() < 10 {
        *errors.entry(message).or_default() += 1;
    } else {
        *errors.entry("other".into()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_add_up() {
        assert_eq!(
            layer_sizes(10_000_000),
            [5_000_000, 2_500_000, 1_250_000, 1_250_000]
        );
        assert_eq!(layer_sizes(1001).iter().sum::<usize>(), 1001);
    }

    #[test]
    fn linspace_matches_numpy_endpoints() {
        let v = linspace_f32(-1.0, 1.0, 5);
        assert_eq!(v, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(linspace_f32(-1.0, 1.0, 1), vec![-1.0]);
        assert!(linspace_f32(-1.0, 1.0, 0).is_empty());
    }

    #[test]
    fn fit_scales_and_evaluate_is_cheap() {
        let mut c = BenchClient {
            index: 0,
            params: 16,
            fits: 0,
            started: Instant::now(),
            stats: Arc::new(Stats::default()),
        };
        let (out, n, _) = c.fit(model(16), &Config::new()).unwrap();
        assert_eq!(n, NUM_EXAMPLES);
        let NdArray::F32(a) = &out[0] else { panic!() };
        assert!((a[[0]] + 1.0001).abs() < 1e-6);
        let (loss, n, _) = c.evaluate(out, &Config::new()).unwrap();
        assert_eq!(n, NUM_EXAMPLES);
        assert!(loss > 0.0);
    }
}
