//! The iris data set (150 flowers, 4 features, 3 species), as shipped inside
//! the `linfa-datasets` crate, and its deterministic split across clients.
//!
//! The split is simple enough to redo in a few lines of numpy
//! (`examples/python/client.py` does exactly that):
//!
//! * client `p` of `n` gets the rows `p, p + n, p + 2n, ...` (the data set is
//!   sorted by species, so every client sees all three);
//! * of those, every fifth row (local index 4, 9, ...) is for testing, the
//!   rest for training;
//! * features are standardized with the mean and (population) standard
//!   deviation of the client's own training rows.

use std::io::Write as _;
use std::path::Path;

use ndarray::{Array1, Array2, Axis};

/// Number of features per flower.
pub const NUM_FEATURES: usize = 4;
/// Number of species.
pub const NUM_CLASSES: usize = 3;
/// Column names of the CSV written by [`write_csv`].
pub const CSV_HEADER: &str = "sepal_length,sepal_width,petal_length,petal_width,species";

/// The whole data set: features `(150, 4)` and species `0..3`.
pub fn iris() -> (Array2<f64>, Vec<usize>) {
    let dataset = linfa_datasets::iris();
    // linfa-datasets is on an older ndarray than ours: copy through plain
    // values rather than sharing the array type.
    let records = dataset.records();
    let x = Array2::from_shape_vec(records.dim(), records.iter().copied().collect())
        .expect("iris records form a full table");
    (x, dataset.targets().iter().copied().collect())
}

/// One client's share of the data, standardized.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Training features, `(n_train, 4)`.
    pub train_x: Array2<f64>,
    /// Training labels.
    pub train_y: Vec<usize>,
    /// Test features, `(n_test, 4)`.
    pub test_x: Array2<f64>,
    /// Test labels.
    pub test_y: Vec<usize>,
}

/// The share of client `partition_id` of `num_partitions` (see the module
/// docs for the rule).
pub fn partition(partition_id: usize, num_partitions: usize) -> Partition {
    assert!(
        num_partitions > 0 && partition_id < num_partitions,
        "partition id {partition_id} out of 0..{num_partitions}"
    );
    let (x, y) = iris();
    // Rows p, p + n, p + 2n, ...; every fifth of them is a test row.
    let rows: Vec<usize> = (partition_id..x.nrows()).step_by(num_partitions).collect();
    let is_test = |j: usize| j % 5 == 4;
    let train: Vec<usize> = (0..rows.len())
        .filter(|&j| !is_test(j))
        .map(|j| rows[j])
        .collect();
    let test: Vec<usize> = (0..rows.len())
        .filter(|&j| is_test(j))
        .map(|j| rows[j])
        .collect();
    let pick = |idx: &[usize]| {
        (
            x.select(Axis(0), idx),
            idx.iter().map(|&i| y[i]).collect::<Vec<_>>(),
        )
    };
    let (train_x, train_y) = pick(&train);
    let (test_x, test_y) = pick(&test);
    assert!(!train_y.is_empty(), "too many partitions for 150 rows");

    // Standardize with the training rows' statistics (numpy: mean(0), std(0)).
    let mean: Array1<f64> = train_x.mean_axis(Axis(0)).expect("non-empty");
    let std = train_x
        .map_axis(Axis(0), |col| {
            let m = col.mean().unwrap_or(0.0);
            (col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / col.len() as f64).sqrt()
        })
        .mapv(|s| if s > 0.0 { s } else { 1.0 });
    Partition {
        train_x: (&train_x - &mean) / &std,
        train_y,
        test_x: (&test_x - &mean) / &std,
        test_y,
    }
}

/// Writes the whole data set as CSV (header [`CSV_HEADER`], raw features,
/// species as an integer), for the Python client. Floats are written in
/// Rust's shortest round-trip form, so Python reads back the same values.
pub fn write_csv(path: &Path) -> std::io::Result<()> {
    let (x, y) = iris();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "{CSV_HEADER}")?;
    for (row, label) in x.rows().into_iter().zip(&y) {
        let features: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        writeln!(out, "{},{label}", features.join(","))?;
    }
    out.flush()
}
