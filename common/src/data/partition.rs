//! Cutting one table into simulated sites: IID, Dirichlet label skew, or by a column.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use super::rows::parse_label;
use super::table::{RawRow, RawTable};
use crate::error::DataError;
use crate::task::LabelSpec;

/// How to split a table across simulated sites.
#[derive(Debug, Clone, PartialEq)]
pub enum Partition {
    /// Shuffle and deal rows evenly.
    Iid,
    /// For each class, site shares drawn from Dirichlet(alpha): small alpha, strong skew.
    Dirichlet(f64),
    /// One site per distinct value of a column (e.g. the hospital).
    Column(String),
}

impl std::str::FromStr for Partition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "iid" {
            return Ok(Partition::Iid);
        }
        if let Some(a) = s.strip_prefix("dirichlet:") {
            return match a.parse::<f64>() {
                Ok(alpha) if alpha > 0.0 && alpha.is_finite() => Ok(Partition::Dirichlet(alpha)),
                _ => Err(format!("dirichlet alpha must be a positive number, got `{a}`")),
            };
        }
        if let Some(c) = s.strip_prefix("column:")
            && !c.is_empty()
        {
            return Ok(Partition::Column(c.to_owned()));
        }
        Err(format!("unknown partition `{s}`: use iid, dirichlet:ALPHA or column:NAME"))
    }
}

/// One simulated site: its name and its rows.
pub type SiteTable = (String, RawTable);

/// Splits `table` into sites. `clients` is ignored for `Column`. Deterministic in `seed`.
pub fn partition(table: &RawTable, how: &Partition, clients: usize, label: &LabelSpec, seed: u64) -> Result<Vec<SiteTable>, DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_7274); // "part"
    let site = |i: usize| format!("site-{}", i + 1);
    let sub = |name: &str, rows: Vec<RawRow>| (name.to_owned(), table.with_rows(PathBuf::from(format!("{}#{name}", table.source.display())), rows));
    match how {
        Partition::Column(col) => {
            let idx = table
                .column_index(col)
                .ok_or_else(|| DataError::File { file: table.source.clone(), message: format!("partition column `{col}` is not in the header") })?;
            let mut groups: BTreeMap<String, Vec<RawRow>> = BTreeMap::new();
            for r in &table.rows {
                groups.entry(r.fields[idx].clone()).or_default().push(r.clone());
            }
            Ok(groups.into_iter().map(|(k, rows)| sub(&k, rows)).collect())
        }
        Partition::Iid => {
            check_clients(table, clients)?;
            let mut rows = table.rows.clone();
            rows.shuffle(&mut rng);
            let mut parts: Vec<Vec<RawRow>> = vec![Vec::new(); clients];
            for (i, r) in rows.into_iter().enumerate() {
                parts[i % clients].push(r);
            }
            Ok(parts.into_iter().enumerate().map(|(i, rows)| sub(&site(i), sort_by_line(rows))).collect())
        }
        Partition::Dirichlet(alpha) => {
            check_clients(table, clients)?;
            let rule = label.rule().map_err(|e| DataError::Spec(e.to_string()))?;
            let li = table
                .column_index(&label.column)
                .ok_or_else(|| DataError::File { file: table.source.clone(), message: format!("label column `{}` is not in the header", label.column) })?;
            // Rows with an unreadable label go to the first site, whose cleaning reports them.
            let mut by_class: BTreeMap<u32, Vec<RawRow>> = BTreeMap::new();
            let mut unlabelled = Vec::new();
            for r in &table.rows {
                match parse_label(&r.fields[li], &rule) {
                    Ok((c, _)) => by_class.entry(c).or_default().push(r.clone()),
                    Err(_) => unlabelled.push(r.clone()),
                }
            }
            let gamma = Gamma::new(*alpha, 1.0).map_err(|e| DataError::Spec(format!("dirichlet alpha: {e}")))?;
            let min_rows = (table.rows.len() / clients / 20).clamp(4, 20);
            // Redraw until every site holds a usable number of rows (as FL benchmarks do).
            for _ in 0..1000 {
                let mut parts: Vec<Vec<RawRow>> = vec![Vec::new(); clients];
                for rows in by_class.values() {
                    let mut rows = rows.clone();
                    rows.shuffle(&mut rng);
                    let draws: Vec<f64> = (0..clients).map(|_| gamma.sample(&mut rng)).collect();
                    let total: f64 = draws.iter().sum();
                    let mut start = 0;
                    let mut acc = 0.0;
                    for (k, d) in draws.iter().enumerate() {
                        acc += d / total;
                        let end = if k + 1 == clients { rows.len() } else { ((acc * rows.len() as f64).round() as usize).min(rows.len()) };
                        parts[k].extend_from_slice(&rows[start..end.max(start)]);
                        start = end.max(start);
                    }
                }
                if parts.iter().all(|p| p.len() >= min_rows) {
                    parts[0].extend(unlabelled);
                    return Ok(parts.into_iter().enumerate().map(|(i, rows)| sub(&site(i), sort_by_line(rows))).collect());
                }
            }
            Err(DataError::Spec(format!("could not draw a Dirichlet({alpha}) partition giving each of {clients} sites {min_rows} rows")))
        }
    }
}

fn check_clients(table: &RawTable, clients: usize) -> Result<(), DataError> {
    if clients == 0 || clients > table.rows.len() / 2 {
        return Err(DataError::Spec(format!("cannot split {} rows across {clients} clients (need 1 to {})", table.rows.len(), table.rows.len() / 2)));
    }
    Ok(())
}

fn sort_by_line(mut rows: Vec<RawRow>) -> Vec<RawRow> {
    rows.sort_by_key(|r| r.line);
    rows
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::task::Task;

    fn table() -> RawTable {
        let mut text = String::from("x,site,creditability\n");
        for i in 0..200 {
            text.push_str(&format!("{i},{},{}\n", if i % 3 == 0 { "A" } else { "B" }, if i % 4 == 0 { "bad" } else { "good" }));
        }
        RawTable::from_reader(text.as_bytes(), Path::new("t.csv")).unwrap()
    }

    #[test]
    fn every_partition_keeps_every_row_once() {
        let label = Task::banks().data.label;
        for how in [Partition::Iid, Partition::Dirichlet(0.5), Partition::Column("site".into())] {
            let parts = partition(&table(), &how, 5, &label, 3).unwrap();
            let mut lines: Vec<u64> = parts.iter().flat_map(|(_, t)| t.rows.iter().map(|r| r.line)).collect();
            lines.sort_unstable();
            assert_eq!(lines, (2..202).collect::<Vec<u64>>(), "{how:?}");
        }
    }

    #[test]
    fn dirichlet_is_seeded_and_skewed() {
        let label = Task::banks().data.label;
        let a = partition(&table(), &Partition::Dirichlet(0.1), 4, &label, 1).unwrap();
        let b = partition(&table(), &Partition::Dirichlet(0.1), 4, &label, 1).unwrap();
        assert_eq!(a.iter().map(|p| p.1.rows.len()).collect::<Vec<_>>(), b.iter().map(|p| p.1.rows.len()).collect::<Vec<_>>());
        let sizes: Vec<usize> = a.iter().map(|p| p.1.rows.len()).collect();
        assert!(sizes.iter().max() != sizes.iter().min(), "{sizes:?}");
    }

    #[test]
    fn partition_spec_parses() {
        assert_eq!("dirichlet:0.5".parse::<Partition>().unwrap(), Partition::Dirichlet(0.5));
        assert!("dirichlet:-1".parse::<Partition>().is_err());
        assert_eq!("column:dataset".parse::<Partition>().unwrap(), Partition::Column("dataset".into()));
    }
}
