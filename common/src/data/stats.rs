//! Per-site aggregates of the training rows: the only description of its data a site sends.
//!
//! Counts, sums and sums of squares of numeric columns, and category counts of categorical
//! ones. The coordinator combines them into one federation-wide plan (`plan::Plan::combine`).

use std::collections::BTreeMap;

use super::rows::SiteRows;

/// Aggregates of one feature column at one site.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColumnStats {
    pub name: String,
    /// True when the column is categorical at this site.
    pub categorical: bool,
    /// Non-missing numeric values: count, sum and sum of squares.
    pub numeric_count: u64,
    pub sum: f64,
    pub sum_squares: f64,
    pub missing: u64,
    /// Categorical columns only: count per category.
    pub categories: BTreeMap<String, u64>,
}

/// Aggregates of every feature column of one site.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteStats {
    pub columns: Vec<ColumnStats>,
}

impl SiteStats {
    /// Reduces the rows selected by `indices` (a site's training split) to aggregates.
    pub fn of_rows(site: &SiteRows, indices: &[usize]) -> Self {
        let columns = site
            .columns
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let mut s = ColumnStats { name: name.clone(), categorical: site.categorical[j], ..Default::default() };
                for &i in indices {
                    match &site.rows[i].values[j] {
                        None => s.missing += 1,
                        Some(v) if s.categorical => *s.categories.entry(v.clone()).or_default() += 1,
                        Some(v) => {
                            // Cleaning guaranteed a finite number here.
                            let x = v.parse::<f64>().unwrap_or(0.0);
                            s.numeric_count += 1;
                            s.sum += x;
                            s.sum_squares += x * x;
                        }
                    }
                }
                s
            })
            .collect();
        Self { columns }
    }
}
