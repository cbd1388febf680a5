//! Replays Python Flower's message-API golden vectors
//! (`<workspace>/../shared/golden/strategies-msg`, or `$FLWR_GOLDEN_MSG_DIR`)
//! through `flower_strategy::msg::start` with a replaying grid that injects
//! the recorded samples, and compares every sent message, every aggregate,
//! every server-side evaluation, the error or block, and the final result.
//!
//! Arrays: bit-exact for the FedAvg family, FedProx, FedAvgM, FedMedian,
//! Krum and XGBoost; `|got − exp| ≤ 1e-6 + 1e-5·|exp|` (NaN = NaN)
//! otherwise. Metrics and configs: relative 1e-12. Everything else exact.
//!
//! Cases of strategies not ported yet are listed in [`NOT_YET`]: they must
//! fail (the test fails when one of them passes, so the list only shrinks),
//! and every other case must pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use flower_core::npy::npy_header;
use flower_core::DType;
use flower_strategy::msg::{
    self, Array, ArrayRecord, ConfigRecord, ConfigValue, FedAvg, FedAvgM, FedAvgOptions, FedOpt,
    FedOptKind, FedOptOptions, FedProx, Grid, Message, MetricRecord, MetricValue, MsgStrategy,
    QFedAvg, QFedAvgOptions, Record, RecordDict, Reply, ReplyError,
};
use flower_strategy::StrategyError;
use serde_json::Value as Json;

/// Strategy classes whose cases are expected to fail until they are ported.
const NOT_YET: &[&str] = &[];

/// Classes whose arrays must match bit for bit.
const EXACT: &[&str] = &[
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedMedian",
    "Krum",
    "FedOpt",
];

fn golden_dir() -> PathBuf {
    match std::env::var_os("FLWR_GOLDEN_MSG_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/strategies-msg")
        }
    }
}

type R<T> = Result<T, String>;

// ---------------------------------------------------------------- decoding

fn num(v: &Json) -> R<f64> {
    match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("bad number {n}")),
        Json::String(s) if s == "NaN" => Ok(f64::NAN),
        Json::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Json::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        other => Err(format!("not a float: {other}")),
    }
}

fn is_int(v: &Json) -> bool {
    matches!(v, Json::Number(n) if n.is_i64() || n.is_u64())
}

fn array_of(v: &Json) -> R<Array> {
    let dtype = match v["dtype"].as_str() {
        Some("float32") => DType::F32,
        Some("float64") => DType::F64,
        Some("int64") => DType::I64,
        Some("uint8") => DType::U8,
        other => return Err(format!("dtype {other:?}")),
    };
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .ok_or("shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("dim"))
        .collect::<Result<_, _>>()?;
    let mut out = npy_header(dtype, &shape);
    if let Some(text) = v.get("data_utf8").and_then(Json::as_str) {
        out.extend_from_slice(text.as_bytes());
    } else {
        for x in v["data"].as_array().ok_or("data")? {
            match dtype {
                DType::F32 => out.extend_from_slice(&(num(x)? as f32).to_le_bytes()),
                DType::F64 => out.extend_from_slice(&num(x)?.to_le_bytes()),
                DType::I64 => out.extend_from_slice(&x.as_i64().ok_or("int")?.to_le_bytes()),
                _ => out.push(x.as_u64().ok_or("u8")? as u8),
            }
        }
    }
    Array::from_npy(Bytes::from(out)).map_err(|e| e.to_string())
}

fn arrays_of(v: &Json) -> R<ArrayRecord> {
    v.as_array()
        .ok_or("ARRAYRECORD")?
        .iter()
        .map(|a| Ok((a["key"].as_str().ok_or("key")?.to_owned(), array_of(a)?)))
        .collect()
}

fn metric_value(v: &Json) -> R<MetricValue> {
    Ok(match v {
        Json::Array(xs) if xs.iter().all(is_int) && !xs.is_empty() => {
            MetricValue::IntList(xs.iter().map(|x| x.as_i64().unwrap_or(0)).collect())
        }
        Json::Array(xs) => MetricValue::FloatList(xs.iter().map(num).collect::<R<_>>()?),
        v if is_int(v) => MetricValue::Int(v.as_i64().ok_or("int64")?),
        v => MetricValue::Float(num(v)?),
    })
}

fn metrics_of(v: &Json) -> R<MetricRecord> {
    v.as_object()
        .ok_or("METRICRECORD")?
        .iter()
        .map(|(k, v)| Ok((k.clone(), metric_value(v)?)))
        .collect()
}

fn hex(v: &Json) -> R<Vec<u8>> {
    let s = v["bytes_hex"].as_str().ok_or("bytes_hex")?;
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn config_value(v: &Json) -> R<ConfigValue> {
    Ok(match v {
        Json::Bool(b) => ConfigValue::Bool(*b),
        Json::String(s) => ConfigValue::Str(s.clone()),
        Json::Object(_) => ConfigValue::Bytes(hex(v)?),
        Json::Array(xs) => match xs.first() {
            Some(Json::Bool(_)) => {
                ConfigValue::BoolList(xs.iter().map(|x| x.as_bool().unwrap_or(false)).collect())
            }
            Some(Json::String(_)) => ConfigValue::StrList(
                xs.iter()
                    .map(|x| x.as_str().unwrap_or("").to_owned())
                    .collect(),
            ),
            Some(Json::Object(_)) => ConfigValue::BytesList(xs.iter().map(hex).collect::<R<_>>()?),
            _ if xs.iter().all(is_int) => {
                ConfigValue::IntList(xs.iter().map(|x| x.as_i64().unwrap_or(0)).collect())
            }
            _ => ConfigValue::FloatList(xs.iter().map(num).collect::<R<_>>()?),
        },
        v if is_int(v) => ConfigValue::Int(v.as_i64().ok_or("int64")?),
        v => ConfigValue::Float(num(v)?),
    })
}

fn config_of(v: &Json) -> R<ConfigRecord> {
    v.as_object()
        .ok_or("CONFIGRECORD")?
        .iter()
        .map(|(k, v)| Ok((k.clone(), config_value(v)?)))
        .collect()
}

fn recorddict_of(v: &Json) -> R<RecordDict> {
    v.as_array()
        .ok_or("RECORDDICT")?
        .iter()
        .map(|r| {
            let rec = match r["type"].as_str() {
                Some("array_record") => Record::Arrays(arrays_of(&r["value"])?),
                Some("metric_record") => Record::Metrics(metrics_of(&r["value"])?),
                Some("config_record") => Record::Config(config_of(&r["value"])?),
                other => return Err(format!("record type {other:?}")),
            };
            Ok((r["key"].as_str().ok_or("key")?.to_owned(), rec))
        })
        .collect()
}

// -------------------------------------------------------------- comparing

fn close(got: f64, exp: f64, exact: bool) -> bool {
    if got.is_nan() || exp.is_nan() {
        return got.is_nan() && exp.is_nan();
    }
    if exact {
        got.to_bits() == exp.to_bits() || (got == exp && got == 0.0)
    } else {
        got == exp || (got - exp).abs() <= 1e-6 + 1e-5 * exp.abs()
    }
}

fn rel(got: f64, exp: f64) -> bool {
    (got.is_nan() && exp.is_nan())
        || got == exp
        || (got - exp).abs() <= 1e-12 * exp.abs().max(1e-300)
}

fn cmp_arrays(what: &str, got: &ArrayRecord, exp: &Json, exact: bool) -> R<()> {
    let exp = arrays_of(exp)?;
    let gk: Vec<&str> = got.keys().collect();
    let ek: Vec<&str> = exp.keys().collect();
    if gk != ek {
        return Err(format!("{what}: keys {gk:?}, expected {ek:?}"));
    }
    for ((k, g), (_, e)) in got.iter().zip(exp.iter()) {
        let (gv, ev) = (
            g.view().map_err(|e| e.to_string())?,
            e.view().map_err(|e| e.to_string())?,
        );
        if gv.dtype != ev.dtype || gv.shape != ev.shape {
            return Err(format!(
                "{what}[{k}]: {:?}{:?}, expected {:?}{:?}",
                gv.dtype, gv.shape, ev.dtype, ev.shape
            ));
        }
        if gv.dtype == DType::U8 {
            let (gj, ej) = (
                serde_json::from_slice::<Json>(gv.data),
                serde_json::from_slice::<Json>(ev.data),
            );
            let same = match (gj, ej) {
                (Ok(a), Ok(b)) => a == b,
                _ => gv.data == ev.data,
            };
            if !same {
                return Err(format!("{what}[{k}]: uint8 contents differ"));
            }
            continue;
        }
        let to_f64 = |d: &[u8], t: DType| -> Vec<f64> {
            match t {
                DType::F32 => d
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                DType::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                _ => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
            }
        };
        let (gx, ex) = (to_f64(gv.data, gv.dtype), to_f64(ev.data, ev.dtype));
        for (i, (a, b)) in gx.iter().zip(&ex).enumerate() {
            if !close(*a, *b, exact) {
                return Err(format!("{what}[{k}][{i}]: {a:e}, expected {b:e}"));
            }
        }
    }
    Ok(())
}

fn cmp_metric_value(what: &str, got: &MetricValue, exp: &MetricValue) -> R<()> {
    let ok = match (got, exp) {
        (MetricValue::Int(a), MetricValue::Int(b)) => a == b,
        (MetricValue::IntList(a), MetricValue::IntList(b)) => a == b,
        (MetricValue::Float(a), MetricValue::Float(b)) => rel(*a, *b),
        (MetricValue::FloatList(a), MetricValue::FloatList(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| rel(*x, *y))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {got:?}, expected {exp:?}"))
    }
}

fn cmp_metrics(what: &str, got: &MetricRecord, exp: &Json) -> R<()> {
    let exp = metrics_of(exp)?;
    if got.key_set_sorted() != exp.key_set_sorted() {
        return Err(format!(
            "{what}: keys {:?}, expected {:?}",
            got.key_set_sorted(),
            exp.key_set_sorted()
        ));
    }
    for (k, e) in exp.iter() {
        let g = got.get(k).ok_or_else(|| format!("{what}: no {k}"))?;
        cmp_metric_value(&format!("{what}.{k}"), g, e)?;
    }
    Ok(())
}

trait KeySet {
    fn key_set_sorted(&self) -> Vec<String>;
}

impl<V> KeySet for msg::Ordered<V> {
    fn key_set_sorted(&self) -> Vec<String> {
        let mut k: Vec<String> = self.keys().map(str::to_owned).collect();
        k.sort();
        k
    }
}

fn cmp_config(what: &str, got: &ConfigRecord, exp: &Json) -> R<()> {
    let exp = config_of(exp)?;
    if got.key_set_sorted() != exp.key_set_sorted() {
        return Err(format!(
            "{what}: keys {:?}, expected {:?}",
            got.key_set_sorted(),
            exp.key_set_sorted()
        ));
    }
    for (k, e) in exp.iter() {
        let g = got.get(k).ok_or_else(|| format!("{what}: no {k}"))?;
        let ok = match (g, e) {
            (ConfigValue::Float(a), ConfigValue::Float(b)) => rel(*a, *b),
            (ConfigValue::FloatList(a), ConfigValue::FloatList(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| rel(*x, *y))
            }
            (a, b) => a == b,
        };
        if !ok {
            return Err(format!("{what}.{k}: {g:?}, expected {e:?}"));
        }
    }
    Ok(())
}

fn cmp_content(what: &str, got: &RecordDict, exp: &Json, exact: bool) -> R<()> {
    let items = exp.as_array().ok_or("RECORDDICT")?;
    let gk: Vec<&str> = got.keys().collect();
    let ek: Vec<&str> = items.iter().filter_map(|r| r["key"].as_str()).collect();
    if gk != ek {
        return Err(format!("{what}: records {gk:?}, expected {ek:?}"));
    }
    for r in items {
        let key = r["key"].as_str().unwrap_or_default();
        let w = format!("{what}.{key}");
        match (got.get(key), r["type"].as_str()) {
            (Some(Record::Arrays(a)), Some("array_record")) => {
                cmp_arrays(&w, a, &r["value"], exact)?
            }
            (Some(Record::Metrics(m)), Some("metric_record")) => cmp_metrics(&w, m, &r["value"])?,
            (Some(Record::Config(c)), Some("config_record")) => cmp_config(&w, c, &r["value"])?,
            _ => return Err(format!("{w}: record type differs")),
        }
    }
    Ok(())
}

// ------------------------------------------------------------ the grid

/// Replays a case: node ids (with the `online` schedule), bounded waits,
/// the recorded samples, and the recorded replies.
struct ReplayGrid {
    case: Arc<Json>,
    phase: usize,
    waits_total: u64,
    waits_phase: u64,
    polls: Vec<usize>,
    sampled: bool,
    errors: Vec<String>,
    sent: Vec<Vec<Message>>,
}

impl ReplayGrid {
    fn phase_json(&self) -> Option<&Json> {
        let r = self.phase / 2;
        let p = if self.phase.is_multiple_of(2) {
            "train"
        } else {
            "evaluate"
        };
        self.case["rounds"].get(r).and_then(|x| x.get(p))
    }

    fn all_ids(&self) -> Vec<u64> {
        self.case["grid"]["node_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default()
    }

    fn end_phase(&mut self) {
        let polls = std::mem::take(&mut self.polls);
        let waits = std::mem::replace(&mut self.waits_phase, 0);
        let sampled = std::mem::replace(&mut self.sampled, false);
        let where_ = format!("phase {}", self.phase);
        if let Some(p) = self.phase_json() {
            let exp_polls: Vec<usize> = p["get_node_ids_polls"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .unwrap_or_default();
            let mut errs = Vec::new();
            if polls != exp_polls {
                errs.push(format!("{where_}: polls {polls:?}, expected {exp_polls:?}"));
            }
            if waits != p["waits"].as_u64().unwrap_or(0) {
                errs.push(format!("{where_}: {waits} waits, expected {}", p["waits"]));
            }
            let exp_sampled = !p["sampled_node_ids"]
                .as_array()
                .is_none_or(|a| a.is_empty())
                || !exp_polls.is_empty();
            if sampled != exp_sampled && !exp_polls.is_empty() {
                errs.push(format!(
                    "{where_}: sampled {sampled}, expected {exp_sampled}"
                ));
            }
            self.errors.extend(errs);
        }
        self.phase += 1;
    }
}

impl Grid for ReplayGrid {
    fn node_ids(&mut self) -> Vec<u64> {
        let mut ids = self.all_ids();
        if let Some(o) = self.case["grid"]["online"].as_object() {
            let initial = o["initial"].as_u64().unwrap_or(0) as usize;
            let after = o["join_after_waits"].as_u64().unwrap_or(0);
            if self.waits_total < after {
                ids.truncate(initial);
            }
        }
        self.polls.push(ids.len());
        ids
    }

    fn wait_for_nodes(&mut self) -> bool {
        self.waits_total += 1;
        self.waits_phase += 1;
        self.waits_phase <= self.case["grid"]["max_waits"].as_u64().unwrap_or(3)
    }

    fn sample(&mut self, nodes: &[u64], sample_size: usize) -> Vec<u64> {
        self.sampled = true;
        let exp: Vec<u64> = self
            .phase_json()
            .and_then(|p| p["sampled_node_ids"].as_array())
            .map(|a| a.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        if self.case["strategy"]["class"] == "FedXgbCyclic" {
            // The recorded sample is the chosen node; the registration order
            // (Flower's random first sample) is in the round-1 debug record.
            let mut order: Vec<u64> = self.case["rounds"][0]["train"]["debug"]["registered_nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p[0].as_u64()).collect())
                .unwrap_or_default();
            order.retain(|n| nodes.contains(n));
            for n in nodes {
                if !order.contains(n) {
                    order.push(*n);
                }
            }
            order.truncate(sample_size);
            return order;
        }
        if exp.len() != sample_size {
            self.errors.push(format!(
                "phase {}: asked for {sample_size} nodes, Flower sampled {}",
                self.phase,
                exp.len()
            ));
        }
        exp
    }

    fn send_and_receive(&mut self, messages: Vec<Message>, _timeout: f64) -> Vec<Reply> {
        let replies = self
            .phase_json()
            .and_then(|p| p["replies"].as_array())
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let content = match r["error"].as_object() {
                            Some(e) => Err(ReplyError {
                                code: e["code"].as_i64().unwrap_or(0),
                                reason: e["reason"].as_str().unwrap_or("").to_owned(),
                            }),
                            None => recorddict_of(&r["content"]).map_err(|e| ReplyError {
                                code: -1,
                                reason: e,
                            }),
                        };
                        Reply {
                            src_node_id: r["src_node_id"].as_u64().unwrap_or(0),
                            content,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.sent.push(messages);
        self.end_phase();
        replies
    }
}

// ------------------------------------------------- strategy construction

type Aggregates = Vec<(
    u64,
    &'static str,
    R<(Option<ArrayRecord>, Option<MetricRecord>)>,
)>;

/// Records what the wrapped strategy's aggregations returned.
#[derive(Debug)]
struct Recorder<S> {
    inner: S,
    log: Arc<std::sync::Mutex<Aggregates>>,
}

impl<S: MsgStrategy> MsgStrategy for Recorder<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn configure_train(
        &mut self,
        r: u64,
        a: &ArrayRecord,
        c: &mut ConfigRecord,
        g: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.inner.configure_train(r, a, c, g)
    }
    fn aggregate_train(
        &mut self,
        r: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let out = self.inner.aggregate_train(r, replies);
        let rec = match &out {
            Ok(x) => Ok(x.clone()),
            Err(e) => Err(e.kind().to_owned()),
        };
        self.log.lock().map(|mut l| l.push((r, "train", rec))).ok();
        out
    }
    fn configure_evaluate(
        &mut self,
        r: u64,
        a: &ArrayRecord,
        c: &mut ConfigRecord,
        g: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.inner.configure_evaluate(r, a, c, g)
    }
    fn aggregate_evaluate(
        &mut self,
        r: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError> {
        let out = self.inner.aggregate_evaluate(r, replies);
        let rec = match &out {
            Ok(m) => Ok((None, m.clone())),
            Err(e) => Err(e.kind().to_owned()),
        };
        self.log
            .lock()
            .map(|mut l| l.push((r, "evaluate", rec)))
            .ok();
        out
    }
}

fn f(kwargs: &Json, key: &str, default: f64) -> f64 {
    kwargs.get(key).and_then(Json::as_f64).unwrap_or(default)
}

fn u(kwargs: &Json, key: &str, default: usize) -> usize {
    kwargs
        .get(key)
        .and_then(Json::as_u64)
        .map_or(default, |x| x as usize)
}

fn s(kwargs: &Json, key: &str, default: &str) -> String {
    kwargs
        .get(key)
        .and_then(Json::as_str)
        .unwrap_or(default)
        .to_owned()
}

/// The harness's `metrics_unweighted_v1`.
fn metrics_unweighted(records: &[&RecordDict], key: &str) -> Result<MetricRecord, StrategyError> {
    let mut out = MetricRecord::new();
    out.insert("num-replies", MetricValue::Int(records.len() as i64));
    let mut total = 0.0;
    let mut sums: Vec<(String, f64, usize)> = Vec::new();
    for r in records {
        let Some(m) = r.first_metrics() else { continue };
        for (k, v) in m.iter() {
            if k == key {
                total += v.as_f64().unwrap_or(0.0);
            } else if let Some(x) = v.as_f64() {
                match sums.iter_mut().find(|(n, _, _)| n == k) {
                    Some(e) => {
                        e.1 += x;
                        e.2 += 1;
                    }
                    None => sums.push((k.to_owned(), x, 1)),
                }
            }
        }
    }
    out.insert("total-weight", MetricValue::Float(total));
    for (k, s, n) in sums {
        out.insert(format!("{k}-mean"), MetricValue::Float(s / n as f64));
    }
    Ok(out)
}

fn common(kwargs: &Json, callbacks: &Json) -> FedAvgOptions {
    let d = FedAvgOptions::default();
    let cb = |name: &str| -> Option<msg::MetricsAggrFn> {
        (callbacks.get(name).and_then(Json::as_str) == Some("metrics_unweighted_v1"))
            .then(|| Arc::new(metrics_unweighted) as msg::MetricsAggrFn)
    };
    FedAvgOptions {
        fraction_train: f(kwargs, "fraction_train", d.fraction_train),
        fraction_evaluate: f(kwargs, "fraction_evaluate", d.fraction_evaluate),
        min_train_nodes: u(kwargs, "min_train_nodes", d.min_train_nodes),
        min_evaluate_nodes: u(kwargs, "min_evaluate_nodes", d.min_evaluate_nodes),
        min_available_nodes: u(kwargs, "min_available_nodes", d.min_available_nodes),
        weighted_by_key: s(kwargs, "weighted_by_key", &d.weighted_by_key),
        arrayrecord_key: s(kwargs, "arrayrecord_key", &d.arrayrecord_key),
        configrecord_key: s(kwargs, "configrecord_key", &d.configrecord_key),
        train_metrics_aggr_fn: cb("train_metrics_aggr_fn"),
        evaluate_metrics_aggr_fn: cb("evaluate_metrics_aggr_fn"),
    }
}

fn build(spec: &Json) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let class = spec["class"].as_str().unwrap_or_default();
    let kw = &spec["kwargs"];
    let opts = common(kw, &spec["callbacks"]);
    let fedopt = |kind| {
        let d = FedOptOptions::defaults(kind);
        let hp = FedOptOptions {
            eta: f(kw, "eta", d.eta),
            eta_l: f(kw, "eta_l", d.eta_l),
            beta_1: f(kw, "beta_1", d.beta_1),
            beta_2: f(kw, "beta_2", d.beta_2),
            tau: f(kw, "tau", d.tau),
        };
        FedOpt::new(opts.clone(), kind, hp).map(|s| Box::new(s) as Box<dyn MsgStrategy>)
    };
    Ok(match class {
        "FedAvg" => Box::new(FedAvg::new(opts)?),
        "FedProx" => Box::new(FedProx::new(opts, f(kw, "proximal_mu", 0.0))?),
        "FedAvgM" => Box::new(FedAvgM::new(
            opts,
            f(kw, "server_learning_rate", 1.0),
            f(kw, "server_momentum", 0.0),
        )?),
        "FedOpt" => fedopt(FedOptKind::FedOpt)?,
        "FedAdagrad" => fedopt(FedOptKind::FedAdagrad)?,
        "FedAdam" => fedopt(FedOptKind::FedAdam)?,
        "FedYogi" => fedopt(FedOptKind::FedYogi)?,
        "QFedAvg" => {
            let mut q = QFedAvgOptions::new(f(kw, "client_learning_rate", f64::NAN));
            q.q = f(kw, "q", q.q);
            q.train_loss_key = s(kw, "train_loss_key", &q.train_loss_key);
            Box::new(QFedAvg::new(opts, q)?)
        }
        "FedMedian" => Box::new(msg::FedMedian::new(opts)?),
        "FedTrimmedAvg" => Box::new(msg::FedMedian::trimmed(opts, f(kw, "beta", 0.2))?),
        "Krum" => Box::new(msg::MultiKrum::krum(opts, u(kw, "num_malicious_nodes", 0))?),
        "MultiKrum" => Box::new(msg::MultiKrum::new(
            opts,
            u(kw, "num_malicious_nodes", 0),
            u(kw, "num_nodes_to_select", 1),
        )?),
        "Bulyan" => Box::new(msg::Bulyan::new(opts, u(kw, "num_malicious_nodes", 0))?),
        c if c.starts_with("DifferentialPrivacy") => {
            let inner = build(&spec["inner"])?;
            let server_side = c.contains("ServerSide");
            let nm = f(kw, "noise_multiplier", f64::NAN);
            let ns = u(kw, "num_sampled_clients", 0);
            if c.ends_with("FixedClipping") {
                let o = flower_strategy::FixedClippingOptions {
                    noise_multiplier: nm,
                    clipping_norm: f(kw, "clipping_norm", f64::NAN),
                    num_sampled_clients: ns,
                };
                Box::new(msg::DpWrapper::fixed(inner, server_side, o)?)
            } else {
                let mut o = flower_strategy::AdaptiveClippingOptions::new(nm, ns);
                o.initial_clipping_norm = f(kw, "initial_clipping_norm", o.initial_clipping_norm);
                o.target_clipped_quantile =
                    f(kw, "target_clipped_quantile", o.target_clipped_quantile);
                o.clip_norm_lr = f(kw, "clip_norm_lr", o.clip_norm_lr);
                o.clipped_count_stddev = kw.get("clipped_count_stddev").and_then(Json::as_f64);
                Box::new(msg::DpWrapper::adaptive(inner, server_side, o)?)
            }
        }
        "FedXgbBagging" => Box::new(msg::FedXgbBagging::new(opts)?),
        "FedXgbCyclic" => Box::new(msg::FedXgbCyclic::new(opts)?),
        other => return Err(StrategyError::Config(format!("{other} is not ported yet"))),
    })
}

/// The harness's `server_eval_l2_v1` / `server_eval_odd_rounds_v1`.
fn server_eval(name: &str, r: u64, arrays: &ArrayRecord) -> Option<MetricRecord> {
    if name == "server_eval_odd_rounds_v1" && r.is_multiple_of(2) {
        return None;
    }
    let mut values = Vec::new();
    for (_, a) in arrays.iter() {
        let v = a.view().ok()?;
        match v.dtype {
            DType::F32 => values.extend(
                v.data
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            ),
            DType::F64 => values.extend(
                v.data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
            ),
            _ => values.extend(
                v.data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64),
            ),
        }
    }
    let l2sq = fsum(values.iter().map(|x| x * x));
    let mut m = MetricRecord::new();
    m.insert("l2sq", MetricValue::Float(l2sq));
    m.insert(
        "mean",
        MetricValue::Float(fsum(values.iter().copied()) / values.len() as f64),
    );
    m.insert("num-values", MetricValue::Int(values.len() as i64));
    Some(m)
}

/// Python's `math.fsum` (exact sum, rounded once) via Shewchuk partials.
fn fsum(xs: impl Iterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for mut x in xs {
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    // Round-half-even correction of the final sum, as CPython does.
    let mut n = partials.len();
    let mut hi = 0.0;
    if n > 0 {
        n -= 1;
        hi = partials[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = partials[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
    }
    hi
}

// --------------------------------------------------------------- a case

fn error_matches(py: &str, kind: &str) -> bool {
    match py {
        "InconsistentMessageReplies" => kind == "InconsistentReplies",
        "AggregationError" => kind == "Aggregation",
        "ZeroDivisionError" => matches!(kind, "ZeroExamples" | "ZeroNorm" | "Config"),
        "ValueError" => matches!(kind, "Shape" | "Config" | "Mismatch"),
        _ => false,
    }
}

fn run_case(case: Json) -> R<()> {
    let case = Arc::new(case);
    let class = case["strategy"]["class"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let exact = EXACT.contains(&class.as_str());
    let raises = &case["outcome"]["raises"];
    let blocked = &case["outcome"]["blocked"];
    let unported = [
        &case["strategy"]["class"],
        &case["strategy"]["inner"]["class"],
    ]
    .iter()
    .find(|c| c.as_str().is_some_and(|c| NOT_YET.contains(&c)))
    .map(|c| c.to_string());
    if let Some(c) = unported {
        return Err(format!("{c} is not ported yet"));
    }
    let strategy = match build(&case["strategy"]) {
        Ok(s) => s,
        Err(e) if raises["phase"] == "construct" => {
            let t = raises["type"].as_str().unwrap_or_default();
            return if error_matches(t, e.kind()) {
                Ok(())
            } else {
                Err(format!("constructor: {e}, expected {t}"))
            };
        }
        Err(e) => return Err(format!("constructor: {e}")),
    };
    if raises["phase"] == "construct" {
        return Err("the constructor accepted what Flower refuses".into());
    }
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut strategy = Recorder {
        inner: strategy,
        log: Arc::clone(&log),
    };
    let mut grid = ReplayGrid {
        case: Arc::clone(&case),
        phase: 0,
        waits_total: 0,
        waits_phase: 0,
        polls: Vec::new(),
        sampled: false,
        errors: Vec::new(),
        sent: Vec::new(),
    };
    let st = &case["start"];
    let config = msg::RunConfig {
        num_rounds: st["num_rounds"].as_u64().unwrap_or(3),
        timeout: st["timeout"].as_f64().unwrap_or(3600.0),
        train_config: st["train_config"]
            .as_object()
            .map(|_| config_of(&st["train_config"]))
            .transpose()?,
        evaluate_config: st["evaluate_config"]
            .as_object()
            .map(|_| config_of(&st["evaluate_config"]))
            .transpose()?,
    };
    let eval_name = st["evaluate_fn"].as_str().map(str::to_owned);
    let evals: Arc<std::sync::Mutex<Vec<(u64, ArrayRecord)>>> = Arc::default();
    let evals2 = Arc::clone(&evals);
    let mut eval_fn = |r: u64, a: &ArrayRecord| -> Result<Option<MetricRecord>, StrategyError> {
        evals2.lock().map(|mut l| l.push((r, a.clone()))).ok();
        Ok(eval_name.as_deref().and_then(|n| server_eval(n, r, a)))
    };
    let outcome = msg::start(
        &mut strategy,
        &mut grid,
        arrays_of(&st["initial_arrays"])?,
        config,
        if st["evaluate_fn"].is_string() {
            Some(&mut eval_fn)
        } else {
            None
        },
    );
    let mut errs = std::mem::take(&mut grid.errors);
    // Sent messages, phase by phase.
    let rounds = case["rounds"].as_array().cloned().unwrap_or_default();
    let mut phase = 0usize;
    for round in &rounds {
        for p in ["train", "evaluate"] {
            let Some(pj) = round.get(p) else { continue };
            let Some(exp_sent) = pj["sent"].as_array() else {
                phase += 1;
                continue;
            };
            let got = grid.sent.get(phase).cloned().unwrap_or_default();
            let w = format!("round {} {p}", round["server_round"]);
            if got.len() != exp_sent.len() {
                errs.push(format!(
                    "{w}: {} messages, expected {}",
                    got.len(),
                    exp_sent.len()
                ));
            }
            for (g, e) in got.iter().zip(exp_sent) {
                if Some(g.dst_node_id) != e["dst_node_id"].as_u64()
                    || Some(g.message_type.as_str()) != e["message_type"].as_str()
                {
                    errs.push(format!(
                        "{w}: message to {} ({}), expected {} ({})",
                        g.dst_node_id,
                        g.message_type.as_str(),
                        e["dst_node_id"],
                        e["message_type"]
                    ));
                }
                if let Err(x) = cmp_content(&format!("{w} sent"), &g.content, &e["content"], exact)
                {
                    errs.push(x);
                }
            }
            phase += 1;
        }
    }
    // Aggregates.
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut li = log.iter();
    for round in &rounds {
        let r = round["server_round"].as_u64().unwrap_or(0);
        for p in ["train", "evaluate"] {
            let Some(agg) = round
                .get(p)
                .map(|x| &x["aggregate"])
                .filter(|a| a.is_object())
            else {
                continue;
            };
            let w = format!("round {r} {p} aggregate");
            let Some((gr, gp, got)) = li.next() else {
                errs.push(format!("{w}: not called"));
                continue;
            };
            if *gr != r || *gp != p {
                errs.push(format!("{w}: got round {gr} {gp}"));
                continue;
            }
            match (got, agg["raises"].as_object()) {
                (Err(kind), Some(e)) => {
                    let t = e["type"].as_str().unwrap_or_default();
                    if !error_matches(t, kind) {
                        errs.push(format!("{w}: error {kind}, expected {t}"));
                    }
                }
                (Err(kind), None) => errs.push(format!("{w}: error {kind}")),
                (Ok(_), Some(e)) => errs.push(format!("{w}: ok, expected {}", e["type"])),
                (Ok((arrays, metrics)), None) => {
                    if p == "train" {
                        match (arrays, &agg["arrays"]) {
                            (None, Json::Null) => {}
                            (Some(a), e) if !e.is_null() => {
                                if let Err(x) = cmp_arrays(&w, a, e, exact) {
                                    errs.push(x)
                                }
                            }
                            (a, e) => errs.push(format!(
                                "{w}: arrays {}, expected {}",
                                a.is_some(),
                                !e.is_null()
                            )),
                        }
                    }
                    match (metrics, &agg["metrics"]) {
                        (None, Json::Null) => {}
                        (Some(m), e) if !e.is_null() => {
                            if let Err(x) = cmp_metrics(&w, m, e) {
                                errs.push(x)
                            }
                        }
                        (m, e) => errs.push(format!(
                            "{w}: metrics {}, expected {}",
                            m.is_some(),
                            !e.is_null()
                        )),
                    }
                }
            }
        }
    }
    // Server-side evaluations (the arrays they saw).
    let evals = evals.lock().map(|l| l.clone()).unwrap_or_default();
    let mut exp_evals: Vec<(u64, &Json)> = Vec::new();
    if case["initial_server_evaluation"].is_object() {
        exp_evals.push((0, &case["initial_server_evaluation"]));
    }
    for round in &rounds {
        if round["server_evaluation"].is_object() {
            exp_evals.push((
                round["server_round"].as_u64().unwrap_or(0),
                &round["server_evaluation"],
            ));
        }
    }
    if evals.len() != exp_evals.len() {
        errs.push(format!(
            "{} server evaluations, expected {}",
            evals.len(),
            exp_evals.len()
        ));
    }
    for ((gr, ga), (er, ej)) in evals.iter().zip(&exp_evals) {
        if gr != er {
            errs.push(format!("server evaluation of round {gr}, expected {er}"));
        }
        if let Err(x) = cmp_arrays(&format!("server evaluation {er}"), ga, &ej["arrays"], exact) {
            errs.push(x);
        }
    }
    // The outcome.
    match outcome {
        Ok(result) => {
            if raises.is_object() || blocked.is_object() {
                errs.push(format!(
                    "finished, expected raises {raises} / blocked {blocked}"
                ));
            } else {
                let res = &case["outcome"]["result"];
                if let Err(x) = cmp_arrays("result.arrays", &result.arrays, &res["arrays"], exact) {
                    errs.push(x);
                }
                for (name, got) in [
                    ("train_metrics_clientapp", &result.train_metrics_clientapp),
                    (
                        "evaluate_metrics_clientapp",
                        &result.evaluate_metrics_clientapp,
                    ),
                    (
                        "evaluate_metrics_serverapp",
                        &result.evaluate_metrics_serverapp,
                    ),
                ] {
                    let exp = res[name].as_object().cloned().unwrap_or_default();
                    let gk: Vec<String> = got.keys().map(u64::to_string).collect();
                    let ek: Vec<String> = {
                        let mut k: Vec<(u64, String)> = exp
                            .keys()
                            .map(|k| (k.parse().unwrap_or(0), k.clone()))
                            .collect();
                        k.sort();
                        k.into_iter().map(|(_, s)| s).collect()
                    };
                    if gk != ek {
                        errs.push(format!("result.{name}: rounds {gk:?}, expected {ek:?}"));
                        continue;
                    }
                    for (r, m) in got {
                        if let Err(x) =
                            cmp_metrics(&format!("result.{name}[{r}]"), m, &exp[&r.to_string()])
                        {
                            errs.push(x);
                        }
                    }
                }
            }
        }
        Err(StrategyError::InPhase {
            phase,
            server_round,
            source,
        }) => {
            if let Some(b) = blocked.as_object() {
                let ok = matches!(*source, StrategyError::TooFewNodes { .. })
                    && b["phase"].as_str() == Some(phase.as_str())
                    && b["server_round"].as_u64() == Some(server_round);
                if !ok {
                    errs.push(format!(
                        "{phase} round {server_round}: {source}, expected blocked {}",
                        Json::Object(b.clone())
                    ));
                }
            } else if let Some(e) = raises.as_object() {
                let t = e["type"].as_str().unwrap_or_default();
                let ok = error_matches(t, source.kind())
                    && e["phase"].as_str() == Some(phase.as_str())
                    && e["server_round"].as_u64() == Some(server_round);
                if !ok {
                    errs.push(format!(
                        "{phase} round {server_round}: {source}, expected {t} in {} round {}",
                        e["phase"], e["server_round"]
                    ));
                }
            } else {
                errs.push(format!("{phase} round {server_round}: {source}"));
            }
        }
        Err(e) => errs.push(format!("start: {e}")),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n    "))
    }
}

#[test]
fn golden_msg() {
    let dir = golden_dir();
    let index: Json = serde_json::from_slice(
        &std::fs::read(dir.join("index.json")).unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
    )
    .expect("index.json");
    let cases = index["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    let mut by_cat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut expected_fail = Vec::new();
    for c in cases {
        let name = c["case"].as_str().unwrap_or_default();
        let file = dir.join(c["file"].as_str().unwrap_or_default());
        let json: Json = match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(j) => j,
            Err(e) => {
                unexpected.push(format!("{name}: {e}"));
                continue;
            }
        };
        let not_yet = [
            &json["strategy"]["class"],
            &json["strategy"]["inner"]["class"],
        ]
        .iter()
        .any(|c| c.as_str().is_some_and(|c| NOT_YET.contains(&c)));
        let cat = c["category"].as_str().unwrap_or("?").to_owned();
        let outcome = run_case(json);
        let e = by_cat.entry(cat).or_default();
        e.1 += 1;
        match (outcome, not_yet) {
            (Ok(()), false) => e.0 += 1,
            (Ok(()), true) => {
                unexpected.push(format!("{name}: passes; remove its class from NOT_YET"))
            }
            (Err(_), true) => expected_fail.push(name.to_owned()),
            (Err(x), false) => unexpected.push(format!("{name}:\n    {x}")),
        }
    }
    for (cat, (pass, total)) in &by_cat {
        eprintln!("golden_msg {cat}: {pass}/{total} pass");
    }
    let total: usize = by_cat.values().map(|v| v.1).sum();
    let pass: usize = by_cat.values().map(|v| v.0).sum();
    eprintln!("golden_msg total: {pass}/{total} pass");
    if !expected_fail.is_empty() {
        eprintln!(
            "golden_msg: {} cases FAIL because their strategy is not ported yet (NOT_YET): {}",
            expected_fail.len(),
            expected_fail.join(", ")
        );
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected results:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
