//! The comparison table printed at the end of a simulation.

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use super::baselines::{Comparison, Scorecard};

/// Accuracy of each model on each site's test split and on the pooled test split.
pub fn comparison_table(c: &Comparison) -> Table {
    let sites: Vec<&String> = c.federated.per_site.keys().collect();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("model (accuracy on test split)")];
    header.extend(sites.iter().map(Cell::new));
    header.push(Cell::new("pooled"));
    header.push(Cell::new("pooled AUC"));
    t.set_header(header);
    let mut row = |name: String, s: &Scorecard| {
        let mut cells = vec![Cell::new(name)];
        cells.extend(sites.iter().map(|site| num(s.per_site.get(*site).map(|e| e.accuracy))));
        cells.push(num(Some(s.pooled.accuracy)));
        cells.push(num(s.pooled.auc));
        t.add_row(cells);
    };
    row("federated (FedAvg)".into(), &c.federated);
    for (site, s) in &c.local {
        row(format!("local only: {site}"), s);
    }
    row("centralized (pooled data)".into(), &c.centralized);
    t
}

fn num(v: Option<f64>) -> Cell {
    Cell::new(v.map_or("–".to_owned(), |x| format!("{x:.3}"))).set_alignment(CellAlignment::Right)
}

/// Mean pooled accuracy of the local-only models.
pub fn local_mean_accuracy(c: &Comparison) -> f64 {
    c.local.values().map(|s| s.pooled.accuracy).sum::<f64>() / c.local.len().max(1) as f64
}
