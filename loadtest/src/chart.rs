//! SVG charts of a run, drawn with plotters: throughput over time
//! (`throughput.svg`), resident memory over time (`memory.svg`) and the
//! latency percentile curve (`latency.svg`).

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (960, 540);
/// Highest percentile axis position: 99.9999 %.
const NINES_MAX: f64 = 6.0;

/// Writes `throughput.svg`, `memory.svg` and `latency.svg` into `dir`.
pub fn write_charts(
    dir: &Path,
    title: &str,
    per_second: &[u64],
    fine: &[(f64, f64)],
    duration_s: f64,
    rss_mb_per_s: &[f64],
    latency: &Histogram<u64>,
) -> Result<()> {
    let path = dir.join("throughput.svg");
    throughput(&path, title, per_second, fine, duration_s)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    let path = dir.join("memory.svg");
    memory(&path, title, rss_mb_per_s)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    let path = dir.join("latency.svg");
    latency_curve(&path, title, latency)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    Ok(())
}

/// Committed transactions per second: the fine-grained rate (between
/// progress samples, ~100 ms) and the one-second windows, with the mean.
fn throughput(
    path: &Path,
    title: &str,
    per_second: &[u64],
    fine: &[(f64, f64)],
    duration_s: f64,
) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = if duration_s > 0.0 {
        duration_s
    } else {
        per_second.len().max(1) as f64
    };
    let peak = fine
        .iter()
        .map(|p| p.1)
        .chain(per_second.iter().map(|&c| c as f64))
        .fold(0.0, f64::max);
    let y_max = (peak * 1.1).max(1.0);
    let mean = if duration_s > 0.0 {
        // The mean over the whole run, from the windows (each weighted by
        // its length).
        let total: f64 = per_second
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f64 * ((i as f64 + 1.0).min(duration_s) - i as f64))
            .sum();
        total / duration_s
    } else {
        0.0
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Throughput: {title} (mean {mean:.0} tx/s)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("committed tx/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    if !fine.is_empty() {
        chart
            .draw_series(LineSeries::new(fine.iter().copied(), BLUE.mix(0.35)))?
            .label("per sample (~100 ms)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.mix(0.35)));
    }
    // One horizontal step per window (the last may be shorter).
    let steps: Vec<(f64, f64)> = per_second
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| {
            let from = i as f64;
            let to = (from + 1.0).min(x_max);
            [(from, c as f64), (to, c as f64)]
        })
        .collect();
    chart
        .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))?
        .label("per one-second window")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(vec![(0.0, mean), (x_max, mean)], RED))?
        .label("mean")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Peak resident memory per one-second window.
fn memory(path: &Path, title: &str, rss_mb_per_s: &[f64]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = rss_mb_per_s.len().max(1) as f64;
    let peak = rss_mb_per_s.iter().copied().fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Resident memory: {title} (peak {peak:.0} MB)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..(peak * 1.1).max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("peak RSS in the second (MB)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let steps: Vec<(f64, f64)> = rss_mb_per_s
        .iter()
        .enumerate()
        .flat_map(|(i, &mb)| [(i as f64, mb), (i as f64 + 1.0, mb)])
        .collect();
    chart.draw_series(LineSeries::new(steps, GREEN.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

/// Latency by percentile, HdrHistogram style: the x axis is the number of
/// nines (0 = 0 %, 1 = 90 %, 2 = 99 %, 3 = 99.9 %, …), so the tail is as
/// visible as the median.
fn latency_curve(path: &Path, title: &str, h: &Histogram<u64>) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    // Stop a little after the curve reaches the maximum: beyond, it is flat.
    let nines_max = if h.is_empty() {
        1.0
    } else {
        let max = h.max();
        let reached = (0..=(NINES_MAX * 20.0) as u32)
            .map(|i| f64::from(i) / 20.0)
            .find(|&x| h.value_at_quantile(1.0 - 10f64.powf(-x)) >= max)
            .unwrap_or(NINES_MAX);
        (reached + 0.5).ceil().clamp(1.0, NINES_MAX)
    };
    let steps = 300;
    let points: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let x = nines_max * f64::from(i) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            (x, v as f64)
        })
        .collect();
    let y_max = (h.max() as f64 * 1.05).max(1.0);
    let caption = if h.is_empty() {
        format!("Latency per submit call: {title} (no samples)")
    } else {
        format!(
            "Latency per submit call: {title} (p50 {} µs, p99 {} µs, p99.9 {} µs)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        )
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..nines_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(nines_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("percentile (of transactions)")
        .y_desc("latency (µs)")
        .draw()?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

/// `x` nines as a percentile: 1 → "90%", 2.5 → "99.68%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
    }

    #[test]
    fn charts_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..1000u64 {
            h.record_n(v * 10, 7).unwrap();
        }
        let fine = [(0.05, 1000.0), (0.15, 1200.0), (1.2, 900.0)];
        write_charts(
            dir.path(),
            "test",
            &[1100, 900],
            &fine,
            1.3,
            &[80.0, 95.5],
            &h,
        )
        .unwrap();
        for name in ["throughput.svg", "memory.svg", "latency.svg"] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.contains("<svg"), "{name}");
        }
        // Empty inputs draw empty charts rather than failing.
        let empty = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        write_charts(dir.path(), "empty", &[], &[], 0.0, &[], &empty).unwrap();
    }
}
