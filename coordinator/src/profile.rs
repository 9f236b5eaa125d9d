//! The federated data profile: what the sites' aggregates say about their data, side by side,
//! and the problems they show (a column missing at a site, a class absent, drift, constant
//! columns, a site much smaller than the rest), built before any training and without a row
//! leaving any site. Every count in it covers at least k rows of a site (the sites' own
//! k-threshold: categories, histogram bins and label counts below k are never reported).

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_common::Task;
use flotilla_common::data::stats::{Bin, LABEL_VALUES};
use flotilla_common::data::{ColumnKind, Plan, SiteStats};
use serde::Serialize;

/// How far (in the federation's standard deviations) a site's mean may lie from the mean of
/// the other sites before it is flagged as drift.
pub const DRIFT_Z: f64 = 1.0;
/// A site with fewer training rows than this share of the median site is flagged as small.
pub const SMALL_SITE_SHARE: f64 = 0.25;
/// A column missing in more than this share of a site's rows is flagged.
pub const MOSTLY_MISSING: f64 = 0.5;
/// A site whose rarest present class is under this share of its rows is flagged.
pub const IMBALANCED_SHARE: f64 = 0.1;

/// The profile of a federation (`profile.json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Profile {
    /// The task's k: the fewest rows any reported count covers.
    pub k: u64,
    pub sites: BTreeMap<String, SiteProfile>,
    pub columns: Vec<ColumnProfile>,
    /// A regression task's label, profiled as a numeric column (named `<label>`): a site
    /// whose label mean lies far from the others' is flagged as drift (label shift).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<ColumnProfile>,
    pub flags: Vec<Flag>,
}

/// One site: its training rows and its classes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteProfile {
    pub train_rows: u64,
    /// Training rows per class; absent when the site withheld them (a class below k).
    pub label_counts: Option<Vec<u64>>,
    pub label_present: Vec<bool>,
}

/// One feature column across the federation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnProfile {
    pub name: String,
    /// `numeric` or `categorical`, as the plan encodes it.
    pub kind: &'static str,
    /// The federation's pooled mean and standard deviation (numeric columns).
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub missing_share: f64,
    pub sites: BTreeMap<String, SiteColumn>,
}

/// One column at one site.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteColumn {
    pub rows: u64,
    pub missing_share: f64,
    /// Numeric columns with values at the site.
    pub mean: Option<f64>,
    pub std: Option<f64>,
    /// The site's mean minus the other sites' pooled mean, in the federation's deviations.
    pub drift_z: Option<f64>,
    /// Bins in the site's own standard units: `upper` edges (the last one +∞ is written as
    /// null) and counts, each at least k.
    pub histogram: Vec<(Option<f64>, u64)>,
    /// Categorical columns: the categories the site reported, with their counts.
    pub categories: BTreeMap<String, u64>,
    /// The site reads the column the other way (numeric where the plan is categorical, or
    /// the reverse).
    pub type_differs: bool,
}

/// A problem the profile shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flag {
    /// `missing_column`, `mostly_missing`, `absent_class`, `label_imbalance`, `drift`,
    /// `constant_column`, `small_site`, `identifier_column`, `type_disagreement`.
    pub kind: &'static str,
    pub site: Option<String>,
    pub column: Option<String>,
    pub message: String,
}

impl Profile {
    /// Builds the profile from each site's aggregates (sorted by site name) and the plan.
    pub fn build(task: &Task, plan: &Plan, sites: &[(&str, &SiteStats, u64)]) -> Self {
        let k = task.data.min_category_count;
        let mut flags = Vec::new();
        let site_profiles: BTreeMap<String, SiteProfile> = sites
            .iter()
            .map(|(name, s, n)| {
                let counts = (!s.label_counts.is_empty()).then(|| s.label_counts.clone());
                ((*name).to_owned(), SiteProfile { train_rows: *n, label_counts: counts, label_present: s.label_present.clone() })
            })
            .collect();
        for (name, s) in &site_profiles {
            if let Some(counts) = &s.label_counts {
                let n: u64 = counts.iter().sum();
                if let Some((c, &least)) = counts.iter().enumerate().filter(|(_, n)| **n > 0).min_by_key(|(_, n)| **n)
                    && n > 0
                    && (least as f64) < IMBALANCED_SHARE * n as f64
                {
                    flags.push(Flag {
                        kind: "label_imbalance",
                        site: Some(name.clone()),
                        column: None,
                        message: format!("site `{name}`: class {c} is {:.0}% of its {n} training rows", 100.0 * least as f64 / n as f64),
                    });
                }
            }
            for (c, present) in s.label_present.iter().enumerate() {
                if !present {
                    flags.push(Flag {
                        kind: "absent_class",
                        site: Some(name.clone()),
                        column: None,
                        message: format!("site `{name}` has no training row of class {c}: its updates cannot teach that class"),
                    });
                }
            }
        }
        let mut rows: Vec<u64> = sites.iter().map(|(_, _, n)| *n).collect();
        rows.sort_unstable();
        if let Some(&median) = rows.get(rows.len() / 2) {
            for (name, _, n) in sites {
                if (*n as f64) < SMALL_SITE_SHARE * median as f64 {
                    flags.push(Flag {
                        kind: "small_site",
                        site: Some((*name).to_owned()),
                        column: None,
                        message: format!("site `{name}` has {n} training rows, under {:.0}% of the median site's {median}", SMALL_SITE_SHARE * 100.0),
                    });
                }
            }
        }
        let columns = plan.columns.iter().map(|c| column_profile(c, sites, &mut flags)).collect();
        let label = task.data.label.is_regression().then(|| {
            // The label's aggregates as a one-column site each, so the label is profiled (and
            // its drift flagged) exactly as a feature is.
            let as_columns: Vec<SiteStats> =
                sites.iter().map(|(_, s, _)| SiteStats { columns: s.label_values.iter().cloned().collect(), ..Default::default() }).collect();
            let label_sites: Vec<(&str, &SiteStats, u64)> = sites.iter().zip(&as_columns).map(|((name, _, n), s)| (*name, s, *n)).collect();
            let scale = plan.target.unwrap_or(flotilla_common::data::TargetScale::IDENTITY);
            let plan = flotilla_common::data::ColumnPlan { name: LABEL_VALUES.to_owned(), kind: ColumnKind::Numeric { mean: scale.mean, std: scale.std } };
            column_profile(&plan, &label_sites, &mut flags)
        });
        Profile { k, sites: site_profiles, columns, label, flags }
    }

    /// Writes `profile.json` and `profile.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        crate::run_dir::write_atomic(&dir.join("profile.json"), json.as_bytes()).map_err(|e| e.to_string())?;
        crate::profile_chart::write(&dir.join("profile.svg"), self).map_err(|e| format!("{}: {e}", dir.join("profile.svg").display()))
    }
}

fn column_profile(c: &flotilla_common::data::ColumnPlan, sites: &[(&str, &SiteStats, u64)], flags: &mut Vec<Flag>) -> ColumnProfile {
    let numeric = matches!(c.kind, ColumnKind::Numeric { .. });
    let (mean, std) = match c.kind {
        ColumnKind::Numeric { mean, std } => (Some(mean), Some(std)),
        ColumnKind::Categorical { .. } => (None, None),
    };
    let name = c.name.clone();
    let mut per_site = BTreeMap::new();
    let (mut total, mut missing) = (0u64, 0u64);
    // Per site with values: (count, sum), for each site's "others" mean.
    let moments: Vec<(&str, u64, f64)> = sites
        .iter()
        .filter_map(|(s, st, _)| st.columns.iter().find(|x| x.name == name).filter(|x| x.numeric_count > 0).map(|x| (*s, x.numeric_count, x.sum)))
        .collect();
    for (site, stats, _) in sites {
        let Some(col) = stats.columns.iter().find(|x| x.name == name) else {
            flags.push(Flag {
                kind: "missing_column",
                site: Some((*site).to_owned()),
                column: Some(name.clone()),
                message: format!("site `{site}` has no column `{name}`: its rows encode it as missing"),
            });
            continue;
        };
        let rows = col.rows().unwrap_or(0);
        total = total.saturating_add(rows);
        missing = missing.saturating_add(col.missing);
        let share = if rows == 0 { 1.0 } else { col.missing as f64 / rows as f64 };
        if rows > 0 && col.missing == rows {
            flags.push(Flag {
                kind: "missing_column",
                site: Some((*site).to_owned()),
                column: Some(name.clone()),
                message: format!("column `{name}` is missing in every row of site `{site}`"),
            });
        }
        if rows > 0 && col.missing < rows && share > MOSTLY_MISSING {
            flags.push(Flag {
                kind: "mostly_missing",
                site: Some((*site).to_owned()),
                column: Some(name.clone()),
                message: format!("column `{name}` is missing in {:.0}% of the rows of site `{site}`", share * 100.0),
            });
        }
        if col.identifier_like {
            flags.push(Flag {
                kind: "identifier_column",
                site: Some((*site).to_owned()),
                column: Some(name.clone()),
                message: format!("column `{name}` has a distinct value in every row of site `{site}`, as an identifier: drop it unless it is a measurement"),
            });
        }
        let type_differs = col.categorical == numeric && rows > col.missing;
        let (site_mean, site_std, drift_z) = if col.numeric_count > 0 {
            let n = col.numeric_count as f64;
            let m = col.sum / n;
            let s = (col.sum_squares / n - m * m).max(0.0).sqrt();
            let (others_n, others_sum) = moments.iter().filter(|(o, _, _)| o != site).fold((0u64, 0.0), |(a, b), (_, n, s)| (a + n, b + s));
            let z = match std {
                Some(fed_std) if others_n > 0 && fed_std > 0.0 => Some((m - others_sum / others_n as f64) / fed_std),
                _ => None,
            };
            (Some(m), Some(s), z)
        } else {
            (None, None, None)
        };
        if let Some(z) = drift_z.filter(|z| z.abs() > DRIFT_Z) {
            flags.push(Flag {
                kind: "drift",
                site: Some((*site).to_owned()),
                column: Some(name.clone()),
                message: format!("column `{name}` at site `{site}`: its mean lies {z:+.2} of the federation's deviations from the other sites'"),
            });
        }
        let histogram = col.histogram.iter().map(|Bin { upper, count }| (upper.is_finite().then_some(*upper), *count)).collect();
        per_site.insert(
            (*site).to_owned(),
            SiteColumn { rows, missing_share: share, mean: site_mean, std: site_std, drift_z, histogram, categories: col.categories.clone(), type_differs },
        );
    }
    let differing: Vec<&str> = per_site.iter().filter(|(_, s)| s.type_differs).map(|(n, _)| n.as_str()).collect();
    if !differing.is_empty() {
        flags.push(Flag {
            kind: "type_disagreement",
            site: None,
            column: Some(name.clone()),
            message: format!(
                "column `{name}` is {} for the federation but not at {}: list it under `categorical` or `numeric` in the task",
                if numeric { "numeric" } else { "categorical" },
                differing.join(", ")
            ),
        });
    }
    let constant = match &c.kind {
        ColumnKind::Numeric { .. } => {
            per_site.values().all(|s| s.std.is_none_or(|x| x < 1e-12)) && {
                let means: Vec<f64> = per_site.values().filter_map(|s| s.mean).collect();
                means.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-12)
            }
        }
        ColumnKind::Categorical { vocabulary } => vocabulary.iter().filter(|v| !v.starts_with('<')).count() <= 1,
    };
    if constant && total > missing {
        flags.push(Flag {
            kind: "constant_column",
            site: None,
            column: Some(name.clone()),
            message: format!("column `{name}` takes a single value at every site: it carries nothing"),
        });
    }
    ColumnProfile {
        name,
        kind: if numeric { "numeric" } else { "categorical" },
        mean,
        std,
        missing_share: if total == 0 { 1.0 } else { missing as f64 / total as f64 },
        sites: per_site,
    }
}

/// The profile a federation of these sites would make (what `flotilla-coordinator profile`
/// writes): each site prepares its rows as it would to join, and only its aggregates are used.
pub fn of_sites(sites: &[(String, flotilla_common::site::SiteInput)], task: &Task, seed: u64) -> Result<Profile, flotilla_common::DataError> {
    let k = task.data.min_category_count;
    let mut prepared =
        sites.iter().map(|(name, input)| flotilla_common::site::PreparedSite::from_input(name, input, task, seed, k)).collect::<Result<Vec<_>, _>>()?;
    prepared.sort_by(|a, b| a.name.cmp(&b.name));
    let stats: Vec<&SiteStats> = prepared.iter().map(|p| &p.stats).collect();
    let plan = Plan::combine(&stats);
    let rows: Vec<(&str, &SiteStats, u64)> = prepared.iter().map(|p| (p.name.as_str(), &p.stats, p.num_train() as u64)).collect();
    Ok(Profile::build(task, &plan, &rows))
}

/// The flags as lines for the terminal.
pub fn describe(p: &Profile) -> String {
    if p.flags.is_empty() {
        return "data profile: no problem found\n".into();
    }
    let mut s = format!("data profile: {} finding(s)\n", p.flags.len());
    for f in &p.flags {
        s.push_str(&format!("  [{}] {}\n", f.kind, f.message));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::data::ColumnStats;

    fn numeric(name: &str, values: &[f64]) -> ColumnStats {
        let n = values.len() as u64;
        ColumnStats { name: name.into(), numeric_count: n, sum: values.iter().sum(), sum_squares: values.iter().map(|x| x * x).sum(), ..Default::default() }
    }

    fn site(columns: Vec<ColumnStats>, labels: [u64; 2]) -> SiteStats {
        SiteStats { columns, label_counts: labels.to_vec(), label_present: labels.iter().map(|&n| n > 0).collect(), ..Default::default() }
    }

    #[test]
    fn crafted_sites_raise_each_flag_and_honest_ones_none() {
        let task = Task::hospitals();
        let normal: Vec<f64> = (0..100).map(|i| 50.0 + f64::from(i % 10)).collect();
        let shifted: Vec<f64> = normal.iter().map(|x| x + 40.0).collect();
        let a = site(vec![numeric("age", &normal), numeric("flat", &[1.0; 100])], [50, 50]);
        let b = site(vec![numeric("age", &normal), numeric("flat", &[1.0; 100])], [40, 60]);
        let honest = [("a", &a, 100), ("b", &b, 100)];
        let plan = Plan::combine(&[&a, &b]);
        let p = Profile::build(&task, &plan, &honest);
        assert_eq!(p.flags.iter().map(|f| f.kind).collect::<Vec<_>>(), vec!["constant_column"], "{:?}", p.flags);

        // c: shifted ages, no `flat` column at all, no positive row, and small.
        let c = site(vec![numeric("age", &shifted[..20])], [20, 0]);
        // d: `flat` missing in every row.
        let mut d = site(vec![numeric("age", &normal), ColumnStats { name: "flat".into(), missing: 100, ..Default::default() }], [50, 50]);
        d.columns[0].identifier_like = true;
        let sites = [("a", &a, 100), ("b", &b, 100), ("c", &c, 20), ("d", &d, 100)];
        let plan = Plan::combine(&[&a, &b, &c, &d]);
        let p = Profile::build(&task, &plan, &sites);
        let has = |kind: &str, site: Option<&str>| p.flags.iter().any(|f| f.kind == kind && f.site.as_deref() == site);
        assert!(has("drift", Some("c")) && !has("drift", Some("a")), "{:?}", p.flags);
        assert!(has("missing_column", Some("c")) && has("missing_column", Some("d")));
        assert!(has("absent_class", Some("c")) && has("small_site", Some("c")));
        assert!(has("identifier_column", Some("d")));
        assert!(!has("label_imbalance", Some("c")), "an absent class is its own finding");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["sites"]["c"]["label_counts"], serde_json::json!([20, 0]));
        assert!(json["columns"][0]["sites"]["c"]["drift_z"].as_f64().unwrap() > 1.0);
    }
}
