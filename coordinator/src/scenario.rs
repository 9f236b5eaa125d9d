//! Where a federation's task and sites come from: a bundled scenario, a CSV split into
//! simulated sites, a directory with one CSV per site, or MNIST cut into sites.

use std::path::{Path, PathBuf};

use flotilla_common::data::RawTable;
use flotilla_common::data::images::ImageSet;
use flotilla_common::data::partition::{Partition, partition, partition_labels};
use flotilla_common::data::synthetic::SyntheticSpec;
use flotilla_common::site::SiteInput;
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
    /// MNIST cut into 100 sites of 600 images (the FedAvg paper's split), its 2NN (an MLP
    /// 200-200, SGD); the 10,000 test images score every round.
    Mnist,
    /// The same federation with the paper's CNN.
    MnistCnn,
}

impl Scenario {
    /// The scenario's task.
    pub fn task(self) -> Task {
        match self {
            Scenario::Hospitals => Task::hospitals(),
            Scenario::Banks => Task::banks(),
            Scenario::Mnist => Task::mnist_2nn(),
            Scenario::MnistCnn => Task::mnist_cnn(),
        }
    }

    /// True for the scenarios on MNIST.
    pub fn is_mnist(self) -> bool {
        matches!(self, Scenario::Mnist | Scenario::MnistCnn)
    }
}

/// The FedAvg paper's MNIST split: 100 sites of 600 training images.
pub const MNIST_SITES: usize = 100;
/// Images per site in the paper.
pub const MNIST_PER_SITE: usize = 600;

/// Where the bundled MNIST files are: `FLOTILLA_MNIST_DIR`, else `data/mnist` under the current
/// folder, else the checkout this binary was built from.
pub fn mnist_dir() -> Result<PathBuf, ScenarioError> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let candidates: Vec<PathBuf> =
        std::env::var_os("FLOTILLA_MNIST_DIR").map(PathBuf::from).into_iter().chain([PathBuf::from("data/mnist"), built_from]).collect();
    candidates.iter().find(|d| d.join("train-images-idx3-ubyte.gz").is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        ScenarioError::Invalid(format!(
            "the MNIST files (train-images-idx3-ubyte.gz and the others, bundled in the repository's data/mnist) are not in {}; \
             set FLOTILLA_MNIST_DIR",
            looked.join(", ")
        ))
    })
}

/// MNIST's 10,000 test images, the coordinator's held-out set in the MNIST scenarios.
pub fn mnist_test_images() -> Result<PathBuf, ScenarioError> {
    Ok(mnist_dir()?.join("t10k-images-idx3-ubyte.gz"))
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
    /// MNIST's training images cut into `clients` sites of `per_site` (a seeded sample when
    /// fewer than all 60,000 are wanted), `site-001`, ….
    Mnist {
        clients: usize,
        per_site: usize,
        partition: Partition,
    },
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

/// The sites of a simulation, each with its own rows (or images), sorted by name.
pub fn load_sites(source: &SiteSource, task: &Task, seed: u64) -> Result<Vec<(String, SiteInput)>, ScenarioError> {
    let mut sites: Vec<(String, SiteInput)> = match source {
        SiteSource::Scenario(s) if s.is_mnist() => mnist_sites(task, MNIST_SITES, MNIST_PER_SITE, &Partition::Iid, seed)?,
        SiteSource::Mnist { clients, per_site, partition } => mnist_sites(task, *clients, *per_site, partition, seed)?,
        tables => load_tables(tables, task, seed)?.into_iter().map(|(n, t)| (n, SiteInput::Table(t))).collect(),
    };
    if sites.is_empty() {
        return Err(ScenarioError::Invalid("no sites: the source holds no data".into()));
    }
    sites.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(sites)
}

/// MNIST's training images cut into sites.
fn mnist_sites(task: &Task, clients: usize, per_site: usize, how: &Partition, seed: u64) -> Result<Vec<(String, SiteInput)>, ScenarioError> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let spec = task.data.images.ok_or_else(|| ScenarioError::Invalid("the MNIST sites need a task with [data.images]".into()))?;
    let classes = task.data.label.classes.clone().unwrap_or_default();
    let all = ImageSet::read(&mnist_dir()?.join("train-images-idx3-ubyte.gz"), spec, &classes)?;
    let wanted = clients
        .checked_mul(per_site)
        .filter(|&n| n > 0 && n <= all.len())
        .ok_or_else(|| ScenarioError::Invalid(format!("{clients} sites × {per_site} images: MNIST has {} training images", all.len())))?;
    // A seeded sample when fewer than all are wanted (all 60,000 for the paper's split).
    let mut pool: Vec<usize> = (0..all.len()).collect();
    if wanted < all.len() {
        pool.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6d6e_6973)); // "mnis"
        pool.truncate(wanted);
        pool.sort_unstable();
    }
    let labels: Vec<u32> = pool.iter().map(|&i| all.labels[i]).collect();
    let parts = partition_labels(&labels, how, clients, seed)?;
    let width = clients.to_string().len().max(3);
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(k, part)| {
            let name = format!("site-{:0width$}", k + 1);
            let indices: Vec<usize> = part.into_iter().map(|j| pool[j]).collect();
            let source = PathBuf::from(format!("{}#{name}", all.source.display()));
            (name, SiteInput::Images(all.subset(&indices, source)))
        })
        .collect())
}

/// The sites of a simulation from tables.
fn load_tables(source: &SiteSource, task: &Task, seed: u64) -> Result<Vec<(String, RawTable)>, ScenarioError> {
    let sites = match source {
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
        SiteSource::Scenario(Scenario::Mnist | Scenario::MnistCnn) | SiteSource::Mnist { .. } => {
            return Err(ScenarioError::Invalid("MNIST's sites hold images, not tables".into()));
        }
    };
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hospitals_are_the_four_real_sites() {
        let sites = load_sites(&SiteSource::Scenario(Scenario::Hospitals), &Task::hospitals(), 1).unwrap();
        let names: Vec<(&str, usize)> = sites.iter().map(|(n, t)| (n.as_str(), t.len())).collect();
        assert_eq!(names, vec![("Cleveland", 304), ("Hungary", 293), ("Switzerland", 123), ("VA Long Beach", 200)]);
    }

    #[test]
    fn mnist_is_cut_into_the_papers_sites() {
        let task = Task::mnist_2nn();
        let source = SiteSource::Mnist { clients: 20, per_site: 30, partition: Partition::Shards(2) };
        let sites = load_sites(&source, &task, 1).unwrap();
        assert_eq!((sites.len(), sites[0].0.as_str()), (20, "site-001"));
        for (name, input) in &sites {
            let SiteInput::Images(i) = input else { panic!("{name} holds a table") };
            let classes: std::collections::BTreeSet<u32> = i.labels.iter().copied().collect();
            assert!(i.len() == 30 && classes.len() <= 3, "{name}: {} images of classes {classes:?}", i.len());
        }
        let images = |sites: &[(String, SiteInput)]| -> Vec<Vec<u8>> {
            sites.iter().map(|(_, i)| if let SiteInput::Images(i) = i { i.pixels.clone() } else { Vec::new() }).collect()
        };
        assert_eq!(images(&sites), images(&load_sites(&source, &task, 1).unwrap()), "seeded");
    }

    #[test]
    fn banks_are_five_skewed_sites() {
        let sites = load_sites(&SiteSource::Scenario(Scenario::Banks), &Task::banks(), 1).unwrap();
        assert_eq!(sites.len(), 5);
        assert_eq!(sites.iter().map(|s| s.1.len()).sum::<usize>(), 1000);
    }
}
