//! Per-site aggregates of the training rows: the only description of its data a site sends.
//!
//! Counts, sums and sums of squares of numeric columns, and category counts of categorical
//! ones. The coordinator combines them into one federation-wide plan (`plan::Plan::combine`).

use std::collections::{BTreeMap, HashSet};

use super::plan::OTHER_CATEGORY;
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
    /// The checks of [`SiteStats::validate`] on one column.
    fn validate(&self, num_train: u64, limits: &StatsLimits) -> Result<(), String> {
        let c = self;
        let name: String = c.name.chars().take(40).collect();
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
        if !c.histogram.is_empty() {
            let ordered = c.histogram.windows(2).all(|w| w[0].upper < w[1].upper);
            let last_open = c.histogram.last().is_some_and(|b| b.upper == f64::INFINITY);
            let total = c.histogram.iter().try_fold(0u64, |a, b| a.checked_add(b.count));
            if c.histogram.len() > HISTOGRAM_EDGES.len() + 1 || !ordered || !last_open || c.histogram.iter().any(|b| b.count == 0 || b.upper.is_nan()) {
                return Err(format!("column `{name}`: a histogram needs at most {} bins of rising edges, the last one open", HISTOGRAM_EDGES.len() + 1));
            }
            if total != Some(c.numeric_count) {
                return Err(format!("column `{name}`: the histogram's counts do not add up to its {} numeric values", c.numeric_count));
            }
        }
        Ok(())
    }

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
    /// Every value distinct, as in an identifier (a flag for the data profile).
    pub identifier_like: bool,
    /// Numeric columns: a histogram in the site's own standard units (edges at the site's
    /// mean ± 1 and 2 deviations, see [`HISTOGRAM_EDGES`]), neighbouring bins merged until
    /// each holds at least k rows: no bin edge is a value, no bin a single row.
    pub histogram: Vec<Bin>,
}

/// One bin of a histogram: the rows whose standardised value is below `upper` (and at or
/// above the previous bin's `upper`); the last bin's `upper` is +∞.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    pub upper: f64,
    pub count: u64,
}

/// The finest bin edges of a histogram, in standard units of the site's column.
pub const HISTOGRAM_EDGES: [f64; 5] = [-2.0, -1.0, 0.0, 1.0, 2.0];

/// Aggregates of every feature column of one site.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteStats {
    pub columns: Vec<ColumnStats>,
    /// Training rows per class, reported only when every class has none or at least k
    /// (otherwise empty: with the site's total known, one small count gives away the others).
    pub label_counts: Vec<u64>,
    /// Per class: whether the site's training rows hold it at all.
    pub label_present: Vec<bool>,
    /// A regression task's label, summarised as a numeric column under the same k (named
    /// [`LABEL_VALUES`]): its moments standardise the target, its histogram is profiled.
    pub label_values: Option<ColumnStats>,
}

/// The name a regression label's aggregates carry.
pub const LABEL_VALUES: &str = "<label>";

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
            c.validate(num_train, limits)?;
        }
        if let Some(label) = &self.label_values {
            if label.categorical || !label.categories.is_empty() || label.identifier_like {
                return Err("the regression label's aggregates must be numeric".into());
            }
            label.validate(num_train, limits)?;
        }
        if self.label_counts.len() > MAX_CLASSES || self.label_present.len() > MAX_CLASSES {
            return Err(format!("label counts for more than {MAX_CLASSES} classes"));
        }
        if !self.label_counts.is_empty() {
            let total = self.label_counts.iter().try_fold(0u64, |a, n| a.checked_add(*n));
            if total != Some(num_train) {
                return Err(format!("the label counts do not add up to the {num_train} training rows the site declared"));
            }
            if self.label_counts.len() != self.label_present.len() || self.label_counts.iter().zip(&self.label_present).any(|(n, p)| (*n > 0) != *p) {
                return Err("the label counts contradict the classes the site says it holds".into());
            }
        }
        Ok(())
    }

    /// Reduces the rows selected by `indices` (a site's training split) to what the site
    /// reports, under the k-threshold: a numeric column (and a regression label, when
    /// `num_classes` is 1) with fewer than `k` values at the site reports them as missing (a mean of one row is that row's value), histogram bins hold
    /// at least `k` rows, and label counts are sent only when no class has fewer than `k`.
    /// In a categorical column, the values fewer than `k` rows have are reported together as
    /// [`OTHER_CATEGORY`], or as missing when even together they are fewer than `k`.
    pub fn summarise(site: &SiteRows, indices: &[usize], num_classes: usize, k: u64) -> Self {
        let mut stats = Self::of_rows(site, indices);
        for c in stats.columns.iter_mut().filter(|c| c.categorical && k > 1) {
            let rare: u64 = c.categories.values().filter(|&&n| n < k).sum();
            c.categories.retain(|_, n| *n >= k);
            if rare >= k {
                *c.categories.entry(OTHER_CATEGORY.to_owned()).or_default() += rare;
            } else {
                c.missing += rare;
            }
        }
        for (j, c) in stats.columns.iter_mut().enumerate() {
            if !c.categorical {
                let values: Vec<f64> = indices.iter().filter_map(|&i| site.rows[i].values[j].as_deref().and_then(|v| v.parse::<f64>().ok())).collect();
                threshold_numeric(c, &values, k);
            }
        }
        if num_classes == 1 {
            let values: Vec<f64> = indices.iter().map(|&i| site.rows[i].target).collect();
            let mut label = ColumnStats { name: LABEL_VALUES.to_owned(), ..Default::default() };
            for &x in &values {
                label.numeric_count += 1;
                label.sum += x;
                label.sum_squares += x * x;
            }
            threshold_numeric(&mut label, &values, k);
            stats.label_values = Some(label);
        }
        let mut counts = vec![0u64; num_classes];
        for &i in indices {
            if let Some(n) = counts.get_mut(site.rows[i].label as usize) {
                *n += 1;
            }
        }
        stats.label_present = counts.iter().map(|&n| n > 0).collect();
        stats.label_counts = if counts.iter().all(|&n| n == 0 || n >= k) { counts } else { Vec::new() };
        stats
    }

    /// Reduces the rows selected by `indices` to aggregates, without the k-threshold on
    /// numbers, histograms or labels (see [`SiteStats::summarise`]).
    pub fn of_rows(site: &SiteRows, indices: &[usize]) -> Self {
        let columns = site
            .columns
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let identifier_like = site.identifiers.contains(name);
                let mut s = ColumnStats { name: name.clone(), categorical: site.categorical[j], identifier_like, ..Default::default() };
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
        Self { columns, ..Default::default() }
    }
}

/// The most classes a site may report counts for.
pub const MAX_CLASSES: usize = 1024;

/// Applies the k-threshold to a numeric column's aggregates: fewer than `k` values are
/// reported as missing, and otherwise come with their histogram.
fn threshold_numeric(c: &mut ColumnStats, values: &[f64], k: u64) {
    if c.numeric_count > 0 && c.numeric_count < k {
        c.missing += c.numeric_count;
        (c.numeric_count, c.sum, c.sum_squares) = (0, 0.0, 0.0);
    }
    if c.numeric_count > 0 {
        c.histogram = histogram(values, c, k);
    }
}

/// The histogram of a numeric column's `values` in standard units of `c`'s own moments, with
/// the smallest bin merged into its smaller neighbour until every bin holds at least `k` rows.
fn histogram(values: &[f64], c: &ColumnStats, k: u64) -> Vec<Bin> {
    let n = c.numeric_count as f64;
    let mean = c.sum / n;
    let std = (c.sum_squares / n - mean * mean).max(0.0).sqrt();
    let mut bins: Vec<Bin> = HISTOGRAM_EDGES.iter().map(|&upper| Bin { upper, count: 0 }).chain([Bin { upper: f64::INFINITY, count: 0 }]).collect();
    for &x in values {
        let z = if std > 1e-12 { (x - mean) / std } else { 0.0 };
        let b = bins.iter().position(|b| z < b.upper).unwrap_or(bins.len() - 1);
        bins[b].count += 1;
    }
    bins.retain(|b| b.count > 0 || b.upper == f64::INFINITY);
    while let Some((small, _)) = bins.iter().enumerate().filter(|(_, b)| b.count < k.max(1)).min_by_key(|(_, b)| b.count) {
        if bins.len() == 1 {
            break;
        }
        // Merge with the smaller neighbour; the merged bin keeps the upper edge of the later one.
        let other = match (small.checked_sub(1), (small + 1 < bins.len()).then_some(small + 1)) {
            (Some(l), Some(r)) => {
                if bins[l].count <= bins[r].count {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => break,
        };
        let (lo, hi) = (small.min(other), small.max(other));
        bins[hi].count += bins[lo].count;
        bins.remove(lo);
    }
    bins.retain(|b| b.count > 0);
    if let Some(last) = bins.last_mut() {
        last.upper = f64::INFINITY;
    }
    bins
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::RawTable;
    use crate::task::{Categorical, Task};

    fn table(text: &str) -> RawTable {
        RawTable::from_reader(text.as_bytes(), Path::new("site.csv")).unwrap()
    }

    #[test]
    fn categories_rarer_than_k_are_reported_as_other_or_missing() {
        // 6 × a, 3 × b, 2 × c, 1 × d in the counted rows; e only in an uncounted row.
        let values = ["a", "a", "a", "a", "a", "a", "b", "b", "b", "c", "c", "d", "e"];
        let text: String = values.iter().enumerate().map(|(i, v)| format!("{i},{v},good\n")).collect();
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        spec.categorical = Categorical::Listed(vec!["color".into()]);
        let counted: Vec<usize> = (0..12).collect();
        let column = |rows: &SiteRows| rows.rows.iter().map(|r| r.values[1].clone()).collect::<Vec<_>>();

        let rows = SiteRows::from_table(&table(&format!("x,color,y\n{text}")), &spec).unwrap();
        let stats = SiteStats::summarise(&rows, &counted, 2, 5);
        let expected: BTreeMap<String, u64> = [("a".to_owned(), 6), (OTHER_CATEGORY.to_owned(), 6)].into();
        assert_eq!(stats.columns[1].categories, expected, "b, c, d (6 rows together) are one category");
        assert_eq!(column(&rows)[12], Some("e".to_owned()), "the site's rows keep their values: only what it reports is folded");

        // With k = 7 even `a` is rare, and all rare values together (12) form `other`; with
        // k = 13 they are too few and become missing: nothing is reported.
        let stats = SiteStats::summarise(&rows, &counted, 2, 13);
        assert!(stats.columns[1].categories.is_empty());
        assert_eq!(stats.columns[1].missing, 12);

        // k = 1 reports everything.
        assert_eq!(SiteStats::summarise(&rows, &counted, 2, 1).columns[1].categories.len(), 4);
    }

    fn numeric(name: &str, n: u64, sum: f64, sum_squares: f64) -> ColumnStats {
        ColumnStats { name: name.into(), numeric_count: n, sum, sum_squares, ..Default::default() }
    }

    fn refused(columns: Vec<ColumnStats>, num_train: u64) -> String {
        SiteStats { columns, ..Default::default() }.validate(num_train, &StatsLimits::default()).expect_err("hostile aggregates")
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
            ..Default::default()
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
    fn hostile_histograms_and_label_counts_are_named() {
        let bins =
            |b: &[(f64, u64)]| ColumnStats { histogram: b.iter().map(|&(upper, count)| Bin { upper, count }).collect(), ..numeric("x", 10, 50.0, 300.0) };
        let check = |c: ColumnStats, labels: Vec<u64>, present: Vec<bool>| {
            SiteStats { columns: vec![c], label_counts: labels, label_present: present, ..Default::default() }.validate(10, &StatsLimits::default())
        };
        assert_eq!(check(bins(&[(0.0, 5), (f64::INFINITY, 5)]), vec![4, 6], vec![true, true]), Ok(()));
        for (hostile, why) in [
            (bins(&[(0.0, 5), (f64::INFINITY, 6)]), "add up"),
            (bins(&[(1.0, 5), (0.0, 5)]), "rising edges"),
            (bins(&[(0.0, 5), (1.0, 5)]), "the last one open"),
            (bins(&[(f64::NAN, 5), (f64::INFINITY, 5)]), "rising edges"),
            (bins(&[(0.0, 0), (f64::INFINITY, 10)]), "rising edges"),
            (bins(&(0..20).map(|i| (f64::from(i), 1)).chain([(f64::INFINITY, 0)]).collect::<Vec<_>>()), "at most 6 bins"),
        ] {
            let err = check(hostile, Vec::new(), Vec::new()).expect_err(why);
            assert!(err.contains("column `x`") && err.contains(why), "{why}: {err}");
        }
        let fine = || bins(&[]);
        assert!(check(fine(), vec![4, 7], vec![true, true]).unwrap_err().contains("do not add up to the 10"));
        assert!(check(fine(), vec![u64::MAX, 11], vec![true, true]).unwrap_err().contains("do not add up"));
        assert!(check(fine(), vec![0, 10], vec![true, true]).unwrap_err().contains("contradict"));
        assert!(check(fine(), vec![10], vec![true, false]).unwrap_err().contains("contradict"));
        assert!(check(fine(), Vec::new(), vec![true; 5000]).unwrap_err().contains("more than 1024 classes"));
    }

    #[test]
    fn a_hostile_regression_label_is_refused_like_a_column() {
        let with_label = |label: ColumnStats| SiteStats { columns: vec![numeric("x", 10, 50.0, 300.0)], label_values: Some(label), ..Default::default() };
        let label = |n: u64, sum: f64, sq: f64| numeric(LABEL_VALUES, n, sum, sq);
        let limits = StatsLimits::default();
        assert_eq!(with_label(label(10, 50.0, 300.0)).validate(10, &limits), Ok(()));
        assert!(with_label(label(11, 50.0, 300.0)).validate(10, &limits).unwrap_err().contains("more than the 10 training rows"));
        assert!(with_label(label(10, 50.0, 1.0)).validate(10, &limits).unwrap_err().contains("inconsistent"));
        assert!(with_label(label(10, f64::NAN, 1.0)).validate(10, &limits).unwrap_err().contains("finite"));
        let categorical =
            ColumnStats { categorical: true, numeric_count: 0, sum: 0.0, sum_squares: 0.0, categories: [("a".to_owned(), 3)].into(), ..label(0, 0.0, 0.0) };
        assert!(with_label(categorical).validate(10, &limits).unwrap_err().contains("must be numeric"));
    }

    #[test]
    fn a_histogram_never_shows_fewer_than_k_rows_in_a_bin_nor_a_value() {
        let mut text = String::from("x,y\n");
        for i in 0..40 {
            // One far outlier: alone it would be a bin of one row, and its edge near its value.
            text.push_str(&format!("{},good\n", if i == 0 { 1000.0 } else { f64::from(i % 8) }));
        }
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        let rows = SiteRows::from_table(&table(&text), &spec).unwrap();
        let all: Vec<usize> = (0..40).collect();
        let stats = SiteStats::summarise(&rows, &all, 2, 5);
        let h = &stats.columns[0].histogram;
        assert!(h.iter().all(|b| b.count >= 5), "{h:?}");
        assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 40);
        assert!(h.iter().all(|b| HISTOGRAM_EDGES.contains(&b.upper) || b.upper == f64::INFINITY), "edges are standard units, not values: {h:?}");
        assert_eq!(stats.label_counts, vec![40, 0]);
        // A numeric column with fewer than k values reports them as missing.
        let few = SiteStats::summarise(&rows, &all[..3], 2, 5);
        assert_eq!((few.columns[0].numeric_count, few.columns[0].missing, few.columns[0].sum), (0, 3, 0.0));
        assert!(few.label_counts.is_empty(), "3 rows of one class and 0 of the other: withheld");
        assert_eq!(few.label_present, vec![true, false]);
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
