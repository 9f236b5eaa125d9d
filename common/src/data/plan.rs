//! The federation-wide preprocessing plan: how every site encodes its rows.
//!
//! Built by the coordinator from the sites' aggregates alone, so every site standardises
//! with the same means and deviations and one-hot encodes over the same vocabulary,
//! without any row leaving its site.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::dataset::{Dataset, TargetScale};
use super::rows::{Row, SiteRows};
use super::stats::{SiteStats, StatsLimits};
use crate::error::DataError;

/// The category that stands for a missing value of a categorical column.
pub const MISSING_CATEGORY: &str = "<missing>";

/// The category that stands for a site's values rarer than the task's k (`min_category_count`).
pub const OTHER_CATEGORY: &str = "<other>";

/// How one feature column is encoded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ColumnKind {
    /// `(x − mean) / std`; missing values take the mean (encode to 0).
    Numeric { mean: f64, std: f64 },
    /// One-hot over the vocabulary; a missing value is its own category.
    Categorical { vocabulary: Vec<String> },
}

/// One feature column of the plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColumnPlan {
    pub name: String,
    pub kind: ColumnKind,
}

/// The shared encoding of every feature column, in encoding order, and of a regression
/// task's label.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub columns: Vec<ColumnPlan>,
    /// Regression: the label's pooled moments, which standardise the target (`None` in
    /// classification, or when no site had k values of the label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetScale>,
}

impl Plan {
    /// Combines sites' aggregates with the default [`StatsLimits`].
    pub fn combine(sites: &[&SiteStats]) -> Plan {
        Self::combine_within(sites, &StatsLimits::default())
    }

    /// Combines sites' aggregates. Sites are taken in the given order; callers sort them
    /// (by site name) so the plan does not depend on who joined first.
    ///
    /// No single site decides for the others: a column is categorical only when the sites
    /// that see it as categorical hold more of its rows than those that see it as numeric,
    /// and a vocabulary keeps at most `limits.max_categories` categories (the most frequent
    /// ones). Pooled moments are weighted means of per-site means, which stay finite for
    /// any finite, consistent aggregates ([`SiteStats::validate`]).
    pub fn combine_within(sites: &[&SiteStats], limits: &StatsLimits) -> Plan {
        /// One column's aggregates summed over sites.
        #[derive(Default)]
        struct Pooled {
            categorical_rows: u64,
            numeric_rows: u64,
            n: u64,
            /// Per site with numeric values: (count, sum, sum of squares).
            moments: Vec<(u64, f64, f64)>,
            categories: BTreeMap<String, u64>,
            missing: u64,
        }
        let mut order: Vec<String> = Vec::new();
        let mut merged: BTreeMap<String, Pooled> = BTreeMap::new();
        for site in sites {
            for c in &site.columns {
                if !merged.contains_key(&c.name) {
                    order.push(c.name.clone());
                }
                let m = merged.entry(c.name.clone()).or_default();
                let rows = c.rows().unwrap_or(u64::MAX);
                if c.categorical {
                    m.categorical_rows = m.categorical_rows.saturating_add(rows);
                } else {
                    m.numeric_rows = m.numeric_rows.saturating_add(rows);
                }
                if c.numeric_count > 0 {
                    m.n = m.n.saturating_add(c.numeric_count);
                    m.moments.push((c.numeric_count, c.sum, c.sum_squares));
                }
                for (k, v) in &c.categories {
                    let e = m.categories.entry(k.clone()).or_default();
                    *e = e.saturating_add(*v);
                }
                m.missing = m.missing.saturating_add(c.missing);
            }
        }
        let columns = order
            .into_iter()
            .take(limits.max_columns)
            .map(|name| {
                let p = &merged[&name];
                let kind = if p.categorical_rows > p.numeric_rows {
                    let mut vocabulary: Vec<String> = if p.categories.len() > limits.max_categories {
                        let mut by_count: Vec<(&String, &u64)> = p.categories.iter().collect();
                        by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                        let mut kept: Vec<String> = by_count.into_iter().take(limits.max_categories).map(|(k, _)| k.clone()).collect();
                        kept.sort();
                        kept
                    } else {
                        p.categories.keys().cloned().collect()
                    };
                    if p.missing > 0 {
                        vocabulary.push(MISSING_CATEGORY.to_owned());
                    }
                    ColumnKind::Categorical { vocabulary }
                } else {
                    let TargetScale { mean, std } = pooled_moments(&p.moments);
                    ColumnKind::Numeric { mean, std }
                };
                ColumnPlan { name, kind }
            })
            .collect();
        let label: Vec<(u64, f64, f64)> =
            sites.iter().filter_map(|s| s.label_values.as_ref()).filter(|l| l.numeric_count > 0).map(|l| (l.numeric_count, l.sum, l.sum_squares)).collect();
        let target = (!label.is_empty()).then(|| pooled_moments(&label));
        Plan { columns, target }
    }

    /// Number of encoded features.
    pub fn width(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match &c.kind {
                ColumnKind::Numeric { .. } => 1,
                ColumnKind::Categorical { vocabulary } => vocabulary.len(),
            })
            .sum()
    }

    /// Positions of the standardised numeric features (for jitter).
    pub fn numeric_positions(&self) -> Vec<usize> {
        let mut pos = 0;
        let mut out = Vec::new();
        for c in &self.columns {
            match &c.kind {
                ColumnKind::Numeric { .. } => {
                    out.push(pos);
                    pos += 1;
                }
                ColumnKind::Categorical { vocabulary } => pos += vocabulary.len(),
            }
        }
        out
    }

    /// Hex SHA-256 of the plan, so a site can tell whether it holds the current one.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.columns {
            h.update(c.name.as_bytes());
            h.update([0]);
            match &c.kind {
                ColumnKind::Numeric { mean, std } => {
                    h.update([1]);
                    h.update(mean.to_le_bytes());
                    h.update(std.to_le_bytes());
                }
                ColumnKind::Categorical { vocabulary } => {
                    h.update([2]);
                    for v in vocabulary {
                        h.update(v.as_bytes());
                        h.update([0]);
                    }
                }
            }
        }
        // Absent in classification, so those plans keep the fingerprint they always had.
        if let Some(t) = &self.target {
            h.update(b"\0target");
            h.update(t.mean.to_le_bytes());
            h.update(t.std.to_le_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Encodes the selected rows of a site with this plan; `num_classes` 1 is a regression
    /// task, whose targets are standardised with the plan's `target`.
    pub fn encode(&self, site: &SiteRows, indices: &[usize], num_classes: usize) -> Result<Dataset, DataError> {
        let positions: Vec<Option<usize>> = self.columns.iter().map(|c| site.columns.iter().position(|s| *s == c.name)).collect();
        let width = self.width();
        let mut features = Vec::with_capacity(indices.len() * width);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let row: &Row = &site.rows[i];
            for (c, pos) in self.columns.iter().zip(&positions) {
                let value = pos.and_then(|p| row.values[p].as_deref());
                encode_value(c, value, &mut features);
            }
            labels.push(row.label);
        }
        if labels.iter().any(|&l| l as usize >= num_classes) {
            return Err(DataError::Spec(format!("a label is outside the task's {num_classes} classes")));
        }
        let (targets, target_scale) = if num_classes == 1 {
            let scale = self.target.unwrap_or(TargetScale::IDENTITY);
            (indices.iter().map(|&i| scale.standardise(site.rows[i].target) as f32).collect(), Some(scale))
        } else {
            (Vec::new(), None)
        };
        Ok(Dataset { features, n_features: width, labels, num_classes, targets, target_scale })
    }
}

/// The pooled mean and deviation of per-site (count, sum, sum of squares), as the pooled
/// data would give; a deviation of 0 (a constant) becomes 1.
fn pooled_moments(moments: &[(u64, f64, f64)]) -> TargetScale {
    let total = moments.iter().fold(0u64, |a, m| a.saturating_add(m.0)) as f64;
    if total == 0.0 {
        return TargetScale::IDENTITY;
    }
    // Σ sums / n; when that overflows (values near f64::MAX), the same moments as weighted
    // means of per-site means.
    let (sum, sum_sq): (f64, f64) = (moments.iter().map(|m| m.1).sum(), moments.iter().map(|m| m.2).sum());
    let (mean, mean_sq) = if sum.is_finite() && sum_sq.is_finite() {
        (sum / total, sum_sq / total)
    } else {
        let share = |count: u64, s: f64| count as f64 / total * (s / count as f64);
        (moments.iter().map(|&(c, s, _)| share(c, s)).sum(), moments.iter().map(|&(c, _, q)| share(c, q)).sum())
    };
    let var = (mean_sq - mean * mean).max(0.0);
    let std = if var.is_finite() && var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
    let mean = if mean.is_finite() { mean } else { 0.0 };
    TargetScale { mean, std }
}

fn encode_value(c: &ColumnPlan, value: Option<&str>, out: &mut Vec<f32>) {
    match &c.kind {
        ColumnKind::Numeric { mean, std } => {
            // A non-numeric value in a numeric column is impossible after cleaning; treat as missing.
            let x = value.and_then(|v| v.parse::<f64>().ok()).map_or(0.0, |x| (x - mean) / std);
            out.push(x as f32);
        }
        ColumnKind::Categorical { vocabulary } => {
            let known = |v: &str| vocabulary.iter().any(|w| w == v);
            // A value outside the vocabulary (rare everywhere, or cut by the limit) is what the
            // federation's `<other>` stands for, else unknown like a missing value; with
            // neither in the vocabulary it encodes as all zeros.
            let key = match value {
                Some(v) if known(v) => v,
                Some(_) if known(OTHER_CATEGORY) => OTHER_CATEGORY,
                _ => MISSING_CATEGORY,
            };
            out.extend(vocabulary.iter().map(|v| if v == key { 1.0f32 } else { 0.0 }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::stats::ColumnStats;
    use crate::data::table::RawTable;
    use crate::task::Task;

    fn site(text: &str) -> SiteRows {
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        SiteRows::from_table(&RawTable::from_reader(text.as_bytes(), Path::new("s.csv")).unwrap(), &spec).unwrap()
    }

    #[test]
    fn combined_moments_equal_pooled_moments() {
        let a = site("x,c,y\n1,red,bad\n2,,good\n");
        let b = site("x,c,y\n3,blue,good\n6,red,good\n");
        let sa = SiteStats::of_rows(&a, &[0, 1]);
        let sb = SiteStats::of_rows(&b, &[0, 1]);
        let plan = Plan::combine(&[&sa, &sb]);
        // Pooled x = [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5.
        match &plan.columns[0].kind {
            ColumnKind::Numeric { mean, std } => {
                assert!((mean - 3.0).abs() < 1e-12);
                assert!((std - 3.5f64.sqrt()).abs() < 1e-12);
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(plan.columns[1].kind, ColumnKind::Categorical { vocabulary: vec!["blue".into(), "red".into(), MISSING_CATEGORY.into()] });
        assert_eq!(plan.width(), 4);
        let ds = plan.encode(&a, &[0, 1], 2).unwrap();
        let s = 3.5f32.sqrt();
        assert_eq!(ds.row(0), &[(1.0 - 3.0) / s, 0.0, 1.0, 0.0]);
        assert_eq!(ds.row(1), &[(2.0 - 3.0) / s, 0.0, 0.0, 1.0]);
        assert_eq!(ds.labels, vec![1, 0]);
    }

    #[test]
    fn a_value_outside_the_vocabulary_is_other_then_missing_then_nothing() {
        let site = site("x,c,y\n1,zebra,bad\n2,,good\n");
        let vocabulary = |v: &[&str]| Plan {
            columns: vec![ColumnPlan { name: "c".into(), kind: ColumnKind::Categorical { vocabulary: v.iter().map(|s| (*s).to_owned()).collect() } }],
            target: None,
        };
        let encoded = |p: Plan| p.encode(&site, &[0, 1], 2).unwrap().features;
        assert_eq!(encoded(vocabulary(&["red", OTHER_CATEGORY, MISSING_CATEGORY])), vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(encoded(vocabulary(&["red", MISSING_CATEGORY])), vec![0.0, 1.0, 0.0, 1.0], "unknown, like a missing value");
        assert_eq!(encoded(vocabulary(&["red"])), vec![0.0, 0.0], "neither: all zeros");
    }

    #[test]
    fn a_regression_target_is_standardised_with_the_pooled_label_moments() {
        let mut spec = Task::banks().data;
        spec.label =
            crate::task::LabelSpec { column: "y".into(), kind: crate::task::LabelKind::Regression, positive_above: None, positive_values: None, classes: None };
        let site = |text: &str| SiteRows::from_table(&RawTable::from_reader(text.as_bytes(), Path::new("s.csv")).unwrap(), &spec).unwrap();
        let (a, b) = (site("x,y\n1,10\n2,20\n"), site("x,y\n3,30\n4,60\n"));
        let (sa, sb) = (SiteStats::summarise(&a, &[0, 1], 1, 1), SiteStats::summarise(&b, &[0, 1], 1, 1));
        let plan = Plan::combine(&[&sa, &sb]);
        // Pooled y = [10, 20, 30, 60]: mean 30, population variance (400 + 100 + 0 + 900) / 4 = 350.
        let t = plan.target.unwrap();
        assert!((t.mean - 30.0).abs() < 1e-12 && (t.std - 350f64.sqrt()).abs() < 1e-12, "{t:?}");
        let ds = plan.encode(&b, &[0, 1], 1).unwrap();
        assert_eq!(ds.target_scale, Some(t));
        assert!((f64::from(ds.targets[1]) - 30.0 / 350f64.sqrt()).abs() < 1e-6 && ds.labels == vec![0, 0]);
        assert!((t.restore(f64::from(ds.targets[1])) - 60.0).abs() < 1e-4);
        let without = Plan { target: None, ..plan.clone() };
        assert_ne!(plan.fingerprint(), without.fingerprint(), "the target is part of the plan");
        // Under k, a site's label is reported as missing: one site alone gives nothing away.
        let few = SiteStats::summarise(&a, &[0, 1], 1, 3);
        assert_eq!(few.label_values.as_ref().map(|l| (l.numeric_count, l.missing, l.sum)), Some((0, 2, 0.0)));
        assert_eq!(Plan::combine(&[&few]).target, None);
    }

    #[test]
    fn fingerprint_changes_with_the_plan() {
        let a = SiteStats::of_rows(&site("x,c,y\n1,red,bad\n2,blue,good\n"), &[0, 1]);
        let b = SiteStats::of_rows(&site("x,c,y\n1,red,bad\n3,blue,good\n"), &[0, 1]);
        assert_ne!(Plan::combine(&[&a]).fingerprint(), Plan::combine(&[&b]).fingerprint());
        assert_eq!(Plan::combine(&[&a]).fingerprint(), Plan::combine(&[&a]).fingerprint());
    }

    fn column(stats: ColumnStats) -> SiteStats {
        SiteStats { columns: vec![stats], ..Default::default() }
    }

    #[test]
    fn one_site_cannot_make_a_column_categorical_for_the_others() {
        let numeric = |n: u64| column(ColumnStats { name: "x".into(), numeric_count: n, sum: n as f64, sum_squares: 2.0 * n as f64, ..Default::default() });
        let categorical = |n: u64| column(ColumnStats { name: "x".into(), categorical: true, categories: [("a".to_owned(), n)].into(), ..Default::default() });
        let (big, small) = (numeric(90), categorical(10));
        assert!(matches!(Plan::combine(&[&big, &small]).columns[0].kind, ColumnKind::Numeric { .. }), "10 rows of 100 do not decide");
        let (few, most) = (numeric(10), categorical(90));
        assert!(matches!(Plan::combine(&[&few, &most]).columns[0].kind, ColumnKind::Categorical { .. }), "the majority of rows does");
    }

    #[test]
    fn a_vocabulary_keeps_the_most_frequent_categories_up_to_the_limit() {
        let limits = StatsLimits { max_categories: 3, ..StatsLimits::default() };
        let site = |cats: &[(&str, u64)]| {
            column(ColumnStats {
                name: "c".into(),
                categorical: true,
                categories: cats.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                ..Default::default()
            })
        };
        // Each site within the limit; their union is not.
        let (a, b) = (site(&[("red", 50), ("blue", 40), ("rare", 1)]), site(&[("green", 30), ("pink", 2), ("red", 5)]));
        let plan = Plan::combine_within(&[&a, &b], &limits);
        assert_eq!(plan.columns[0].kind, ColumnKind::Categorical { vocabulary: vec!["blue".into(), "green".into(), "red".into()] });
        assert_eq!(plan.width(), 3);
    }

    #[test]
    fn pooled_moments_stay_finite_when_the_sums_would_overflow() {
        // Two consistent sites near f64::MAX: Σ sums is infinite, the pooled moments are not.
        let huge = column(ColumnStats { name: "x".into(), numeric_count: 2, sum: 1.5e308, sum_squares: 1.7e308, ..Default::default() });
        assert!(huge.validate(2, &StatsLimits::default()).is_err(), "validation already refuses these");
        let big = column(ColumnStats { name: "x".into(), numeric_count: 1, sum: 1e154, sum_squares: 1.2e308, ..Default::default() });
        assert_eq!(big.validate(1, &StatsLimits::default()), Ok(()));
        match &Plan::combine(&[&big, &big]).columns[0].kind {
            ColumnKind::Numeric { mean, std } => assert!(mean.is_finite() && std.is_finite() && *std > 0.0, "{mean} {std}"),
            k => panic!("{k:?}"),
        }
    }
}
