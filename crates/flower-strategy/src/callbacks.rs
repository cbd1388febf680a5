//! User callbacks (Flower's `evaluate_fn`, `on_fit_config_fn`, ...) and
//! ready-made ones: a weighted average of named metrics and a fixed
//! per-round config.

use std::fmt;

use flower_core::{Config, Metrics, NdArray, Parameters, Scalar};

use crate::StrategyError;

/// Centralized evaluation (`evaluate_fn(server_round, ndarrays, config)`):
/// returns `(loss, metrics)` or `None` when there is nothing to report.
pub type EvaluateFn = Box<dyn Fn(u64, &[NdArray], &Config) -> Option<(f64, Metrics)> + Send + Sync>;

/// FedXgbBagging's `evaluate_function(server_round, parameters, config)`: it
/// receives the raw [`Parameters`] (the XGBoost model bytes), not arrays.
pub type XgbEvaluateFn =
    Box<dyn Fn(u64, &Parameters, &Config) -> Option<(f64, Metrics)> + Send + Sync>;

/// `on_fit_config_fn` / `on_evaluate_config_fn`: the config for a round.
pub type ConfigFn = Box<dyn Fn(u64) -> Config + Send + Sync>;

/// `fit_metrics_aggregation_fn` / `evaluate_metrics_aggregation_fn`: reduces
/// `(num_examples, metrics)` of every result (in result order).
pub type MetricsAggregationFn = Box<dyn Fn(&[(i64, Metrics)]) -> Metrics + Send + Sync>;

/// Which metrics [`weighted_average`] averages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricSelection {
    /// Every numeric (int or float, not bool) metric.
    All,
    /// Only these keys.
    Named(Vec<String>),
}

impl MetricSelection {
    fn wants(&self, key: &str) -> bool {
        match self {
            MetricSelection::All => true,
            MetricSelection::Named(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// A metrics aggregation function computing, for every selected key, the
/// `num_examples`-weighted average `Σ n_i·m_i / Σ n_i` over the results that
/// carry it, under the same key. Non-numeric values (bool, str, bytes) are
/// skipped; a key whose weights sum to zero is left out.
///
/// This is the `weighted_average` of Flower's examples, usable as
/// `fit_metrics_aggregation_fn` or `evaluate_metrics_aggregation_fn`.
pub fn weighted_average(selection: MetricSelection) -> MetricsAggregationFn {
    Box::new(move |results: &[(i64, Metrics)]| {
        // (numerator, denominator) per key.
        let mut sums: std::collections::BTreeMap<&str, (f64, i128)> = Default::default();
        for (n, metrics) in results {
            for (key, value) in metrics {
                if !selection.wants(key) {
                    continue;
                }
                let term = match value {
                    Scalar::Double(v) => *n as f64 * v,
                    Scalar::Sint64(v) => (i128::from(*n) * i128::from(*v)) as f64,
                    Scalar::Uint64(v) => (i128::from(*n) * i128::from(*v)) as f64,
                    _ => continue,
                };
                let entry = sums.entry(key.as_str()).or_insert((0.0, 0));
                entry.0 += term;
                entry.1 += i128::from(*n);
            }
        }
        sums.into_iter()
            .filter(|(_, (_, den))| *den != 0)
            .map(|(k, (num, den))| (k.to_owned(), Scalar::Double(num / den as f64)))
            .collect()
    })
}

/// A config function returning `values` plus `"server_round": t` every
/// round (a key `server_round` in `values` is overridden).
pub fn fixed_config(values: Config) -> ConfigFn {
    Box::new(move |server_round: u64| {
        let mut config = values.clone();
        config.insert("server_round".to_owned(), Scalar::int(server_round));
        config
    })
}

/// Flower's `weighted_loss_avg`: `Σ n_k·loss_k / Σ n_k`, summed left to right
/// in f64 as Python 3.11 does.
///
/// A zero total (Python: ZeroDivisionError) is [`StrategyError::ZeroExamples`].
pub fn weighted_loss_avg(results: &[(i64, f64)]) -> Result<f64, StrategyError> {
    let total: i128 = results.iter().map(|(n, _)| i128::from(*n)).sum();
    if total == 0 {
        return Err(StrategyError::ZeroExamples);
    }
    let mut sum = 0.0f64;
    for (n, loss) in results {
        sum += *n as f64 * loss;
    }
    Ok(sum / total as f64)
}

/// Wraps an optional callback for `Debug` output.
pub(crate) struct Shown<'a, T: ?Sized>(pub(crate) &'a Option<Box<T>>);

impl<T: ?Sized> fmt::Debug for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<fn>)"
        } else {
            "None"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_average_skips_bools_and_zero_weights() {
        let f = weighted_average(MetricSelection::All);
        let mut a = Metrics::new();
        a.insert("acc".into(), Scalar::Double(0.5));
        a.insert("flag".into(), Scalar::Bool(true));
        a.insert("steps".into(), Scalar::Sint64(10));
        let mut b = Metrics::new();
        b.insert("acc".into(), Scalar::Double(1.0));
        let out = f(&[(1, a), (3, b)]);
        assert_eq!(out.get("acc"), Some(&Scalar::Double(0.875)));
        assert_eq!(out.get("steps"), Some(&Scalar::Double(10.0)));
        assert!(!out.contains_key("flag"));
        let out = f(&[(0, Metrics::from([("acc".to_owned(), Scalar::Double(1.0))]))]);
        assert!(out.is_empty());
    }

    #[test]
    fn named_selection() {
        let f = weighted_average(MetricSelection::Named(vec!["acc".into()]));
        let m = Metrics::from([
            ("acc".to_owned(), Scalar::Double(1.0)),
            ("loss".to_owned(), Scalar::Double(2.0)),
        ]);
        let out = f(&[(2, m)]);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn fixed_config_adds_round() {
        let f = fixed_config(Config::from([("lr".to_owned(), Scalar::Double(0.1))]));
        let c = f(3);
        assert_eq!(c.get("server_round"), Some(&Scalar::Sint64(3)));
        assert_eq!(c.get("lr"), Some(&Scalar::Double(0.1)));
    }

    #[test]
    fn loss_average() {
        assert_eq!(weighted_loss_avg(&[(1, 1.0), (3, 3.0)]).unwrap(), 2.5);
        assert!(matches!(
            weighted_loss_avg(&[(0, 1.0)]),
            Err(StrategyError::ZeroExamples)
        ));
    }
}
