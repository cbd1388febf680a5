//! FedAvg aggregation throughput: K = 20 clients × 10M float32 (40 MB each),
//! folded from their `.npy` bytes with `accumulate_fit`, beside a `memcpy` of
//! the same 20 × 40 MB (the bandwidth baseline; target ≥ 50 % of it).
//!
//! Run: `cargo bench --bench fedavg -- --warm-up-time 1 --measurement-time 5`
//! (needs `[[bench]] name = "fedavg"`, `harness = false` in the root `Cargo.toml`).
//!
//! * `memcpy`: copy each client's 40 MB payload into one 40 MB buffer.
//! * `inplace_accumulate` / `plain_accumulate`: `begin_fit` + 20
//!   `accumulate_fit` (the streaming fold into one f32 accumulator, split
//!   across cores).
//! * `inplace_round`: the same plus `aggregate_fit` (final division and
//!   `.npy` encoding of the 40 MB result).
//!
//! Group `msg_fedavg_k20_10M_f32`: the message-API FedAvg
//! (`flower_strategy::msg`) over the same 20 replies as `ArrayRecord`s, with
//! its own `memcpy` baseline in the same run:
//!
//! * `aggregate_train`: reply validation, weight factors, the fold of every
//!   reply's `.npy` bytes into one f32 accumulator, and the `.npy` encoding
//!   of the result (Flower's arithmetic; the server's join order).
//! * `streaming_aggregate_train`: the server's arrival order: each reply
//!   folded by `StreamingMean` as if it had just arrived, then
//!   `aggregate_train` of the one mean reply.
//!
//! Before the timings it prints the extra peak RSS of one `aggregate_train`
//! (VmHWM after, minus VmRSS before, with the high-water mark reset through
//! `/proc/self/clear_refs`): about one to two models (accumulator and
//! encoded result), not K models.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use flower_core::npy::{encode_npy, parse_npy};
use flower_core::{FitRes, Metrics, NdArray, Parameters, Status, NUMPY_TENSOR_TYPE};
use flower_strategy::msg::{self, MsgStrategy};
use flower_strategy::{FedAvg, FedAvgOptions, Strategy};
use ndarray::{ArrayD, IxDyn};

const ELEMENTS: usize = 10_000_000;
const CLIENTS: usize = 20;
/// Distinct client buffers (reused round-robin; each is far larger than the caches).
const DISTINCT: usize = 4;

fn params(seed: usize) -> Parameters {
    let values: Vec<f32> = (0..ELEMENTS)
        .map(|i| ((i + seed * 7919) as f32 * 1e-3).sin())
        .collect();
    let array = NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[ELEMENTS]), values).expect("shape"));
    Parameters {
        tensors: vec![Bytes::from(encode_npy(&array))],
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    }
}

fn fit_res(p: &Parameters, k: usize) -> FitRes {
    FitRes {
        status: Status::success(),
        parameters: p.clone(),
        num_examples: 10 + k as i64,
        metrics: Metrics::new(),
    }
}

fn fold(strategy: &mut FedAvg, global: &Parameters, clients: &[Parameters]) {
    strategy.begin_fit(1, global).expect("begin_fit");
    for k in 0..CLIENTS {
        strategy
            .accumulate_fit(
                1,
                flower_strategy::ClientId::new(k as u64),
                fit_res(&clients[k % DISTINCT], k),
            )
            .expect("accumulate_fit");
    }
}

fn fedavg(c: &mut Criterion) {
    let clients: Vec<Parameters> = (0..DISTINCT).map(params).collect();
    let global = clients[0].clone();
    let payloads: Vec<&[u8]> = clients
        .iter()
        .map(|p| parse_npy(&p.tensors[0]).expect("npy").data)
        .collect();

    let mut group = c.benchmark_group("fedavg_k20_10M_f32");
    group.throughput(Throughput::Bytes((CLIENTS * ELEMENTS * 4) as u64));
    group.sample_size(10);

    let mut dst = vec![0u8; ELEMENTS * 4];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            for k in 0..CLIENTS {
                dst.copy_from_slice(black_box(payloads[k % DISTINCT]));
            }
            black_box(&dst);
        })
    });

    let mut inplace = FedAvg::new(FedAvgOptions::default()).expect("fedavg");
    group.bench_function("inplace_accumulate", |b| {
        b.iter(|| fold(&mut inplace, &global, &clients))
    });
    group.bench_function("inplace_round", |b| {
        b.iter(|| {
            fold(&mut inplace, &global, &clients);
            black_box(inplace.aggregate_fit(1, &[]).expect("aggregate_fit"));
        })
    });

    let mut plain = FedAvg::new(FedAvgOptions::default().inplace(false)).expect("fedavg");
    group.bench_function("plain_accumulate", |b| {
        b.iter(|| fold(&mut plain, &global, &clients))
    });
    group.finish();
}

/// The 20 replies of the message-API bench (4 distinct buffers, shared).
fn msg_replies(clients: &[Parameters]) -> Vec<msg::Reply> {
    (0..CLIENTS)
        .map(|k| {
            let npy = clients[k % DISTINCT].tensors[0].clone();
            let arrays: msg::ArrayRecord = [("w", msg::Array::from_npy(npy).expect("npy"))]
                .into_iter()
                .collect();
            let mut metrics = msg::MetricRecord::new();
            metrics.insert("num-examples", msg::MetricValue::Int(10 + k as i64));
            let mut content = msg::RecordDict::new();
            content.insert("arrays", msg::Record::Arrays(arrays));
            content.insert("metrics", msg::Record::Metrics(metrics));
            msg::Reply {
                src_node_id: k as u64 + 1,
                content: Ok(content),
            }
        })
        .collect()
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak RSS added while `f` runs (Linux; `None` elsewhere).
fn extra_peak_rss(f: impl FnOnce()) -> Option<u64> {
    // "5" resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status_bytes("VmRSS:")?;
    f();
    Some(status_bytes("VmHWM:")?.saturating_sub(before))
}

fn fedavg_msg(c: &mut Criterion) {
    let clients: Vec<Parameters> = (0..DISTINCT).map(params).collect();
    let payloads: Vec<&[u8]> = clients
        .iter()
        .map(|p| parse_npy(&p.tensors[0]).expect("npy").data)
        .collect();
    let replies = msg_replies(&clients);
    let mut strategy = msg::FedAvg::new(msg::FedAvgOptions::default()).expect("fedavg");

    let model = (ELEMENTS * 4) as f64 / 1e6;
    match extra_peak_rss(|| {
        black_box(
            strategy
                .aggregate_train(1, replies.clone())
                .expect("aggregate"),
        );
    }) {
        Some(extra) => eprintln!(
            "msg FedAvg aggregate_train: extra peak RSS {:.1} MB (model {model:.0} MB, \
             K x model {:.0} MB)",
            extra as f64 / 1e6,
            model * CLIENTS as f64
        ),
        None => eprintln!("msg FedAvg aggregate_train: peak RSS not measurable here"),
    }

    let mut group = c.benchmark_group("msg_fedavg_k20_10M_f32");
    group.throughput(Throughput::Bytes((CLIENTS * ELEMENTS * 4) as u64));
    group.sample_size(10);
    let mut dst = vec![0u8; ELEMENTS * 4];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            for k in 0..CLIENTS {
                dst.copy_from_slice(black_box(payloads[k % DISTINCT]));
            }
            black_box(&dst);
        })
    });
    group.bench_function("aggregate_train", |b| {
        b.iter(|| {
            black_box(
                strategy
                    .aggregate_train(1, replies.clone())
                    .expect("aggregate"),
            )
        })
    });
    group.bench_function("streaming_aggregate_train", |b| {
        b.iter(|| {
            let mut fold = msg::StreamingMean::for_strategy(&strategy).expect("mean family");
            replies.iter().cloned().for_each(|r| fold.add(r));
            black_box(
                strategy
                    .aggregate_train(1, fold.finish())
                    .expect("aggregate"),
            )
        })
    });
    group.finish();
}

fn main() {
    // What `criterion_group!` / `criterion_main!` expand to, written out so
    // that no undocumented public function is generated.
    let mut c = Criterion::default().configure_from_args();
    fedavg(&mut c);
    fedavg_msg(&mut c);
    c.final_summary();
}
