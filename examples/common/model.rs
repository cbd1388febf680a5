//! Softmax (multinomial logistic) regression trained by full-batch gradient
//! descent, and the Flower client that trains it on one iris partition.
//!
//! The model is two float64 arrays, in this order: the weights `W` of shape
//! `(4, 3)` and the bias `b` of shape `(3,)`. `examples/python/client.py`
//! computes exactly the same maths with numpy, so Rust and Python clients can
//! be mixed in one federation.

use flower_client::{BoxError, NumPyClient};
use flower_core::{Config, Metrics, NdArray, Scalar};
use ndarray::{Array1, Array2, ArrayD, Axis, Ix1, Ix2};

use super::data::{Partition, NUM_CLASSES, NUM_FEATURES};

/// Learning rate used when the server's fit config has no `learning_rate`.
pub const DEFAULT_LEARNING_RATE: f64 = 0.1;
/// Local epochs (gradient steps) when the fit config has no `local_epochs`.
pub const DEFAULT_LOCAL_EPOCHS: i64 = 2;

/// The model: weights `(4, 3)` and bias `(3,)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftmaxRegression {
    /// Weights, `(features, classes)`.
    pub w: Array2<f64>,
    /// Bias, `(classes,)`.
    pub b: Array1<f64>,
}

/// Loss and accuracy of the model on some data.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of correctly classified rows.
    pub accuracy: f64,
}

impl SoftmaxRegression {
    /// All zeros: every class equally likely (loss ln 3).
    pub fn zeros() -> Self {
        Self {
            w: Array2::zeros((NUM_FEATURES, NUM_CLASSES)),
            b: Array1::zeros(NUM_CLASSES),
        }
    }

    /// The model as Flower parameters: `[W, b]`, float64.
    pub fn to_ndarrays(&self) -> Vec<NdArray> {
        vec![
            NdArray::F64(self.w.clone().into_dyn()),
            NdArray::F64(self.b.clone().into_dyn()),
        ]
    }

    /// The model from Flower parameters; refuses other shapes or dtypes.
    pub fn from_ndarrays(parameters: Vec<NdArray>) -> Result<Self, BoxError> {
        let [w, b]: [NdArray; 2] = parameters
            .try_into()
            .map_err(|p: Vec<NdArray>| format!("expected 2 arrays [W, b], got {}", p.len()))?;
        let as_f64 = |a: NdArray, name: &str| -> Result<ArrayD<f64>, BoxError> {
            match a {
                NdArray::F64(a) => Ok(a),
                other => Err(format!("{name}: expected float64, got {:?}", other.dtype()).into()),
            }
        };
        let model = Self {
            w: as_f64(w, "W")?.into_dimensionality::<Ix2>()?,
            b: as_f64(b, "b")?.into_dimensionality::<Ix1>()?,
        };
        if model.w.dim() != (NUM_FEATURES, NUM_CLASSES) || model.b.len() != NUM_CLASSES {
            return Err(format!(
                "unexpected shapes W {:?}, b {:?}",
                model.w.dim(),
                model.b.dim()
            )
            .into());
        }
        Ok(model)
    }

    /// Class probabilities, `(rows, classes)`: softmax of `x·W + b`.
    fn probabilities(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.dot(&self.w) + &self.b;
        for mut row in z.rows_mut() {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        z
    }

    /// Mean cross-entropy and accuracy on `(x, y)`.
    pub fn score(&self, x: &Array2<f64>, y: &[usize]) -> Scores {
        let p = self.probabilities(x);
        let n = y.len() as f64;
        let mut loss = 0.0;
        let mut correct = 0usize;
        for (row, &label) in p.rows().into_iter().zip(y) {
            loss -= row[label].max(1e-12).ln();
            // argmax, first index on ties (as numpy's argmax).
            let predicted =
                (0..NUM_CLASSES).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            correct += usize::from(predicted == label);
        }
        Scores {
            loss: loss / n,
            accuracy: correct as f64 / n,
        }
    }

    /// `epochs` steps of full-batch gradient descent on the mean cross-entropy:
    /// `W -= lr · xᵀ(p − onehot(y)) / n`, `b -= lr · mean(p − onehot(y))`.
    pub fn train(&mut self, x: &Array2<f64>, y: &[usize], learning_rate: f64, epochs: usize) {
        let n = y.len() as f64;
        for _ in 0..epochs {
            let mut g = self.probabilities(x);
            for (mut row, &label) in g.rows_mut().into_iter().zip(y) {
                row[label] -= 1.0;
            }
            g.mapv_inplace(|v| v / n);
            self.w = &self.w - &(x.t().dot(&g) * learning_rate);
            self.b = &self.b - &(g.sum_axis(Axis(0)) * learning_rate);
        }
    }
}

/// A Flower client training [`SoftmaxRegression`] on one partition.
#[derive(Debug)]
pub struct IrisClient {
    data: Partition,
    model: SoftmaxRegression,
}

impl IrisClient {
    /// A client for this partition, starting from a zero model.
    pub fn new(data: Partition) -> Self {
        Self {
            data,
            model: SoftmaxRegression::zeros(),
        }
    }
}

fn config_f64(config: &Config, key: &str, default: f64) -> f64 {
    config.get(key).and_then(Scalar::as_f64).unwrap_or(default)
}

impl NumPyClient for IrisClient {
    fn get_parameters(&mut self, _config: &Config) -> Result<Vec<NdArray>, BoxError> {
        Ok(self.model.to_ndarrays())
    }

    /// Trains on the local training rows, with the server's `learning_rate`
    /// and `local_epochs` (fit config) when given.
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        self.model = SoftmaxRegression::from_ndarrays(parameters)?;
        let learning_rate = config_f64(config, "learning_rate", DEFAULT_LEARNING_RATE);
        let epochs = config
            .get("local_epochs")
            .and_then(Scalar::as_i64)
            .unwrap_or(DEFAULT_LOCAL_EPOCHS)
            .max(0) as usize;
        let (x, y) = (&self.data.train_x, &self.data.train_y);
        self.model.train(x, y, learning_rate, epochs);
        let scores = self.model.score(x, y);
        let metrics = Metrics::from([
            ("train_loss".to_owned(), Scalar::Double(scores.loss)),
            ("train_accuracy".to_owned(), Scalar::Double(scores.accuracy)),
        ]);
        Ok((self.model.to_ndarrays(), y.len() as u64, metrics))
    }

    /// Loss and accuracy of the global model on the local test rows.
    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        let model = SoftmaxRegression::from_ndarrays(parameters)?;
        let scores = model.score(&self.data.test_x, &self.data.test_y);
        let metrics = Metrics::from([("accuracy".to_owned(), Scalar::Double(scores.accuracy))]);
        Ok((scores.loss, self.data.test_y.len() as u64, metrics))
    }
}

/// Zeros of the model's shapes, as Flower parameters (the initial model).
pub fn initial_parameters() -> Vec<NdArray> {
    SoftmaxRegression::zeros().to_ndarrays()
}
