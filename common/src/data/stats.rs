//! Per-site aggregates of the training rows: the only description of its data a site sends.
//!
//! Counts, sums and sums of squares of numeric columns, and category counts of categorical
//! ones. The coordinator combines them into one federation-wide plan (`plan::Plan::combine`).

use std::collections::{BTreeMap, HashSet};

use super::rows::SiteRows;

/// What the coordinator accepts in a site's aggregates: these bound the plan (and so the
/// model's width, every site's encoding buffers and the plan message), whatever a site sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsLimits {
    /// Feature columns a site may report.
    pub max_columns: usize,
    /// Categories one column may have, at one site and in the combined plan.
    pub max_categories: usize,
    /// Bytes of a column name or a category.
    pub max_name_bytes: usize,
}

impl Default for StatsLimits {
    /// 256 columns of at most 256 categories: a plan of at most 65,536 features.
    fn default() -> Self {
        Self { max_columns: 256, max_categories: 256, max_name_bytes: 256 }
    }
}

impl StatsLimits {
    /// The widest plan these limits allow.
    pub fn max_width(&self) -> usize {
        self.max_columns.saturating_mul(self.max_categories.saturating_add(1))
    }
}

impl ColumnStats {
    /// Rows this column describes: numeric, missing and categorised values together.
    /// `None` when the counts overflow (only a hostile site sends such counts).
    pub fn rows(&self) -> Option<u64> {
        self.categories.values().try_fold(self.numeric_count.checked_add(self.missing)?, |acc, n| acc.checked_add(*n))
    }
}

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
    /// Checks aggregates that arrived from a site against what it declared and against
    /// `limits`: every count within its `num_train` training rows, sums finite and consistent
    /// (a mean's square never above the mean of squares), names unique and bounded. Honest
    /// sites always pass; what fails names the column.
    pub fn validate(&self, num_train: u64, limits: &StatsLimits) -> Result<(), String> {
        if self.columns.len() > limits.max_columns {
            return Err(format!("{} feature columns reported; the federation accepts at most {}", self.columns.len(), limits.max_columns));
        }
        let mut names = HashSet::with_capacity(self.columns.len());
        for c in &self.columns {
            let name: String = c.name.chars().take(40).collect();
            if c.name.is_empty() || c.name.len() > limits.max_name_bytes {
                return Err(format!("column `{name}`: a column name must have 1 to {} bytes", limits.max_name_bytes));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("column `{name}` reported twice"));
            }
            if c.categories.len() > limits.max_categories {
                return Err(format!(
                    "column `{name}` has {} categories at this site; the federation accepts at most {} (declare the column numeric or drop it)",
                    c.categories.len(),
                    limits.max_categories
                ));
            }
            match c.rows() {
                Some(n) if n <= num_train => {}
                _ => return Err(format!("column `{name}`: its counts add up to more than the {num_train} training rows the site declared")),
            }
            if !(c.sum.is_finite() && c.sum_squares.is_finite() && c.sum_squares >= 0.0) {
                return Err(format!("column `{name}`: sums must be finite (and the sum of squares not negative)"));
            }
            if c.numeric_count == 0 && (c.sum != 0.0 || c.sum_squares != 0.0) {
                return Err(format!("column `{name}`: sums without any numeric value"));
            }
            if c.numeric_count > 0 {
                let n = c.numeric_count as f64;
                let (mean, mean_sq) = (c.sum / n, c.sum_squares / n);
                // Cauchy–Schwarz: mean² ≤ mean of squares, with room for rounding.
                if !(mean * mean).is_finite() || mean * mean > mean_sq * (1.0 + 1e-9) + 1e-9 {
                    return Err(format!("column `{name}`: the sum and the sum of squares are inconsistent (no data has them)"));
                }
            }
            if c.categorical && c.numeric_count > 0 {
                return Err(format!("column `{name}`: reported as categorical with numeric values"));
            }
            if !c.categorical && !c.categories.is_empty() {
                return Err(format!("column `{name}`: reported as numeric with categories"));
            }
            if let Some(long) = c.categories.keys().find(|k| k.len() > limits.max_name_bytes) {
                let long: String = long.chars().take(40).collect();
                return Err(format!("column `{name}`: category `{long}…` is longer than {} bytes", limits.max_name_bytes));
            }
            if c.categories.values().any(|&n| n == 0) {
                return Err(format!("column `{name}`: a category with a count of zero"));
            }
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(name: &str, n: u64, sum: f64, sum_squares: f64) -> ColumnStats {
        ColumnStats { name: name.into(), numeric_count: n, sum, sum_squares, ..Default::default() }
    }

    fn refused(columns: Vec<ColumnStats>, num_train: u64) -> String {
        SiteStats { columns }.validate(num_train, &StatsLimits::default()).expect_err("hostile aggregates")
    }

    #[test]
    fn honest_aggregates_pass_and_hostile_ones_are_named() {
        let limits = StatsLimits::default();
        let honest = SiteStats {
            columns: vec![
                numeric("age", 40, 2000.0, 110_000.0),
                ColumnStats {
                    name: "sex".into(),
                    categorical: true,
                    missing: 2,
                    categories: [("f".to_owned(), 20), ("m".to_owned(), 18)].into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(honest.validate(40, &limits), Ok(()));
        // Counts that wrap u64 when added, or exceed the declared rows.
        assert!(
            refused(vec![ColumnStats { name: "a".into(), numeric_count: u64::MAX, missing: 1, ..Default::default() }], 40)
                .contains("add up to more than the 40")
        );
        assert!(refused(vec![numeric("a", 41, 0.0, 1.0)], 40).contains("add up to more"));
        // Sums that are infinite, negative squares, or that no data could have.
        assert!(refused(vec![numeric("a", 4, f64::INFINITY, 1.0)], 40).contains("finite"));
        assert!(refused(vec![numeric("a", 4, 0.0, -1.0)], 40).contains("finite"));
        assert!(refused(vec![numeric("a", 4, 1e308, 1.0)], 40).contains("inconsistent"));
        assert!(refused(vec![numeric("a", 4, 8.0, 1.0)], 40).contains("inconsistent"), "mean 2, mean of squares 0.25");
        assert!(refused(vec![numeric("a", 0, 3.0, 9.0)], 40).contains("without any numeric value"));
        // Names: repeated, empty, too long; a category list without bound or a category of 0.
        assert!(refused(vec![numeric("a", 1, 0.0, 0.0), numeric("a", 1, 0.0, 0.0)], 40).contains("reported twice"));
        assert!(refused(vec![numeric("", 1, 0.0, 0.0)], 40).contains("1 to 256 bytes"));
        let many: BTreeMap<String, u64> = (0..300).map(|i| (format!("v{i}"), 1)).collect();
        assert!(refused(vec![ColumnStats { name: "c".into(), categorical: true, categories: many, ..Default::default() }], 1000).contains("300 categories"));
        let zero: BTreeMap<String, u64> = [("x".to_owned(), 0)].into();
        assert!(refused(vec![ColumnStats { name: "c".into(), categorical: true, categories: zero, ..Default::default() }], 40).contains("count of zero"));
        assert!(
            refused(vec![ColumnStats { name: "c".into(), categorical: true, numeric_count: 1, ..Default::default() }], 40).contains("categorical with numeric")
        );
    }

    #[test]
    fn messages_cut_hostile_names_at_a_character_boundary() {
        // 300 bytes of two-byte characters: too long, and byte 40 falls inside a character.
        let name = "é".repeat(150);
        let err = refused(vec![numeric(&name, 1, 0.0, 0.0)], 40);
        assert!(err.starts_with(&format!("column `{}`", "é".repeat(40))), "{err}");
        let long_category: BTreeMap<String, u64> = [("ü".repeat(200), 1)].into();
        let err = refused(vec![ColumnStats { name: "c".into(), categorical: true, categories: long_category, ..Default::default() }], 40);
        assert!(err.contains("longer than 256 bytes"), "{err}");
    }
}
