//! Plots of a flower-rs run: a [`History`] (what `history.json` holds)
//! rendered to PNG and SVG with `plotters`.
//!
//! One panel per quantity, each against the round: the loss (client-side
//! evaluate and centralized), the clients' results and failures per round,
//! and every aggregated metric, with its fit, evaluate and centralized
//! values side by side in one panel. Pure Rust: the text is drawn with a
//! bundled font (Roboto, Apache-2.0) through `ab_glyph`, so no fontconfig,
//! FreeType or system font is needed.
//!
//! ```no_run
//! let files = flower_plot::plot_output_dir(std::path::Path::new("output"))?;
//! println!("plot: {}", files.png.display());
//! # Ok::<(), flower_plot::PlotError>(())
//! ```

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flower_server::History;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// The bundled font (see `fonts/README.md`).
const FONT: &[u8] = include_bytes!("../fonts/Roboto-Regular.ttf");

/// Size of one panel, pixels.
pub const PANEL_SIZE: (u32, u32) = (640, 400);

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// `history.json` could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `history.json` is not a run history.
    #[error("{path} is not a flower-rs history")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The history has nothing to plot (no loss, no metric, no round).
    #[error("the history has nothing to plot (no completed round)")]
    Empty,
    /// The bundled font was refused by the renderer.
    #[error("the bundled font could not be loaded")]
    Font,
    /// Drawing or writing an image failed.
    #[error("drawing {path}")]
    Draw {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The files [`plot_history`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    /// The PNG image.
    pub png: PathBuf,
    /// The SVG image.
    pub svg: PathBuf,
    /// Image size in pixels (width, height), the same for both.
    pub size: (u32, u32),
}

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: &'static str,
    points: Vec<(f64, f64)>,
}

/// One chart.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    title: String,
    series: Vec<Series>,
}

/// A finite number from a history value (metrics may be any scalar;
/// strings, booleans, bytes and non-finite values are not plotted).
fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn points<'a>(values: impl IntoIterator<Item = &'a (u64, Value)>) -> Vec<(f64, f64)> {
    values
        .into_iter()
        .filter_map(|(round, v)| number(v).map(|y| (*round as f64, y)))
        .collect()
}

fn losses(values: &[(u64, f64)]) -> Vec<(f64, f64)> {
    values
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(r, l)| (r as f64, l))
        .collect()
}

/// The panels of a history, in a fixed order: loss, clients, then metrics
/// by name.
fn panels(history: &History) -> Vec<Panel> {
    let mut out = Vec::new();
    let loss: Vec<Series> = [
        ("evaluate", losses(&history.losses_distributed)),
        ("centralized", losses(&history.losses_centralized)),
    ]
    .into_iter()
    .filter(|(_, p)| !p.is_empty())
    .map(|(name, points)| Series { name, points })
    .collect();
    if !loss.is_empty() {
        out.push(Panel {
            title: "loss".into(),
            series: loss,
        });
    }
    if !history.rounds.is_empty() {
        let per_round = |f: fn(&flower_server::RoundRecord) -> usize| {
            history
                .rounds
                .iter()
                .map(|r| (r.round as f64, f(r) as f64))
                .collect::<Vec<_>>()
        };
        out.push(Panel {
            title: "clients per round".into(),
            series: vec![
                Series {
                    name: "fit results",
                    points: per_round(|r| r.fit_results),
                },
                Series {
                    name: "fit failures",
                    points: per_round(|r| r.fit_failures),
                },
                Series {
                    name: "evaluate results",
                    points: per_round(|r| r.evaluate_results),
                },
                Series {
                    name: "evaluate failures",
                    points: per_round(|r| r.evaluate_failures),
                },
            ],
        });
    }
    let names: BTreeSet<&String> = history
        .metrics_distributed_fit
        .keys()
        .chain(history.metrics_distributed.keys())
        .chain(history.metrics_centralized.keys())
        .collect();
    for name in names {
        let series: Vec<Series> = [
            ("fit", history.metrics_distributed_fit.get(name)),
            ("evaluate", history.metrics_distributed.get(name)),
            ("centralized", history.metrics_centralized.get(name)),
        ]
        .into_iter()
        .filter_map(|(label, values)| values.map(|v| (label, points(v))))
        .filter(|(_, p)| !p.is_empty())
        .map(|(name, points)| Series { name, points })
        .collect();
        if !series.is_empty() {
            out.push(Panel {
                title: name.clone(),
                series,
            });
        }
    }
    out
}

/// Columns and rows of the grid for `n` panels (two columns from two on).
fn grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 2);
    (cols, n.div_ceil(cols))
}

/// Image size for `n` panels.
pub fn image_size(n: usize) -> (u32, u32) {
    let (cols, rows) = grid(n);
    (
        PANEL_SIZE.0 * cols as u32,
        PANEL_SIZE.1 * rows.max(1) as u32,
    )
}

/// Axis range with some room around the data (and a non-empty span).
fn range(values: impl Iterator<Item = f64>, pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(1.0) {
        let d = (lo.abs() * 0.1).max(0.5);
        return (lo - d)..(hi + d);
    }
    (lo - span * pad)..(hi + span * pad)
}

/// Decimals for axis labels: three significant digits of the span, none
/// for counts.
fn label_decimals(range: &std::ops::Range<f64>, integers: bool) -> usize {
    let span = range.end - range.start;
    if integers && span >= 4.0 {
        return 0;
    }
    (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

fn draw_panel<DB>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let xs = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
    };
    let ys = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
    };
    let x = range(xs(), 0.02);
    let y = range(ys(), 0.08);
    let rounds: BTreeSet<u64> = xs().map(|r| r as u64).collect();
    let decimals = label_decimals(&y, ys().all(|v| v.fract() == 0.0));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(boxed)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .x_labels(rounds.len().clamp(2, 10))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(boxed)?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                series.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(boxed)?
            .label(series.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                series
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )
            .map_err(boxed)?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(boxed)?;
    Ok(())
}

fn draw<DB>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(boxed)?;
    let (cols, rows) = grid(panels.len());
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(boxed)?;
    Ok(())
}

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(()).ok_or(PlotError::Font)
}

/// Renders `history` to `<dir>/<stem>.png` and `<dir>/<stem>.svg`.
///
/// # Errors
/// [`PlotError::Empty`] when there is nothing to plot, [`PlotError::Draw`]
/// when an image cannot be drawn or written.
pub fn plot_history(history: &History, dir: &Path, stem: &str) -> Result<PlotFiles, PlotError> {
    let panels = panels(history);
    if panels.is_empty() {
        return Err(PlotError::Empty);
    }
    register_font()?;
    let size = image_size(panels.len());
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &panels).map_err(|source| {
        PlotError::Draw {
            path: png.clone(),
            source,
        }
    })?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &panels).map_err(|source| {
        PlotError::Draw {
            path: svg.clone(),
            source,
        }
    })?;
    Ok(PlotFiles { png, svg, size })
}

/// Reads `<dir>/history.json` (as the server's run store writes it) and
/// renders it next to it, as `history.png` and `history.svg`.
///
/// # Errors
/// As [`plot_history`], plus [`PlotError::Read`] / [`PlotError::Parse`].
pub fn plot_output_dir(dir: &Path) -> Result<PlotFiles, PlotError> {
    let path = dir.join("history.json");
    let text = std::fs::read_to_string(&path).map_err(|source| PlotError::Read {
        path: path.clone(),
        source,
    })?;
    let history: History =
        serde_json::from_str(&text).map_err(|source| PlotError::Parse { path, source })?;
    plot_history(&history, dir, "history")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn history() -> History {
        let mut h = History {
            losses_distributed: vec![(1, 0.9), (2, 0.5), (3, f64::NAN)],
            losses_centralized: vec![(0, 1.2), (1, 0.8)],
            ..History::default()
        };
        h.metrics_distributed_fit
            .insert("accuracy".into(), vec![(1, json!(0.5)), (2, json!(0.7))]);
        h.metrics_distributed
            .insert("accuracy".into(), vec![(1, json!(0.4)), (2, json!("NaN"))]);
        h.metrics_distributed
            .insert("note".into(), vec![(1, json!("text only"))]);
        h
    }

    #[test]
    fn one_panel_per_quantity_fit_and_evaluate_together() {
        let p = panels(&history());
        let titles: Vec<&str> = p.iter().map(|p| p.title.as_str()).collect();
        // "note" has no number: no panel. No round records: no clients panel.
        assert_eq!(titles, ["loss", "accuracy"]);
        assert_eq!(p[0].series[0].points, vec![(1.0, 0.9), (2.0, 0.5)]);
        let names: Vec<&str> = p[1].series.iter().map(|s| s.name).collect();
        assert_eq!(names, ["fit", "evaluate"]);
        assert_eq!(p[1].series[1].points, vec![(1.0, 0.4)]);
    }

    #[test]
    fn grid_and_ranges() {
        assert_eq!(image_size(1), (640, 400));
        assert_eq!(image_size(3), (1280, 800));
        let r = range([2.0, 2.0].into_iter(), 0.1);
        assert!(r.start < 2.0 && r.end > 2.0);
        assert_eq!(range(std::iter::empty(), 0.1), 0.0..1.0);
        assert_eq!(label_decimals(&(0.6..0.95), false), 3);
        assert_eq!(label_decimals(&(-0.2..10.0), true), 0);
        assert_eq!(label_decimals(&(0.0..250.0), false), 0);
    }

    #[test]
    fn writes_png_and_svg_of_the_announced_size() {
        let dir = tempfile::tempdir().unwrap();
        let files = plot_history(&history(), dir.path(), "h").unwrap();
        assert_eq!(files.size, (1280, 400));
        let png = std::fs::read(&files.png).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (1280, 400));
        let svg = std::fs::read_to_string(&files.svg).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("accuracy"),
            "{svg:.200}"
        );
        assert!(matches!(
            plot_history(&History::default(), dir.path(), "e"),
            Err(PlotError::Empty)
        ));
    }
}
