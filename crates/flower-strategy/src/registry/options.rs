//! Reading a strategy's options from their JSON (TOML) values: typed
//! getters that name the option in their errors, the common FedAvg options,
//! and the wrapped strategy of a wrapper.

use std::collections::BTreeMap;

use flower_core::{Config, Scalar};
use serde_json::Value;

use super::help::{Opt, COMMON};
use super::{build_composed, CommonOptions, Family, StrategySpec, DEFAULT_INNER};
use crate::aggregate::DynComposed;
use crate::callbacks::{fixed_config, weighted_average, MetricSelection};
use crate::{FedAvgOptions, StrategyError};

/// Build context: the options being read and the caller's common options.
pub(super) struct Ctx<'a> {
    /// The registry name (for errors).
    pub(super) name: &'static str,
    /// Where the common options' defaults come from.
    pub(super) family: Family,
    pub(super) options: &'a BTreeMap<String, Value>,
    pub(super) common: CommonOptions,
}

pub(super) fn scalar_from_json(key: &str, v: &Value) -> Result<Scalar, StrategyError> {
    Ok(match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Scalar::Sint64(i)
            } else if let Some(u) = n.as_u64() {
                Scalar::Uint64(u)
            } else {
                Scalar::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        _ => {
            return Err(StrategyError::Config(format!(
                "config value {key:?} must be a bool, number or string, got {v}"
            )))
        }
    })
}

fn config_from_json(name: &str, v: &Value) -> Result<Config, StrategyError> {
    let obj = v
        .as_object()
        .ok_or_else(|| StrategyError::Config(format!("{name} must be a table, got {v}")))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), scalar_from_json(k, v)?)))
        .collect()
}

pub(super) fn metric_selection(
    name: &str,
    v: &Value,
) -> Result<Option<MetricSelection>, StrategyError> {
    match v {
        Value::String(s) if s == "all" => Ok(Some(MetricSelection::All)),
        Value::String(s) if s == "none" => Ok(None),
        Value::Bool(false) | Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(MetricSelection::All)),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|keys| Some(MetricSelection::Named(keys)))
            .ok_or_else(|| {
                StrategyError::Config(format!("{name} must list metric names, got {v}"))
            }),
        _ => Err(StrategyError::Config(format!(
            "{name} must be \"all\", \"none\" or a list of metric names, got {v}"
        ))),
    }
}

impl Ctx<'_> {
    pub(super) fn err(&self, m: String) -> StrategyError {
        StrategyError::Config(format!("{}: {m}", self.name))
    }

    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.options.get(key)
    }

    pub(super) fn f64_opt(&self, key: &str) -> Result<Option<f64>, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be a number, got {v}"))),
        }
    }

    pub(super) fn f64_or(&self, key: &str, default: f64) -> Result<f64, StrategyError> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }

    pub(super) fn f64_required(&self, key: &str) -> Result<f64, StrategyError> {
        self.f64_opt(key)?
            .ok_or_else(|| self.err(format!("option {key} is required")))
    }

    pub(super) fn usize_opt(&self, key: &str) -> Result<Option<usize>, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }

    pub(super) fn usize_or(&self, key: &str, default: usize) -> Result<usize, StrategyError> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }

    pub(super) fn usize_required(&self, key: &str) -> Result<usize, StrategyError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(format!("option {key} is required")))
    }

    pub(super) fn string_or(&self, key: &str, default: &str) -> Result<String, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.err(format!("{key} must be a string, got {v}"))),
        }
    }

    pub(super) fn bool_or(&self, key: &str, default: bool) -> Result<bool, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("{key} must be true or false, got {v}"))),
        }
    }

    /// FedAvgOptions from the common options, callbacks and initial
    /// parameters, over the entry's defaults.
    pub(super) fn fedavg_options(
        &mut self,
        takes_inplace: bool,
    ) -> Result<FedAvgOptions, StrategyError> {
        let d = self.family.defaults();
        let mut o = FedAvgOptions {
            fraction_fit: self.f64_or("fraction_fit", d.fraction_fit)?,
            fraction_evaluate: self.f64_or("fraction_evaluate", d.fraction_evaluate)?,
            min_fit_clients: self.usize_or("min_fit_clients", d.min_fit_clients)?,
            min_evaluate_clients: self.usize_or("min_evaluate_clients", d.min_evaluate_clients)?,
            min_available_clients: self
                .usize_or("min_available_clients", d.min_available_clients)?,
            accept_failures: self.bool_or("accept_failures", d.accept_failures)?,
            ..d
        };
        if takes_inplace {
            o.inplace = self.bool_or("inplace", o.inplace)?;
        }
        o.initial_parameters = self.common.initial_parameters.take();
        let cb = &mut self.common.callbacks;
        o.evaluate_fn = cb.evaluate_fn.take();
        o.on_fit_config_fn = cb.on_fit_config_fn.take();
        o.on_evaluate_config_fn = cb.on_evaluate_config_fn.take();
        o.fit_metrics_aggregation_fn = cb.fit_metrics_aggregation_fn.take();
        o.evaluate_metrics_aggregation_fn = cb.evaluate_metrics_aggregation_fn.take();
        let both = |name: &str| {
            self.err(format!(
                "both the option {name} and a callback for it were given"
            ))
        };
        if let Some(v) = self.get("fit_config") {
            if o.on_fit_config_fn.is_some() {
                return Err(both("fit_config"));
            }
            o.on_fit_config_fn = Some(fixed_config(config_from_json("fit_config", v)?));
        }
        if let Some(v) = self.get("evaluate_config") {
            if o.on_evaluate_config_fn.is_some() {
                return Err(both("evaluate_config"));
            }
            o.on_evaluate_config_fn = Some(fixed_config(config_from_json("evaluate_config", v)?));
        }
        if let Some(v) = self.get("fit_metrics") {
            if o.fit_metrics_aggregation_fn.is_some() {
                return Err(both("fit_metrics"));
            }
            o.fit_metrics_aggregation_fn =
                metric_selection("fit_metrics", v)?.map(weighted_average);
        }
        if let Some(v) = self.get("evaluate_metrics") {
            if o.evaluate_metrics_aggregation_fn.is_some() {
                return Err(both("evaluate_metrics"));
            }
            o.evaluate_metrics_aggregation_fn =
                metric_selection("evaluate_metrics", v)?.map(weighted_average);
        }
        Ok(o)
    }

    /// Builds the wrapped strategy (`strategy` option, default FedAvg); it
    /// receives the callbacks, the initial parameters and the common options
    /// given at the wrapper's top level.
    pub(super) fn inner(&mut self) -> Result<DynComposed, StrategyError> {
        let mut spec = match self.get("strategy") {
            None | Some(Value::Null) => StrategySpec::new(DEFAULT_INNER),
            Some(Value::String(name)) => StrategySpec::new(name.clone()),
            Some(v) => serde_json::from_value::<StrategySpec>(v.clone())
                .map_err(|e| self.err(format!("strategy must be {{ name, options }}: {e}")))?,
        };
        pass_common_options(self.options, &mut spec.options, COMMON).map_err(|m| self.err(m))?;
        let common = CommonOptions {
            seed: self.common.seed.map(|s| s.wrapping_add(1)),
            initial_parameters: self.common.initial_parameters.take(),
            callbacks: std::mem::take(&mut self.common.callbacks),
        };
        build_composed(&spec, common)
    }
}

/// Copies the common options set at a wrapper's top level into the wrapped
/// strategy's options. The same option set to different values in both is
/// an error (equal values are accepted).
pub(super) fn pass_common_options(
    top: &BTreeMap<String, Value>,
    inner: &mut BTreeMap<String, Value>,
    common_options: &[Opt],
) -> Result<(), String> {
    let common = |k: &str| common_options.iter().any(|o| o.name == k);
    for (key, value) in top.iter().filter(|(k, _)| common(k)) {
        match inner.get(key) {
            Some(nested) if nested != value => {
                return Err(format!(
                    "{key} is set both at the top level ({value}) and in the wrapped strategy's \
                     options ({nested}); set it once"
                ))
            }
            _ => {
                inner.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn common_options_pass_to_the_wrapped_strategy() {
        let top =
            map(json!({ "min_fit_clients": 3, "noise_multiplier": 0.5, "accept_failures": false }));
        let mut inner = map(json!({ "min_fit_clients": 3, "beta": 0.1 }));
        pass_common_options(&top, &mut inner, COMMON).unwrap();
        assert_eq!(
            inner,
            map(json!({ "min_fit_clients": 3, "beta": 0.1, "accept_failures": false }))
        );
        let mut conflicting = map(json!({ "min_fit_clients": 4 }));
        let e = pass_common_options(&top, &mut conflicting, COMMON).unwrap_err();
        assert!(
            e.contains("min_fit_clients") && e.contains("top level"),
            "{e}"
        );
    }

    #[test]
    fn scalars_and_metric_selections() {
        assert_eq!(scalar_from_json("k", &json!(3)).unwrap(), Scalar::Sint64(3));
        assert_eq!(
            scalar_from_json("k", &json!(u64::MAX)).unwrap(),
            Scalar::Uint64(u64::MAX)
        );
        assert!(scalar_from_json("k", &json!([1])).is_err());
        assert_eq!(metric_selection("m", &json!("none")).unwrap(), None);
        assert_eq!(
            metric_selection("m", &json!(["acc"])).unwrap(),
            Some(MetricSelection::Named(vec!["acc".into()]))
        );
        assert!(metric_selection("m", &json!(3)).is_err());
    }
}
