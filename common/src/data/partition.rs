//! Cutting one table (or one set of images) into simulated sites: IID, Dirichlet label skew,
//! the FedAvg paper's label shards, or by a column.

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
    /// The FedAvg paper's pathological non-IID split: sort by label, cut into `clients × n`
    /// equal shards, deal each site `n` at random (with n = 2 most sites see two classes).
    Shards(usize),
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
        if let Some(n) = s.strip_prefix("shards:") {
            return match n.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(Partition::Shards(n)),
                _ => Err(format!("shards per site must be a whole number from 1 to 1000, got `{n}`")),
            };
        }
        if let Some(c) = s.strip_prefix("column:")
            && !c.is_empty()
        {
            return Ok(Partition::Column(c.to_owned()));
        }
        Err(format!("unknown partition `{s}`: use iid, dirichlet:ALPHA, shards:N or column:NAME"))
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
        Partition::Iid | Partition::Dirichlet(_) | Partition::Shards(_) => {
            // Rows with an unreadable label are kept (the first site's cleaning reports them).
            let classes: Vec<Option<u32>> = match how {
                Partition::Iid => vec![None; table.rows.len()],
                _ => {
                    let rule = label.rule().map_err(|e| DataError::Spec(e.to_string()))?;
                    let li = table.column_index(&label.column).ok_or_else(|| DataError::File {
                        file: table.source.clone(),
                        message: format!("label column `{}` is not in the header", label.column),
                    })?;
                    table.rows.iter().map(|r| parse_label(&r.fields[li], &rule).ok().map(|(c, _)| c)).collect()
                }
            };
            let parts = split_indices(&classes, how, clients, &mut rng)?;
            Ok(parts.into_iter().enumerate().map(|(i, idx)| sub(&site(i), sort_by_line(idx.into_iter().map(|j| table.rows[j].clone()).collect()))).collect())
        }
    }
}

/// Splits examples with these classes into sites (their indices, ascending); for images and
/// any other data whose labels are known. Deterministic in `seed`; `Column` is refused.
pub fn partition_labels(labels: &[u32], how: &Partition, clients: usize, seed: u64) -> Result<Vec<Vec<usize>>, DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_7274); // "part"
    let classes: Vec<Option<u32>> = labels.iter().map(|&l| Some(l)).collect();
    let mut parts = split_indices(&classes, how, clients, &mut rng)?;
    parts.iter_mut().for_each(|p| p.sort_unstable());
    Ok(parts)
}

/// The index-level split behind both: examples `0..classes.len()`, each with its class
/// (`None`: unreadable, given to the first site).
fn split_indices(classes: &[Option<u32>], how: &Partition, clients: usize, rng: &mut ChaCha8Rng) -> Result<Vec<Vec<usize>>, DataError> {
    let n = classes.len();
    check_clients(n, clients)?;
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut unlabelled = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        match c {
            Some(c) => by_class.entry(*c).or_default().push(i),
            None => unlabelled.push(i),
        }
    }
    match how {
        Partition::Column(_) => Err(DataError::Spec("a column partition needs a table".into())),
        Partition::Iid => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(rng);
            let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
            for (i, r) in order.into_iter().enumerate() {
                parts[i % clients].push(r);
            }
            Ok(parts)
        }
        Partition::Dirichlet(alpha) => {
            let gamma = Gamma::new(*alpha, 1.0).map_err(|e| DataError::Spec(format!("dirichlet alpha: {e}")))?;
            let min_rows = (n / clients / 20).clamp(4, 20);
            // Redraw until every site holds a usable number of rows (as FL benchmarks do).
            for _ in 0..1000 {
                let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
                for rows in by_class.values() {
                    let mut rows = rows.clone();
                    rows.shuffle(rng);
                    let draws: Vec<f64> = (0..clients).map(|_| gamma.sample(rng)).collect();
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
                    return Ok(parts);
                }
            }
            Err(DataError::Spec(format!("could not draw a Dirichlet({alpha}) partition giving each of {clients} sites {min_rows} rows")))
        }
        Partition::Shards(per_site) => {
            let sorted: Vec<usize> = by_class.into_values().flatten().collect();
            let shards = clients * per_site;
            if sorted.len() < shards {
                return Err(DataError::Spec(format!("cannot cut {} labelled rows into {shards} shards ({clients} sites × {per_site})", sorted.len())));
            }
            // Equal shards; the last takes the remainder.
            let size = sorted.len() / shards;
            let mut ids: Vec<usize> = (0..shards).collect();
            ids.shuffle(rng);
            let mut parts: Vec<Vec<usize>> = ids
                .chunks(*per_site)
                .map(|mine| mine.iter().flat_map(|&s| &sorted[s * size..if s + 1 == shards { sorted.len() } else { (s + 1) * size }]).copied().collect())
                .collect();
            parts[0].extend(unlabelled);
            Ok(parts)
        }
    }
}

fn check_clients(rows: usize, clients: usize) -> Result<(), DataError> {
    if clients == 0 || clients > rows / 2 {
        return Err(DataError::Spec(format!("cannot split {rows} rows across {clients} clients (need 1 to {})", rows / 2)));
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
    fn shards_give_each_site_two_labels_and_every_example_once() {
        // Ten classes of 60 examples, 10 sites × 2 shards of 30: no shard straddles two classes.
        let labels: Vec<u32> = (0..600).map(|i| (i * 7 % 10) as u32).collect();
        let parts = partition_labels(&labels, &Partition::Shards(2), 10, 1).unwrap();
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..600).collect::<Vec<_>>());
        for p in &parts {
            let classes: std::collections::BTreeSet<u32> = p.iter().map(|&i| labels[i]).collect();
            assert!((1..=2).contains(&classes.len()) && p.len() == 60, "{classes:?} {}", p.len());
        }
        assert!(parts.iter().any(|p| p.iter().map(|&i| labels[i]).collect::<std::collections::BTreeSet<_>>().len() == 2));
        assert_eq!(parts, partition_labels(&labels, &Partition::Shards(2), 10, 1).unwrap(), "seeded");
        assert_ne!(parts, partition_labels(&labels, &Partition::Shards(2), 10, 2).unwrap());
        // IID: 60 each, every class nearly everywhere.
        let iid = partition_labels(&labels, &Partition::Iid, 10, 1).unwrap();
        assert!(iid.iter().all(|p| p.len() == 60 && p.iter().map(|&i| labels[i]).collect::<std::collections::BTreeSet<_>>().len() >= 7));
        assert!(partition_labels(&labels, &Partition::Shards(100), 10, 1).unwrap_err().to_string().contains("1000 shards"));
        assert!(partition_labels(&labels, &Partition::Column("x".into()), 10, 1).is_err());
    }

    #[test]
    fn partition_spec_parses() {
        assert_eq!("shards:2".parse::<Partition>().unwrap(), Partition::Shards(2));
        assert!("shards:0".parse::<Partition>().is_err());
        assert_eq!("dirichlet:0.5".parse::<Partition>().unwrap(), Partition::Dirichlet(0.5));
        assert!("dirichlet:-1".parse::<Partition>().is_err());
        assert_eq!("column:dataset".parse::<Partition>().unwrap(), Partition::Column("dataset".into()));
    }
}
