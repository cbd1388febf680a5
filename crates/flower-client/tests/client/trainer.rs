//! A deterministic `NumPyClient` and the model it starts from.

use flower_client::{BoxError, NumPyClient};
use flower_core::{Config, Metrics, NdArray, Scalar};
use ndarray::{ArrayD, IxDyn};

/// Adds `increment` to every float array on each fit; evaluates to
/// `mean(first array) + loss_offset`.
#[derive(Debug, Clone)]
pub(crate) struct Trainer {
    pub(crate) id: i64,
    pub(crate) increment: f64,
    pub(crate) examples: u64,
    pub(crate) loss_offset: f64,
    /// Fit rounds (1-based) in which `fit` returns an error.
    pub(crate) fail_fit_in: Vec<usize>,
    pub(crate) fits: usize,
    pub(crate) evaluates: usize,
    pub(crate) last_evaluated: Vec<NdArray>,
}

impl Trainer {
    pub(crate) fn new(id: i64, increment: f64, examples: u64, loss_offset: f64) -> Self {
        Self {
            id,
            increment,
            examples,
            loss_offset,
            fail_fit_in: Vec::new(),
            fits: 0,
            evaluates: 0,
            last_evaluated: Vec::new(),
        }
    }
}

/// The model the trainers start from: `zeros((2, 3), float32)` and `arange(4.0)`.
pub(crate) fn initial_model() -> Vec<NdArray> {
    vec![
        NdArray::F32(ArrayD::zeros(IxDyn(&[2, 3]))),
        NdArray::F64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0, 1.0, 2.0, 3.0]).unwrap()),
    ]
}

fn mean(a: &NdArray) -> f64 {
    match a {
        NdArray::F32(a) => a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64,
        NdArray::F64(a) => a.iter().sum::<f64>() / a.len() as f64,
        _ => f64::NAN,
    }
}

impl NumPyClient for Trainer {
    fn get_parameters(&mut self, _config: &Config) -> Result<Vec<NdArray>, BoxError> {
        Ok(initial_model())
    }

    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        self.fits += 1;
        if self.fail_fit_in.contains(&self.fits) {
            return Err(format!("simulated failure in fit #{}", self.fits).into());
        }
        let inc = self.increment;
        let updated = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(a) => NdArray::F32(a.mapv(|v| v + inc as f32)),
                NdArray::F64(a) => NdArray::F64(a.mapv(|v| v + inc)),
                other => other,
            })
            .collect();
        let mut metrics = Metrics::new();
        metrics.insert("client".into(), Scalar::Sint64(self.id));
        Ok((updated, self.examples, metrics))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        self.evaluates += 1;
        let loss = parameters.first().map(mean).ok_or("no parameters")? + self.loss_offset;
        self.last_evaluated = parameters;
        let mut metrics = Metrics::new();
        metrics.insert("client".into(), Scalar::Sint64(self.id));
        Ok((loss, self.examples, metrics))
    }
}
