//! Where a federation's task and sites come from: a bundled scenario, a CSV split into
//! simulated sites, or a directory with one CSV per site.

use std::path::{Path, PathBuf};

use flotilla_common::data::RawTable;
use flotilla_common::data::partition::{Partition, partition};
use flotilla_common::data::synthetic::SyntheticSpec;
use flotilla_common::{DataError, Task, TaskError};

/// The bundled UCI Heart Disease file (four hospitals), compiled in so the demo needs no files.
pub const HEART_DISEASE_CSV: &str = include_str!("../../data/heart_disease_uci.csv");
/// The bundled German credit file.
pub const GERMAN_CREDIT_CSV: &str = include_str!("../../data/germancredit.csv");

/// A bundled scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Four real hospitals (Cleveland, Hungary, Switzerland, VA Long Beach), heart disease.
    Hospitals,
    /// Five banks, German credit, split with a Dirichlet(0.5) label skew.
    Banks,
}

impl Scenario {
    /// The scenario's task.
    pub fn task(self) -> Task {
        match self {
            Scenario::Hospitals => Task::hospitals(),
            Scenario::Banks => Task::banks(),
        }
    }
}

/// Where a simulation's sites come from.
#[derive(Debug, Clone)]
pub enum SiteSource {
    Scenario(Scenario),
    /// One CSV split into `clients` sites.
    Csv {
        file: PathBuf,
        clients: usize,
        partition: Partition,
    },
    /// One CSV per site; the file stem is the site name.
    Dir(PathBuf),
    /// Seeded synthetic clients (`client00000`, …), see `flotilla_common::data::synthetic`.
    Synthetic(SyntheticSpec),
}

/// Problems assembling the sites.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("{0}")]
    Invalid(String),
}

/// The sites of a simulation, each with its own rows, sorted by name.
pub fn load_sites(source: &SiteSource, task: &Task, seed: u64) -> Result<Vec<(String, RawTable)>, ScenarioError> {
    let mut sites = match source {
        SiteSource::Scenario(Scenario::Hospitals) => {
            let table = RawTable::from_reader(HEART_DISEASE_CSV.as_bytes(), Path::new("data/heart_disease_uci.csv"))?;
            partition(&table, &Partition::Column("dataset".into()), 0, &task.data.label, seed)?
        }
        SiteSource::Scenario(Scenario::Banks) => {
            let table = RawTable::from_reader(GERMAN_CREDIT_CSV.as_bytes(), Path::new("data/germancredit.csv"))?;
            partition(&table, &Partition::Dirichlet(0.5), 5, &task.data.label, seed)?.into_iter().map(|(name, t)| (name.replace("site", "bank"), t)).collect()
        }
        SiteSource::Csv { file, clients, partition: how } => partition(&RawTable::read(file)?, how, *clients, &task.data.label, seed)?,
        SiteSource::Dir(dir) => {
            let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.clone(), source })?;
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv"))).collect();
            files.sort();
            let mut sites = Vec::new();
            for f in files {
                let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("site").to_owned();
                sites.push((name, RawTable::read(&f)?));
            }
            sites
        }
        SiteSource::Synthetic(spec) => (0..spec.clients)
            .map(|k| {
                let name = format!("client{k:05}");
                let csv = spec.client_csv(seed, k).map_err(ScenarioError::Invalid)?;
                Ok((name.clone(), RawTable::from_reader(csv.as_bytes(), Path::new(&format!("{name}.csv")))?))
            })
            .collect::<Result<Vec<_>, ScenarioError>>()?,
    };
    if sites.is_empty() {
        return Err(ScenarioError::Invalid("no sites: the source holds no data".into()));
    }
    sites.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hospitals_are_the_four_real_sites() {
        let sites = load_sites(&SiteSource::Scenario(Scenario::Hospitals), &Task::hospitals(), 1).unwrap();
        let names: Vec<(&str, usize)> = sites.iter().map(|(n, t)| (n.as_str(), t.rows.len())).collect();
        assert_eq!(names, vec![("Cleveland", 304), ("Hungary", 293), ("Switzerland", 123), ("VA Long Beach", 200)]);
    }

    #[test]
    fn banks_are_five_skewed_sites() {
        let sites = load_sites(&SiteSource::Scenario(Scenario::Banks), &Task::banks(), 1).unwrap();
        assert_eq!(sites.len(), 5);
        assert_eq!(sites.iter().map(|s| s.1.rows.len()).sum::<usize>(), 1000);
    }
}
