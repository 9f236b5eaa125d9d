//! The comparison table printed at the end of a simulation.

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use super::baselines::{Comparison, Scorecard};

/// With more sites than this, the table summarises (the full matrix is in `site-metrics.csv`).
pub const FULL_TABLE_SITES: usize = 8;

/// Accuracy of each model on each site's test split and on the pooled test split; with many
/// sites, a summary instead ([`summary_table`]).
pub fn comparison_table(c: &Comparison) -> Table {
    if c.federated.per_site.len() > FULL_TABLE_SITES {
        return summary_table(c);
    }
    let sites: Vec<&String> = c.federated.per_site.keys().collect();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new(format!("model ({} on test split)", metric(c)))];
    header.extend(sites.iter().map(Cell::new));
    header.push(Cell::new("pooled"));
    header.push(Cell::new(second_name(c)));
    t.set_header(header);
    let mut row = |name: String, s: &Scorecard| {
        let mut cells = vec![Cell::new(name)];
        cells.extend(sites.iter().map(|site| num(s.per_site.get(*site).map(|e| e.headline()))));
        cells.push(num(Some(s.pooled.headline())));
        cells.push(num(second(&s.pooled)));
        t.add_row(cells);
    };
    row("federated".into(), &c.federated);
    for (site, s) in &c.local {
        row(format!("local only: {site}"), s);
    }
    row("centralized (pooled data)".into(), &c.centralized);
    t
}

/// The comparison for many sites: per model, the spread of its accuracy over the sites'
/// test splits, and its pooled figures; the local-only models as their worst, median and best.
pub fn summary_table(c: &Comparison) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let first = format!("model ({} on test splits)", metric(c));
    t.set_header([first.as_str(), "sites min", "median", "max", "pooled", second_name(c)].map(Cell::new).to_vec());
    let mut row = |name: String, s: &Scorecard| {
        let mut per_site: Vec<f64> = s.per_site.values().map(|e| e.headline()).collect();
        per_site.sort_by(f64::total_cmp);
        let at = |q: f64| per_site.get(((per_site.len().max(1) - 1) as f64 * q).round() as usize).copied();
        t.add_row(vec![Cell::new(name), num(at(0.0)), num(at(0.5)), num(at(1.0)), num(Some(s.pooled.headline())), num(second(&s.pooled))]);
    };
    row("federated".into(), &c.federated);
    let mut local: Vec<(&String, &Scorecard)> = c.local.iter().collect();
    local.sort_by(|a, b| a.1.pooled.headline().total_cmp(&b.1.pooled.headline()));
    if let (Some(worst), Some(best)) = (local.first(), local.last()) {
        let median = local[(local.len() - 1) / 2];
        row(format!("local only, worst: {}", worst.0), worst.1);
        row(format!("local only, median: {}", median.0), median.1);
        row(format!("local only, best: {}", best.0), best.1);
    }
    row("centralized (pooled data)".into(), &c.centralized);
    t
}

/// Every model on every site's test split and pooled, one row each (`site-metrics.csv`).
pub fn write_site_metrics(path: &std::path::Path, c: &Comparison) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_path(path)?;
    let mut header = vec!["model", "site", "examples"];
    header.extend(flotilla_common::train::Evaluation::METRIC_HEADER);
    w.write_record(header)?;
    let mut write = |model: &str, s: &Scorecard| -> Result<(), csv::Error> {
        for (site, e) in s.per_site.iter().map(|(n, e)| (n.as_str(), e)).chain([("<pooled>", &s.pooled)]) {
            let mut record = vec![model.to_owned(), site.to_owned(), e.examples.to_string()];
            record.extend(e.metric_fields());
            w.write_record(record)?;
        }
        Ok(())
    };
    write("federated", &c.federated)?;
    for (site, s) in &c.local {
        write(&format!("local:{site}"), s)?;
    }
    write("centralized", &c.centralized)?;
    w.flush()?;
    Ok(())
}

fn num(v: Option<f64>) -> Cell {
    Cell::new(v.filter(|x| x.is_finite()).map_or("–".to_owned(), |x| format!("{x:.3}"))).set_alignment(CellAlignment::Right)
}

/// The comparison's headline metric: accuracy, or R² for regression.
pub fn metric(c: &Comparison) -> &'static str {
    c.federated.pooled.headline_name()
}

/// The table's last column: the pooled ROC AUC, or for regression the pooled RMSE.
fn second_name(c: &Comparison) -> &'static str {
    if c.federated.pooled.regression.is_some() { "pooled RMSE" } else { "pooled AUC" }
}

fn second(e: &flotilla_common::train::Evaluation) -> Option<f64> {
    match e.regression {
        Some(r) => Some(r.rmse()),
        None => e.auc,
    }
}

/// Mean pooled headline metric (accuracy, or R² for regression) of the local-only models.
pub fn local_mean_score(c: &Comparison) -> f64 {
    c.local.values().map(|s| s.pooled.headline()).sum::<f64>() / c.local.len().max(1) as f64
}
