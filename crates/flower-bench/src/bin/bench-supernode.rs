//! `bench-supernode`: the Rust SuperNode that `flower-bench node` runs
//! beside stock Python SuperNodes. It joins over the HTTP Fleet API
//! (`flower_client::fleet::run_supernode`) and answers with the arithmetic
//! of `python/bench/fleet_bench_app/client_app.py`, so that it and a stock
//! SuperNode with the same `index` send the same replies:
//!
//! * **train**: every array `x` becomes `x + (1 + index)` in its own dtype
//!   (numpy's `x + x.dtype.type(step)`: floats rounded to their width,
//!   integers wrapping, booleans or-ed), names kept; metrics
//!   `num-examples` = the run config's `examples`.
//! * **evaluate**: metrics `num-examples` (as above) and `loss` = the sum,
//!   in f64, of the first element of every non-empty array.
//!
//! `index` is the node config's (default 0). Ctrl-C or SIGTERM deactivates
//! the node before it exits.
//!
//! ```sh
//! bench-supernode --superlink 127.0.0.1:9092 --insecure --node-config index=0
//! ```

#![forbid(unsafe_code)]

use clap::Parser;
use flower_client::app::{ClientApp, Context, Instruction, Reply};
use flower_client::fleet::{run_supernode, shutdown_signal, SuperNodeOptions};
use flower_client::BoxError;
use flower_core::NdArray;

/// Command-line flags (the stock `flower-supernode`'s names).
#[derive(Debug, Parser)]
#[command(about = "Rust SuperNode with the arithmetic of python/bench's ClientApp")]
struct Args {
    /// SuperLink Fleet API address, HOST:PORT (no scheme).
    #[arg(long, default_value = "127.0.0.1:9092")]
    superlink: String,
    /// Plain HTTP instead of HTTPS (with the system's roots).
    #[arg(long)]
    insecure: bool,
    /// Node config, `"key=value ..."` with TOML values (`index=I`).
    #[arg(long, default_value = "")]
    node_config: String,
}

/// The bench ClientApp's arithmetic (see the module head).
struct BenchApp;

impl BenchApp {
    /// `int(context.run_config["examples"])`: required, as in the Python app.
    fn examples(ctx: &Context) -> Result<u64, BoxError> {
        let e = ctx
            .run_f64("examples")
            .ok_or("the run config has no numeric `examples`")?;
        Ok(e.max(0.0) as u64)
    }

    /// `1 + int(context.node_config.get("index", 0))`.
    fn step(ctx: &Context) -> i64 {
        1 + ctx.node_f64("index").unwrap_or(0.0) as i64
    }
}

/// `x + x.dtype.type(step)` as numpy computes it.
fn add_step(a: NdArray, step: i64) -> NdArray {
    // numpy's scalar conversion wraps an out-of-range step to the dtype's width.
    match a {
        NdArray::F16(x) => {
            let s = half::f16::from_f64(step as f64);
            NdArray::F16(x.mapv(|v| v + s))
        }
        NdArray::F32(x) => NdArray::F32(x + step as f32),
        NdArray::F64(x) => NdArray::F64(x + step as f64),
        NdArray::I8(x) => NdArray::I8(x.mapv(|v| v.wrapping_add(step as i8))),
        NdArray::I16(x) => NdArray::I16(x.mapv(|v| v.wrapping_add(step as i16))),
        NdArray::I32(x) => NdArray::I32(x.mapv(|v| v.wrapping_add(step as i32))),
        NdArray::I64(x) => NdArray::I64(x.mapv(|v| v.wrapping_add(step))),
        NdArray::U8(x) => NdArray::U8(x.mapv(|v| v.wrapping_add(step as u8))),
        NdArray::U16(x) => NdArray::U16(x.mapv(|v| v.wrapping_add(step as u16))),
        NdArray::U32(x) => NdArray::U32(x.mapv(|v| v.wrapping_add(step as u32))),
        NdArray::U64(x) => NdArray::U64(x.mapv(|v| v.wrapping_add(step as u64))),
        NdArray::Bool(x) => NdArray::Bool(x.mapv(|v| v | (step != 0))),
    }
}

/// `float(a.ravel()[0])`, for a non-empty array.
fn first_f64(a: &NdArray) -> Option<f64> {
    Some(match a {
        NdArray::F16(x) => x.iter().next()?.to_f64(),
        NdArray::F32(x) => f64::from(*x.iter().next()?),
        NdArray::F64(x) => *x.iter().next()?,
        NdArray::I8(x) => f64::from(*x.iter().next()?),
        NdArray::I16(x) => f64::from(*x.iter().next()?),
        NdArray::I32(x) => f64::from(*x.iter().next()?),
        NdArray::I64(x) => *x.iter().next()? as f64,
        NdArray::U8(x) => f64::from(*x.iter().next()?),
        NdArray::U16(x) => f64::from(*x.iter().next()?),
        NdArray::U32(x) => f64::from(*x.iter().next()?),
        NdArray::U64(x) => *x.iter().next()? as f64,
        NdArray::Bool(x) => f64::from(u8::from(*x.iter().next()?)),
    })
}

impl ClientApp for BenchApp {
    fn name(&self) -> &str {
        "bench-supernode (fleet_bench_app's arithmetic)"
    }

    fn train(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let step = Self::step(ctx);
        let arrays = ins
            .arrays
            .into_iter()
            .map(|(name, a)| (name, add_step(a, step)))
            .collect();
        Ok(Reply::train(arrays, Self::examples(ctx)?))
    }

    fn evaluate(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let loss: f64 = ins.arrays.iter().filter_map(|(_, a)| first_f64(a)).sum();
        Ok(Reply::evaluate(Self::examples(ctx)?).metric("loss", loss))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut options = SuperNodeOptions::new(&args.superlink).node_config(&args.node_config)?;
    if args.insecure {
        options = options.insecure();
    }
    let summary = run_supernode(options, BenchApp, shutdown_signal()).await?;
    println!("bench-supernode finished: {summary:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_fab::{ConfigValue, UserConfig};
    use ndarray::{ArrayD, IxDyn};

    fn ctx(index: Option<i64>, examples: Option<i64>) -> Context {
        let mut node_config = UserConfig::new();
        if let Some(i) = index {
            node_config.insert("index", ConfigValue::Int(i));
        }
        let mut run_config = UserConfig::new();
        if let Some(e) = examples {
            run_config.insert("examples", ConfigValue::Int(e));
        }
        Context {
            node_config,
            run_config,
            ..Context::default()
        }
    }

    fn ins(arrays: Vec<(String, NdArray)>) -> Instruction {
        Instruction {
            message_type: "train".into(),
            group_id: "1".into(),
            arrays,
            config: Default::default(),
            content: Default::default(),
        }
    }

    fn f32s(v: &[f32]) -> NdArray {
        NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("1-D"))
    }

    #[test]
    fn train_adds_one_plus_index_in_the_arrays_dtype() {
        let u8s = NdArray::U8(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 254]).expect("1-D"));
        let reply = BenchApp
            .train(
                ins(vec![("a".into(), f32s(&[0.5, -1.0])), ("b".into(), u8s)]),
                &ctx(Some(2), Some(100)),
            )
            .expect("train");
        let arrays = reply.arrays.expect("arrays");
        assert_eq!(arrays[0], ("a".to_string(), f32s(&[3.5, 2.0])));
        assert_eq!(
            arrays[1].1,
            NdArray::U8(ArrayD::from_shape_vec(IxDyn(&[2]), vec![4, 1]).expect("1-D"))
        );
        assert_eq!(
            reply.metrics.get("num-examples"),
            Some(&flower_message::MetricValue::Sint64(100))
        );
        assert_eq!(reply.metrics.len(), 1, "{:?}", reply.metrics);
    }

    #[test]
    fn index_defaults_to_zero_and_examples_is_required() {
        let reply = BenchApp
            .train(ins(vec![("a".into(), f32s(&[1.0]))]), &ctx(None, Some(7)))
            .expect("train");
        assert_eq!(reply.arrays.expect("arrays")[0].1, f32s(&[2.0]));
        assert!(BenchApp
            .train(ins(vec![("a".into(), f32s(&[1.0]))]), &ctx(None, None))
            .is_err());
    }

    #[test]
    fn evaluate_loss_sums_first_elements() {
        let empty = f32s(&[]);
        let reply = BenchApp
            .evaluate(
                ins(vec![
                    ("a".into(), f32s(&[0.25, 9.0])),
                    ("e".into(), empty),
                    ("b".into(), f32s(&[-2.0])),
                ]),
                &ctx(Some(5), Some(100)),
            )
            .expect("evaluate");
        assert!(reply.arrays.is_none());
        assert_eq!(
            reply.metrics.get("loss"),
            Some(&flower_message::MetricValue::Double(-1.75))
        );
        assert_eq!(
            reply.metrics.get("num-examples"),
            Some(&flower_message::MetricValue::Sint64(100))
        );
    }
}
