//! `training_loss.png` and `eval_loss.png` from `metrics.jsonl` (plotters, bitmap backend).
//!
//! The raw training loss is drawn with an exponential moving average over it, as LLaMA-Factory's
//! `plot_loss` does. Plotters draws text only with a font it was given: a system TrueType font (DejaVu or
//! Liberation, when installed) is loaded for the captions; without one the curves are drawn unlabelled.

use crate::metrics::MetricsRecord;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Plotting failed.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the first system font found under the family name "sans-serif"; true when text can be drawn.
fn fonts_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        tracing::debug!("no TrueType font found: loss plots are drawn without labels");
        false
    })
}

/// Exponential moving average with LLaMA-Factory's weight `1.8 * (1 / (1 + exp(-0.05 n)) - 0.5)`.
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let Some(&first) = values.first() else {
        return Vec::new();
    };
    let weight = 1.8 * (1.0 / (1.0 + (-0.05 * values.len() as f64).exp()) - 0.5);
    let mut last = first;
    values
        .iter()
        .map(|v| {
            last = last * weight + (1.0 - weight) * v;
            last
        })
        .collect()
}

/// Writes the loss plots for `records` into `dir`; returns the files written (none without data).
pub fn plot_losses(
    records: &[MetricsRecord],
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>, PlotError> {
    let mut written = Vec::new();
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step as f64, l)))
        .collect();
    if !train.is_empty() {
        let path = dir.join("training_loss.png");
        let smoothed: Vec<(f64, f64)> = train
            .iter()
            .map(|p| p.0)
            .zip(smooth(&train.iter().map(|p| p.1).collect::<Vec<_>>()))
            .collect();
        draw(
            &path,
            "training loss",
            &[(&train, false), (&smoothed, true)],
        )?;
        written.push(path);
    }
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l)))
        .collect();
    if !eval.is_empty() {
        let path = dir.join("eval_loss.png");
        draw(&path, "eval loss", &[(&eval, true)])?;
        written.push(path);
    }
    Ok(written)
}

fn draw(path: &Path, title: &str, series: &[(&[(f64, f64)], bool)]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let pts = || series.iter().flat_map(|(s, _)| s.iter());
    let (x0, x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let text = fonts_available();
    // Render to a temporary file in the same directory, then rename (atomic, like every output).
    // (the image encoder picks the format from the extension, so the temporary name keeps `.png`).
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".tmp-{}-{}",
        std::process::id(),
        name.unwrap_or_default()
    ));
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if text {
            builder
                .caption(title, ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| err(&e))?;
        if text {
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .draw()
                .map_err(|e| err(&e))?;
        }
        for (s, bold) in series {
            let style = if *bold {
                BLUE.stroke_width(2)
            } else {
                BLUE.mix(0.3).stroke_width(1)
            };
            chart
                .draw_series(LineSeries::new(s.iter().copied(), style))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<MetricsRecord> = (1..=20)
            .map(|s| MetricsRecord {
                step: s,
                loss: Some(3.0 / s as f64),
                eval_loss: (s % 5 == 0).then_some(2.0 / s as f64),
                ..Default::default()
            })
            .collect();
        let files = plot_losses(&recs, dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
        }
        let s = smooth(&[1.0, 2.0, 3.0]);
        assert_eq!(s[0], 1.0);
        assert!(s[2] > s[1] && s[2] < 3.0);
    }
}
