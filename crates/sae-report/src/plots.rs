use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::ReportError;

/// Width in pixels of every plot.
pub const PLOT_WIDTH: u32 = 900;
/// Height in pixels of every plot.
pub const PLOT_HEIGHT: u32 = 500;

/// The log10 range of the firing-density bins of an eval record (`sae_metrics::DENSITY_BINS`).
const DENSITY_LOG10_MIN: f64 = -10.0;
const DENSITY_LOG10_MAX: f64 = 0.0;

const FONT: &str = "sans-serif";
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);

type DrawResult = Result<(), Box<dyn Error + Send + Sync>>;

/// plotters' bitmap backend has no fonts of its own unless it links the system's (fontconfig,
/// not available everywhere): register DejaVu Sans, embedded, once per process.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .zip([dejavu::sans::regular(), dejavu::sans::bold()])
            .all(|(style, bytes)| plotters::style::register_font(FONT, style, bytes).is_ok())
    });
    if ok { Ok(()) } else { Err(ReportError::Font) }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws a white `PLOT_WIDTH x PLOT_HEIGHT` plot with `draw` and writes it to `path` as a
/// PNG, compressed harder than plotters' own encoder does (plots are mostly flat colour).
fn render(path: &Path, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), ReportError> {
    ensure_font()?;
    let error = |message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    };
    let mut rgb = vec![0u8; (PLOT_WIDTH * PLOT_HEIGHT * 3) as usize];
    {
        let root =
            BitMapBackend::with_buffer(&mut rgb, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
        draw(&root).map_err(|e| error(e.to_string()))?;
        root.present().map_err(|e| error(e.to_string()))?;
    }
    let file = std::fs::File::create(path).map_err(|e| error(e.to_string()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), PLOT_WIDTH, PLOT_HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(|e| error(e.to_string()))?;
    writer
        .write_image_data(&rgb)
        .map_err(|e| error(e.to_string()))?;
    writer.finish().map_err(|e| error(e.to_string()))
}

/// A range covering `values` with a little margin; never empty.
fn padded_range(values: impl Iterator<Item = f64>, floor_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if floor_zero && lo >= 0.0 {
        lo = 0.0;
    }
    if hi - lo < 1e-12 {
        hi = lo + lo.abs().max(1.0) * 0.1;
    }
    let pad = (hi - lo) * 0.05;
    (if floor_zero && lo == 0.0 {
        0.0
    } else {
        lo - pad
    })..hi + pad
}

/// One training curve over tokens: `train` as a line, `eval` as points.
pub(crate) fn curve(
    path: &Path,
    title: &str,
    y_desc: &str,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
) -> Result<(), ReportError> {
    render(path, |root| {
        let all = || train.iter().chain(eval);
        let x = padded_range(all().map(|p| p.0), true);
        let y = padded_range(all().map(|p| p.1), true);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc("training tokens")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format_tokens(*v))
            .label_style((FONT, 14))
            .draw()?;
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    train.iter().copied().filter(|p| p.1.is_finite()),
                    TRAIN_COLOR.stroke_width(2),
                ))?
                .label("train")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN_COLOR));
        }
        if !eval.is_empty() {
            chart
                .draw_series(
                    eval.iter()
                        .filter(|p| p.1.is_finite())
                        .map(|&p| Circle::new(p, 5, EVAL_COLOR.filled())),
                )?
                .label("eval")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, EVAL_COLOR.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        Ok(())
    })
}

/// Feature count by log10 firing density (the bins are already logarithmic).
pub(crate) fn density(path: &Path, histogram: &[u64]) -> Result<(), ReportError> {
    render(path, |root| {
        let top = histogram.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.05;
        let width = (DENSITY_LOG10_MAX - DENSITY_LOG10_MIN) / histogram.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption("Feature firing density (final eval)", (FONT, 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(DENSITY_LOG10_MIN..DENSITY_LOG10_MAX, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("firing density (log scale; the leftmost bin holds features that never fired)")
            .y_desc("features")
            .x_label_formatter(&|v| format!("1e{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .draw()?;
        chart.draw_series(histogram.iter().enumerate().map(|(i, &count)| {
            let x0 = DENSITY_LOG10_MIN + i as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width, count as f64)],
                TRAIN_COLOR.filled(),
            )
        }))?;
        Ok(())
    })
}

/// Tokens by number of active features, batch selection beside threshold inference.
pub(crate) fn l0_histogram(
    path: &Path,
    batch: &[u64],
    inference: Option<&[u64]>,
) -> Result<(), ReportError> {
    render(path, |root| {
        let used = |h: &[u64]| h.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        let buckets = used(batch).max(inference.map_or(0, used)).max(1);
        let top = batch
            .iter()
            .chain(inference.unwrap_or(&[]))
            .copied()
            .max()
            .unwrap_or(0)
            .max(1) as f64
            * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption("Active features per token (final eval)", (FONT, 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..buckets as f64 - 0.5, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("L0 (active features)")
            .y_desc("tokens")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .draw()?;
        let half = if inference.is_some() { 0.4 } else { 0.8 };
        let offset = -0.4;
        chart
            .draw_series(batch.iter().enumerate().take(buckets).map(|(i, &c)| {
                let x0 = i as f64 + offset;
                Rectangle::new([(x0, 0.0), (x0 + half, c as f64)], TRAIN_COLOR.filled())
            }))?
            .label("batch selection")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], TRAIN_COLOR.filled()));
        if let Some(inference) = inference {
            chart
                .draw_series(inference.iter().enumerate().take(buckets).map(|(i, &c)| {
                    let x0 = i as f64;
                    Rectangle::new([(x0, 0.0), (x0 + half, c as f64)], EVAL_COLOR.filled())
                }))?
                .label("threshold inference")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 15, y + 5)], EVAL_COLOR.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        Ok(())
    })
}

/// `1234567` as `1.2M`: token counts are too wide for axis labels otherwise.
fn format_tokens(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Share of the true features recovered in each frequency band, most frequent band first.
pub(crate) fn recovery_by_frequency(
    path: &Path,
    bands: &[sae_metrics::FrequencyBand],
) -> Result<(), ReportError> {
    render(path, |root| {
        let n = bands.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "True features recovered, by how often they fire",
                (FONT, 24),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..105.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("frequency band of the true features (1 = most frequent; equal-size bands)")
            .y_desc("recovered (cosine > 0.9), %")
            .x_labels(bands.len().max(1))
            .x_label_formatter(&|v| {
                let band = v.round();
                if (v - band).abs() < 1e-6 && band >= 0.0 {
                    format!("{:.0}", band + 1.0)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .draw()?;
        chart.draw_series(bands.iter().enumerate().map(|(i, band)| {
            let x0 = i as f64 - 0.4;
            Rectangle::new(
                [(x0, 0.0), (x0 + 0.8, 100.0 * band.recovered)],
                TRAIN_COLOR.filled(),
            )
        }))?;
        Ok(())
    })
}
