//! The picture of a run: global accuracy (and AUC) per round, or R² for regression, as an SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::federation::RoundRecord;

/// A horizontal guide: a labelled reference accuracy (a baseline).
pub type Reference = (String, f64);

/// Draws accuracy and AUC per round (R² for regression); horizontal guides show the
/// references (baselines) in the same metric.
pub fn write_accuracy_chart(path: &Path, history: &[RoundRecord], references: &[Reference]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let last = history.iter().map(|r| r.round).max().unwrap_or(1).max(1);
    let regression = history.iter().any(|r| r.regression.is_some());
    let (name, axis) = if regression { ("R²", "R² (1 − MSE / variance)") } else { ("accuracy", "accuracy / ROC AUC") };
    let acc: Vec<(u32, f64)> = history.iter().map(|r| (r.round, r.headline())).filter(|p| p.1.is_finite()).collect();
    // R² can be negative (worse than the mean); show down to the lowest point, at most −1.
    let low = acc.iter().map(|p| p.1).chain(references.iter().map(|r| r.1)).filter(|v| v.is_finite()).fold(0f64, f64::min).max(-1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Federated global model, pooled test split", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..last, low..1f64)?;
    chart.configure_mesh().x_desc("round").y_desc(axis).y_label_formatter(&|v| format!("{v:.1}")).draw()?;
    let acc: Vec<(u32, f64)> = acc.into_iter().map(|(r, v)| (r, v.max(low))).collect();
    chart
        .draw_series(LineSeries::new(acc.clone(), BLUE.stroke_width(2)))?
        .label(name)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart.draw_series(acc.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    let auc: Vec<(u32, f64)> = history.iter().filter_map(|r| r.auc.map(|a| (r.round, a))).collect();
    if !regression {
        chart
            .draw_series(LineSeries::new(auc, RED.stroke_width(2)))?
            .label("ROC AUC")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    let palette = [RGBColor(0x2c, 0xa0, 0x2c), RGBColor(0x99, 0x99, 0x99), RGBColor(0xff, 0x7f, 0x0e)];
    for (i, (label, value)) in references.iter().enumerate() {
        let color = palette[i % palette.len()];
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 1 };
        chart
            .draw_series(DashedLineSeries::new(vec![(0, *value), (last, *value)], 6, 4, style))?
            .label(format!("{label} {value:.3}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
