//! The `--plot` picture of `shmex bench`: throughput against message size, one line per
//! transport, both axes logarithmic (x ticks on powers of two).

use std::path::Path;

use plotters::prelude::*;
use shmex_cli::harness::size_label;

/// Line colours, one per transport in order (a palette that stays apart for colour-blind
/// readers: Okabe and Ito's).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
];

/// Draws `series` (transport, [(size in bytes, GB/s)]) into an SVG file at `path`.
pub fn throughput(
    path: &Path,
    series: &[(&str, Vec<(usize, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    // x is log2 of the size, so ticks can sit on powers of two and carry size labels.
    let log2 = |size: usize| (size.max(1) as f64).log2();
    let min_size = points().map(|p| log2(p.0)).fold(f64::INFINITY, f64::min);
    let max_size = points()
        .map(|p| log2(p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let positive = || points().map(|p| p.1).filter(|v| *v > 0.0);
    let min_rate = positive().fold(f64::INFINITY, f64::min);
    let max_rate = positive().fold(0.0, f64::max);
    if !min_size.is_finite() || !min_rate.is_finite() || max_rate <= 0.0 {
        return Err("no positive throughput to plot".into());
    }
    let (x_from, x_to) = (min_size.floor() - 0.5, max_size.ceil() + 0.5);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "shmex bench: throughput by message size (median, same run)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_from..x_to, (min_rate / 1.5..max_rate * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("GB/s (log scale)")
        .x_labels((x_to - x_from).ceil() as usize + 1)
        .x_label_formatter(&|x| {
            let rounded = x.round();
            if (x - rounded).abs() < 1e-6 && (0.0..63.0).contains(&rounded) {
                size_label(1usize << rounded as u32)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for ((name, points), colour) in series.iter().zip(COLOURS.iter().cycle()) {
        let data: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(size, rate)| (log2(size), rate))
            .collect();
        let style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(data.clone(), style))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
