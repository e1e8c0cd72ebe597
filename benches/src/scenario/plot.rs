//! SVG charts of the report (plotters, SVG backend): line charts of
//! numeric series and stacked bar charts of categories. Knows nothing of
//! scenarios: the report module hands it points.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One named line.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw dashed-looking (thin, no markers): for goals and floors.
    pub reference: bool,
}

impl Line {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Line {
            name: name.into(),
            points,
            reference: false,
        }
    }

    pub fn reference(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Line {
            reference: true,
            ..Line::new(name, points)
        }
    }
}

const SIZE: (u32, u32) = (760, 440);
/// Bar charts are wider: one labelled bar per category.
const BAR_SIZE: (u32, u32) = (1000, 440);

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// Draws `lines` into an SVG at `path`. The y axis starts at 0.
pub fn lines(path: &Path, title: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = span(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let (_, y1) = span(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1 * 1.08)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let c = color(i);
        let width = if l.reference { 1 } else { 2 };
        let drawn = chart
            .draw_series(LineSeries::new(l.points.clone(), c.stroke_width(width)))
            .map_err(err)?;
        drawn
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if !l.reference && l.points.len() < 40 {
            chart
                .draw_series(l.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Draws stacked bars: one bar per category, one stack layer per
/// `(name, value per category)`.
pub fn stacked_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    layers: &[(String, Vec<f64>)],
) -> Result<()> {
    let root = SVGBackend::new(path, BAR_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = categories.len().max(1);
    let top = (0..n)
        .map(|i| {
            layers
                .iter()
                .map(|l| l.1.get(i).copied().unwrap_or(0.0))
                .sum::<f64>()
        })
        .fold(0.0, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..top * 1.1)
        .map_err(err)?;
    let cats = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                cats.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    let mut base = vec![0.0; n];
    for (li, (name, values)) in layers.iter().enumerate() {
        let c = color(li);
        let mut rects = Vec::new();
        for (i, b) in base.iter_mut().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            let x = i as f64;
            rects.push(Rectangle::new(
                [(x - 0.35, *b), (x + 0.35, *b + v)],
                c.filled(),
            ));
            *b += v;
        }
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.svg");
        lines(
            &p,
            "time vs RTT",
            "RTT (ms)",
            "ms",
            &[
                Line::new("wanmig", vec![(1.0, 10.0), (100.0, 50.0)]),
                Line::reference("floor", vec![(1.0, 5.0), (100.0, 40.0)]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("time vs RTT") && svg.contains("floor"));
        let q = dir.path().join("b.svg");
        stacked_bars(
            &q,
            "bytes",
            "MiB",
            &["fresh".into(), "busy".into()],
            &[
                ("zero".into(), vec![1.0, 2.0]),
                ("raw".into(), vec![3.0, 0.5]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&q).unwrap();
        assert!(svg.contains("busy") && svg.contains("raw") && svg.contains("<rect"));
    }
}
